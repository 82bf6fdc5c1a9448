"""
How realtimed's long-lived pieces start and stop.

A piece that is not usable as soon as its ``startService`` returns (a
database server starting, a connection being opened, a port being bound)
says when it is with ``whenReady()``: a Deferred that fires once it is
ready, or fails if it cannot become so.  `Readiness` is the outcome behind
it, which any number of callers may wait for.

`StartInOrder` is a `MultiService` whose children start one at a time, in
the order they were added, each once the one before it is ready; and stop
in the reverse order, each once those after it have stopped.  The order in
which a daemon adds its pieces is therefore the one place its start-up
order is written.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

_PENDING = object()


@define(eq=False)
class Readiness:
    """
    An outcome that comes once: a value, or a failure.  Every waiter gets
    it, whether it waited before or after it came.  The first outcome
    stands until L{reset}.
    """

    _outcome: Any = field(default=_PENDING, init=False)
    _waiters: list[Deferred[Any]] = field(factory=list, init=False)

    @property
    def settled(self) -> bool:
        """
        Whether the outcome has come.
        """
        return self._outcome is not _PENDING

    @property
    def succeeded(self) -> bool:
        """
        Whether the outcome has come, and is not a failure.
        """
        return self._outcome is not _PENDING and not isinstance(self._outcome, Failure)

    def wait(self) -> Deferred[Any]:
        """
        A Deferred firing with the outcome (failing with it, for a
        failure), at once if it has come.
        """
        d: Deferred[Any] = Deferred()
        if self._outcome is _PENDING:
            self._waiters.append(d)
        else:
            _settle(d, self._outcome)
        return d

    def succeed(self, value: object = None) -> None:
        """
        The outcome is C{value}.
        """
        self._settle(value)

    def fail(self, reason: BaseException | Failure) -> None:
        """
        The outcome is a failure.
        """
        self._settle(reason if isinstance(reason, Failure) else Failure(reason))

    def reset(self) -> None:
        """
        Forget the outcome: later waiters wait for the next one.
        """
        self._outcome = _PENDING

    def _settle(self, outcome: object) -> None:
        if self._outcome is not _PENDING:
            return
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _settle(waiter, outcome)


def _settle(d: Deferred[Any], outcome: object) -> None:
    if isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)


def when_ready(service: IService) -> Deferred[Any]:
    """
    C{service}'s ``whenReady()``, or a Deferred that has fired for a
    service that is ready once started.
    """
    ready = getattr(service, "whenReady", None)
    if ready is None:
        return succeed(None)
    d: Deferred[Any] = ready()
    return d


class StartInOrder(MultiService):
    """
    Children start one at a time, in the order they were added: each once
    the one before it is ready (see L{when_ready}).  A child added while
    the others are starting takes its place at the end of the line.  They
    stop in the reverse order, each once the ones after it have stopped;
    a child that fails to stop is logged and the others still stop.

    @ivar started: Readiness of the whole: every child is ready, or the
        failure of the first that could not start (the later ones are then
        not started).
    """

    def __init__(self) -> None:
        super().__init__()
        self.started = Readiness()
        self._starting: Deferred[None] | None = None

    def addService(self, service: IService) -> None:
        # MultiService starts a child added to a running parent at once;
        # here the line of children does.
        running, self.running = self.running, False
        try:
            super().addService(service)
        finally:
            self.running = running

    def startService(self) -> None:
        Service.startService(self)
        self.started.reset()
        self._starting = self._start_children()
        self._starting.addCallbacks(self.started.succeed, self.started.fail)

    def whenReady(self) -> Deferred[Any]:
        """
        A Deferred firing once every child is ready.
        """
        return self.started.wait()

    def child_ready(self, child: IService, result: object) -> None:
        """
        Called when C{child} is ready, with what its readiness fired with,
        before the next child starts.  Does nothing; a subclass may add the
        children that needed it.
        """

    @inlineCallbacks
    def _start_children(self) -> Any:
        index = 0
        while index < len(self.services):
            if not self.running:
                raise RuntimeError("stopped while starting")
            child = self.services[index]
            index += 1
            child.startService()
            result = yield when_ready(child)
            self.child_ready(child, result)

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        self.started.fail(RuntimeError("stopped before every part had started"))
        for child in reversed(list(self)):
            if not child.running:
                continue
            try:
                yield maybeDeferred(child.stopService)
            except Exception:
                log.failure("Stopping {service} failed", service=type(child).__name__)
