"""
Positions in the stream of stored messages, as a listener hands them over.

A listener hands messages over poll by poll: each poll reads the messages
committed after one transaction snapshot (``since``) and visible in a newer
one (``upto``), in transaction order and, within a transaction, in the order
they were stored; this process's own settled batches are handed over between
polls (``handed``).  So the messages handed over up to, and including, one
message are exactly:

- those visible in ``since``;
- those of the transactions in ``handed``;
- those of the poll in progress, visible in ``upto``, up to the message's
  (transaction, position): ``xact``, ``seq``; or, for a message of a batch
  handed over between polls (no ``upto``), those of its transaction up to
  it.

A `Position` is that description.  It holds only facts of the database
(snapshots, transaction ids), so any realtimed process of the database can
tell, from a position given by another, which messages come after it: that
is what connection state recovery sends as the offset of each message.

Pure code.
"""

from __future__ import annotations

from typing import Final

from attrs import frozen

#: The longest encoded position accepted from a client.
MAX_ENCODED: Final = 2000

_DIGITS: Final = "0123456789abcdefghijklmnopqrstuvwxyz"


def _b36(number: int) -> str:
    if number < 0:
        raise ValueError("negative")
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = _DIGITS[digit] + text
        if not number:
            return text


def _int36(text: str) -> int:
    if not text or len(text) > 14 or text.strip(_DIGITS):
        raise ValueError(f"not a number: {text!r}")
    return int(text, 36)


@frozen
class Snapshot:
    """
    A PostgreSQL transaction snapshot (``pg_snapshot``): every transaction
    below C{xmin} has finished, none from C{xmax} on has, and those in
    C{xip} were in progress.
    """

    xmin: int
    xmax: int
    xip: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """
        The snapshot in PostgreSQL's text form, ``xmin:xmax:xip1,xip2``.
        """
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x))

    def text(self) -> str:
        """
        PostgreSQL's text form.
        """
        return f"{self.xmin}:{self.xmax}:{','.join(map(str, self.xip))}"

    def visible(self, xact: int) -> bool:
        """
        Has transaction C{xact} committed (or aborted) in this snapshot?
        Like PostgreSQL's ``pg_visible_in_snapshot``.
        """
        if xact < self.xmin:
            return True
        if xact >= self.xmax:
            return False
        return xact not in self.xip

    def includes(self, other: Snapshot, also: tuple[int, ...] = ()) -> bool:
        """
        Does every transaction visible in C{other} show in this snapshot,
        or among the transactions C{also}?  (An answer of C{False} may be
        too cautious, never wrong the other way.)
        """
        if other.xmax > self.xmax:
            if other.xmax - self.xmax > len(other.xip) + len(also):
                return False
            if any(x not in other.xip and x not in also for x in range(self.xmax, other.xmax)):
                return False
        return all(x in also for x in self.xip if other.visible(x))

    def encode(self) -> str:
        return ".".join([_b36(self.xmin), _b36(self.xmax), ",".join(map(_b36, self.xip))])

    @classmethod
    def decode(cls, text: str) -> Snapshot:
        xmin, xmax, xip = text.split(".")
        snapshot = cls(_int36(xmin), _int36(xmax), tuple(_int36(x) for x in xip.split(",") if x))
        if snapshot.xmin > snapshot.xmax or any(
            not snapshot.xmin <= x < snapshot.xmax for x in snapshot.xip
        ):
            raise ValueError("not a snapshot")
        return snapshot


@frozen
class Position:
    """
    Where a message stands in the stream a listener hands over: it and
    every message before it are those L{covers} answers true for.
    """

    since: Snapshot
    handed: tuple[int, ...] = ()
    upto: Snapshot | None = None
    xact: int | None = None
    seq: int | None = None

    def covers(self, xact: int, seq: int) -> bool:
        """
        Is the message C{seq} of transaction C{xact} at or before this
        position?
        """
        if self.since.visible(xact) or xact in self.handed:
            return True
        if self.xact is None or self.seq is None:
            return False
        if self.upto is None:
            return xact == self.xact and seq <= self.seq
        return self.upto.visible(xact) and (xact, seq) <= (self.xact, self.seq)

    def includes(self, other: Position) -> bool:
        """
        Is every message C{other} covers covered by this position too?
        Unless both are places in one poll, only this position's C{since}
        and C{handed} are looked at, so an answer of C{False} may be too
        cautious, never wrong the other way.
        """
        if (
            self.upto is not None
            and self.xact is not None
            and self.seq is not None
            and other.xact is not None
            and other.seq is not None
            and (self.since, self.upto) == (other.since, other.upto)
            and set(other.handed) <= set(self.handed)
        ):
            # Two places in one poll.
            return (other.xact, other.seq) <= (self.xact, self.seq)
        if not self.since.includes(other.since, self.handed):
            return False
        if any(not self.since.visible(x) and x not in self.handed for x in other.handed):
            return False
        if other.xact is None:
            return True
        if other.upto is None:
            return self.since.visible(other.xact) or other.xact in self.handed
        # What the poll in progress covered: what ``upto`` sees, up to ``xact``.
        last = other.xact + 1
        polled = Snapshot(
            min(other.upto.xmin, last),
            min(other.upto.xmax, last),
            tuple(x for x in other.upto.xip if x < last),
        )
        return self.since.includes(polled, self.handed)

    def encode(self) -> str:
        """
        The position as a short text, for a client to send back.
        """
        return ";".join(
            [
                self.since.encode(),
                ",".join(map(_b36, self.handed)),
                "" if self.upto is None else self.upto.encode(),
                "" if self.xact is None else _b36(self.xact),
                "" if self.seq is None else _b36(self.seq),
            ]
        )

    @classmethod
    def decode(cls, text: str) -> Position:
        """
        The position L{encode} gave.

        @raise ValueError: If C{text} is not one.
        """
        if not isinstance(text, str) or len(text) > MAX_ENCODED:
            raise ValueError("not a position")
        try:
            since, handed, upto, xact, seq = text.split(";")
            position = cls(
                Snapshot.decode(since),
                tuple(_int36(x) for x in handed.split(",") if x),
                Snapshot.decode(upto) if upto else None,
                _int36(xact) if xact else None,
                _int36(seq) if seq else None,
            )
        except (ValueError, TypeError) as e:
            raise ValueError(f"not a position: {e}") from None
        if (position.xact is None) != (position.seq is None):
            raise ValueError("not a position: a transaction without its place, or the reverse")
        return position
