// Chorus JavaScript client: documents with their contexts, CRDT operations, the
// change feed, live subscriptions to one document, and failover between the URLs
// of a cluster's nodes. No dependencies; the same module runs in browsers and in
// Node.js (18 or later: `fetch`; live subscriptions need a global `WebSocket`, as in
// browsers and Node.js 22, or fall back to server-sent events, read only).
//
//   import { Chorus } from "./chorus.js";
//   const db = new Chorus(["http://127.0.0.1:7070", "http://127.0.0.1:7071"]);
//   await db.ops("notes", "n1", [{ op: "text.insert", path: "/text", pos: 0, text: "hi" }]);
//   const { value, context } = await db.get("notes", "n1");
//
// A request moves to the next node only when it cannot have taken effect (no
// connection, or 503 from a node that is busy or shutting down); a write cut off
// after it was sent is an error (`ChorusError` with `uncertain`), never resent.

/** An answer that is not a success: the API's `error` code and `message`. */
export class ChorusError extends Error {
  constructor(status, code, message, body, uncertain = false) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.body = body;
    this.uncertain = uncertain;
  }
}

const encode = encodeURIComponent;

export class Chorus {
  /**
   * @param {string|string[]} urls the nodes' base URLs, tried in order
   * @param {{token?: string, fetch?: typeof fetch}} options a bearer token; a fetch
   */
  constructor(urls, options = {}) {
    this.urls = (Array.isArray(urls) ? urls : [urls]).map((u) => u.replace(/\/+$/, ""));
    if (this.urls.length === 0) throw new TypeError("give at least one node URL");
    this.token = options.token;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    /** The node requests go to first: the last one that answered. */
    this.current = 0;
  }

  /** The node URL requests go to now. */
  get url() {
    return this.urls[this.current];
  }

  /** One request, failing over between nodes; answers `{status, body}`. */
  async request(method, path, { body, context, headers = {}, allow = [] } = {}) {
    const init = { method, headers: { ...headers } };
    if (this.token) init.headers.authorization = `Bearer ${this.token}`;
    if (context) init.headers["chorus-context"] = context;
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = typeof body === "string" ? body : JSON.stringify(body);
    }
    let last;
    for (let tried = 0; tried < this.urls.length; tried++) {
      const at = (this.current + tried) % this.urls.length;
      let response;
      try {
        response = await this.fetch(this.urls[at] + path, init);
      } catch (error) {
        // No connection: the request cannot have taken effect; try the next node.
        last = new ChorusError(0, "unreachable", `${this.urls[at]}: ${error.message}`);
        continue;
      }
      if (response.status === 503 && tried + 1 < this.urls.length) {
        last = new ChorusError(503, "unavailable", `${this.urls[at]} is busy`);
        continue;
      }
      this.current = at;
      const text = await response.text();
      const parsed = text ? JSON.parse(text) : null;
      if (response.ok || allow.includes(response.status)) {
        return { status: response.status, body: parsed };
      }
      throw new ChorusError(response.status, parsed?.error, parsed?.message, parsed);
    }
    throw last;
  }

  /** A document: `{key, context, conflict, value?, versions}`, or `null` when it
   * does not exist (`{context}` of the deletion is then in `deleted`). */
  async get(collection, key) {
    const { status, body } = await this.request("GET", docPath(collection, key), { allow: [404] });
    return status === 404 ? null : body;
  }

  /** Writes a JSON document; with `context` (of a read) it replaces what that read
   * saw, without it it stands beside every version. Answers `{key, context}`. */
  async put(collection, key, value, { context } = {}) {
    return (await this.request("PUT", docPath(collection, key), { body: value, context })).body;
  }

  /** Deletes a document (what `context` saw, or every version). */
  async delete(collection, key, { context } = {}) {
    return (await this.request("DELETE", docPath(collection, key), { context })).body;
  }

  /** CRDT operations on a document of a `crdt` collection, made against the read
   * `context` names (text positions count there). Answers `{key, context, value}`. */
  async ops(collection, key, operations, { context } = {}) {
    const path = `${docPath(collection, key)}/ops`;
    return (await this.request("POST", path, { body: operations, context })).body;
  }

  /** Keys of a collection: `{keys, next}`. */
  async list(collection, { prefix, after, limit } = {}) {
    const query = params({ prefix, after, limit });
    return (await this.request("GET", `/v1/docs/${encode(collection)}${query}`)).body;
  }

  /** The change feed, page by page, from `since` ("0": everything), following it
   * (each request waits up to `waitMs` for new changes) while `follow` is true. */
  async *changes({ since = "0", collection, follow = false, waitMs = 30000 } = {}) {
    let cursor = since;
    for (;;) {
      const wait = follow ? { feed: "longpoll", timeout_ms: waitMs } : {};
      const query = params({ since: cursor, collection, ...wait });
      const { body } = await this.request("GET", `/v1/changes${query}`);
      for (const change of body.changes) yield change;
      cursor = body.next;
      if (!follow && body.changes.length === 0) return;
    }
  }

  /** The node's status: `{node, members, links, peers, ...}`. */
  async status() {
    return (await this.request("GET", "/v1/status")).body;
  }

  async collections() {
    return (await this.request("GET", "/v1/collections")).body;
  }

  async setCollection(collection, settings) {
    return (await this.request("PUT", `/v1/collections/${encode(collection)}`, { body: settings })).body;
  }

  /** Open conflict records: `{conflicts, next}`. */
  async conflicts({ collection, after, limit } = {}) {
    return (await this.request("GET", `/v1/conflicts${params({ collection, after, limit })}`)).body;
  }

  /** Ends conflict `id`: `{value}` (a new document) or `{pick: DOT}` (one of its
   * versions, restored). */
  async resolve(id, resolution) {
    return (await this.request("POST", `/v1/conflicts/${encode(id)}/resolve`, { body: resolution })).body;
  }

  /** Follows one document live: `onMessage` gets each message (`snapshot`,
   * `change`, `ack`, `error`); answers a subscription to `send` operations on (a
   * WebSocket) and `close`. */
  live(collection, key, onMessage) {
    return new LiveDocument(this, collection, key, onMessage);
  }
}

/** One live subscription (see `GET /v1/docs/{c}/{key}/live`). */
export class LiveDocument {
  constructor(client, collection, key, onMessage) {
    this.client = client;
    this.path = `${docPath(collection, key)}/live`;
    this.onMessage = onMessage;
    this.nextId = 1;
    this.closed = false;
    const token = client.token ? `?access_token=${encode(client.token)}` : "";
    const url = client.url + this.path + token;
    if (typeof globalThis.WebSocket === "function") {
      this.socket = new WebSocket(url.replace(/^http/, "ws"));
      this.socket.onmessage = (event) => onMessage(JSON.parse(event.data));
      this.opened = new Promise((resolve, reject) => {
        this.socket.onopen = () => resolve();
        this.socket.onerror = () => reject(new ChorusError(0, "unreachable", `${client.url}: no WebSocket`));
      });
      this.socket.onclose = () => {
        this.closed = true;
        this.onClose?.();
      };
    } else {
      this.opened = this.#stream(url);
    }
  }

  /** Sends operations made against `context`; answers the id the `ack` or `error`
   * will carry. */
  send(ops, context) {
    if (!this.socket) throw new ChorusError(0, "read_only", "this subscription reads only (no WebSocket here)");
    const id = this.nextId++;
    this.socket.send(JSON.stringify({ id, ops, context }));
    return id;
  }

  close() {
    this.closed = true;
    this.socket?.close();
    this.abort?.abort();
  }

  async #stream(url) {
    this.abort = new AbortController();
    const response = await this.client.fetch(url, {
      headers: { accept: "text/event-stream" },
      signal: this.abort.signal,
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    (async () => {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          buffered += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffered.indexOf("\n\n")) >= 0) {
            const event = buffered.slice(0, end);
            buffered = buffered.slice(end + 2);
            const data = event
              .split("\n")
              .filter((line) => line.startsWith("data:"))
              .map((line) => line.slice(5).trimStart())
              .join("\n");
            if (data) this.onMessage(JSON.parse(data));
          }
        }
      } catch (error) {
        if (!this.closed) throw error;
      } finally {
        this.closed = true;
        this.onClose?.();
      }
    })();
  }
}

/** `/v1/docs/{collection}/{key}`, escaped. */
export function docPath(collection, key) {
  return `/v1/docs/${encode(collection)}/${encode(key)}`;
}

function params(values) {
  const parts = Object.entries(values)
    .filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => `${encode(k)}=${encode(v)}`);
  return parts.length ? `?${parts.join("&")}` : "";
}
