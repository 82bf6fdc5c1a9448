// The admin REST API, relative to the page (…/admin/ → …/api/realtime/),
// so the page works wherever realtimed is mounted.  The API key travels in
// the Authorization header only: never in a URL.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

export class Api {
  #key;

  constructor(key, base = new URL("../api/realtime/", document.baseURI)) {
    this.#key = key;
    this.base = base;
  }

  // Fires with the decoded JSON answer; throws an ApiError for an error
  // answer (with the API's code and message) or when the server cannot be
  // reached (status 0).
  async request(method, path, { body, params } = {}) {
    const url = new URL(path, this.base);
    for (const [name, value] of Object.entries(params ?? {})) {
      if (value !== undefined && value !== null && value !== "") {
        url.searchParams.set(name, String(value));
      }
    }
    const headers = { Authorization: `Bearer ${this.#key}`, Accept: "application/json" };
    const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (error) {
      throw new ApiError(0, "UNREACHABLE", "realtimed cannot be reached");
    }
    let answer = null;
    const text = await response.text();
    if (text) {
      try {
        answer = JSON.parse(text);
      } catch (error) {
        answer = null;
      }
    }
    if (!response.ok) {
      const code = answer?.error ?? `HTTP_${response.status}`;
      const message = answer?.message ?? `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, code, message);
    }
    return answer;
  }

  channels() {
    return this.request("GET", "channels");
  }

  createChannel(fields) {
    return this.request("POST", "channels", { body: fields });
  }

  updateChannel(id, fields) {
    return this.request("PUT", `channels/${encodeURIComponent(id)}`, { body: fields });
  }

  deleteChannel(id) {
    return this.request("DELETE", `channels/${encodeURIComponent(id)}`);
  }

  presence(channel) {
    return this.request("GET", "presence", { params: { channel } });
  }

  stats({ channelId, since } = {}) {
    return this.request("GET", "messages/stats", { params: { channelId, since } });
  }

  webhookFailures({ limit, channelId } = {}) {
    return this.request("GET", "webhooks/failures", { params: { limit, channelId } });
  }
}
