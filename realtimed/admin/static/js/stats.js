// Statistics (/api/realtime/messages/stats): message count, webhook
// delivery rate, retention, and the most frequent events as a bar chart
// (uPlot) with the same numbers in a table.

import { $, el, clear } from "./dom.js";

const CHART_HEIGHT = 280;
const LABEL_LENGTH = 18;

export class StatsView {
  constructor(app) {
    this.app = app;
    this.chart = null;
    this.names = [];
    this.visible = false;
    $("#stats-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.load();
    });
    window.addEventListener("resize", () => this.fit());
  }

  show() {
    this.visible = true;
    this.load();
  }

  hide() {
    this.visible = false;
  }

  // Offer the channels as choices, keeping the one chosen.
  channelsChanged(channels) {
    const select = $("#stats-channel");
    const chosen = select.value;
    clear(select);
    select.append(el("option", { value: "" }, "All channels"));
    for (const channel of channels) {
      select.append(el("option", { value: channel.id }, channel.pattern));
    }
    select.value = channels.some((channel) => channel.id === chosen) ? chosen : "";
  }

  async load() {
    const seconds = Number($("#stats-since").value);
    const since = seconds ? new Date(Date.now() - seconds * 1000).toISOString() : undefined;
    let stats;
    try {
      stats = await this.app.api.stats({ channelId: $("#stats-channel").value, since });
    } catch (error) {
      this.app.failed("Reading the statistics failed", error);
      return;
    }
    this.render(stats);
  }

  render(stats) {
    $("#stats-total").textContent = stats.totalMessages.toLocaleString();
    $("#stats-rate").textContent =
      stats.whDeliveryRate === 0 && stats.totalMessages === 0
        ? "–"
        : `${(stats.whDeliveryRate * 100).toLocaleString(undefined, { maximumFractionDigits: 1 })} %`;
    $("#stats-retention").textContent =
      stats.retentionDays === null || stats.retentionDays === undefined
        ? "forever"
        : `${stats.retentionDays} days`;
    const body = $("#stats-table tbody");
    clear(body);
    for (const { eventName, count } of stats.topEvents) {
      body.append(
        el("tr", {}, el("td", {}, eventName), el("td", { class: "number" }, count.toLocaleString())),
      );
    }
    if (stats.topEvents.length === 0) {
      body.append(el("tr", {}, el("td", { colspan: 2, class: "muted" }, "No messages in this period.")));
    }
    this.names = stats.topEvents.map((top) => top.eventName);
    const data = [this.names.map((_, index) => index), stats.topEvents.map((top) => top.count)];
    if (this.visible) {
      this.draw(data);
    }
  }

  draw(data) {
    const holder = $("#stats-chart");
    if (this.chart === null) {
      this.chart = new globalThis.uPlot(this.options(holder), data, holder);
    } else {
      this.chart.setData(data);
      this.fit();
    }
  }

  fit() {
    if (this.chart !== null && this.visible) {
      const width = $("#stats-chart").clientWidth;
      if (width > 0) {
        this.chart.setSize({ width, height: CHART_HEIGHT });
      }
    }
  }

  options(holder) {
    const accent = getComputedStyle(document.documentElement).getPropertyValue("--accent").trim() || "#1f5fbf";
    const label = (index) => {
      const name = this.names[index] ?? "";
      return name.length > LABEL_LENGTH ? `${name.slice(0, LABEL_LENGTH - 1)}…` : name;
    };
    return {
      width: Math.max(holder.clientWidth, 300),
      height: CHART_HEIGHT,
      legend: { show: false },
      cursor: { show: false },
      scales: {
        x: { time: false, range: () => [-0.5, Math.max(this.names.length, 1) - 0.5] },
        y: { range: (_, __, max) => [0, Math.max(1, max) * 1.1] },
      },
      axes: [
        {
          splits: () => this.names.map((_, index) => index),
          values: (_, splits) => splits.map(label),
          grid: { show: false },
          ticks: { show: false },
        },
        {
          label: "Messages",
          incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 1e6, 1e7],
          values: (_, splits) => splits.map((value) => value.toLocaleString()),
        },
      ],
      series: [
        {},
        {
          label: "Messages",
          stroke: accent,
          fill: `${accent}bb`,
          width: 1,
          points: { show: false },
          paths: globalThis.uPlot.paths.bars({ size: [0.6, 96] }),
        },
      ],
    };
  }
}
