// The device page: status, command buttons that wait for the reply, telemetry plots, recent results.
"use strict";

const deviceId = decodeURIComponent(location.pathname.split("/").pop());
let newestResult;

function plot(title, points, unit = "") {
  const w = 400, h = 110, pad = 22;
  if (points.length < 2) return dash.el("p", { class: "muted" }, `${title}: not enough telemetry yet.`);
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys, 0), Math.max(...ys, 1)];
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (w - 2 * pad);
  const sy = (y) => h - pad + 8 - ((y - y0) / (y1 - y0 || 1)) * (h - 2 * pad);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "plot"); svg.setAttribute("viewBox", `0 0 ${w} ${h}`); svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "));
  const label = (x, y, text) => { const t = document.createElementNS(ns, "text"); t.setAttribute("x", x); t.setAttribute("y", y); t.textContent = text; return t; };
  svg.append(line, label(pad, 10, `${title}: now ${ys[ys.length - 1]}${unit}, max ${y1}${unit}`),
    label(pad, h - 2, new Date(x0 * 1000).toLocaleTimeString()), label(w - pad - 50, h - 2, new Date(x1 * 1000).toLocaleTimeString()));
  return svg;
}

async function loadTelemetry() {
  const doc = await dash.api(`/telemetry?device=${encodeURIComponent(deviceId)}&limit=300`);
  const rows = doc.telemetry.slice().reverse();
  const series = (key, scale = 1) => rows.filter((r) => r.metrics[key] !== undefined).map((r) => [r.ts, Math.round(r.metrics[key] / scale)]);
  const drift = [...new Set(rows.flatMap((r) => Object.keys(r.metrics).filter((k) => k.startsWith("drift_psi."))))];
  document.getElementById("plots").replaceChildren(
    plot("Outbox depth", series("outbox_depth")), plot("Memory (RSS)", series("rss_bytes", 1048576), " MiB"),
    ...drift.map((k) => plot(`Input drift of ${k.slice(10)} (PSI x 1000; > 250: drifted)`, series(k, 0.001))));
}

async function loadResults() {
  const doc = await dash.api(`/results?device=${encodeURIComponent(deviceId)}&limit=20`);
  document.querySelector("#results tbody").replaceChildren(...doc.results.map((r) => dash.el("tr", { "data-result": r.id },
    dash.el("td", {}, dash.time(r.created)), dash.el("td", {}, `${r.model} ${r.version}`),
    dash.el("td", {}, r.label || "-"), dash.el("td", {}, dash.el("code", {}, JSON.stringify(r.body))))));
  const empty = document.getElementById("results-empty");
  empty.hidden = doc.results.length > 0;
  empty.textContent = "No results from this device yet: they appear here as soon as its outbox is delivered.";
}

async function sendCommand(name, button) {
  const out = document.getElementById("command-out");
  const buttons = document.querySelectorAll("button[data-command]");
  buttons.forEach((b) => { b.disabled = true; });
  out.replaceChildren(dash.el("p", { class: "muted" }, `${name}: sent, waiting for ${deviceId} to reply...`));
  try {
    const cmd = await dash.api("/commands", { method: "POST", body: { device: deviceId, name, args: {} } });
    const done = await dash.api(`/commands/${cmd.id}?wait=15`);
    if (done.reply) {
      const ok = done.reply.ok;
      out.replaceChildren(dash.el("p", { class: ok ? "reply-ok" : "error" }, `${name}: ${ok ? "replied" : "failed"}`),
        dash.el("pre", { class: "reply" }, JSON.stringify(ok ? done.reply.result : done.reply.error, null, 2)));
    } else if (done.state === "failed") {
      out.replaceChildren(dash.el("p", { class: "error" }, `${name}: could not be sent (${done.error}).`));
    } else {
      out.replaceChildren(dash.el("p", { class: "error" }, `${name}: no reply within 15 s. The device may be offline ` +
        "or busy; the command stays queued on the broker and runs when it reconnects (until it expires)."));
    }
  } catch (e) {
    out.replaceChildren(dash.el("p", { class: "error" }, `${name}: ${e.message}`));
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("device-id").textContent = deviceId;
  await dash.session();
  for (const b of document.querySelectorAll("button[data-command]")) b.addEventListener("click", () => sendCommand(b.dataset.command, b));
  const safely = (f) => f().catch((e) => dash.banner("load", `Could not load this device: ${e.message}`));
  safely(loadResults); safely(loadTelemetry);
  let lastTelemetry = Date.now();
  dash.live((snap) => {
    const d = snap.devices.find((x) => x.id === deviceId);
    if (!d) { document.getElementById("device-info").textContent = "The cloud has never heard from this device."; return; }
    document.getElementById("device-state").replaceChildren(dash.badge(dash.state(d.online)));
    document.getElementById("device-info").textContent = `Last seen ${dash.ago(d.last_seen)} - agent ${d.agent_version || "?"} - ` +
      `models ${dash.models(d.models)} - outbox ${d.outbox_depth ?? "?"} - ${d.results_last_hour} results in the last hour`;
    if (snap.newest_result !== newestResult) { newestResult = snap.newest_result; safely(loadResults); }
    if (Date.now() - lastTelemetry > 5000) { lastTelemetry = Date.now(); safely(loadTelemetry); }
  });
});
