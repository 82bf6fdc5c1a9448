"""
Smoke test of the benchmark harness with realtimed itself: ``bench/run.py
--quick`` starts realtimed as the benchmark does (twistd, its own database
on the test PostgreSQL server) and runs the scenarios that exercise its
main paths: database events, stored publishes, and fan-out to subscribers
spread over one, two and three processes of one database.  The sizes are
far too small to measure anything; what is checked is that each scenario
runs and every message arrives.

Nothing here is skipped: when the harness cannot set itself up, run.py says
why and the tests fail with its output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.trial.unittest import SynchronousTestCase

from tests.support import DEFAULT_SERVER, SERVER_VARIABLE

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"
SCENARIOS = (5, 6, 7)

_run: dict[str, Any] = {}


def postgres_server() -> str:
    """
    The test PostgreSQL server as the harness takes it: a URL without a
    database.  The harness reaches a server by host and port, so with the
    embedded server the system one is used (and the embedded run of the
    database tests leaves this module out).
    """
    choice = os.environ.get(SERVER_VARIABLE, DEFAULT_SERVER)
    parts = urlsplit(choice if choice.startswith("postgres") else DEFAULT_SERVER)
    if not parts.hostname:
        parts = urlsplit(DEFAULT_SERVER)
    return f"{parts.scheme}://{parts.netloc}"


def quick_run() -> dict[str, Any]:
    """
    Run the scenarios once in quick mode against realtimed (shared by the
    tests below) and return the exit code, output and JSON results.
    """
    if not _run:
        with tempfile.TemporaryDirectory() as tmp:
            results_path = Path(tmp) / "results.json"
            command = [sys.executable, str(RUN), "--quick", "--servers", "realtimed"]
            for scenario in SCENARIOS:
                command += ["--scenario", str(scenario)]
            # A little stored history, which scenario 6 must not count.
            command += ["--prefill", "2000"]
            command += ["--postgres", postgres_server(), "--json", str(results_path)]
            proc = subprocess.run(
                command,
                check=False,
                cwd=ROOT,
                env=dict(os.environ, REALTIMED_PYTHON=sys.executable),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=600,
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
    ``bench/run.py --quick`` against realtimed.
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
        """
        The output of the run and realtimed's results in scenario C{number}.
        """
        run = self.run_output()
        self.assertIn(f"== scenario {number}:", run["stdout"])
        result = run["results"]["results"][str(number)]["realtimed"]
        self.assertNotIn("error", result, f"realtimed: {result}")
        return run["stdout"], result

    def assertTableRow(self, stdout: str, label: str) -> None:
        rows = [line for line in stdout.splitlines() if line.startswith(label)]
        self.assertTrue(rows, f"no row {label!r} in:\n{stdout}")

    def test_processes(self) -> None:
        """
        Scenario 7, the fan-out over one, two and three processes of one
        database: every subscriber connects, and every message published
        on the first process reaches every subscriber, wherever it is
        connected.
        """
        stdout, result = self.scenario(7)
        self.assertEqual(sorted(result["processes"]), ["1", "2", "3"])
        for count, run in result["processes"].items():
            self.assertEqual(run["connectFailures"], 0, count)
            at = run["latencyAtRate"]
            self.assertEqual((at["failed"], at["errors"]), (0, 0), count)
            self.assertEqual(at["acked"], at["publishes"], count)
            self.assertEqual(at["delivered"], at["expected"], count)
            self.assertEqual(at["expected"], at["publishes"] * run["recipientsPerMessage"], count)
            # The common rate again right after the ramp, second by second.
            after = run["afterRamp"]
            self.assertEqual(after["delivered"], after["expected"], count)
            self.assertEqual(len(after["p99BySecond"]), after["seconds"], count)
        for row in (
            "sustained deliveries/s, 1 process",
            "sustained deliveries/s, 3 processes / 1 process",
            "p99 ms at 50 publishes/s, 2 processes",
        ):
            self.assertTableRow(stdout, row)

    def test_database_events(self) -> None:
        """
        Scenario 5: every change to the tracked table reaches every
        subscriber.
        """
        stdout, result = self.scenario(5)
        self.assertEqual((result["connectFailures"], result["failedChanges"]), (0, 0))
        self.assertEqual(result["expected"], result["changes"] * result["subscribers"])
        self.assertEqual(result["delivered"], result["expected"])
        self.assertTableRow(stdout, "p99 ms commit to receipt")

    def test_publishes(self) -> None:
        """
        Scenario 6: publishes are acknowledged, none fails, and each one
        acknowledged is stored (the history stored before the run, some of
        it on the same channels, is not counted).
        """
        stdout, result = self.scenario(6)
        self.assertGreater(result["acked"], 0)
        self.assertEqual(result["failed"], 0)
        self.assertEqual(result["stored"], result["acked"])
        self.assertTableRow(stdout, "acked publishes/s")
