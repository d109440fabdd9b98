// The dashboard against a three-leader cluster: it shows the cluster (every link,
// those between the other nodes too), a conflict
// resolved from the page (keeping one version) leaves every node's open conflicts,
// and a node killed with SIGKILL shows as unreachable within the cluster's heal
// time. Node URLs in CHORUS_URLS, their process ids in CHORUS_PIDS, the heal time
// in CHORUS_HEAL_MS; the dashboard opens on the first node.

import { assert, browser, urls, waitFor } from "./lib.mjs";

const nodes = urls();
const pids = (process.env.CHORUS_PIDS ?? "").split(",").map(Number);
const healMs = Number(process.env.CHORUS_HEAL_MS ?? 5000);
const [a, b] = nodes;

const chrome = await browser();
try {
  const page = await (await chrome.newContext()).newPage();
  page.on("pageerror", (error) => console.error(`page error: ${error.message}`));
  await page.goto(`${a}/ui/`);
  await waitFor("every member drawn, every link up, those between other nodes too", async () => {
    const drawn = await page.$$eval("[data-node]", (gs) => gs.length);
    const up = await page.$$eval("line.link", (lines) => lines.filter((l) => l.getAttribute("class") === "link").length);
    const between = await page.$$eval('line[data-link="n1 n2"]', (lines) => lines.map((l) => l.getAttribute("class")));
    return drawn === nodes.length && up === (nodes.length * (nodes.length - 1)) / 2 && between[0] === "link";
  });

  // A conflict: the same key written on two leaders at once (blind writes).
  for (const [url, name] of [[a, "from a"], [b, "from b"]]) {
    const res = await fetch(`${url}/v1/docs/people/ada`, {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name }),
    });
    assert(res.ok, `write on ${url}: ${res.status}`);
  }
  const open = async (url) =>
    (await (await fetch(`${url}/v1/conflicts?collection=people`)).json()).conflicts.filter((c) => !c.resolved);
  await waitFor("the conflict on every node", async () => {
    for (const url of nodes) if ((await open(url)).length === 0) return false;
    return true;
  });
  const button = await waitFor("the conflict on the page", async () => page.$("button[data-pick]"));
  await button.click();
  await waitFor("the conflict resolved on every node", async () => {
    for (const url of nodes) if ((await open(url)).length > 0) return false;
    return true;
  });
  await waitFor("the conflict gone from the page", async () => (await page.$("button[data-pick]")) === null);

  // A node dies.
  const victim = nodes.length - 1;
  const name = await page.$$eval("[data-node]", (gs) => gs.map((g) => g.dataset.node));
  const killedAt = Date.now();
  process.kill(pids[victim], "SIGKILL");
  const dead = name.find((n) => n === `n${victim}`) ?? name[victim];
  await waitFor(
    `${dead} shown unreachable`,
    async () =>
      (await page.$eval(`#peers tr[data-peer="${dead}"] .link-state`, (c) => c.textContent)) === "unreachable",
    healMs + 10_000,
  );
  console.log(`killed node shown unreachable after ${Date.now() - killedAt} ms (heal time ${healMs} ms)`);
  await waitFor(`${dead}'s links drawn down`, async () =>
    (await page.$$eval(`line[data-link~="${dead}"]`, (lines) => lines.map((l) => l.getAttribute("class")))).every(
      (c) => c === "link down",
    ));
  console.log("dashboard: ok");
} finally {
  await chrome.close();
}
