"""
Message retention: messages older than ``realtime.config.retention_days``
(set with ``PATCH /api/realtime/config``; unset keeps them forever) are
deleted, oldest first, in batches.

Every realtimed process runs `MessageRetention`, and each batch is deleted
by ``realtime.delete_expired_messages`` (migration 0010) under an advisory
lock: when another process is deleting, this one leaves the work to it
until its next pass.  A message with webhook deliveries still pending is
kept until they end (delivered or failed).
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtimed.store.pool import IQueries

log = Logger()

DELETE_BATCH = "SELECT realtime.delete_expired_messages(%s)"


@define(eq=False)
class MessageRetention(Service):
    """
    Deletes expired messages every C{interval} seconds (and once at start).

    @ivar pool: Where the deletes run.
    @ivar clock: Time for the passes.
    @ivar interval: Seconds between passes.
    @ivar batch_size: Messages deleted by one statement (one transaction).
    """

    pool: IQueries
    clock: Any
    interval: float = 60.0
    batch_size: int = 1000
    _loop: LoopingCall | None = field(default=None, init=False)
    _pass: Deferred[int] | None = field(default=None, init=False)
    _stopped: bool = field(default=False, init=False)

    def startService(self) -> None:
        Service.startService(self)
        self._stopped = False
        loop = self._loop = LoopingCall(self._due)
        loop.clock = self.clock
        loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("Message retention stopped", f)
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop; the Deferred fires once the batch under way, if any, is done.
        """
        Service.stopService(self)
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        under_way = self._pass
        if under_way is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        under_way.addBoth(lambda _: done.callback(None))
        return done

    def _due(self) -> None:
        if self._pass is not None:
            return
        d = self._pass = self.delete_expired()

        def deleted(count: int) -> None:
            if count:
                log.info("Retention deleted {count} expired messages", count=count)

        def failed(f: Failure) -> None:
            log.warn(
                "Could not delete expired messages: {error}",
                error=" ".join(f.getErrorMessage().split()),
            )

        def finished(_: object) -> None:
            self._pass = None

        d.addCallbacks(deleted, failed)
        d.addBoth(finished)

    @inlineCallbacks
    def delete_expired(self) -> Any:
        """
        Delete expired messages, one batch after another, until a batch
        finds fewer than C{batch_size}, another process holds the retention
        lock, or the service stops.

        @return: A Deferred firing with how many messages this pass deleted.
        """
        total = 0
        while True:
            rows = yield self.pool.runQuery(DELETE_BATCH, (self.batch_size,))
            count = rows[0][0]
            if count is None:
                # Another process is deleting.
                return total
            total += count
            if count < self.batch_size or self._stopped:
                return total
