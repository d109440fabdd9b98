// The JavaScript client in Node.js against a real node: failover past a dead URL,
// documents with contexts, CRDT text operations against an old read, the change
// feed, and a live subscription (server-sent events here: Node.js 20 has no
// WebSocket). The node's URL in CHORUS_URLS; a URL nothing listens on first.

import { Chorus, ChorusError } from "../../clients/js/chorus.js";
import { assert, urls, waitFor } from "./lib.mjs";

const [url] = urls();
const db = new Chorus(["http://127.0.0.1:9", url]);

// Failover: the first URL refuses connections; the client moves on and stays.
const first = await db.put("people", "ada", { name: "Ada" });
assert(db.url === url, `moved to the live node: ${db.url}`);
const read = await db.get("people", "ada");
assert(read.value.name === "Ada" && read.context === first.context, JSON.stringify(read));
// A write with the read's context replaces it; a blind one stands beside it.
await db.put("people", "ada", { name: "Ada Lovelace" }, { context: read.context });
await db.put("people", "ada", { name: "Ada L." });
const both = await db.get("people", "ada");
assert(both.conflict && both.versions.length === 2, JSON.stringify(both));
assert((await db.get("people", "nobody")) === null, "a missing document is null");
let refused;
try {
  await db.put("people", "ada", "{not json");
} catch (error) {
  refused = error;
}
assert(refused instanceof ChorusError && refused.status === 400, `bad JSON refused: ${refused}`);

// Text: an insert made against an old read lands where it was meant.
await db.setCollection("notes", { policy: "crdt" });
const made = await db.ops("notes", "n1", [{ op: "text.insert", path: "/text", pos: 0, text: "brown fox" }]);
await db.ops("notes", "n1", [{ op: "text.insert", path: "/text", pos: 0, text: "The " }]);
const late = await db.ops("notes", "n1", [{ op: "text.insert", path: "/text", pos: 9, text: " jumps" }], {
  context: made.context,
});
assert(late.value.text === "The brown fox jumps", JSON.stringify(late));

// The change feed lists every document.
const keys = [];
for await (const change of db.changes()) keys.push(`${change.collection}/${change.key}`);
assert(keys.includes("people/ada") && keys.includes("notes/n1"), keys.join(" "));

// Live: a snapshot, then a change with the text operations.
const messages = [];
const live = db.live("notes", "n1", (message) => messages.push(message));
await live.opened;
await waitFor("the snapshot", () => messages.some((m) => m.type === "snapshot"));
await db.ops("notes", "n1", [{ op: "text.insert", path: "/text", pos: 0, text: "¡" }]);
const change = await waitFor("the change", () => messages.find((m) => m.type === "change"));
assert(change.changes[0].action === "text.ops" && change.changes[0].value[0].insert === "¡", JSON.stringify(change));
live.close();
console.log("client: ok");
