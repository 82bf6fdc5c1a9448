// The admin page: signing in, the sections, and what they share.
//
// The API key is kept in this tab's sessionStorage (or only in memory
// where storage is refused), so a reload keeps the operator signed in and
// closing the tab forgets it.  It goes to the server in the Authorization
// header of REST calls and in the Socket.IO auth payload, nowhere else.

import { Api } from "./api.js";
import { $, el, clear } from "./dom.js";
import { ChannelsView } from "./channels.js";
import { TailView } from "./tail.js";
import { PresenceView } from "./presence.js";
import { StatsView } from "./stats.js";
import { FailuresView } from "./failures.js";

const STORAGE_KEY = "realtimed.apiKey";
const DEFAULT_VIEW = "channels";

const storage = {
  get() {
    try {
      return sessionStorage.getItem(STORAGE_KEY);
    } catch (error) {
      return null;
    }
  },
  set(key) {
    try {
      sessionStorage.setItem(STORAGE_KEY, key);
    } catch (error) {
      // Kept in memory only.
    }
  },
  forget() {
    try {
      sessionStorage.removeItem(STORAGE_KEY);
    } catch (error) {
      // Nothing was kept.
    }
  },
};

class AdminApp {
  constructor() {
    this.api = null;
    this.key = null;
    this.channels = [];
    this.current = null;
    this.statusTimer = null;
    this.views = {
      channels: new ChannelsView(this),
      tail: new TailView(this),
      presence: new PresenceView(this),
      stats: new StatsView(this),
      failures: new FailuresView(this),
    };
  }

  start() {
    $("#sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("#api-key");
      const key = input.value.trim();
      if (!key) {
        input.setAttribute("aria-invalid", "true");
        this.notify("Enter the API key.");
        input.focus();
        return;
      }
      this.signIn(key, { typed: true });
    });
    $("#sign-out").addEventListener("click", () => this.signOut());
    window.addEventListener("hashchange", () => this.route({ focus: true }));
    const key = storage.get();
    if (key) {
      this.signIn(key, { typed: false });
    } else {
      this.showSignIn();
    }
  }

  showSignIn() {
    $("#app").hidden = true;
    $("#session").hidden = true;
    $("#sign-in-view").hidden = false;
    $("#api-key").focus();
  }

  async signIn(key, { typed }) {
    const button = $("#sign-in-form button[type=submit]");
    button.disabled = true;
    const api = new Api(key);
    let channels;
    try {
      channels = await api.channels();
    } catch (error) {
      button.disabled = false;
      storage.forget();
      if (error.status === 401 || error.status === 403) {
        this.notify(`This key was refused: ${error.message}.`);
        $("#api-key").setAttribute("aria-invalid", "true");
      } else {
        this.notify(`Cannot sign in: ${error.message}.`);
      }
      this.showSignIn();
      return;
    }
    button.disabled = false;
    const input = $("#api-key");
    input.value = "";
    input.removeAttribute("aria-invalid");
    storage.set(key);
    this.api = api;
    this.key = key;
    this.clearNotice();
    this.setChannels(channels);
    $("#sign-in-view").hidden = true;
    $("#session").hidden = false;
    $("#app").hidden = false;
    this.views.tail.connect();
    this.route({ focus: typed });
  }

  signOut(reason) {
    if (this.current) {
      this.views[this.current].hide();
      $(`#${this.current}-view`).hidden = true;
      this.current = null;
    }
    this.views.tail.close();
    this.api = null;
    this.key = null;
    storage.forget();
    if (reason) {
      this.notify(reason);
    } else {
      this.clearNotice();
      this.say("Signed out.");
    }
    this.showSignIn();
  }

  // The section named by the URL's fragment (#channels, #tail, ...).
  route({ focus }) {
    if (!this.api) {
      return;
    }
    const wanted = location.hash.slice(1);
    const name = Object.hasOwn(this.views, wanted) ? wanted : DEFAULT_VIEW;
    if (name === this.current) {
      return;
    }
    if (this.current) {
      this.views[this.current].hide();
      $(`#${this.current}-view`).hidden = true;
    }
    this.current = name;
    for (const link of document.querySelectorAll("nav a[data-view]")) {
      if (link.dataset.view === name) {
        link.setAttribute("aria-current", "page");
      } else {
        link.removeAttribute("aria-current");
      }
    }
    const section = $(`#${name}-view`);
    section.hidden = false;
    document.title = `${section.querySelector("h2").textContent} · realtimed admin`;
    if (focus) {
      section.querySelector("h2").focus();
    }
    this.views[name].show();
  }

  go(name) {
    location.hash = `#${name}`;
  }

  // The channel rows as last listed: offered as suggestions wherever a
  // channel is typed, and as choices in the statistics.
  setChannels(channels) {
    this.channels = channels;
    const list = $("#channel-patterns");
    clear(list);
    for (const channel of channels) {
      list.append(el("option", { value: channel.pattern }));
    }
    this.views.stats.channelsChanged(channels);
  }

  // An error for the operator.  A refused key (the key was changed, or the
  // server restarted with another) signs out.
  failed(what, error) {
    if (error?.status === 401) {
      this.signOut(`Signed out: the API key is no longer accepted (${error.message}).`);
      return;
    }
    this.notify(`${what}: ${error?.message ?? error}`);
  }

  notify(message) {
    $("#notice").textContent = message;
  }

  clearNotice() {
    $("#notice").textContent = "";
  }

  // A short confirmation, announced politely and gone after a while.
  say(message) {
    const line = $("#status-line");
    line.textContent = message;
    clearTimeout(this.statusTimer);
    this.statusTimer = setTimeout(() => {
      line.textContent = "";
    }, 6000);
  }
}

new AdminApp().start();
