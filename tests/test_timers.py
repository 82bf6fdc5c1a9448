"""
Tests for L{realtimed.timers.Deadlines}, on a fake clock.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from realtimed.timers import COMPACT_AFTER, Deadlines


def recorder(clock: Clock) -> tuple[list[tuple[float, str]], Deadlines[str]]:
    fired: list[tuple[float, str]] = []
    return fired, Deadlines(clock, lambda key: fired.append((clock.seconds(), key)))


class DeadlinesTests(SynchronousTestCase):
    def test_fires_at_its_time(self) -> None:
        clock = Clock()
        fired, deadlines = recorder(clock)
        deadlines.set("a", 5)
        deadlines.set("b", 2)
        self.assertEqual(deadlines.due("a"), 5)
        self.assertEqual(len(deadlines), 2)
        clock.advance(1.9)
        self.assertEqual(fired, [])
        clock.advance(0.1)
        self.assertEqual(fired, [(2, "b")])
        clock.advance(3)
        self.assertEqual(fired, [(2, "b"), (5, "a")])
        self.assertEqual(len(deadlines), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_one_reactor_call(self) -> None:
        """
        However many deadlines there are, one reactor call is pending, for
        the earliest.
        """
        clock = Clock()
        _, deadlines = recorder(clock)
        for i in range(100):
            deadlines.set(str(i), 10 + i)
        deadlines.set("early", 3)
        calls = clock.getDelayedCalls()
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0].getTime(), 3)

    def test_moved(self) -> None:
        clock = Clock()
        fired, deadlines = recorder(clock)
        deadlines.set("a", 2)
        deadlines.set("a", 4)
        clock.advance(3)
        self.assertEqual(fired, [])
        deadlines.set("a", 3.5)
        clock.advance(0.5)
        self.assertEqual(fired, [(3.5, "a")])

    def test_cancelled(self) -> None:
        clock = Clock()
        fired, deadlines = recorder(clock)
        deadlines.set("a", 2)
        deadlines.set("b", 2)
        deadlines.cancel("a")
        deadlines.cancel("missing")
        self.assertIsNone(deadlines.due("a"))
        clock.advance(2)
        self.assertEqual(fired, [(2, "b")])

    def test_last_cancelled(self) -> None:
        """
        Once no deadline is left, no reactor call is left either.
        """
        clock = Clock()
        fired, deadlines = recorder(clock)
        deadlines.set("a", 2)
        deadlines.set("b", 3)
        deadlines.cancel("a")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        deadlines.cancel("b")
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(deadlines), 0)

    def test_callback_cancels_another(self) -> None:
        """
        A deadline cancelled by the callback of one that fell due at the
        same time does not fire.
        """
        clock = Clock()
        fired: list[str] = []

        def fire(key: str) -> None:
            fired.append(key)
            deadlines.cancel("b")

        deadlines: Deadlines[str] = Deadlines(clock, fire)
        deadlines.set("a", 1)
        deadlines.set("b", 1)
        clock.advance(1)
        self.assertEqual(fired, ["a"])

    def test_set_in_the_past_by_its_callback(self) -> None:
        """
        A key whose callback sets its deadline in the past again fires
        again, on a later reactor call rather than within the running one.
        """
        clock = Clock()
        fired: list[float] = []

        def fire(key: str) -> None:
            fired.append(clock.seconds())
            if len(fired) < 3:
                deadlines.set(key, clock.seconds() - 1)

        deadlines: Deadlines[str] = Deadlines(clock, fire)
        deadlines.set("a", 1)
        clock.advance(1)
        self.assertEqual(fired, [1, 1, 1])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_failing_callback(self) -> None:
        """
        A callback that raises is logged, and the other deadlines still
        fire.
        """
        clock = Clock()
        fired: list[str] = []

        def fire(key: str) -> None:
            if key == "bad":
                raise RuntimeError("boom")
            fired.append(key)

        deadlines: Deadlines[str] = Deadlines(clock, fire)
        deadlines.set("bad", 1)
        deadlines.set("good", 1)
        clock.advance(1)
        self.assertEqual(fired, ["good"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_compacted(self) -> None:
        """
        Moving and cancelling deadlines does not grow the heap without
        bound: what they leave behind is dropped.
        """
        clock = Clock()
        _, deadlines = recorder(clock)
        for round in range(50):
            for i in range(10):
                deadlines.set(str(i), 1000 + round)
        self.assertLessEqual(len(deadlines._heap), 10 + COMPACT_AFTER + 1)
        for i in range(10):
            deadlines.cancel(str(i))
        for i in range(COMPACT_AFTER * 2):
            deadlines.set(f"x{i}", 5)
            deadlines.cancel(f"x{i}")
        self.assertLessEqual(len(deadlines._heap), COMPACT_AFTER * 2 + 1)

    def test_clear(self) -> None:
        clock = Clock()
        fired, deadlines = recorder(clock)
        deadlines.set("a", 1)
        deadlines.clear()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(2)
        self.assertEqual(fired, [])
        deadlines.set("a", 3)
        clock.advance(1)
        self.assertEqual(fired, [(3, "a")])

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("set"), st.sampled_from("abcdef"), st.integers(0, 30)),
                st.tuples(st.just("cancel"), st.sampled_from("abcdef"), st.just(0)),
                st.tuples(st.just("advance"), st.just(""), st.integers(0, 10)),
            ),
            max_size=80,
        )
    )
    def test_against_a_model(self, operations: list[tuple[str, str, int]]) -> None:
        """
        Whatever the order of settings, cancellations and time passing, each
        key fires exactly when its last deadline falls due, and deadlines
        fire in the order of their times.
        """
        clock = Clock()
        fired, deadlines = recorder(clock)
        model: dict[str, tuple[float, int]] = {}
        expected: list[str] = []
        order = 0
        for op, key, value in operations:
            if op == "set":
                # a time in the past fires at the next advance, at its time
                due = clock.seconds() + value - 5
                if key not in model or model[key][0] != due:
                    order += 1
                    model[key] = (due, order)
                deadlines.set(key, due)
            elif op == "cancel":
                model.pop(key, None)
                deadlines.cancel(key)
            else:
                until = clock.seconds() + value
                falling = sorted(
                    ((due, order, key) for key, (due, order) in model.items() if due <= until)
                )
                for _, _, key in falling:
                    expected.append(key)
                    del model[key]
                clock.advance(value)
            self.assertEqual(
                {k: deadlines.due(k) for k in "abcdef"},
                {k: model[k][0] if k in model else None for k in "abcdef"},
            )
        self.assertEqual([key for _, key in fired], expected)
