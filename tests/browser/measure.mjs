// Measures of the pages (not part of the test suite: `cargo run --release -p
// chorus-bench -- pages` starts the clusters and runs it; it takes the screenshots
// in docs/screenshots/ again): keystroke to visible on the other leader's page, without and
// with WAN delay between the leaders (CHORUS_URLS and CHORUS_WAN_URLS: two clusters);
// the page's memory after the automerge-paper trace is typed into its replica; the
// size of the pages' assets.

import { readFileSync, mkdirSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { browser, openEditor, textOf, typeAt, waitFor } from "./lib.mjs";

const keystrokes = Number(process.env.CHORUS_KEYSTROKES ?? 300);
const root = new URL("../../", import.meta.url);

async function crdt(url, key) {
  await fetch(`${url}/v1/collections/notes`, {
    method: "PUT",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ policy: "crdt" }),
  });
  await fetch(`${url}/v1/docs/notes/${key}/ops`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify([{ op: "text.insert", path: "/text", pos: 0, text: "Measured. " }]),
  });
}

/** p50 and p99 of keystroke to visible on the other leader's page, in ms. */
async function latency(chrome, [a, b], label) {
  const key = `latency-${label}`;
  await crdt(a, key);
  const left = await openEditor(chrome, a, "notes", key, "left");
  const right = await openEditor(chrome, b, "notes", key, "right");
  await waitFor("both pages show the text", async () => (await textOf(right)).startsWith("Measured."));
  // Timestamps taken in the pages (one browser, one clock): the keystroke's input
  // event on the left, the text shown with it on the right.
  const now = () => performance.timeOrigin + performance.now();
  await left.page.evaluate(`document.getElementById("text").addEventListener("input", () => { window.typedAt = (${now})(); })`);
  await right.page.evaluate(`window.chorusEditor.onShow = () => { window.shownAt = (${now})(); }`);
  const samples = [];
  for (let i = 0; i < keystrokes; i++) {
    const before = (await textOf(right)).length;
    await typeAt(left, 0, String.fromCharCode(0x3b1 + (i % 20)));
    await waitFor("the keystroke on the other page", async () => (await textOf(right)).length > before);
    const [typed, shown] = [await left.page.evaluate("window.typedAt"), await right.page.evaluate("window.shownAt")];
    samples.push(shown - typed);
  }
  samples.sort((x, y) => x - y);
  const at = (p) => samples[Math.min(samples.length - 1, Math.floor((samples.length * p) / 100))].toFixed(1);
  console.log(`keystroke to visible on the other leader's page (${label}): p50 ${at(50)} ms, p99 ${at(99)} ms over ${keystrokes}`);
  return { left, right };
}

const [a, b] = process.env.CHORUS_URLS.split(",");
const chrome = await browser();
try {
  await latency(chrome, [a, b], "loopback");
  if (process.env.CHORUS_WAN_URLS) {
    await latency(chrome, process.env.CHORUS_WAN_URLS.split(","), `WAN ${process.env.CHORUS_WAN_MS} ms`);
  }

  // Screenshots of the editor and the dashboard.
  mkdirSync(new URL("docs/screenshots/", root), { recursive: true });
  await crdt(a, "welcome");
  const ada = await openEditor(chrome, a, "notes", "welcome", "ada");
  const grace = await openEditor(chrome, b, "notes", "welcome", "grace");
  await typeAt(ada, 0, "Chorus: many people edit one text at once, on any leader, online or offline.\n\n");
  await typeAt(grace, [...(await textOf(grace))].length, "\nEvery replica ends with the same text; words typed at one place never interleave.");
  await waitFor("both pages alike", async () => (await textOf(ada)) === (await textOf(grace)) && (await textOf(ada)).includes("interleave."));
  await waitFor("presence", async () => (await ada.page.$eval("#editors", (e) => e.textContent)).includes("grace"));
  await ada.page.screenshot({ path: new URL("docs/screenshots/editor.png", root).pathname });
  const dashboard = await (await chrome.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  await dashboard.goto(`${a}/ui/`);
  await waitFor("the dashboard drawn", async () => (await dashboard.$$("[data-node]")).length >= 2);
  await dashboard.screenshot({ path: new URL("docs/screenshots/dashboard.png", root).pathname, fullPage: true });

  // Memory after the automerge-paper trace typed into a page's replica.
  const trace = JSON.parse(gunzipSync(readFileSync(new URL("crates/chorus-text/tests/traces/automerge-paper.json.gz", root))));
  const patches = trace.txns.flatMap((t) => t.patches);
  const page = await (await chrome.newContext()).newPage();
  await page.goto(`${a}/ui/`);
  await page.evaluate(async (patches) => {
    const text = await import("/ui/assets/text.js");
    await text.loadWasm();
    gc();
    window.heapBefore = performance.memory.usedJSHeapSize;
    window.wasmBefore = text.memoryBytes();
    window.replica = new text.TextReplica(null, "00000000000000ff");
    const started = performance.now();
    for (const [pos, del, inserted] of patches) {
      if (del > 0) window.replica.delete(pos, del);
      if (inserted) window.replica.insert(pos, inserted);
    }
    window.replayMs = performance.now() - started;
  }, patches);
  const memory = await page.evaluate(async () => {
    const text = await import("/ui/assets/text.js");
    gc();
    return {
      ms: window.replayMs,
      chars: window.replica.length,
      heap: performance.memory.usedJSHeapSize - window.heapBefore,
      wasm: text.memoryBytes(),
      wasmBefore: window.wasmBefore,
    };
  });
  console.log(
    `automerge-paper typed into a page's replica (as local edits, not yet sent): ${patches.length} patches in ${memory.ms.toFixed(0)} ms, ${memory.chars} characters; WebAssembly memory ${(memory.wasm / 1e6).toFixed(1)} MB (${(memory.wasmBefore / 1e6).toFixed(1)} MB before); JS heap change ${(memory.heap / 1e6).toFixed(1)} MB`,
  );

  // The assets a page loads.
  let total = 0;
  for (const name of ["style.css", "editor.js", "text.js", "chorus.js", "dashboard.js", "chorus_wasm.wasm"]) {
    const bytes = (await (await fetch(`${a}/ui/assets/${name}`)).arrayBuffer()).byteLength;
    total += bytes;
    console.log(`asset ${name}: ${bytes} B`);
  }
  console.log(`assets in all: ${total} B (the pages' HTML aside)`);
} finally {
  await chrome.close();
}
