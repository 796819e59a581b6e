// The fleet page: one row per device, redrawn from every fleet event; filter and sort in the browser.
"use strict";

const fleet = { devices: [], sort: "id", dir: 1 };

function fleetRows() {
  const text = document.getElementById("filter").value.trim().toLowerCase();
  const want = document.getElementById("state").value;
  const rows = fleet.devices
    .map((d) => ({ ...d, state: dash.state(d.online) }))
    .filter((d) => !want || d.state === want)
    .filter((d) => !text || [d.id, d.agent_version, dash.models(d.models)].join(" ").toLowerCase().includes(text));
  const key = fleet.sort;
  rows.sort((a, b) => {
    const x = a[key] ?? -Infinity, y = b[key] ?? -Infinity;
    return (x < y ? -1 : x > y ? 1 : 0) * fleet.dir || a.id.localeCompare(b.id);
  });
  return rows;
}

function drawFleet() {
  const rows = fleetRows();
  const body = document.querySelector("#fleet tbody");
  body.replaceChildren(...rows.map((d) => dash.el("tr", { "data-device": d.id },
    dash.el("td", {}, dash.el("a", { href: `/dashboard/devices/${encodeURIComponent(d.id)}` }, d.id)),
    dash.el("td", { class: "state" }, dash.badge(d.state)),
    dash.el("td", { title: dash.time(d.last_seen) }, dash.ago(d.last_seen)),
    dash.el("td", {}, d.agent_version || "-"),
    dash.el("td", {}, dash.models(d.models)),
    dash.el("td", { class: "num" }, d.outbox_depth ?? "-"),
    dash.el("td", { class: "num results" }, String(d.results_last_hour)),
    dash.el("td", { class: "drift" }, ...Object.entries(d.drift || {}).map(([m, psi]) =>
      dash.el("span", { class: `badge ${(d.drifted || []).includes(m) ? "failed drifted" : "active"}`, "data-model": m,
        title: (d.drifted || []).includes(m) ? "inputs drifted from the model's reference (PSI > 0.25)" : "within the reference" },
      `${m} ${Number(psi).toFixed(2)}`))))));
  const online = fleet.devices.filter((d) => d.online).length;
  document.getElementById("count").textContent = `${online} of ${fleet.devices.length} online`;
  const empty = document.getElementById("fleet-empty");
  empty.hidden = rows.length > 0;
  empty.textContent = fleet.devices.length === 0
    ? "No devices yet. Start an edge agent with its sync role pointed at this cloud's MQTT broker " +
      "(EDGE_SYNC__BROKER_HOST, EDGE_SYNC__BROKER_PORT); it appears here as soon as it connects."
    : "No device matches the filter.";
}

document.addEventListener("DOMContentLoaded", async () => {
  await dash.session();
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.addEventListener("click", () => {
      fleet.dir = fleet.sort === th.dataset.sort ? -fleet.dir : 1;
      fleet.sort = th.dataset.sort;
      for (const other of document.querySelectorAll("th[data-sort]")) other.classList.remove("asc", "desc");
      th.classList.add(fleet.dir > 0 ? "asc" : "desc");
      drawFleet();
    });
  }
  document.getElementById("filter").addEventListener("input", drawFleet);
  document.getElementById("state").addEventListener("change", drawFleet);
  dash.live((snap) => { fleet.devices = snap.devices; drawFleet(); });
  setInterval(drawFleet, 10000); // keeps "last seen ... ago" current between events
});
