#!/usr/bin/env python3
"""
Plots of the benchmarks' JSON output, drawn as PNGs with matplotlib's Agg
backend (no display needed).

    bench/plots.py FILE.json --out DIR

FILE.json is either

- what ``bench/soak.py --json`` writes: ``soak.png``, four stacked panels
  over the time since the load started (realtimed's RSS, p50/p99 latency,
  deliveries/s, realtimed's CPU use), the warm-up shaded; or
- what ``bench/run.py --json`` writes: for scenario 1 (and scenario 2 when
  it ran), ``scenario-1-latency.png``, p50 and p99 latency of each ramp step
  against its offered rate, one colour per server, the sustained step
  marked.

Prints the path of each PNG written, one per line.  Needs matplotlib:
``bench/run.py`` installs it into ``bench/.venv`` (``bench/run.py
--setup-only``), so run this with ``bench/.venv/bin/python``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, StrMethodFormatter

#: One colour per server, the same in every plot.
COLOURS = {
    "realtimed": "tab:blue",
    "node": "tab:orange",
    "python-socketio": "tab:green",
    "ceiling": "tab:gray",
}
WARMUP_COLOUR = "0.85"
#: The windows whose latencies are compared.
FIRST_WINDOW_COLOUR = "tab:cyan"
LAST_WINDOW_COLOUR = "tab:purple"
#: A ramp step whose p99 went past this was not sustained (bench/README.md).
SUSTAINED_P99_MS = 1000


def _plain(x: float) -> str:
    return f"{x:,.0f}" if x >= 1 else f"{x:g}"


def plain_log_ticks(axis: Axis) -> None:
    """
    Label a log axis with plain numbers (1,000 rather than 10^3), and its
    minor ticks at 2 and 5 times a power of ten only, so they never crowd.
    """

    def minor(x: float, _: object) -> str:
        if x <= 0:
            return ""
        lead = x / 10 ** math.floor(math.log10(x) + 1e-9)
        return _plain(x) if min(abs(lead - 2), abs(lead - 5)) < 1e-6 else ""

    axis.set_major_formatter(FuncFormatter(lambda x, _: _plain(x)))
    axis.set_minor_formatter(FuncFormatter(minor))


# ---------------------------------------------------------------------------
# The soak.


def _shade_warmup(ax: Axes, warmup_min: float, label: bool) -> None:
    ax.axvspan(0, warmup_min, color=WARMUP_COLOUR, zorder=0, label="warm-up" if label else None)


def plot_soak(data: dict[str, Any], out: Path) -> Path:
    """
    C{soak.png}: realtimed's RSS, latency, deliveries/s and CPU use over
    the soak, one stacked panel each, sharing the time axis (minutes since
    the load started; seconds for a run under 3 minutes).  Rates and
    latencies are drawn at the middle of their interval, RSS at the moment
    it was read (an interval's end).
    """
    intervals = data["intervals"]
    settings = data.get("settings") or {}
    summary = data.get("summary") or {}
    if not intervals:
        raise ValueError("the soak recorded no intervals")
    unit, per = ("minutes", 60.0) if intervals[-1]["t"] >= 180 else ("seconds", 1.0)
    end_min = [i["t"] / per for i in intervals]
    mid_min = [(i["t"] - i["seconds"] / 2) / per for i in intervals]
    warmup_min = (summary.get("warmupSeconds") or 0) / per

    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True, constrained_layout=True)
    rss_ax, lat_ax, rate_ax, cpu_ax = axes
    for n, ax in enumerate(axes):
        _shade_warmup(ax, warmup_min, label=n == 0)
        ax.grid(True, which="major", alpha=0.3)

    # RSS, and the bound: 10% above its value at the end of the warm-up.
    rss = summary.get("rss") or {}
    rss_mib = [i["rssKb"] / 1024 if i.get("rssKb") else None for i in intervals]
    rss_ax.plot(end_min, rss_mib, color="tab:blue", marker=".", label="RSS")
    if rss.get("afterWarmupKb"):
        base = rss["afterWarmupKb"] / 1024
        rss_ax.axhline(base, color="tab:blue", linestyle=":", linewidth=1, label="after warm-up")
        rss_ax.axhline(
            base * 1.1, color="tab:red", linestyle="--", linewidth=1, label="bound: +10%"
        )
    rss_ax.set_ylabel("realtimed RSS (MiB)")
    rss_ax.legend(loc="best", fontsize="small")

    # Latency, log scale, with the windows compared and the bound on p99.
    p50 = [(i.get("latency") or {}).get("p50") for i in intervals]
    p99 = [(i.get("latency") or {}).get("p99") for i in intervals]
    lat_ax.plot(mid_min, p99, color="tab:red", marker=".", label="p99")
    lat_ax.plot(mid_min, p50, color="tab:blue", marker=".", label="p50")
    lat_ax.set_yscale("log")
    shown = [x for x in p50 + p99 if x]
    if shown:
        # Room above the lines for the legend (and the bound).
        lat_ax.set_ylim(min(shown) / 1.5, max(shown) * 6)
    lat = summary.get("latency") or {}
    for key, colour, label in (
        ("firstWindow", FIRST_WINDOW_COLOUR, "first window after warm-up"),
        ("lastWindow", LAST_WINDOW_COLOUR, "last window"),
    ):
        window = summary.get(key)
        if window:
            lat_ax.axvspan(window[0] / per, window[1] / per, color=colour, alpha=0.1, label=label)
    first, last = summary.get("firstWindow"), summary.get("lastWindow")
    if lat.get("firstP99") and first and last:
        lat_ax.hlines(
            lat["firstP99"],
            first[0] / per,
            first[1] / per,
            colors="tab:red",
            linestyles=":",
            label="median p99 of the first window",
        )
        lat_ax.hlines(
            lat["firstP99"] * 1.5,
            last[0] / per,
            last[1] / per,
            colors="tab:red",
            linestyles="--",
            label="bound: 1.5x the first window's median p99",
        )
    plain_log_ticks(lat_ax.yaxis)
    lat_ax.tick_params(axis="y", which="minor", labelsize="x-small")
    lat_ax.set_ylabel("publish to receive (ms, log)")
    lat_ax.legend(loc="upper left", fontsize="small", ncol=2)

    # Deliveries/s to the steady subscribers, against what was offered.
    rate_ax.plot(
        mid_min,
        [i["deliveriesPerSecond"] for i in intervals],
        color="tab:green",
        marker=".",
        label="delivered to the steady subscribers",
    )
    offered = summary.get("offeredDeliveriesPerSecond")
    if offered:
        rate_ax.axhline(offered, color="0.3", linestyle="--", linewidth=1, label="offered")
    top = max([offered or 0, *(i["deliveriesPerSecond"] for i in intervals)])
    rate_ax.set_ylim(0, top * 1.12 or 1)
    rate_ax.set_ylabel("deliveries/s")
    rate_ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    rate_ax.legend(loc="lower right", fontsize="small", framealpha=0.9)

    # CPU: realtimed's share of its core, the load generator's beside it.
    cpu_ax.plot(
        mid_min, [i.get("serverCpu") for i in intervals], color="tab:blue", label="realtimed"
    )
    cpu_ax.plot(
        mid_min,
        [i.get("loadgenCpu") for i in intervals],
        color="0.5",
        linestyle="--",
        label="load generator",
    )
    core = (summary.get("serverCore") or {}).get("core")
    if core is not None:
        cpu_ax.plot(
            mid_min,
            [(i.get("coreBusy") or [None] * (core + 1))[core] for i in intervals],
            color="tab:red",
            linestyle=":",
            label=f"cpu {core} busy, everything on it (realtimed's core)",
        )
    cpu_ax.set_ylim(0, 1.3)  # room above a busy core for the legend
    cpu_ax.set_ylabel("CPU (share of one core)")
    cpu_ax.set_xlabel(f"{unit} since the load started")
    cpu_ax.set_xlim(0, max(end_min) * 1.01)
    cpu_ax.legend(loc="upper center", fontsize="small", ncol=3)

    title = "realtimed soak"
    if settings:
        title += (
            f": {settings['subscribers']:,} subscribers x {settings['rate']:g} publishes/s, "
            f"{settings['churnPerSecond']:g} new connections/s living "
            f"~{settings['churnLifetimeSeconds']:g} s"
        )
    verdicts = data.get("verdicts") or []
    lines = [title]
    if verdicts:
        words = {True: "holds", False: "DOES NOT HOLD", None: "not judged"}
        lines.append(
            "; ".join(f"{v['bound'].split(' (')[0]}: {words[v['holds']]}" for v in verdicts)
        )
    fig.suptitle("\n".join(lines), fontsize="medium")
    if data.get("machine"):
        fig.supxlabel(textwrap.fill(data["machine"], 130), fontsize="x-small", color="0.4")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "soak.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
# Latency against the offered rate (bench/run.py, scenarios 1 and 2).


def ramp_steps(result: dict[str, Any]) -> list[dict[str, Any]]:
    """
    The ramp's steps of one server's result, sorted by rate, each with
    rate, p50, p99 and sustained.  Results written before the steps
    carried their p50 take it from the full step log, whose last entries
    are the ramp's steps.
    """
    steps = [dict(s) for s in result.get("steps") or []]
    log = result.get("stepLog") or []
    if steps and len(log) >= len(steps):
        for step, logged in zip(steps, log[len(log) - len(steps) :], strict=True):
            if step.get("p50") is None and logged.get("rate") == step.get("rate"):
                step["p50"] = (logged.get("latency") or {}).get("p50")
    return sorted((s for s in steps if s.get("p99") is not None), key=lambda s: s["rate"])


def plot_ramp(
    scenario: str, by_server: dict[str, dict[str, Any]], title: str, out: Path
) -> Path | None:
    """
    C{scenario-N-latency.png}: p50 (dashed) and p99 (solid) of each ramp
    step against its publishes/s, log-log, one colour per server; filled
    markers for the steps sustained, hollow for the others; a star on the
    sustained step.  The top axis gives the same rates as deliveries/s.
    """
    fig, ax = plt.subplots(figsize=(12, 6.5), constrained_layout=True)
    recipients = None
    drawn = False
    for name, result in by_server.items():
        if not isinstance(result, dict) or "error" in result or "skipped" in result:
            continue
        steps = ramp_steps(result)
        if not steps:
            continue
        drawn = True
        recipients = recipients or result.get("recipientsPerMessage")
        colour = COLOURS.get(name, None)
        rates = [s["rate"] for s in steps]
        (line,) = ax.plot(rates, [s["p99"] for s in steps], color=colour, label=name)
        colour = line.get_color()
        with_p50 = [s for s in steps if s.get("p50") is not None]
        ax.plot(
            [s["rate"] for s in with_p50],
            [s["p50"] for s in with_p50],
            color=colour,
            linestyle="--",
        )
        for key in ("p99", "p50"):
            for s in steps:
                if s.get(key) is None:
                    continue
                ax.plot(
                    s["rate"],
                    s[key],
                    marker="o",
                    color=colour,
                    markerfacecolor=colour if s.get("sustained") else "white",
                    markersize=6,
                )
        best = result.get("sustained") or {}
        best_p99 = (best.get("latency") or {}).get("p99")
        if best.get("rate") and best_p99 is not None:
            ax.plot(
                best["rate"],
                best_p99,
                marker="*",
                markersize=18,
                color=colour,
                markeredgecolor="black",
                zorder=5,
            )
            per = result.get("recipientsPerMessage") or 0
            ax.annotate(
                f"sustained {best['rate']:,}/s"
                + (f"\n({best['rate'] * per:,} deliveries/s)" if per else ""),
                (best["rate"], best_p99),
                textcoords="offset points",
                xytext=(-10, 10),
                horizontalalignment="right",
                fontsize="small",
                color=colour,
            )
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(SUSTAINED_P99_MS, color="tab:red", linestyle=":", linewidth=1)
    ax.text(
        0.99,
        SUSTAINED_P99_MS * 1.08,
        "a sustained step's p99 stays under 1 s",
        transform=ax.get_yaxis_transform(),
        horizontalalignment="right",
        fontsize="x-small",
        color="tab:red",
    )
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    ax.tick_params(which="minor", labelsize="x-small")
    ax.set_xlabel("offered rate (publishes/s, log)")
    ax.set_ylabel("publish to receive latency (ms, log)")
    ax.grid(True, which="both", alpha=0.25)
    if recipients:
        top = ax.secondary_xaxis(
            "top",
            functions=(lambda x, r=recipients: x * r, lambda x, r=recipients: x / r),
        )
        plain_log_ticks(top.xaxis)
        top.tick_params(which="minor", labelsize="x-small")
        top.set_xlabel(f"offered deliveries/s ({recipients:,} recipients per message, log)")
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="black", label="p99"),
        Line2D([], [], color="black", linestyle="--", label="p50"),
        Line2D([], [], color="black", marker="o", linestyle="", label="step sustained"),
        Line2D(
            [],
            [],
            color="black",
            marker="o",
            markerfacecolor="white",
            linestyle="",
            label="step fell behind",
        ),
        Line2D(
            [],
            [],
            color="black",
            marker="*",
            markersize=12,
            linestyle="",
            label="highest rate sustained",
        ),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.set_title(title, fontsize="medium")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scenario-{scenario}-latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


RAMP_TITLES = {
    "1": "scenario 1: fan-out, 1 channel; latency of each ramp step",
    "2": "scenario 2: many rooms; latency of each ramp step",
}


def plot_run(data: dict[str, Any], out: Path) -> list[Path]:
    paths = []
    quick = " (quick: sizes too small to measure anything)" if data.get("quick") else ""
    for scenario, title in RAMP_TITLES.items():
        by_server = (data.get("results") or {}).get(scenario)
        if not by_server:
            continue
        machine = f"\n{textwrap.fill(data['machine'], 110)}" if data.get("machine") else ""
        path = plot_ramp(scenario, by_server, title + quick + machine, out)
        if path is not None:
            paths.append(path)
    return paths


# ---------------------------------------------------------------------------


def draw(source: Path, out: Path) -> list[Path]:
    """
    Every plot the JSON file C{source} has data for.
    """
    data = json.loads(source.read_text())
    if data.get("kind") == "soak" or "intervals" in data:
        return [plot_soak(data, out)]
    if "results" in data:
        return plot_run(data, out)
    raise ValueError(f"{source}: neither bench/soak.py's nor bench/run.py's JSON")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("json", type=Path, metavar="FILE.json")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    args = parser.parse_args(argv)
    try:
        paths = draw(args.json, args.out)
    except (OSError, ValueError, KeyError) as e:
        print(f"plots: {e}", file=sys.stderr)
        return 1
    if not paths:
        print(f"plots: nothing to draw in {args.json}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
