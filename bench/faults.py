#!/usr/bin/env python3
"""
The long fault-injection run: more clients, a higher rate, longer phases and
several repeats of every fault, with two realtimed processes on a throwaway
PostgreSQL cluster (see tests/faults.py, whose short run is in the test
suite).  Prints one line per phase as it goes, then a Markdown table of the
totals per fault.

    bench/faults.py                           # 3 repeats, 2 JS + 2 Python subscribers per process
    bench/faults.py --repeats 5 --rate 50 --markdown faults.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults import Account, Rig  # noqa: E402

FAULTS = (
    "pg-restart",
    "pg-kill",
    "realtimed-stop",
    "realtimed-kill",
    "connections-cut",
    "connections-hang",
    "webhooks-down",
)


def table(accounts: list[Account]) -> str:
    """
    The totals per fault, as Markdown.
    """
    rows = [
        "| fault | phases | published | acknowledged | failed (what the client saw) | unanswered |"
        " delivered | lost | duplicated | out of order | not recovered | webhooks |",
        "|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for fault in dict.fromkeys(a.fault.split("#")[0] for a in accounts):
        mine = [a for a in accounts if a.fault.split("#")[0] == fault]
        failed: Counter[str] = Counter()
        for a in mine:
            failed.update(a.failed)
        hooks = [a.webhooks for a in mine]
        rows.append(
            f"| {fault} | {len(mine)} | {sum(a.published for a in mine)}"
            f" | {sum(a.acked for a in mine)}"
            f" | {', '.join(f'{n} {why}' for why, n in sorted(failed.items())) or '0'}"
            f" | {sum(a.unanswered for a in mine)}"
            f" | {sum(sum(a.delivered.values()) for a in mine)}"
            f" | {sum(a.lost for a in mine)} | {sum(a.duplicated for a in mine)}"
            f" | {sum(a.out_of_order for a in mine)} | {sum(a.unrecovered for a in mine)}"
            f" | {'; '.join(hooks)} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=30.0, help="publishes/s per publisher")
    parser.add_argument("--publishers", type=int, default=2, help="per process")
    parser.add_argument("--js", type=int, default=2, help="JS subscribers per process")
    parser.add_argument("--python", type=int, default=2, help="Python subscribers per process")
    parser.add_argument("--before", type=float, default=5.0, help="seconds before each fault")
    parser.add_argument("--after", type=float, default=10.0, help="seconds after each fault")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    options = parser.parse_args()
    accounts: list[Account] = []
    with tempfile.TemporaryDirectory(prefix="realtimed-faults-") as workdir:
        rig = Rig(
            Path(workdir),
            publishers_per_process=options.publishers,
            js_per_process=options.js,
            python_per_process=options.python,
            rate=options.rate,
        )
        try:
            print("Starting PostgreSQL, two realtimed processes and the clients", flush=True)
            rig.start()
            for repeat in range(options.repeats):
                for fault in FAULTS:
                    account = rig.phase(
                        fault, options.before, options.after, label=f"{fault}#{repeat + 1}"
                    )
                    accounts.append(account)
                    print(account.line(), flush=True)
        finally:
            rig.stop()
    result = table(accounts)
    print()
    print(result)
    if options.markdown is not None:
        options.markdown.write_text(result + "\n")
    bad = sum(a.lost + a.duplicated + a.out_of_order + a.acked_not_stored for a in accounts)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
