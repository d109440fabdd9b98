// The dashboard: the cluster as this node sees it (members, its planned and actual
// links, unreachable nodes, each peer's lag), collections and their policies
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

/** The members on a circle; this node's links, planned (dashed) and actual. */
function drawCluster(members, status) {
  const svg = $("#picture");
  const self = status.node;
  const unreachable = new Set(status.links?.unreachable ?? []);
  const peers = new Map((status.peers ?? []).map((p) => [p.name, p]));
  const [cx, cy, r] = [320, 130, 95];
  const place = new Map(
    members.map((name, i) => {
      const angle = (2 * Math.PI * i) / members.length - Math.PI / 2;
      return [name, [cx + r * Math.cos(angle), cy + r * Math.sin(angle)]];
    }),
  );
  const [sx, sy] = place.get(self) ?? [cx, cy];
  const actual = new Set(status.links?.actual ?? []);
  const lines = (status.links?.planned ?? [])
    .filter((name) => place.has(name))
    .map((name) => {
      const [x, y] = place.get(name);
      const peer = peers.get(name);
      const up = actual.has(name) && peer?.connected;
      const kind = up ? "link" : unreachable.has(name) ? "link down" : "link planned";
      const lag = peer ? `${peer.lag_ops} · ${peer.lag_ms} ms` : "";
      return `<line class="${kind}" data-peer="${esc(name)}" x1="${sx}" y1="${sy}" x2="${x}" y2="${y}"/>
        <text x="${(sx + x) / 2 + 6}" y="${(sy + y) / 2 - 6}" class="muted">${esc(lag)}</text>`;
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
    const [info, status] = await Promise.all([about(), db.status()]);
    $("#node").textContent = `node ${info.node}`;
    drawCluster(info.members ?? [status.node], status);
    setState(true, "live");
    await Promise.all([showConflicts(), $("#collection").options.length ? null : showCollections()]);
  } catch (error) {
    setState(false, `unreachable: ${error.message}`);
  }
}

await showCollections();
await refresh();
setInterval(refresh, 1000);
