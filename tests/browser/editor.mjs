// Two pages on two leaders type into one text: at one place at once, then at
// different places; then one page goes offline, both type, it comes back. Both end
// with the same text, every word whole and once. Also measures keystroke to visible
// on the other leader's page. Node URLs in CHORUS_URLS (two leaders of a cluster).

import { assert, browser, openEditor, textOf, typeAt, urls, waitFor } from "./lib.mjs";

const [a, b] = urls();
const collection = "notes";
const key = process.env.CHORUS_KEY ?? "shared";

const res = await fetch(`${a}/v1/collections/${collection}`, {
  method: "PUT",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ policy: "crdt" }),
});
assert(res.ok, `crdt collection: ${res.status}`);
await waitFor("the crdt setting on both", async () => {
  for (const url of [a, b]) {
    const c = await (await fetch(`${url}/v1/collections/${collection}`)).json();
    if (c.policy !== "crdt") return false;
  }
  return true;
});
const seed = await fetch(`${a}/v1/docs/${collection}/${key}/ops`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify([{ op: "text.insert", path: "/text", pos: 0, text: "Start. End." }]),
});
assert(seed.ok, `seed: ${seed.status} ${await seed.text()}`);

const chrome = await browser();
try {
  const left = await openEditor(chrome, a, collection, key, "left");
  const right = await openEditor(chrome, b, collection, key, "right");
  await waitFor("both pages to show the seed", async () =>
    (await textOf(left)) === "Start. End." && (await textOf(right)) === "Start. End.");

  const same = async (what) => {
    let text;
    await waitFor(what, async () => {
      const [l, r] = [await textOf(left), await textOf(right)];
      text = l;
      return l === r;
    });
    return text;
  };
  const whole = (text, words) => {
    for (const word of words) {
      assert(text.split(word).length === 2, `${JSON.stringify(word)} whole and once in ${JSON.stringify(text)}`);
    }
  };

  // At one place at once: right after "Start.".
  await Promise.all([typeAt(left, 6, " alpha beta gamma", 5), typeAt(right, 6, " one two three", 5)]);
  let text = await same("one text after typing at one place");
  whole(text, [" alpha beta gamma", " one two three"]);

  // At different places at once.
  const end = [...text].length;
  await Promise.all([typeAt(left, 0, "Title: ", 5), typeAt(right, end, " PS", 5)]);
  text = await same("one text after typing at two places");
  whole(text, ["Title: ", " alpha beta gamma", " one two three", " PS"]);

  // Offline: the left page keeps typing; so does the right one; back online.
  await left.context.setOffline(true);
  await waitFor("the left page to know it is offline", async () =>
    (await left.page.$eval("#state", (s) => s.className)).includes("offline"));
  await typeAt(left, 0, "[offline words] ", 5);
  await typeAt(right, [...(await textOf(right))].length, " [online words]", 5);
  await left.context.setOffline(false);
  text = await same("one text after the left page came back");
  whole(text, ["[offline words] ", " [online words]", "Title: ", " alpha beta gamma", " one two three", " PS"]);
  const node = await (await fetch(`${a}/v1/docs/${collection}/${key}`)).json();
  assert(node.value.text === text, `the node shows the pages' text: ${JSON.stringify(node.value.text)}`);

  // Presence: each page names the other.
  await waitFor("presence on both pages", async () =>
    (await left.page.$eval("#editors", (e) => e.textContent)).includes("right") &&
    (await right.page.$eval("#editors", (e) => e.textContent)).includes("left"));

  // Keystroke to visible on the other leader's page.
  const samples = [];
  const count = Number(process.env.CHORUS_KEYSTROKES ?? 100);
  for (let i = 0; i < count; i++) {
    const mark = String.fromCharCode(0x3b1 + (i % 20));
    const before = (await textOf(right)).length;
    const started = performance.now();
    await typeAt(left, 0, mark);
    await waitFor("the keystroke on the other page", async () => (await textOf(right)).length > before);
    samples.push(performance.now() - started);
  }
  samples.sort((x, y) => x - y);
  const pct = (p) => samples[Math.min(samples.length - 1, Math.floor((samples.length * p) / 100))].toFixed(1);
  console.log(`keystroke to visible on the other leader's page: p50 ${pct(50)} ms, p99 ${pct(99)} ms over ${count}`);
  console.log("editor: ok");
} finally {
  await chrome.close();
}
