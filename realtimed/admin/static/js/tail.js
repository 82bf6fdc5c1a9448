// The live tail: one Socket.IO connection, authenticated with the API key
// in the CONNECT packet's auth payload ({apiKey}), subscribed to the
// channels and patterns the operator asks for.  Every message delivered on
// them is shown, newest first, with the presence changes and errors the
// server sends.

import { $, el, clear, plural, timeCell } from "./dom.js";

// Rows kept in the table; older ones are dropped.
const MAX_ROWS = 500;
// Seconds to wait for an acknowledgement.
const ACK_TIMEOUT = 10000;

const STATE_LABELS = {
  waiting: "waiting for the connection",
  subscribing: "subscribing…",
  subscribed: "live",
  refused: "refused",
  ended: "ended by the server",
  unanswered: "no answer",
};

export class TailView {
  constructor(app) {
    this.app = app;
    this.socket = null;
    // channel → { state, reason }
    this.tails = new Map();
    this.received = 0;
    this.skipped = 0;
    $("#tail-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("#tail-channel");
      const channel = input.value.trim();
      if (!channel) {
        input.setAttribute("aria-invalid", "true");
        this.app.notify("Enter a channel name or pattern to tail.");
        input.focus();
        return;
      }
      input.removeAttribute("aria-invalid");
      input.value = "";
      this.tail(channel);
    });
    $("#tail-clear").addEventListener("click", () => {
      clear($("#tail-table tbody"));
      this.received = 0;
      this.skipped = 0;
      this.count();
    });
    $("#tail-paused").addEventListener("change", () => {
      this.skipped = 0;
      this.count();
    });
  }

  show() {}

  hide() {}

  // The Socket.IO connection, made once signed in.  The path is relative
  // to the page, like the REST API's.
  connect() {
    if (this.socket) {
      return;
    }
    const io = globalThis.io;
    const path = new URL("../socket.io/", document.baseURI).pathname;
    const socket = io({ path, auth: { apiKey: this.app.key }, withCredentials: false });
    this.socket = socket;
    this.state("connecting", "");
    socket.on("connect", () => {
      this.state("live", "online");
      for (const channel of this.tails.keys()) {
        this.subscribe(channel);
      }
    });
    socket.on("disconnect", (reason) => {
      const byServer = reason === "io server disconnect";
      this.state(byServer ? "disconnected by the server" : "reconnecting…", "trouble");
      for (const [channel, tail] of this.tails) {
        if (tail.state === "subscribed" || tail.state === "subscribing") {
          this.tails.set(channel, { state: "waiting" });
        }
      }
      this.renderTails();
      if (byServer) {
        this.app.notify("The server closed the live connection; reload the page to reconnect.");
      }
    });
    socket.on("connect_error", (error) => {
      this.state(socket.active ? "reconnecting…" : "refused", "trouble");
      if (!socket.active) {
        this.app.notify(`The live connection was refused: ${error.message}.`);
      }
    });
    socket.onAny((event, ...args) => this.receive(event, args));
  }

  close() {
    if (this.socket) {
      this.socket.offAny();
      this.socket.removeAllListeners();
      this.socket.disconnect();
      this.socket = null;
    }
    this.tails.clear();
    this.renderTails();
    clear($("#tail-table tbody"));
    this.received = 0;
    this.skipped = 0;
    this.count();
    this.state("offline", "");
  }

  get socketId() {
    return this.socket?.id ?? null;
  }

  state(text, kind) {
    const badge = $("#socket-state");
    badge.textContent = text;
    badge.className = `badge ${kind}`;
    badge.title = "The page's Socket.IO connection";
  }

  // Tail `channel` (a name, or a channel's pattern).
  tail(channel, { show = false } = {}) {
    if (show) {
      this.app.go("tail");
    }
    if (!this.tails.has(channel) || !["subscribed", "subscribing"].includes(this.tails.get(channel).state)) {
      this.tails.set(channel, { state: "waiting" });
      this.subscribe(channel);
    }
    this.renderTails();
  }

  async subscribe(channel) {
    const socket = this.socket;
    if (!socket?.connected) {
      return;
    }
    this.tails.set(channel, { state: "subscribing" });
    this.renderTails();
    let ack;
    try {
      ack = await socket.timeout(ACK_TIMEOUT).emitWithAck("REALTIME_SUBSCRIBE", { channel });
    } catch (error) {
      if (this.tails.has(channel)) {
        this.tails.set(channel, { state: "unanswered", reason: "no answer from the server" });
        this.renderTails();
      }
      return;
    }
    if (!this.tails.has(channel)) {
      // Stopped while subscribing.
      if (ack?.ok) {
        socket.emit("REALTIME_UNSUBSCRIBE", { channel });
      }
      return;
    }
    if (ack?.ok) {
      this.tails.set(channel, { state: "subscribed" });
    } else {
      const reason = ack?.error?.message ?? "refused";
      this.tails.set(channel, { state: "refused", reason });
      this.app.notify(`Cannot tail ${channel}: ${reason}.`);
    }
    this.renderTails();
  }

  stop(channel) {
    const tail = this.tails.get(channel);
    this.tails.delete(channel);
    if (tail?.state === "subscribed" && this.socket?.connected) {
      this.socket.emit("REALTIME_UNSUBSCRIBE", { channel });
    }
    this.renderTails();
    $("#tail-channel").focus();
  }

  renderTails() {
    const list = $("#tail-subscriptions");
    clear(list);
    for (const [channel, tail] of this.tails) {
      list.append(
        el(
          "li",
          { dataset: { channel, state: tail.state } },
          el("code", {}, channel),
          el(
            "span",
            { class: `status ${tail.state}`, title: tail.reason ?? null },
            STATE_LABELS[tail.state] ?? tail.state,
          ),
          el(
            "button",
            {
              type: "button",
              class: "small",
              "aria-label": `Stop tailing ${channel}`,
              onclick: () => this.stop(channel),
            },
            "Stop",
          ),
        ),
      );
    }
  }

  receive(event, args) {
    const data = args[0];
    let row;
    if (event === "presence:join" || event === "presence:leave") {
      const member = data?.member ?? {};
      row = this.row("presence", {
        time: member.joinedAt && event === "presence:join" ? member.joinedAt : new Date().toISOString(),
        channel: data?.channel,
        event,
        sender: `${member.type ?? ""} ${member.presenceId ?? ""}`.trim(),
        payload: "",
      });
    } else if (event === "realtime:error") {
      if (data?.code === "REALTIME_UNAUTHORIZED" && this.tails.has(data.channel)) {
        this.tails.set(data.channel, { state: "ended", reason: data.message });
        this.renderTails();
      }
      row = this.row("error", {
        time: new Date().toISOString(),
        channel: data?.channel,
        event,
        sender: "server",
        payload: `${data?.code ?? ""}: ${data?.message ?? ""}`,
      });
    } else if (data && typeof data === "object" && "messageId" in data) {
      row = this.row("message", {
        time: data.createdAt,
        channel: data.channel,
        event: data.event ?? event,
        sender: data.senderId ? `${data.senderType} ${data.senderId}` : data.senderType,
        payload: JSON.stringify(data.payload),
        id: data.messageId,
      });
    } else {
      return;
    }
    if ($("#tail-paused").checked) {
      this.skipped += 1;
      this.count();
      return;
    }
    const body = $("#tail-table tbody");
    body.prepend(row);
    while (body.rows.length > MAX_ROWS) {
      body.lastElementChild.remove();
    }
    this.received += 1;
    this.count();
  }

  row(kind, { time, channel, event, sender, payload, id }) {
    return el(
      "tr",
      { class: kind, dataset: { kind, messageId: id } },
      timeCell(time, { clock: true }),
      el("td", {}, el("code", {}, channel ?? "")),
      el("td", {}, event),
      el("td", {}, sender ?? ""),
      el("td", { class: "payload" }, payload ?? ""),
    );
  }

  count() {
    let text = this.received === 0 ? "No messages yet." : `${plural(this.received, "event")} received.`;
    if (this.skipped > 0) {
      text += ` ${plural(this.skipped, "event")} not shown while paused.`;
    }
    $("#tail-count").textContent = text;
  }
}
