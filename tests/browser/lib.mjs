// Shared by the browser scenarios: Debian's chromium through playwright-core, and
// waiting on conditions with a deadline (never sleeping as synchronisation).

import { chromium } from "playwright-core";

export const DEADLINE_MS = 30_000;

/** Debian's chromium, headless, with the flags this machine's closed network needs. */
export async function browser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
      // Measures collect garbage before reading the heap.
      "--js-flags=--expose-gc",
      "--enable-precise-memory-info",
    ],
  });
}

/** Waits until `condition()` (maybe async) is truthy; fails naming `what`. */
export async function waitFor(what, condition, deadlineMs = DEADLINE_MS) {
  const started = Date.now();
  let last;
  for (;;) {
    try {
      last = await condition();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() - started > deadlineMs) {
      throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

export function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

/** The node URLs the Rust side started (`CHORUS_URLS`, comma separated). */
export function urls() {
  const list = (process.env.CHORUS_URLS ?? "").split(",").filter(Boolean);
  assert(list.length > 0, "CHORUS_URLS names the nodes");
  return list;
}

/** Opens the editor of `collection/key` on node `url` in a new context (its own
 * network state); waits until it shows the document. */
export async function openEditor(b, url, collection, key, name) {
  const context = await b.newContext();
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error(`page error (${name}): ${error.message}`));
  await page.goto(`${url}/ui/edit/${collection}/${key}?name=${name}`);
  await page.waitForSelector("#text:not([disabled])", { timeout: DEADLINE_MS });
  return { context, page, name };
}

/** The text an editor page shows. */
export function textOf(editor) {
  return editor.page.$eval("#text", (area) => area.value);
}

/** Types `text` into an editor page at code point `pos` (the cursor put there). */
export async function typeAt(editor, pos, text, delay = 0) {
  await editor.page.$eval(
    "#text",
    (area, pos) => {
      area.focus();
      const units = [...area.value].slice(0, pos).join("").length;
      area.setSelectionRange(units, units);
    },
    pos,
  );
  await editor.page.keyboard.type(text, { delay });
}
