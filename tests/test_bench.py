"""
Smoke test of the benchmark harness: ``bench/run.py --quick`` against the two
peers that install from package registries (the Node reference server through
npm, python-socketio into bench/.venv).  It checks that every scenario starts,
runs and prints its line; the sizes are far too small to measure anything.

Nothing here is skipped: when a peer cannot be installed, run.py says why and
the tests fail with its output.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"
PEERS = ("node", "python-socketio")

_run: dict[str, Any] = {}


def quick_run() -> dict[str, Any]:
    """
    Run every scenario once in quick mode (shared by the tests below) and
    return its exit code, output and JSON results.
    """
    if not _run:
        with tempfile.TemporaryDirectory() as tmp:
            results_path = Path(tmp) / "results.json"
            proc = subprocess.run(
                [
                    sys.executable,
                    str(RUN),
                    "--quick",
                    "--servers",
                    ",".join(PEERS),
                    "--json",
                    str(results_path),
                ],
                check=False,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=300,
            )
            _run["returncode"] = proc.returncode
            _run["stdout"] = proc.stdout
            _run["stderr"] = proc.stderr
            _run["results"] = (
                json.loads(results_path.read_text()) if results_path.exists() else None
            )
    return _run


class QuickBenchTests(SynchronousTestCase):
    """
    ``bench/run.py --quick`` against the Node and python-socketio peers.
    """

    def run_output(self) -> dict[str, Any]:
        run = quick_run()
        if run["returncode"] != 0 or run["results"] is None:
            self.fail(
                f"bench/run.py --quick exited with {run['returncode']}\n"
                f"--- stdout\n{run['stdout'][-4000:]}\n--- stderr\n{run['stderr'][-4000:]}"
            )
        return run

    def scenario(self, number: int) -> tuple[str, dict[str, Any]]:
        run = self.run_output()
        self.assertIn(f"== scenario {number}:", run["stdout"])
        results = run["results"]["results"][str(number)]
        for peer in PEERS:
            self.assertNotIn("error", results[peer], f"{peer}: {results[peer]}")
        return run["stdout"], results

    def assertTableRow(self, stdout: str, label: str) -> None:
        rows = [line for line in stdout.splitlines() if line.startswith(label)]
        self.assertTrue(rows, f"no row {label!r} in:\n{stdout}")

    def test_fanout(self) -> None:
        """
        Scenario 1 delivers every message to every subscriber at the common
        rate and reports a sustained rate for each peer.
        """
        stdout, results = self.scenario(1)
        for peer in PEERS:
            at = results[peer]["latencyAtRate"]
            self.assertEqual(at["delivered"], at["expected"])
            self.assertIsNotNone(results[peer]["sustained"])
        self.assertTableRow(stdout, "sustained deliveries/s")

    def test_rooms(self) -> None:
        """
        Scenario 2 spreads publishes over rooms and every room member gets
        each of its room's messages.
        """
        stdout, results = self.scenario(2)
        for peer in PEERS:
            at = results[peer]["latencyAtRate"]
            self.assertEqual(at["delivered"], at["expected"])
            self.assertGreater(results[peer]["recipientsPerMessage"], 1)
        self.assertTableRow(stdout, "sustained deliveries/s")

    def test_idle_memory(self) -> None:
        """
        Scenario 3 reads the server's resident memory before and after the
        connections open.
        """
        stdout, results = self.scenario(3)
        for peer in PEERS:
            self.assertGreater(results[peer]["rssAfterKb"], 0)
            self.assertGreater(results[peer]["connections"], 0)
        self.assertTableRow(stdout, "RSS bytes per connection")

    def test_connect_rate(self) -> None:
        """
        Scenario 4 completes handshake, authentication and subscription for
        every connection.
        """
        stdout, results = self.scenario(4)
        for peer in PEERS:
            self.assertEqual(results[peer]["connectFailures"], 0)
            self.assertGreater(results[peer]["perSecond"], 0)
        self.assertTableRow(stdout, "connections/s")

    def test_database_events(self) -> None:
        """
        Scenario 5 is realtimed's alone: the peers' columns say n/a rather
        than disappearing.
        """
        stdout, results = self.scenario(5)
        for peer in PEERS:
            self.assertIn("skipped", results[peer])
        self.assertTableRow(stdout, "p99 ms commit to receipt")

    def test_publishes(self) -> None:
        """
        Scenario 6 gets acknowledgements for its publishes, and none fail.
        """
        stdout, results = self.scenario(6)
        for peer in PEERS:
            self.assertGreater(results[peer]["acked"], 0)
            self.assertEqual(results[peer]["failed"], 0)
        self.assertTableRow(stdout, "acked publishes/s")

    def test_processes(self) -> None:
        """
        Scenario 7 runs realtimed alone, as several processes: the peers'
        columns say n/a, and its rows name each process count.
        """
        stdout, results = self.scenario(7)
        for peer in PEERS:
            self.assertIn("skipped", results[peer])
        for row in (
            "sustained deliveries/s, 1 process",
            "sustained deliveries/s, 3 processes / 1 process",
            "p99 ms at 50 publishes/s, 2 processes",
        ):
            self.assertTableRow(stdout, row)
