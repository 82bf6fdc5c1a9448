// Channels: list, create, edit, enable and disable, delete
// (/api/realtime/channels).

import { $, el, clear, timeCell } from "./dom.js";

export class ChannelsView {
  constructor(app) {
    this.app = app;
    this.editing = null; // the channel being edited, or null for a new one
    this.form = $("#channel-form");
    $("#new-channel").addEventListener("click", () => this.openForm(null));
    $("#refresh-channels").addEventListener("click", () => this.load());
    $("#channel-cancel").addEventListener("click", () => this.closeForm());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
    this.form.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        this.closeForm();
      }
    });
  }

  show() {
    this.load();
  }

  hide() {}

  async load() {
    let channels;
    try {
      channels = await this.app.api.channels();
    } catch (error) {
      this.app.failed("Listing channels failed", error);
      return;
    }
    this.app.setChannels(channels);
    this.render(channels);
  }

  render(channels) {
    const body = $("#channels-table tbody");
    clear(body);
    $("#channels-table").hidden = channels.length === 0;
    $("#channels-empty").hidden = channels.length !== 0;
    for (const channel of channels) {
      const urls = channel.webhookUrls ?? [];
      const status = channel.enabled ? "enabled" : "disabled";
      body.append(
        el(
          "tr",
          { dataset: { id: channel.id, pattern: channel.pattern } },
          el("td", {}, el("code", {}, channel.pattern)),
          el("td", {}, channel.description ?? ""),
          el(
            "td",
            {},
            urls.length === 0
              ? el("span", { class: "muted" }, "none")
              : el("ul", { class: "plain" }, ...urls.map((url) => el("li", { class: "mono" }, url))),
          ),
          el("td", {}, el("span", { class: `status ${status}` }, channel.enabled ? "Enabled" : "Disabled")),
          timeCell(channel.createdAt),
          el(
            "td",
            { class: "actions" },
            el(
              "button",
              {
                type: "button",
                class: "small",
                "aria-label": `Tail ${channel.pattern}`,
                onclick: () => this.app.views.tail.tail(channel.pattern, { show: true }),
              },
              "Tail",
            ),
            el(
              "button",
              {
                type: "button",
                class: "small",
                "aria-label": `Edit ${channel.pattern}`,
                onclick: () => this.openForm(channel),
              },
              "Edit",
            ),
            el(
              "button",
              {
                type: "button",
                class: "small",
                "aria-label": `${channel.enabled ? "Disable" : "Enable"} ${channel.pattern}`,
                onclick: () => this.setEnabled(channel, !channel.enabled),
              },
              channel.enabled ? "Disable" : "Enable",
            ),
            el(
              "button",
              {
                type: "button",
                class: "small danger",
                "aria-label": `Delete ${channel.pattern}`,
                onclick: (event) => this.remove(channel, event.currentTarget),
              },
              "Delete",
            ),
          ),
        ),
      );
    }
  }

  openForm(channel) {
    this.editing = channel;
    $("#channel-form-title").textContent = channel ? `Edit ${channel.pattern}` : "New channel";
    $("#channel-save").textContent = channel ? "Save changes" : "Create channel";
    $("#channel-pattern").value = channel?.pattern ?? "";
    $("#channel-description").value = channel?.description ?? "";
    $("#channel-webhooks").value = (channel?.webhookUrls ?? []).join("\n");
    $("#channel-enabled").checked = channel ? channel.enabled : true;
    $("#channel-pattern").removeAttribute("aria-invalid");
    $("#channel-webhooks").removeAttribute("aria-invalid");
    this.form.hidden = false;
    $("#channel-pattern").focus();
  }

  closeForm() {
    this.form.hidden = true;
    this.editing = null;
    $("#new-channel").focus();
  }

  fields() {
    const urls = $("#channel-webhooks")
      .value.split("\n")
      .map((line) => line.trim())
      .filter((line) => line !== "");
    const description = $("#channel-description").value.trim();
    return {
      pattern: $("#channel-pattern").value.trim(),
      description: description === "" ? null : description,
      webhookUrls: urls.length === 0 ? null : urls,
      enabled: $("#channel-enabled").checked,
    };
  }

  async save() {
    const fields = this.fields();
    const pattern = $("#channel-pattern");
    if (!fields.pattern) {
      pattern.setAttribute("aria-invalid", "true");
      this.app.notify("A channel needs a pattern.");
      pattern.focus();
      return;
    }
    const editing = this.editing;
    let saved;
    try {
      if (editing === null) {
        saved = await this.app.api.createChannel(fields);
      } else {
        const changes = changed(editing, fields);
        saved = Object.keys(changes).length === 0 ? editing : await this.app.api.updateChannel(editing.id, changes);
      }
    } catch (error) {
      if (error.status === 400 || error.status === 409) {
        markInvalid(pattern, error.status === 409 || /(^|, )pattern:/.test(error.message));
        markInvalid($("#channel-webhooks"), /(^|, )webhookUrls/.test(error.message));
      }
      this.app.failed(editing ? "Saving the channel failed" : "Creating the channel failed", error);
      return;
    }
    this.app.clearNotice();
    this.app.say(editing ? `Channel ${saved.pattern} saved.` : `Channel ${saved.pattern} created.`);
    this.closeForm();
    await this.load();
  }

  async setEnabled(channel, enabled) {
    try {
      await this.app.api.updateChannel(channel.id, { enabled });
    } catch (error) {
      this.app.failed(`${enabled ? "Enabling" : "Disabling"} ${channel.pattern} failed`, error);
      return;
    }
    this.app.say(`Channel ${channel.pattern} ${enabled ? "enabled" : "disabled"}.`);
    await this.load();
    const button = document.querySelector(
      `#channels-table tr[data-id="${CSS.escape(channel.id)}"] button[aria-label^="${enabled ? "Disable" : "Enable"}"]`,
    );
    button?.focus();
  }

  async remove(channel, opener) {
    const sure = await confirmDelete(
      `Delete the channel ${channel.pattern}? Clients subscribed through it stop receiving ` +
        "its messages; stored messages are kept.",
      opener,
    );
    if (!sure) {
      return;
    }
    try {
      await this.app.api.deleteChannel(channel.id);
    } catch (error) {
      this.app.failed(`Deleting ${channel.pattern} failed`, error);
      return;
    }
    this.app.say(`Channel ${channel.pattern} deleted.`);
    await this.load();
    $("#new-channel").focus();
  }
}

function markInvalid(input, invalid) {
  if (invalid) {
    input.setAttribute("aria-invalid", "true");
  } else {
    input.removeAttribute("aria-invalid");
  }
}

// The fields of `fields` that differ from `channel`'s.
function changed(channel, fields) {
  const changes = {};
  if (fields.pattern !== channel.pattern) {
    changes.pattern = fields.pattern;
  }
  if (fields.description !== (channel.description ?? null)) {
    changes.description = fields.description;
  }
  if (JSON.stringify(fields.webhookUrls) !== JSON.stringify(channel.webhookUrls ?? null)) {
    changes.webhookUrls = fields.webhookUrls;
  }
  if (fields.enabled !== channel.enabled) {
    changes.enabled = fields.enabled;
  }
  return changes;
}

// Asks in a modal dialog; fires with whether the operator confirmed.
// Escape or Cancel says no; focus returns to `opener`.
function confirmDelete(text, opener) {
  const dialog = $("#confirm-dialog");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    const yes = $("#confirm-yes");
    const no = $("#confirm-no");
    let answer = false;
    const onYes = () => {
      answer = true;
      dialog.close();
    };
    const onNo = () => dialog.close();
    const onClose = () => {
      yes.removeEventListener("click", onYes);
      no.removeEventListener("click", onNo);
      dialog.removeEventListener("close", onClose);
      if (opener?.isConnected) {
        opener.focus();
      }
      resolve(answer);
    };
    yes.addEventListener("click", onYes);
    no.addEventListener("click", onNo);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    no.focus();
  });
}
