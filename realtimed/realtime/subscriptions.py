"""
Which sockets are subscribed to what, indexed for delivery.

A socket subscribes either to a channel name (``chat:room123``) or to a
channel row's pattern exactly as the row has it (``chat:*``).  A name
subscription receives the messages published on that name; a pattern
subscription receives every message whose owning channel is that row, which
the stored message records as its channel id.  Delivering one message
therefore costs two dictionary lookups, whatever the number of sockets.

Pure code: a socket is any hashable value.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from attrs import Factory, define, frozen

from realtimed.realtime.channels import is_wildcard, matches

S = TypeVar("S", bound=Hashable)


@frozen
class Subscription:
    """
    One socket's subscription.

    @ivar channel: What the socket subscribed to: a name, or a channel row's
        pattern.
    @ivar channel_id: The id of the channel row that owned C{channel} when
        the subscription was authorized.
    """

    channel: str
    channel_id: str

    @property
    def is_pattern(self) -> bool:
        return is_wildcard(self.channel)


@define
class Subscriptions(Generic[S]):
    """
    The subscriptions of every socket of this process.
    """

    _by_name: dict[str, set[S]] = Factory(dict)
    _by_channel_id: dict[str, set[S]] = Factory(dict)
    _of_socket: dict[S, dict[str, Subscription]] = Factory(dict)

    def count(self) -> int:
        """
        How many subscriptions there are, over every socket.
        """
        return sum(map(len, self._of_socket.values()))

    def add(self, socket: S, subscription: Subscription) -> bool:
        """
        Subscribe C{socket}.

        @return: C{False} if it was subscribed to that channel already.
        """
        mine = self._of_socket.setdefault(socket, {})
        if subscription.channel in mine:
            return False
        mine[subscription.channel] = subscription
        if subscription.is_pattern:
            self._by_channel_id.setdefault(subscription.channel_id, set()).add(socket)
        else:
            self._by_name.setdefault(subscription.channel, set()).add(socket)
        return True

    def remove(self, socket: S, channel: str) -> Subscription | None:
        """
        Unsubscribe C{socket} from C{channel}.

        @return: The subscription removed, or C{None} if there was none.
        """
        mine = self._of_socket.get(socket)
        if mine is None:
            return None
        subscription = mine.pop(channel, None)
        if subscription is None:
            return None
        if not mine:
            del self._of_socket[socket]
        if subscription.is_pattern:
            _discard(self._by_channel_id, subscription.channel_id, socket)
        else:
            _discard(self._by_name, subscription.channel, socket)
        return subscription

    def remove_socket(self, socket: S) -> list[Subscription]:
        """
        Unsubscribe C{socket} from everything.

        @return: The subscriptions removed.
        """
        removed = []
        for channel in list(self._of_socket.get(socket, {})):
            subscription = self.remove(socket, channel)
            if subscription is not None:
                removed.append(subscription)
        return removed

    def count_of(self, socket: S) -> int:
        """
        How many subscriptions C{socket} holds.
        """
        return len(self._of_socket.get(socket, ()))

    def held(self) -> list[Subscription]:
        """
        Every distinct subscription held by a socket of this process.
        """
        return list({s for mine in self._of_socket.values() for s in mine.values()})

    def holding(self, channel: str, channel_id: str) -> list[S]:
        """
        The sockets holding the subscription to C{channel} through the row
        C{channel_id}.
        """
        index = self._by_channel_id if is_wildcard(channel) else self._by_name
        key = channel_id if is_wildcard(channel) else channel
        return [
            socket
            for socket in index.get(key, ())
            if (s := self._of_socket[socket].get(channel)) is not None
            and s.channel_id == channel_id
        ]

    def is_subscribed(self, socket: S, channel: str) -> bool:
        """
        Is C{socket} subscribed to exactly C{channel}?
        """
        return channel in self._of_socket.get(socket, {})

    def receives(self, socket: S, name: str) -> bool:
        """
        Does C{socket} receive messages published on the name C{name}: is it
        subscribed to that name, or to a pattern that matches it?
        """
        mine = self._of_socket.get(socket)
        if not mine:
            return False
        if name in mine:
            return True
        return any(s.is_pattern and matches(s.channel, name) for s in mine.values())

    def audience(self, name: str, channel_id: str | None) -> set[S]:
        """
        The sockets a message published on C{name}, owned by the channel row
        C{channel_id}, is delivered to; each socket once.
        """
        by_name = self._by_name.get(name)
        by_channel = self._by_channel_id.get(channel_id) if channel_id is not None else None
        if not by_channel:
            return set(by_name) if by_name else set()
        if not by_name:
            return set(by_channel)
        return by_name | by_channel


def _discard(index: dict[str, set[S]], key: str, socket: S) -> None:
    sockets = index.get(key)
    if sockets is None:
        return
    sockets.discard(socket)
    if not sockets:
        del index[key]
