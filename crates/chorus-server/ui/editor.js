// The collaborative editor: a text area bound to the `text` field of one document
// (`/ui/edit/{collection}/{key}?path=/text`). The page keeps its own replica of the
// text (the CRDT in WebAssembly, text.js), applies its keystrokes at once, sends
// them as operations over the live connection (one batch in flight at a time) and
// applies the node's operations as they come, keeping the cursor on its character.
// Offline, it keeps every keystroke; back online, it merges what it missed and
// sends what it kept. Who else edits shows from `/_editors` in the document (each
// page's entry, written with its batches and every few seconds).

import { TextReplica, fromBase64Url, loadWasm } from "./text.js";

const [, , , collection, key] = location.pathname.split("/").map(decodeURIComponent);
const params = new URLSearchParams(location.search);
const path = params.get("path") || "/text";
const token = params.get("access_token");
const name = params.get("name") || `editor-${Math.random().toString(36).slice(2, 6)}`;
const session = `${name}-${Math.random().toString(36).slice(2, 10)}`;

const area = document.getElementById("text");
const stateBadge = document.getElementById("state");
const editorsList = document.getElementById("editors");
document.getElementById("doc").textContent = `${collection}/${key} ${path}`;

/** Everything the page knows; `window.chorusEditor` for tests and the curious. */
const editor = {
  replica: null,
  context: null,
  socket: null,
  online: false,
  /** The batch in flight: its id, its number (in `/_editors`), and its ack's dot. */
  inflight: null,
  /** Changes that came while the batch in flight waited for its ack. */
  held: [],
  batches: 0,
  shown: "",
  editors: {},
};
window.chorusEditor = editor;

function setState(state, text) {
  stateBadge.className = `state ${state}`;
  stateBadge.textContent = text ?? state;
}

function problem(message) {
  const p = document.getElementById("problem");
  p.textContent = message;
  p.hidden = !message;
}

/** Changes the replica with `change`, then shows its text with the selection still
 * on its characters (anchored before the change). */
function update(change) {
  const [start, end] = [area.selectionStart, area.selectionEnd].map((p) => codePoints(area.value, p));
  const anchors = [editor.replica.anchor(start), editor.replica.anchor(end)];
  change();
  const text = editor.replica.text();
  if (text === area.value) return;
  const focused = document.activeElement === area;
  const [newStart, newEnd] = anchors.map((a) => editor.replica.anchored(a));
  area.value = text;
  editor.shown = text;
  if (focused) area.setSelectionRange(utf16(text, newStart), utf16(text, newEnd));
  editor.onShow?.();
}

/** Code points in the first `units` UTF-16 units of `text`. */
function codePoints(text, units) {
  let n = 0;
  for (let i = 0; i < units; i++) {
    const c = text.charCodeAt(i);
    if (c < 0xd800 || c > 0xdbff) n++;
  }
  return n;
}

/** UTF-16 units of the first `points` code points of `text`. */
function utf16(text, points) {
  let i = 0;
  for (let n = 0; n < points && i < text.length; n++) {
    const c = text.charCodeAt(i);
    i += c >= 0xd800 && c <= 0xdbff ? 2 : 1;
  }
  return i;
}

/** A keystroke (or paste, cut, undo): what changed between the text shown and the
 * text area, as one delete and one insert. Where the change is ambiguous (a space
 * typed next to a space), it is taken to end at the cursor, where the keystroke
 * was: so what one types stays in the order one typed it. */
area.addEventListener("input", () => {
  const before = [...editor.shown];
  const after = [...area.value];
  const caret = codePoints(area.value, area.selectionEnd);
  let end = 0;
  while (
    end < before.length &&
    end < after.length - caret &&
    before[before.length - 1 - end] === after[after.length - 1 - end]
  ) end++;
  let start = 0;
  while (start < before.length - end && start < after.length - end && before[start] === after[start]) start++;
  const deleted = before.length - start - end;
  const inserted = after.slice(start, after.length - end).join("");
  if (deleted > 0) editor.replica.delete(start, deleted);
  if (inserted) editor.replica.insert(start, inserted);
  editor.shown = area.value;
  flush();
});

/** Sends the next batch, if the connection is up and none is in flight. */
function flush() {
  if (!editor.online || editor.inflight) return;
  const ops = editor.replica.takeBatch(path);
  if (!ops) return;
  editor.batches += 1;
  const number = editor.batches;
  ops.push(...presenceOps(number));
  const id = number;
  editor.inflight = { id, number, dot: null };
  editor.socket.send(JSON.stringify({ id, context: editor.context, ops }));
}

/** Entries of pages gone for this long are removed by the pages still there. */
const EDITOR_GONE_MS = 10 * 60 * 1000;

/** This page's entry in `/_editors` (its name, its last batch, when, its cursor),
 * and the removal of entries of pages long gone (a page removes its own when it
 * closes, if it can; one that crashed leaves it). */
function presenceOps(batch) {
  const cursor = codePoints(area.value, area.selectionStart ?? 0);
  const value = { name, batch, at: Date.now(), cursor };
  const gone = Object.entries(editor.editors)
    .filter(([id, e]) => id !== session && Date.now() - e.at > EDITOR_GONE_MS)
    .map(([id]) => ({ op: "map.remove", path: `/_editors/${id}` }));
  return [{ op: "lwwreg.set", path: `/_editors/${session}`, value }, ...gone];
}

window.addEventListener("pagehide", () => {
  if (editor.online) {
    editor.socket.send(JSON.stringify({ id: 0, context: editor.context, ops: [{ op: "map.remove", path: `/_editors/${session}` }] }));
  }
});

function showEditors(doc) {
  const entries = Object.entries(doc?.value?._editors ?? {});
  const now = Date.now();
  const others = entries
    .filter(([id, e]) => id !== session && now - e.at < 20000)
    .map(([, e]) => e.name);
  editorsList.textContent = others.length ? `also editing: ${[...new Set(others)].join(", ")}` : "editing alone";
  editor.editors = Object.fromEntries(entries);
}

function onMessage(message) {
  switch (message.type) {
    case "snapshot": {
      const encoded = message.sequences?.[path];
      if (!editor.replica) {
        editor.replica = new TextReplica(encoded ? fromBase64Url(encoded) : null, message.node);
        area.value = editor.shown = editor.replica.text();
      }
      update(() => {
        // Back after a drop: take in what was missed; the batch in flight went
        // through if this page's entry names it.
        if (encoded) editor.replica.merge(fromBase64Url(encoded));
        if (editor.inflight) {
          const entry = message.doc?.value?._editors?.[session];
          if (entry && entry.batch >= editor.inflight.number) editor.replica.settle();
          else editor.replica.unsend();
          editor.inflight = null;
        }
      });
      editor.context = message.context;
      showEditors(message.doc);
      area.disabled = false;
      area.placeholder = "";
      flush();
      break;
    }
    case "change": {
      // While a batch waits for its ack, changes wait too: one of them may be the
      // node's version of the batch, applied together with settling it.
      if (editor.inflight && editor.inflight.dot === null) editor.held.push(message);
      else applyChange(message);
      break;
    }
    case "ack": {
      if (editor.inflight && message.id === editor.inflight.id) {
        editor.inflight.dot = message.dot;
        const held = editor.held.splice(0);
        held.forEach(applyChange);
      }
      break;
    }
    case "error": {
      if (editor.inflight && message.id === editor.inflight.id) {
        // Refused: what it did here cannot stand; read the document again.
        problem(`an edit was refused (${message.error}): ${message.message}`);
        editor.inflight = null;
        editor.held = [];
        editor.replica.free();
        editor.replica = null;
        editor.socket.close();
      }
      break;
    }
  }
}

/** Applies a change the node sent; if it is the node's version of the batch in
 * flight, settles the batch in the same step (the page never shows both). */
function applyChange(message) {
  const ours = editor.inflight && editor.inflight.dot === message.dot;
  // All of a write's text operations at once: settling pairs them with its edits.
  const ops = message.changes
    .filter((change) => change.path === path && change.action === "text.ops")
    .flatMap((change) => change.value);
  update(() => {
    if (ops.length) editor.replica.apply(ops);
    if (ours) editor.replica.settle();
  });
  editor.context = message.context;
  if (ours) editor.inflight = null;
  if (message.changes.some((c) => c.path.startsWith("/_editors"))) refreshEditors();
  flush();
}

let refreshing = null;
/** Reads the document for `/_editors` (presence changes come as changes of it). */
function refreshEditors() {
  if (refreshing) return;
  refreshing = setTimeout(async () => {
    refreshing = null;
    const auth = token ? `?access_token=${encodeURIComponent(token)}` : "";
    const response = await fetch(`/v1/docs/${encodeURIComponent(collection)}/${encodeURIComponent(key)}${auth}`);
    if (response.ok) showEditors(await response.json());
  }, 200);
}

let retry = 250;
function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const auth = token ? `?access_token=${encodeURIComponent(token)}` : "";
  const url = `${scheme}://${location.host}/v1/docs/${encodeURIComponent(collection)}/${encodeURIComponent(key)}/live${auth}`;
  const socket = new WebSocket(url);
  editor.socket = socket;
  socket.onopen = () => {
    editor.online = true;
    retry = 250;
    setState("online");
  };
  socket.onmessage = (event) => onMessage(JSON.parse(event.data));
  socket.onclose = () => {
    editor.online = false;
    editor.held = []; // The next snapshot holds them.
    setState("offline", "offline: edits are kept");
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 5000);
  };
}

/** Every few seconds, a page that typed nothing says it is still here. */
setInterval(() => {
  if (!editor.online || editor.inflight || !editor.replica) return;
  editor.batches += 1;
  const number = editor.batches;
  editor.inflight = { id: number, number, dot: null };
  editor.socket.send(JSON.stringify({ id: number, context: editor.context, ops: presenceOps(number) }));
}, 5000);

window.addEventListener("offline", () => editor.socket?.close());

try {
  await loadWasm();
  connect();
} catch (error) {
  problem(error.message);
  setState("offline", "unavailable");
}
