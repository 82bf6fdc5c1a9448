// Presence: the members of a channel (/api/realtime/presence), refreshed
// every few seconds while shown.

import { $, el, clear, plural, timeCell } from "./dom.js";

const REFRESH_MS = 5000;

export class PresenceView {
  constructor(app) {
    this.app = app;
    this.channel = null;
    this.timer = null;
    this.visible = false;
    $("#presence-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("#presence-channel");
      const channel = input.value.trim();
      if (!channel) {
        input.setAttribute("aria-invalid", "true");
        this.app.notify("Enter a channel name or pattern.");
        input.focus();
        return;
      }
      input.removeAttribute("aria-invalid");
      this.channel = channel;
      this.load();
    });
    $("#presence-auto").addEventListener("change", () => this.schedule());
  }

  show() {
    this.visible = true;
    if (this.channel) {
      this.load();
    } else {
      this.schedule();
    }
  }

  hide() {
    this.visible = false;
    clearTimeout(this.timer);
    this.timer = null;
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.visible && this.channel && $("#presence-auto").checked) {
      this.timer = setTimeout(() => this.load(), REFRESH_MS);
    }
  }

  async load() {
    const channel = this.channel;
    let answer;
    try {
      answer = await this.app.api.presence(channel);
    } catch (error) {
      if (error.status === 400) {
        $("#presence-channel").setAttribute("aria-invalid", "true");
        this.channel = null;
      }
      this.app.failed(`Reading the presence of ${channel} failed`, error);
      this.schedule();
      return;
    }
    if (channel === this.channel && this.app.api) {
      this.render(answer);
      this.schedule();
    }
  }

  render({ channel, members }) {
    const own = this.app.views.tail.socketId;
    const body = $("#presence-table tbody");
    clear(body);
    for (const member of members) {
      const mine = member.presenceId === own;
      body.append(
        el(
          "tr",
          { dataset: { presenceId: member.presenceId } },
          el("td", {}, el("code", {}, member.presenceId), mine ? el("span", { class: "muted" }, " (this page)") : null),
          el("td", {}, member.type),
          timeCell(member.joinedAt),
        ),
      );
    }
    $("#presence-table").hidden = members.length === 0;
    // Announced only when it changes, not at every refresh.
    const summary =
      members.length === 0
        ? `Nobody is present in ${channel}.`
        : `${plural(members.length, "member")} present in ${channel}.`;
    if ($("#presence-summary").textContent !== summary) {
      $("#presence-summary").textContent = summary;
    }
    $("#presence-updated").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  }
}
