"""
Who is present in each channel, on this process and on the other processes
of the database.

Every socket subscribed to a channel is present in it.  Sockets are grouped
into members: all the sockets of one user (one JWT ``sub``) are one member,
however many there are and on whichever processes they are connected; an
anonymous or API-key socket is a member of its own.  A member joins when its
first socket anywhere subscribes and leaves when its last socket anywhere
unsubscribes or disconnects; each of those changes is announced to the
sockets of the other members of that channel.

Each process knows its own sockets, and shares with the others only which
members it holds: one row per channel and member, written when the member's
first socket on this process joins and removed when its last one here
leaves (L{Presence.take_unwritten} says which rows to write).  What the other
processes hold comes back as L{Presence.remote_join},
L{Presence.remote_leave} and, after the news may have been missed, a whole
picture to start again from (L{Presence.replace_remote}).  Every process
announces to its own sockets the changes that it sees; so a member present on
two processes joins once and leaves once, as seen from every socket.

Pure code: a socket is any hashable value, a process is named by text, the
time is passed in as text.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
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


@frozen
class Held:
    """
    A member that a process holds in a channel: the row it shares.
    """

    channel: str
    member: Member


@frozen
class Unwritten:
    """
    The rows this process must write so that the others see what it holds
    now: C{held} to add (if not there yet), C{released} (channel, presence
    id) to remove.
    """

    held: tuple[Held, ...] = ()
    released: tuple[tuple[str, str], ...] = ()

    def keys(self) -> list[tuple[str, str]]:
        return [(h.channel, h.member.presence_id) for h in self.held] + list(self.released)


@define
class _Present(Generic[S]):
    member: Member
    sockets: set[S]


@define
class Presence(Generic[S]):
    """
    The members of every channel: this process's sockets, and the members
    the other processes hold.
    """

    # channel -> presence id -> this process's sockets of that member
    _local: dict[str, dict[str, _Present[S]]] = Factory(dict)
    # channel -> presence id -> process -> the member as that process holds it
    _remote: dict[str, dict[str, dict[str, Member]]] = Factory(dict)
    # (channel, presence id) whose row may differ from what is held here
    _unwritten: dict[tuple[str, str], None] = Factory(dict)

    # This process's sockets

    def join(
        self, channel: str, socket: S, identity: Identity, now: str
    ) -> tuple[list[Member], PresenceChange[S] | None]:
        """
        C{socket} is now present in C{channel}.

        @param now: The time, as RFC 3339 text, recorded if the member is
            new on this process.
        @return: The members present (the socket's own included), oldest
            first, and the join to announce, if its member is new anywhere.
        """
        present = self._local.setdefault(channel, {})
        entry = present.get(identity.presence_id)
        change: PresenceChange[S] | None = None
        if entry is None:
            member = Member(identity.presence_id, identity.type, now)
            elsewhere = self._remote.get(channel, {}).get(identity.presence_id)
            recipients = self._sockets(channel)
            present[identity.presence_id] = _Present(member, {socket})
            self._unwritten[(channel, identity.presence_id)] = None
            if not elsewhere and recipients:
                change = PresenceChange("join", channel, member, recipients)
        else:
            entry.sockets.add(socket)
        return self.members(channel), change

    def leave(self, channel: str, socket: S, identity: Identity) -> PresenceChange[S] | None:
        """
        C{socket} is no longer present in C{channel}.

        @return: The leave to announce, if that was its member's last socket
            anywhere and others remain here.
        """
        present = self._local.get(channel)
        if present is None:
            return None
        entry = present.get(identity.presence_id)
        if entry is None or socket not in entry.sockets:
            return None
        entry.sockets.discard(socket)
        if entry.sockets:
            return None
        member = self._member(channel, identity.presence_id)
        del present[identity.presence_id]
        if not present:
            del self._local[channel]
        self._unwritten[(channel, identity.presence_id)] = None
        if member is None or self._remote.get(channel, {}).get(identity.presence_id):
            return None
        return self._change("leave", channel, member)

    # What the others hold

    def remote_join(self, process: str, channel: str, member: Member) -> PresenceChange[S] | None:
        """
        C{process} now holds C{member} in C{channel}.

        @return: The join to announce, if the member is new here and
            sockets here are present in the channel.
        """
        holders = self._remote.setdefault(channel, {}).setdefault(member.presence_id, {})
        known = bool(holders) or member.presence_id in self._local.get(channel, {})
        holders[process] = member
        if known:
            return None
        return self._change("join", channel, member)

    def remote_leave(
        self, process: str, channel: str, presence_id: str
    ) -> PresenceChange[S] | None:
        """
        C{process} no longer holds C{presence_id} in C{channel}.

        @return: The leave to announce, if that was the member's last
            process and sockets here are present in the channel.
        """
        by_id = self._remote.get(channel)
        holders = by_id.get(presence_id) if by_id is not None else None
        if by_id is None or holders is None or process not in holders:
            return None
        member = self._member(channel, presence_id)
        del holders[process]
        if not holders:
            del by_id[presence_id]
            if not by_id:
                del self._remote[channel]
        if holders or member is None or presence_id in self._local.get(channel, {}):
            return None
        return self._change("leave", channel, member)

    def replace_remote(self, rows: Iterable[tuple[str, Held]]) -> list[PresenceChange[S]]:
        """
        What the other processes hold is now exactly C{rows} (process,
        held): news may have been missed, so start again from them.

        @return: The joins and leaves to announce, for the members that
            appeared or went meanwhile.
        """
        before = self._remote_only()
        self._remote = {}
        for process, held in rows:
            by_id = self._remote.setdefault(held.channel, {})
            by_id.setdefault(held.member.presence_id, {})[process] = held.member
        after = self._remote_only()
        changes: list[PresenceChange[S]] = []
        for key, member in before.items():
            if key not in after:
                change = self._change("leave", key[0], member)
                if change is not None:
                    changes.append(change)
        for key, member in after.items():
            if key not in before:
                change = self._change("join", key[0], member)
                if change is not None:
                    changes.append(change)
        return changes

    # What to write

    def take_unwritten(self) -> Unwritten:
        """
        The rows to write so that the others see what this process holds
        now; they count as written from now on (see L{restore}).
        """
        held: list[Held] = []
        released: list[tuple[str, str]] = []
        for channel, presence_id in self._unwritten:
            entry = self._local.get(channel, {}).get(presence_id)
            if entry is None:
                released.append((channel, presence_id))
            else:
                held.append(Held(channel, entry.member))
        self._unwritten.clear()
        return Unwritten(tuple(held), tuple(released))

    def restore(self, unwritten: Unwritten) -> None:
        """
        Writing C{unwritten} failed: it is to be written again.
        """
        for key in unwritten.keys():
            self._unwritten[key] = None

    def rewrite_all(self) -> None:
        """
        The rows of this process were lost (taken for those of a process
        that died): every member held here is to be written again.
        """
        for channel, present in self._local.items():
            for presence_id in present:
                self._unwritten[(channel, presence_id)] = None

    def has_unwritten(self) -> bool:
        return bool(self._unwritten)

    # Reading

    def members(self, channel: str) -> list[Member]:
        """
        The members present in C{channel} on every process, oldest first;
        a member held by several processes has the earliest join time.
        """
        ids = list(self._local.get(channel, {})) + [
            i for i in self._remote.get(channel, {}) if i not in self._local.get(channel, {})
        ]
        found = [self._member(channel, presence_id) for presence_id in ids]
        members = [m for m in found if m is not None]
        members.sort(key=lambda m: m.joined_at)
        return members

    def local_members(self, channel: str) -> list[Member]:
        """
        The members with sockets on this process in C{channel}.
        """
        return [p.member for p in self._local.get(channel, {}).values()]

    def _member(self, channel: str, presence_id: str) -> Member | None:
        candidates = list(self._remote.get(channel, {}).get(presence_id, {}).values())
        entry = self._local.get(channel, {}).get(presence_id)
        if entry is not None:
            candidates.insert(0, entry.member)
        if not candidates:
            return None
        return min(candidates, key=lambda m: m.joined_at)

    def _remote_only(self) -> dict[tuple[str, str], Member]:
        """
        The members present only through other processes, by (channel,
        presence id).
        """
        found: dict[tuple[str, str], Member] = {}
        for channel, by_id in self._remote.items():
            local = self._local.get(channel, {})
            for presence_id in by_id:
                member = self._member(channel, presence_id)
                if presence_id not in local and member is not None:
                    found[(channel, presence_id)] = member
        return found

    def _sockets(self, channel: str) -> frozenset[S]:
        return frozenset(s for p in self._local.get(channel, {}).values() for s in p.sockets)

    def _change(self, kind: str, channel: str, member: Member) -> PresenceChange[S] | None:
        recipients = self._sockets(channel)
        if not recipients:
            return None
        return PresenceChange(kind, channel, member, recipients)
