"""
Who is present in each channel of this process.

Every socket subscribed to a channel is present in it.  Sockets are grouped
into members: all the sockets of one user (one JWT ``sub``) are one member,
however many there are; an anonymous or API-key socket is a member of its
own.  A member joins when its first socket subscribes and leaves when its
last socket unsubscribes or disconnects; each of those changes is announced
to the sockets of the other members of that channel.

Pure code: a socket is any hashable value, the time is passed in as text.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from attrs import Factory, define, frozen

S = TypeVar("S", bound=Hashable)

USER = "user"
ANONYMOUS = "anonymous"


@frozen
class Member:
    """
    One member of a channel, as clients see it.

    @ivar presence_id: The user's JWT ``sub``, or the socket id of an
        anonymous or API-key socket.
    @ivar type: ``user`` or ``anonymous``.
    @ivar joined_at: When the member's first socket joined (RFC 3339).
    """

    presence_id: str
    type: str
    joined_at: str

    def to_json(self) -> dict[str, Any]:
        return {"presenceId": self.presence_id, "type": self.type, "joinedAt": self.joined_at}


@frozen
class Identity:
    """
    Who a socket is present as: its member's id and type.
    """

    presence_id: str
    type: str


@frozen
class PresenceChange(Generic[S]):
    """
    A member joined or left a channel; tell C{recipients}.

    @ivar kind: ``join`` or ``leave``.
    """

    kind: str
    channel: str
    member: Member
    recipients: frozenset[S]

    def event(self) -> tuple[str, dict[str, Any]]:
        """
        The Socket.IO event and data announcing this change.
        """
        return (
            "presence:" + self.kind,
            {
                "channel": self.channel,
                "member": self.member.to_json(),
                "meta": {"channel": self.channel},
            },
        )


@define
class _Present(Generic[S]):
    member: Member
    sockets: set[S]


@define
class Presence(Generic[S]):
    """
    The members of every channel of this process.
    """

    _channels: dict[str, dict[str, _Present[S]]] = Factory(dict)

    def join(
        self, channel: str, socket: S, identity: Identity, now: str
    ) -> tuple[list[Member], PresenceChange[S] | None]:
        """
        C{socket} is now present in C{channel}.

        @param now: The time, as RFC 3339 text, recorded if a new member
            joins.
        @return: The members present (the socket's own included), oldest
            first, and the join to announce, if its member is new.
        """
        present = self._channels.setdefault(channel, {})
        entry = present.get(identity.presence_id)
        change: PresenceChange[S] | None = None
        if entry is None:
            member = Member(identity.presence_id, identity.type, now)
            recipients = frozenset(s for other in present.values() for s in other.sockets)
            present[identity.presence_id] = _Present(member, {socket})
            if recipients:
                change = PresenceChange("join", channel, member, recipients)
        else:
            entry.sockets.add(socket)
        return [p.member for p in present.values()], change

    def leave(self, channel: str, socket: S, identity: Identity) -> PresenceChange[S] | None:
        """
        C{socket} is no longer present in C{channel}.

        @return: The leave to announce, if that was its member's last socket
            there and others remain.
        """
        present = self._channels.get(channel)
        if present is None:
            return None
        entry = present.get(identity.presence_id)
        if entry is None or socket not in entry.sockets:
            return None
        entry.sockets.discard(socket)
        if entry.sockets:
            return None
        del present[identity.presence_id]
        if not present:
            del self._channels[channel]
            return None
        recipients = frozenset(s for other in present.values() for s in other.sockets)
        return PresenceChange("leave", channel, entry.member, recipients)

    def members(self, channel: str) -> list[Member]:
        """
        The members present in C{channel}, oldest first.
        """
        return [p.member for p in self._channels.get(channel, {}).values()]
