"""
Nothing lost under faults: a short run of the fault-injection rig
(`tests.faults`) with two realtimed processes on a throwaway PostgreSQL
cluster.  Every acknowledged message is stored and reaches every
subscriber once and in order, whatever fault comes: PostgreSQL restarted
or killed, a realtimed process stopped or killed, connections cut or hung, webhooks
down.  The longer run is ``bench/faults.py``.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.faults import Rig
from tests.test_realtime_js import _why_not

FAULTS = (
    "none",
    "pg-restart",
    "pg-kill",
    "realtimed-stop",
    "realtimed-kill",
    "connections-cut",
    "connections-hang",
    "webhooks-down",
)


class FaultTests(SynchronousTestCase):
    def test_nothing_lost(self) -> None:
        """
        For each fault in turn, under steady publishing: no acknowledged
        message is lost, duplicated or out of order for any subscriber,
        none is missing from storage, every subscriber recovers, and every
        webhook delivery arrives.
        """
        why = _why_not()
        if why is not None:
            self.fail(why)
        rig = Rig(Path(self.mktemp()))
        accounts = []
        try:
            rig.start()
            for fault in FAULTS:
                accounts.append(rig.phase(fault))
                print("faults:", accounts[-1].line())
        finally:
            rig.stop()
        for account in accounts:
            self.assertGreater(account.acked, 0, account.line())
            self.assertEqual(
                (
                    account.lost,
                    account.duplicated,
                    account.out_of_order,
                    account.acked_not_stored,
                    account.unrecovered,
                ),
                (0, 0, 0, 0, 0),
                account.line(),
            )
            # Webhooks are delivered at least once: a crash between a
            # receiver's answer and its record sends that one again.
            self.assertIn(" 0 lost,", account.webhooks, account.line())
