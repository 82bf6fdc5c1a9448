"""
Tests for how L{realtimed.store.publisher.Publisher} forms its batches,
without a database: which publishes go together, in which order, and how
many batches are in flight.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from realtimed.auth import ADMIN_PRINCIPAL, Principal
from realtimed.store.publisher import Publisher, new_message_id

ALICE = Principal("authenticated", "user", "alice", {"sub": "alice", "role": "authenticated"})
BOB = Principal("authenticated", "user", "bob", {"sub": "bob", "role": "authenticated"})


class HeldPool:
    """
    A pool whose queries stay unanswered until the test answers them.
    """

    def __init__(self) -> None:
        self.held: list[tuple[list[dict[str, Any]], Deferred[list[tuple[Any, ...]]]]] = []

    def runQuery(self, sql: str, params: Any = None) -> Deferred[list[tuple[Any, ...]]]:
        d: Deferred[list[tuple[Any, ...]]] = Deferred()
        self.held.append((json.loads(params[0]), d))
        return d

    def answer(self, index: int = 0) -> None:
        """
        Answer a held batch as stored, item by item.
        """
        items, d = self.held.pop(index)
        d.callback(
            [(item["id"], "stored", None, None, None, 0, None, False, None) for item in items]
        )


def tags(items: list[dict[str, Any]]) -> list[Any]:
    return [item["payload"]["tag"] for item in items]


class BatchTests(SynchronousTestCase):
    def publish(
        self, publisher: Publisher, principal: Principal, channel: str, tag: str, sender: Any
    ) -> None:
        publisher.publish(principal, channel, "e", json.dumps({"tag": tag}), sender)

    def test_runs(self) -> None:
        """
        The publishes of a batch are sent with those of one caller on one
        channel next to each other, each sender's in the order it made
        them.
        """
        pool = HeldPool()
        publisher = Publisher(pool, lanes=1)  # type: ignore[arg-type]
        self.publish(publisher, ALICE, "a", "first", "s1")
        for tag, principal, channel, sender in [
            ("b1", BOB, "b", "s2"),
            ("a1", ALICE, "a", "s1"),
            ("x1", ADMIN_PRINCIPAL, "a", "s3"),
            ("b2", BOB, "b", "s4"),
            ("a2", ALICE, "a", "s5"),
            ("b3", BOB, "b", "s2"),
        ]:
            self.publish(publisher, principal, channel, tag, sender)
        self.assertEqual([tags(items) for items, _ in pool.held], [["first"]])
        pool.answer()
        ((items, _),) = pool.held
        runs: list[list[str]] = []
        for tag in tags(items):
            if runs and runs[-1][0][0] == tag[0]:
                runs[-1].append(tag)
            else:
                runs.append([tag])
        self.assertEqual(sorted(runs), [["a1", "a2"], ["b1", "b2", "b3"], ["x1"]])

    def test_no_reordering_of_a_sender(self) -> None:
        """
        When one sender has publishes in two groups of a batch, the batch
        keeps the order the publishes were made in.
        """
        pool = HeldPool()
        publisher = Publisher(pool, lanes=1)  # type: ignore[arg-type]
        self.publish(publisher, ALICE, "a", "first", "s1")
        for tag, channel, sender in [("b1", "b", "s1"), ("a1", "a", "s2"), ("a2", "a", "s1")]:
            self.publish(publisher, ALICE, channel, tag, sender)
        pool.answer()
        ((items, _),) = pool.held
        self.assertEqual(tags(items), ["b1", "a1", "a2"])

    def test_lanes(self) -> None:
        """
        One sender's publishes go one batch at a time; different senders'
        go in batches of their own lanes, in flight together.
        """
        pool = HeldPool()
        publisher = Publisher(pool, lanes=4)  # type: ignore[arg-type]
        for i in range(5):
            self.publish(publisher, ALICE, "a", f"one{i}", "only")
        self.assertEqual(len(pool.held), 1)
        pool.answer()
        self.assertEqual(
            [tags(items) for items, _ in pool.held], [[f"one{i}" for i in range(1, 5)]]
        )
        pool.answer()
        # Integer senders hash to themselves, so the lanes they take do not
        # depend on the process's string hash seed.
        for sender in range(8):
            self.publish(publisher, ALICE, "a", f"socket-{sender}", sender)
        self.assertEqual(len(pool.held), 4)
        while pool.held:
            pool.answer()
        # Without a sender, publishes keep their order in one lane.
        for i in range(3):
            publisher.publish(ALICE, "a", "e", json.dumps({"tag": i}))
        self.assertEqual(len(pool.held), 1)
        pool.answer()
        self.assertEqual([tags(items) for items, _ in pool.held], [[1, 2]])


class MessageIdTests(SynchronousTestCase):
    def test_time_ordered(self) -> None:
        """
        Message ids are UUIDs of version 7, of the RFC's variant, that begin
        with the time in milliseconds and differ in their random bits.
        """
        before = time.time_ns() // 1_000_000
        ids = [new_message_id() for _ in range(1000)]
        after = time.time_ns() // 1_000_000
        self.assertEqual(len(set(ids)), 1000)
        for text in ids:
            parsed = uuid.UUID(text)
            self.assertEqual(str(parsed), text)
            self.assertEqual(parsed.version, 7)
            self.assertEqual(parsed.variant, uuid.RFC_4122)
            self.assertTrue(before <= parsed.int >> 80 <= after)
        self.assertEqual(sorted(ids, key=lambda i: uuid.UUID(i).int >> 80), ids)
