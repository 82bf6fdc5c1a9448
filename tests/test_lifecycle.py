"""
Tests for L{realtimed.lifecycle}: readiness, and services started one after
another in dependency order.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from realtimed.lifecycle import Readiness, StartInOrder


class ReadinessTests(SynchronousTestCase):
    def test_waiters_before_and_after(self) -> None:
        """
        Waiters from before and after the outcome all get it.
        """
        readiness = Readiness()
        early = readiness.wait()
        self.assertNoResult(early)
        readiness.succeed("up")
        self.assertEqual(self.successResultOf(early), "up")
        self.assertEqual(self.successResultOf(readiness.wait()), "up")
        self.assertTrue(readiness.succeeded)

    def test_failure(self) -> None:
        """
        A failure reaches every waiter; it is not a success.
        """
        readiness = Readiness()
        early = readiness.wait()
        readiness.fail(ValueError("down"))
        self.failureResultOf(early, ValueError)
        self.failureResultOf(readiness.wait(), ValueError)
        self.assertTrue(readiness.settled)
        self.assertFalse(readiness.succeeded)

    def test_first_outcome_stands(self) -> None:
        """
        A later outcome does not replace the first, until a reset; waiters
        after a reset wait for the next one.
        """
        readiness = Readiness()
        readiness.succeed(1)
        readiness.fail(ValueError("late"))
        self.assertEqual(self.successResultOf(readiness.wait()), 1)
        readiness.reset()
        waiting = readiness.wait()
        self.assertNoResult(waiting)
        readiness.succeed(2)
        self.assertEqual(self.successResultOf(waiting), 2)


@define(eq=False)
class Piece(Service):
    """
    A service that records its starts and stops in C{log}, ready when the
    test says, and stopping when the test says.
    """

    label: str
    log: list[str]
    ready: Deferred[Any] | None = None
    stopping: Deferred[None] | None = None
    fail_stop: bool = False
    _ready: Readiness = field(factory=Readiness, init=False)

    def startService(self) -> None:
        Service.startService(self)
        self.log.append(f"start {self.label}")
        if self.ready is None:
            self._ready.succeed(self.label)
        else:
            self.ready.addCallbacks(self._ready.succeed, self._ready.fail)

    def whenReady(self) -> Deferred[Any]:
        return self._ready.wait()

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        self.log.append(f"stop {self.label}")
        if self.fail_stop:
            raise RuntimeError("cannot stop")
        return self.stopping


class StartInOrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.log: list[str] = []
        self.parent = StartInOrder()

    def piece(self, label: str, **kwargs: Any) -> Piece:
        piece = Piece(label, self.log, **kwargs)
        self.parent.addService(piece)
        return piece

    def test_one_after_another(self) -> None:
        """
        Each child starts once the one before it is ready; the whole is
        ready when the last one is.
        """
        first_ready: Deferred[Any] = Deferred()
        self.piece("a", ready=first_ready)
        self.piece("b")
        self.parent.startService()
        whole = self.parent.whenReady()
        self.assertEqual(self.log, ["start a"])
        self.assertNoResult(whole)
        first_ready.callback("a")
        self.assertEqual(self.log, ["start a", "start b"])
        self.successResultOf(whole)

    def test_failed_start(self) -> None:
        """
        A child that cannot become ready fails the whole, and the children
        after it are not started.
        """
        self.piece("a", ready=Deferred())
        self.piece("b")
        self.parent.startService()
        self.parent.services[0].ready.errback(ValueError("no database"))  # type: ignore[attr-defined]
        self.failureResultOf(self.parent.whenReady(), ValueError)
        self.assertEqual(self.log, ["start a"])

    def test_added_from_readiness(self) -> None:
        """
        Children added when an earlier one is ready take their place in the
        line and start after it.
        """
        added: list[Piece] = []

        class Parent(StartInOrder):
            def child_ready(inner, child: Any, result: object) -> None:
                if result == "db":
                    added.append(self.piece("pool"))

        self.parent = Parent()
        self.piece("db")
        self.piece("ports")
        self.parent.startService()
        self.assertEqual(self.log, ["start db", "start ports", "start pool"])
        self.successResultOf(self.parent.whenReady())

    def test_stop_in_reverse(self) -> None:
        """
        Children stop in the reverse order, each once the later ones have
        stopped; one that fails to stop does not keep the others running.
        """
        stopping: Deferred[None] = Deferred()
        self.piece("a")
        self.piece("b", fail_stop=True)
        self.piece("c", stopping=stopping)
        self.parent.startService()
        del self.log[:]
        stopped = self.parent.stopService()
        self.assertEqual(self.log, ["stop c"])
        stopping.callback(None)
        self.assertEqual(self.log, ["stop c", "stop b", "stop a"])
        self.successResultOf(stopped)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop_while_starting(self) -> None:
        """
        Stopping while a child is getting ready stops what started, never
        starts the rest, and fails the whole's readiness.
        """
        self.piece("a")
        self.piece("b", ready=Deferred())
        self.piece("c")
        self.parent.startService()
        whole = self.parent.whenReady()
        self.successResultOf(self.parent.stopService())
        self.assertEqual(self.log, ["start a", "start b", "stop b", "stop a"])
        self.failureResultOf(whole, RuntimeError)
        self.parent.services[1].ready.callback("b")  # type: ignore[attr-defined]
        self.assertEqual(self.log, ["start a", "start b", "stop b", "stop a"])
