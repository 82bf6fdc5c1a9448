"""
Reading a webhook receiver's answer: its status and ``Retry-After``, and no
more than a few KiB of its body, which nothing reads.  A receiver that
streams an endless body costs one dropped connection.
"""

from __future__ import annotations

from typing import cast

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

#: The most of an answer's body that is read; the rest is not wanted.
BODY_LIMIT = 4096


class _Discard(Protocol):
    """
    Reads and drops an answer's body, giving up (and dropping the
    connection) after C{limit} bytes.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.received = 0
        self.done: Deferred[None] = Deferred(lambda d: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.limit and not self.done.called:
            self.done.callback(None)
            self._abort()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.callback(None)


@frozen
class Answer:
    """
    The part of an HTTP answer that matters: its status and Retry-After.
    """

    status: int
    retry_after: str | None


def read_answer(response: IResponse) -> Deferred[Answer]:
    """
    The status and ``Retry-After`` of C{response}, once its body has been
    read up to L{BODY_LIMIT} bytes (then the connection is dropped) or has
    ended.
    """
    values = response.headers.getRawHeaders(b"retry-after")
    retry_after = values[0].decode("latin-1") if values else None
    answer = Answer(response.code, retry_after)
    discard = _Discard(BODY_LIMIT)
    response.deliverBody(discard)  # type: ignore[call-arg, misc]
    return discard.done.addCallback(lambda _: answer)
