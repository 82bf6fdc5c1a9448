// Webhook failures: deliveries whose last attempt failed, newest first
// (/api/realtime/webhooks/failures).

import { $, el, clear, plural, timeCell } from "./dom.js";

export class FailuresView {
  constructor(app) {
    this.app = app;
    $("#failures-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.load();
    });
  }

  show() {
    this.load();
  }

  hide() {}

  async load() {
    let failures;
    try {
      failures = await this.app.api.webhookFailures({ limit: $("#failures-limit").value });
    } catch (error) {
      this.app.failed("Reading the webhook failures failed", error);
      return;
    }
    this.render(failures);
  }

  render(failures) {
    const body = $("#failures-table tbody");
    clear(body);
    for (const failure of failures) {
      // The error says it all ("HTTP 500", "ConnectionRefusedError: ...").
      const answer = failure.lastError ?? (failure.lastStatus === null ? "" : `HTTP ${failure.lastStatus}`);
      body.append(
        el(
          "tr",
          { dataset: { id: failure.id, status: failure.status } },
          timeCell(failure.updatedAt),
          el("td", {}, el("code", {}, failure.channelName)),
          el("td", {}, failure.eventName),
          el("td", { class: "mono" }, failure.url),
          el("td", {}, el("span", { class: `status ${failure.status}` }, failure.status)),
          el("td", { class: "number" }, String(failure.attempts)),
          el("td", {}, answer),
          failure.status === "retrying" ? timeCell(failure.nextAttemptAt) : el("td", { class: "muted" }, "none"),
        ),
      );
    }
    $("#failures-table").hidden = failures.length === 0;
    $("#failures-summary").textContent =
      failures.length === 0
        ? "No failed webhook deliveries."
        : `${plural(failures.length, "delivery", "deliveries")} failing or failed, newest first.`;
  }
}
