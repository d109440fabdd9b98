// The dashboard: the cluster (members, planned and actual links, unreachable nodes,
// each link's lag, as every member reports them), collections and their policies
// (changeable), a document browser, and the conflict log, with each open
// conflict's versions side by side and buttons to resolve it with one of them.
// It reads only the public HTTP API (through the JavaScript client), every second.

import { Chorus } from "./chorus.js";

const token = new URLSearchParams(location.search).get("access_token") ?? undefined;
const db = new Chorus([location.origin], { token });
const $ = (selector) => document.querySelector(selector);
const esc = (text) =>
  String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const POLICIES = ["siblings", "lww", "merge", "custom", "crdt"];

async function about() {
  return (await db.request("GET", "/")).body;
}

function setState(ok, text) {
  $("#state").className = `state ${ok ? "online" : "offline"}`;
  $("#state").textContent = text;
}

/** The cluster on a circle: every member (as `GET /v1/cluster/status` gathers them;
 * this node alone without it), every planned link (dashed) and those up (green, with
 * the larger lag either side reports), members that did not answer or that this
 * node finds unreachable (red). Below, this node's peers. */
function drawCluster(members, status, views) {
  const svg = $("#picture");
  const self = status.node;
  const answered = new Map((views ?? [{ name: self, status }]).filter((v) => v.status).map((v) => [v.name, v.status]));
  const unreachable = new Set(status.links?.unreachable ?? []);
  for (const view of views ?? []) if (view.error) unreachable.add(view.name);
  const [cx, cy, r] = [320, 130, 95];
  const place = new Map(
    members.map((name, i) => {
      const angle = (2 * Math.PI * i) / members.length - Math.PI / 2;
      return [name, [cx + r * Math.cos(angle), cy + r * Math.sin(angle)]];
    }),
  );
  // Each link once, from what either end reports.
  const links = new Map();
  for (const [name, view] of answered) {
    const peers = new Map((view.peers ?? []).map((p) => [p.name, p]));
    const actual = new Set(view.links?.actual ?? []);
    for (const other of view.links?.planned ?? []) {
      if (!place.has(other)) continue;
      const pair = [name, other].sort().join(" ");
      const link = links.get(pair) ?? { ends: [name, other].sort(), up: false, lag: null };
      const peer = peers.get(other);
      if (actual.has(other) && peer?.connected) link.up = true;
      if (peer && (!link.lag || peer.lag_ops > link.lag.lag_ops)) link.lag = peer;
      links.set(pair, link);
    }
  }
  const lines = [...links.values()].map(({ ends: [p, q], up, lag }) => {
    const [[x1, y1], [x2, y2]] = [place.get(p), place.get(q)];
    const down = unreachable.has(p) || unreachable.has(q);
    const kind = up && !down ? "link" : down ? "link down" : "link planned";
    const label = up && lag ? `${lag.lag_ops} · ${lag.lag_ms} ms` : "";
    return `<line class="${kind}" data-link="${esc(p)} ${esc(q)}" x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}"/>
      <text x="${(x1 + x2) / 2 + 6}" y="${(y1 + y2) / 2 - 6}" class="muted">${esc(label)}</text>`;
  });
  const nodes = members.map((name) => {
    const [x, y] = place.get(name);
    const kind = ["node", name === self ? "self" : "", unreachable.has(name) ? "unreachable" : ""].join(" ");
    return `<g class="${kind}" data-node="${esc(name)}"><circle cx="${x}" cy="${y}" r="24"/>
      <text x="${x}" y="${y + 4}" text-anchor="middle">${esc(name)}</text></g>`;
  });
  svg.innerHTML = lines.join("") + nodes.join("");
  $("#peers tbody").innerHTML = (status.peers ?? [])
    .map((p) => {
      const state = unreachable.has(p.name) ? "unreachable" : p.connected ? "connected" : "not connected";
      return `<tr data-peer="${esc(p.name)}"><td>${esc(p.name)}</td><td class="link-state">${state}</td>
        <td>${p.lag_ops}</td><td>${p.lag_ms}</td></tr>`;
    })
    .join("");
}

async function showCollections() {
  const { collections } = await db.collections();
  $("#collections tbody").innerHTML = collections
    .map(
      (c) => `<tr><td>${esc(c.name)}</td><td><select data-collection="${esc(c.name)}">${POLICIES.map(
        (p) => `<option${p === c.policy ? " selected" : ""}>${p}</option>`,
      ).join("")}</select></td><td class="muted">${c.explicit ? "" : "default"}</td></tr>`,
    )
    .join("");
  const choose = $("#collection");
  const chosen = choose.value;
  choose.innerHTML = collections.map((c) => `<option${c.name === chosen ? " selected" : ""}>${esc(c.name)}</option>`).join("");
}

$("#collections").addEventListener("change", async (event) => {
  const collection = event.target.dataset.collection;
  if (!collection) return;
  try {
    await db.setCollection(collection, { policy: event.target.value });
  } catch (error) {
    alert(`${collection}: ${error.message}`);
  }
  showCollections();
});

async function browse() {
  const collection = $("#collection").value;
  if (!collection) return;
  const { keys } = await db.list(collection, { prefix: $("#prefix").value || undefined, limit: 50 });
  const rows = await Promise.all(
    keys.map(async (key) => {
      const doc = await db.get(collection, key);
      const value = doc?.value ?? doc?.versions?.map((v) => v.value);
      const edit = `/ui/edit/${encodeURIComponent(collection)}/${encodeURIComponent(key)}`;
      return `<tr><td>${esc(key)}</td><td><pre>${esc(JSON.stringify(value))}</pre></td>
        <td><a href="${edit}">edit text</a></td></tr>`;
    }),
  );
  $("#documents tbody").innerHTML = rows.join("");
}
$("#browse").addEventListener("click", browse);

async function showConflicts() {
  if (document.activeElement?.dataset?.valueFor) return; // Someone is writing a resolution.
  const { conflicts } = await db.conflicts({ limit: 50 });
  const open = conflicts.filter((c) => !c.resolved);
  $("#conflict-list").innerHTML = open.length
    ? open
        .map(
          (c) => `<div class="conflict" data-id="${c.id}"><p><b>${esc(c.collection)}/${esc(c.key)}</b>
          <span class="muted">${esc(c.policy)} · ${esc(c.outcome)}</span></p><div class="versions">${c.versions
            .map(
              (v) => `<div class="version"><h3>from ${esc(v.origin)} · ${esc(v.dot)}</h3>
                <pre>${esc(JSON.stringify(v.value, null, 2))}</pre>
                <button data-id="${c.id}" data-pick="${esc(v.dot)}">keep this one</button></div>`,
            )
            .join("")}<div class="version"><h3>or a new document</h3>
              <textarea data-value-for="${c.id}" rows="4" style="width:100%">${esc(
                JSON.stringify(c.versions[0]?.value ?? {}, null, 2),
              )}</textarea>
              <button data-id="${c.id}" data-resolve="value">resolve with this</button></div></div></div>`,
        )
        .join("")
    : "none";
}

$("#conflicts").addEventListener("click", async (event) => {
  const { id, pick, resolve } = event.target.dataset;
  if (!id || !(pick || resolve)) return;
  event.target.disabled = true;
  try {
    if (pick) await db.resolve(id, { pick });
    else await db.resolve(id, { value: JSON.parse($(`[data-value-for="${id}"]`).value) });
  } catch (error) {
    alert(error.message);
  }
  showConflicts();
});

async function refresh() {
  try {
    const [info, status, views] = await Promise.all([
      about(),
      db.status(),
      db.request("GET", "/v1/cluster/status").then((r) => r.body.nodes, () => null),
    ]);
    $("#node").textContent = `node ${info.node}`;
    drawCluster(info.members ?? [status.node], status, views);
    setState(true, "live");
    await Promise.all([showConflicts(), $("#collection").options.length ? null : showCollections()]);
  } catch (error) {
    setState(false, `unreachable: ${error.message}`);
  }
}

await showCollections();
await refresh();
setInterval(refresh, 1000);
