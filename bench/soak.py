#!/usr/bin/env python3
"""
A soak run of realtimed: a moderate, steady load held for a long time and
recorded interval by interval, to show whether the server's memory grows or
its latency drifts while nothing about the load changes.  Not run by CI (a
test runs it for a few seconds to check that it works).

    bench/soak.py [--minutes 30] [--interval 10] [--json FILE] [--markdown FILE]
                  [--plots DIR] [--logs DIR]

The load (defaults): 1,000 connections subscribed to channel ``bench``, the
first of them publishing 50 messages/s (50,000 deliveries/s), and beside
them a churn of 20 new connections/s, each subscribing to ``bench`` and
closing after about 10 s (politely or not), so that connection set-up and
teardown are soaked too.  realtimed is started as ``bench/run.py`` starts
it (pinned to cpu 1, its own database) and the load generator runs pinned
to cpu 0.

Every ``--interval`` seconds: realtimed's RSS (VmRSS), p50/p99
publish-to-receive latency of the deliveries read in the interval,
deliveries/s to the steady subscribers, and realtimed's CPU use.

The first 2 minutes (10% of a run shorter than 20 minutes) are warm-up.
After it the run is judged against three bounds:

- RSS stays within 10% of its value after warm-up: the largest RSS after
  warm-up is at most 1.1x the RSS at the end of the warm-up;
- latency stays flat: the median of the per-interval p99 over the last 5
  minutes is at most 1.5x the same median over the first 5 minutes after
  warm-up (windows of half the time after warm-up when that is shorter);
- every delivery arrived: each steady subscriber received every
  acknowledged publish.

Exit status: 0 when all three hold, 3 when one does not (or could not be
judged), 2 when the run could not be made.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from run import (
    SERVER_CPU,
    Bench,
    SetupError,
    draw_plots,
    ensure_bench_venv,
    ensure_node_packages,
    find_realtimed_python,
    log,
    machine_line,
    raise_file_limit,
    run_loadgen,
    server_errors,
)

#: The longest warm-up, and the share of a shorter run that is warm-up.
WARMUP_SECONDS = 120.0
WARMUP_SHARE = 0.1
#: The windows whose latencies are compared: the first and the last this
#: long after warm-up.
WINDOW_SECONDS = 300.0
#: The bounds.
RSS_BOUND = 1.10
P99_BOUND = 1.5


# ---------------------------------------------------------------------------
# Judging a run from its intervals.


def warmup_seconds(total: float, interval: float, asked: float | None = None) -> float:
    """
    The warm-up of a run of C{total} seconds reported every C{interval}:
    C{asked}, or 2 minutes, or 10% of a shorter run; rounded up to whole
    intervals, so that warm-up ends where an interval ends, and at least
    one interval.
    """
    wanted = asked if asked is not None else min(WARMUP_SECONDS, WARMUP_SHARE * total)
    return max(1, math.ceil(wanted / interval - 1e-9)) * interval


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(
    intervals: list[dict[str, Any]],
    warmup: float,
    offered: float,
    window: float = WINDOW_SECONDS,
    core: int | None = None,
) -> dict[str, Any]:
    """
    What the intervals after C{warmup} seconds show: RSS against its value
    at the end of the warm-up, the per-interval latencies of the first and
    the last window after warm-up, deliveries/s against C{offered}, and
    realtimed's CPU use (and how busy its core C{core} was, whatever ran
    on it: a core busier than realtimed alone makes it was shared).

    An interval belongs to the warm-up when it ended at or before
    C{warmup} (plus a little for timer slack).  The windows are C{window}
    seconds of intervals each, or half of the intervals after warm-up when
    there are fewer; with a single interval after warm-up both are that
    interval.
    """
    slack = 0.5
    warm = [i for i in intervals if i["t"] <= warmup + slack]
    after = [i for i in intervals if i["t"] > warmup + slack]
    summary: dict[str, Any] = {
        "warmupSeconds": warmup,
        "intervalsAfterWarmup": len(after),
        "offeredDeliveriesPerSecond": offered,
    }
    if not after:
        return summary
    step = statistics.median([i["seconds"] for i in after]) or 1.0
    n = max(1, min(round(window / step), len(after) // 2 or 1))
    first, last = after[:n], after[-n:]
    summary["windowSeconds"] = round(sum(i["seconds"] for i in first), 1)
    summary["firstWindow"] = [first[0]["t"] - first[0]["seconds"], first[-1]["t"]]
    summary["lastWindow"] = [last[0]["t"] - last[0]["seconds"], last[-1]["t"]]

    base = warm[-1]["rssKb"] if warm and warm[-1].get("rssKb") else after[0].get("rssKb")
    rss = [i["rssKb"] for i in after if i.get("rssKb")]
    if base and rss:
        summary["rss"] = {
            "afterWarmupKb": base,
            "endKb": rss[-1],
            "maxKb": max(rss),
            "minKb": min(rss),
            "maxRatio": max(rss) / base,
            "endRatio": rss[-1] / base,
        }

    def latency(window_intervals: list[dict[str, Any]], key: str) -> float | None:
        return _median(
            [
                i["latency"][key]
                for i in window_intervals
                if (i.get("latency") or {}).get(key) is not None
            ]
        )

    lat = {
        "firstP50": latency(first, "p50"),
        "lastP50": latency(last, "p50"),
        "firstP99": latency(first, "p99"),
        "lastP99": latency(last, "p99"),
    }
    lat["p50Ratio"] = _ratio(lat["lastP50"], lat["firstP50"])
    lat["p99Ratio"] = _ratio(lat["lastP99"], lat["firstP99"])
    lat["maxP99"] = max(
        (i["latency"]["p99"] for i in after if (i.get("latency") or {}).get("p99") is not None),
        default=None,
    )
    summary["latency"] = lat

    rates = [i["deliveriesPerSecond"] for i in after]
    summary["deliveries"] = {"min": min(rates), "median": statistics.median(rates)}
    cpu = [i["serverCpu"] for i in after if i.get("serverCpu") is not None]
    if cpu:
        summary["serverCpu"] = {"median": statistics.median(cpu), "max": max(cpu)}
    busy = [
        i["coreBusy"][core]
        for i in after
        if core is not None and core < len(i.get("coreBusy") or [])
    ]
    if busy:
        summary["serverCore"] = {
            "core": core,
            "median": statistics.median(busy),
            "max": max(busy),
        }
    churn = [i.get("churn") or {} for i in after]
    summary["churnSetup"] = {
        "p50": _median([c["setupP50"] for c in churn if c.get("setupP50") is not None]),
        "p99": _median([c["setupP99"] for c in churn if c.get("setupP99") is not None]),
    }
    return summary


@dataclass(frozen=True)
class Verdict:
    bound: str
    holds: bool | None  # None: not judged (the run was too short)
    detail: str

    def line(self) -> str:
        word = {True: "holds", False: "DOES NOT HOLD", None: "not judged"}[self.holds]
        return f"{self.bound}: {word} ({self.detail})"


def verdicts(summary: dict[str, Any], result: dict[str, Any]) -> list[Verdict]:
    """
    The run against the three bounds (see the module's docstring).
    """
    out = []
    rss = summary.get("rss")
    bound = f"RSS stays within {round((RSS_BOUND - 1) * 100)}% of its value after warm-up"
    if rss:
        out.append(
            Verdict(
                bound,
                rss["maxKb"] <= RSS_BOUND * rss["afterWarmupKb"],
                f"max {rss['maxRatio']:.3f}x and end {rss['endRatio']:.3f}x of "
                f"{mib(rss['afterWarmupKb'])} MiB",
            )
        )
    else:
        out.append(Verdict(bound, None, "no RSS after warm-up"))
    lat = summary.get("latency") or {}
    window = duration(summary.get("windowSeconds"))
    bound = (
        f"latency stays flat (median p99 of the last {window} at most {P99_BOUND}x "
        f"that of the first {window} after warm-up)"
    )
    if lat.get("p99Ratio") is not None:
        out.append(
            Verdict(
                bound,
                lat["p99Ratio"] <= P99_BOUND,
                f"{lat['firstP99']:.1f} ms, then {lat['lastP99']:.1f} ms: {lat['p99Ratio']:.2f}x",
            )
        )
    else:
        out.append(Verdict(bound, None, "no latency after warm-up"))
    expected = result.get("expected", 0)
    delivered = result.get("delivered", 0)
    lost = result.get("lost", 0)
    detail = f"{delivered:,} of {expected:,} delivered, {lost:,} lost"
    if lost:
        detail += f" ({result.get('subscribersShort')} subscribers short)"
    if result.get("failed"):
        detail += f"; {result['failed']:,} publishes refused"
    out.append(Verdict("every delivery arrived", lost == 0 and delivered >= expected, detail))
    return out


# ---------------------------------------------------------------------------
# Output.


def mib(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:,.1f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 60 and abs(seconds / 60 - round(seconds / 60)) < 0.05:
        return f"{round(seconds / 60)} min"
    return f"{seconds:.0f} s"


def _num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def describe_load(settings: dict[str, Any]) -> str:
    subscribers = settings["subscribers"]
    rate = settings["rate"]
    return (
        f"{subscribers:,} subscribers x {rate:g} publishes/s "
        f"({subscribers * rate:,.0f} deliveries/s), {settings['churnPerSecond']:g} "
        f"connections/s living ~{settings['churnLifetimeSeconds']:g} s, "
        f"{duration(settings['seconds'])}, reported every {settings['intervalSeconds']:g} s"
    )


def rows(summary: dict[str, Any], result: dict[str, Any]) -> list[tuple[str, str]]:
    """
    (figure, value) rows of the summary table.
    """
    warm = duration(summary.get("warmupSeconds"))
    window = duration(summary.get("windowSeconds"))
    rss = summary.get("rss") or {}
    lat = summary.get("latency") or {}
    dl = summary.get("deliveries") or {}
    cpu = summary.get("serverCpu") or {}
    core = summary.get("serverCore") or {}
    churn = result.get("churn") or {}
    setup = summary.get("churnSetup") or {}
    return [
        (f"RSS MiB after warm-up ({warm})", mib(rss.get("afterWarmupKb"))),
        ("RSS MiB at the end", mib(rss.get("endKb"))),
        ("max RSS MiB after warm-up", mib(rss.get("maxKb"))),
        ("max RSS / after warm-up", _num(rss.get("maxRatio"), 3, "x")),
        ("RSS at the end / after warm-up", _num(rss.get("endRatio"), 3, "x")),
        (f"p50 ms, first {window} after warm-up", _num(lat.get("firstP50"))),
        (f"p50 ms, last {window}", _num(lat.get("lastP50"))),
        ("p50 last / first", _num(lat.get("p50Ratio"), 2, "x")),
        (f"p99 ms, first {window} after warm-up", _num(lat.get("firstP99"))),
        (f"p99 ms, last {window}", _num(lat.get("lastP99"))),
        ("p99 last / first", _num(lat.get("p99Ratio"), 2, "x")),
        ("highest p99 ms of an interval after warm-up", _num(lat.get("maxP99"))),
        ("deliveries/s after warm-up, min", _num(dl.get("min"), 0)),
        ("deliveries/s after warm-up, median", _num(dl.get("median"), 0)),
        ("deliveries/s offered", _num(summary.get("offeredDeliveriesPerSecond"), 0)),
        (
            "delivered / expected",
            f"{result.get('delivered', 0):,} / {result.get('expected', 0):,}",
        ),
        ("deliveries lost", f"{result.get('lost', 0):,}"),
        (
            "server cpu after warm-up, median / max",
            f"{_num(cpu.get('median'), 2)} / {_num(cpu.get('max'), 2)}",
        ),
        (
            f"cpu {core.get('core', '-')} busy (everything on it), median / max",
            f"{_num(core.get('median'), 2)} / {_num(core.get('max'), 2)}",
        ),
        (
            "churn connections opened / failed / skipped",
            f"{churn.get('opened', 0):,} / {churn.get('failed', 0):,} / "
            f"{churn.get('skipped', 0):,}",
        ),
        (
            "churn connection set-up ms p50 / p99 (median of intervals)",
            f"{_num(setup.get('p50'))} / {_num(setup.get('p99'))}",
        ),
    ]


def report(
    settings: dict[str, Any],
    summary: dict[str, Any],
    result: dict[str, Any],
    judged: list[Verdict],
    notes: list[str],
    markdown: bool = False,
) -> str:
    title = f"soak: {describe_load(settings)}"
    table = rows(summary, result)
    if markdown:
        lines = [f"**{title}**", "", "| soak | realtimed |", "|---|--:|"]
        lines += [f"| {label} | {value} |" for label, value in table]
        lines.append("")
        lines += [f"- verdict: {v.line()}" for v in judged]
        lines += [f"- {note}" for note in notes]
        return "\n".join(lines) + "\n"
    width = max(len(label) for label, _ in table)
    lines = [f"== {title}"]
    lines += [f"{label.ljust(width)}  {value}" for label, value in table]
    lines += [f"verdict: {v.line()}" for v in judged]
    lines += [f"   {note}" for note in notes]
    return "\n".join(lines)


def progress(interval: dict[str, Any], warmup: float) -> str:
    lat = interval.get("latency") or {}
    churn = interval.get("churn") or {}
    t = interval["t"]
    tag = "  warm-up" if t <= warmup + 0.5 else ""
    return (
        f"[{int(t // 60):3d}:{int(t % 60):02d}] rss {mib(interval.get('rssKb'))} MiB  "
        f"p50 {_num(lat.get('p50'))} ms  p99 {_num(lat.get('p99'))} ms  "
        f"{interval['deliveriesPerSecond']:,} deliveries/s  "
        f"server cpu {interval.get('serverCpu')}  loadgen cpu {interval.get('loadgenCpu')}  "
        f"churn +{churn.get('opened', 0)} -{churn.get('closed', 0)} "
        f"(open {churn.get('alive', 0)}, failed {churn.get('failed', 0)}){tag}"
    )


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--minutes", type=float, default=30.0, help="how long the load is held (default 30)"
    )
    parser.add_argument(
        "--seconds", type=float, help="how long the load is held, in seconds (beats --minutes)"
    )
    parser.add_argument(
        "--interval", type=float, default=10.0, help="seconds between records (default 10)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        metavar="SECONDS",
        help="warm-up (default: 2 minutes, or 10%% of a run shorter than 20 minutes)",
    )
    parser.add_argument("--subscribers", type=int, default=1000, help="default 1000")
    parser.add_argument("--rate", type=float, default=50.0, help="publishes/s (default 50)")
    parser.add_argument(
        "--churn", type=float, default=20.0, help="new short-lived connections/s (default 20)"
    )
    parser.add_argument(
        "--churn-lifetime",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a churn connection lives, on average (default 10)",
    )
    parser.add_argument(
        "--latency-every",
        type=int,
        default=10,
        metavar="N",
        help="measure latency on every Nth subscriber (default 10: 100 of 1,000)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without a database",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the time series as JSON")
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="write the summary table as Markdown"
    )
    parser.add_argument("--plots", type=Path, metavar="DIR", help="draw the time series as PNGs")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep realtimed's log in DIR")
    args = parser.parse_args(argv)

    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    if args.interval <= 0 or seconds < 2 * args.interval:
        parser.error("the run must last at least two intervals")
    if args.subscribers < 1 or args.rate <= 0 or args.churn < 0 or args.churn_lifetime <= 0:
        parser.error("--subscribers and --rate must be positive, --churn not negative")
    warmup = warmup_seconds(seconds, args.interval, args.warmup)
    if warmup >= seconds:
        parser.error("the warm-up takes the whole run")
    settings = {
        "subscribers": args.subscribers,
        "rate": args.rate,
        "seconds": seconds,
        "intervalSeconds": args.interval,
        "churnPerSecond": args.churn,
        "churnLifetimeSeconds": args.churn_lifetime,
        "latencyEvery": args.latency_every,
    }

    try:
        ensure_node_packages()
        bench_python = ensure_bench_venv()
        realtimed_python = find_realtimed_python()
    except SetupError as e:
        print(f"setup failed: {e}", flush=True)
        return 2
    # The steady subscribers, the churn's open connections, and room to spare.
    raise_file_limit(32768)
    for directory in (args.logs, args.plots):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    machine = machine_line()
    print(f"machine: {machine}", flush=True)
    print(f"soak: {describe_load(settings)}; warm-up {duration(warmup)}", flush=True)
    intervals: list[dict[str, Any]] = []

    def on_message(message: dict[str, Any]) -> None:
        if message.get("type") == "interval":
            intervals.append(message)
            print(progress(message, warmup), flush=True)

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    notes: list[str] = []
    logged: str | None = None
    with tempfile.TemporaryDirectory(prefix="realtimed-soak-") as tmp:
        bench = Bench(
            quick=False,
            workdir=Path(tmp),
            postgres=args.postgres.rstrip("/"),
            bench_python=bench_python,
            realtimed_python=realtimed_python,
            keep_logs=args.logs,
        )
        try:
            with bench.server("realtimed", "soak") as server:
                try:
                    result = run_loadgen(
                        bench,
                        "soak",
                        server,
                        None,
                        extra_config={"soak": settings},
                        # Setting up, and waiting for the last deliveries.
                        time_limit=seconds + 300,
                        on_message=on_message,
                    )
                finally:
                    logged = server_errors(server.log_path)
                if server.process.poll() is not None:
                    raise SetupError(f"realtimed exited during the run:\n{server.log_tail()}")
        except SetupError as e:
            print(f"soak failed: {e}", flush=True)
            if logged:
                print(logged, flush=True)
            return 2
    if logged:
        notes.append(logged)
    if result.get("connectFailures"):
        notes.append(f"{result['connectFailures']} subscribers could not connect")
    if result.get("errors"):
        notes.append(f"{result['errors']} errors; the first: {result.get('firstError')}")
    churn = result.get("churn") or {}
    if churn.get("failed"):
        notes.append(
            f"{churn['failed']} churn connections failed; the first: {churn.get('firstFailure')}"
        )
    if result.get("closedUnexpectedly"):
        notes.append(f"{result['closedUnexpectedly']} connections closed by the server")

    summary = summarize(intervals, warmup, args.subscribers * args.rate, core=int(SERVER_CPU))
    judged = verdicts(summary, result)
    print(report(settings, summary, result, judged, notes), flush=True)
    document = {
        "kind": "soak",
        "machine": machine,
        "started": started,
        "settings": settings,
        "intervals": intervals,
        "result": result,
        "summary": summary,
        "verdicts": [{"bound": v.bound, "holds": v.holds, "detail": v.detail} for v in judged],
        "notes": notes,
    }
    text = json.dumps(document, indent=2)
    if args.json:
        args.json.write_text(text)
    if args.markdown:
        args.markdown.write_text(
            f"Machine: {machine}; started {started}\n\n"
            + report(settings, summary, result, judged, notes, markdown=True)
        )
    if args.plots:
        try:
            for png in draw_plots(bench_python, args.json, args.plots, text):
                print(f"plot: {png}", flush=True)
        except SetupError as e:
            log(str(e))
            return 2
    return 0 if all(v.holds for v in judged) else 3


if __name__ == "__main__":
    sys.exit(main())
