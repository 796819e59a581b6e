// Models and deployments: published versions, a deploy form, per-device rollout state (live).
"use strict";

const catalog = {};
let lastUpdate;
let lastBench;

async function loadModels() {
  const { models } = await dash.api("/models");
  const box = document.getElementById("models");
  if (models.length === 0) {
    box.replaceChildren(dash.el("p", { class: "empty" }, "No model published yet: run " +
      "`cloud-sync models publish PACKAGE_DIR --key signing.pem`, then reload this page."));
    return;
  }
  const full = await Promise.all(models.map((m) => dash.api(`/models/${encodeURIComponent(m.name)}`)));
  for (const m of full) catalog[m.name] = m.versions.map((v) => v.version);
  box.replaceChildren(dash.el("table", {}, dash.el("tr", {}, dash.el("th", {}, "Model"), dash.el("th", {}, "Version"),
    dash.el("th", {}, "Signed"), dash.el("th", {}, "Published")),
  ...full.flatMap((m) => m.versions.map((v) => dash.el("tr", {}, dash.el("td", {}, m.name), dash.el("td", {}, v.version),
    dash.el("td", {}, v.signature ? `key ${v.key_id}` : "unsigned"), dash.el("td", {}, dash.time(v.created)))))));
  const model = document.querySelector("[name=model]");
  model.replaceChildren(...Object.keys(catalog).map((n) => dash.el("option", {}, n)));
  model.onchange = () => document.querySelector("[name=version]").replaceChildren(
    ...(catalog[model.value] || []).map((v) => dash.el("option", {}, v)));
  model.onchange();
}

function drawDevices(devices) {
  const box = document.getElementById("device-boxes");
  if (box.childElementCount === devices.length) return;
  box.replaceChildren(...devices.map((d) => dash.el("label", {}, dash.el("span", {},
    dash.el("input", { type: "checkbox", name: "device", value: d.id }), ` ${d.id}`))));
}

async function loadDeployments() {
  const { deployments } = await dash.api("/deployments?limit=10");
  const box = document.getElementById("deployments");
  if (deployments.length === 0) { box.replaceChildren(dash.el("p", { class: "empty" }, "No deployment yet: use the form above.")); return; }
  box.replaceChildren(...deployments.map((d) => dash.el("section", { class: "card", "data-deployment": d.id },
    dash.el("h2", {}, `${d.model} ${d.version} `, dash.el("span", { class: "muted" }, `${dash.time(d.created)} - ${d.id}`)),
    dash.el("table", {}, dash.el("tr", {}, dash.el("th", {}, "Device"), dash.el("th", {}, "State"), dash.el("th", {}, "Progress"), dash.el("th", {}, "Reason")),
      ...d.devices.map((r) => dash.el("tr", { "data-device": r.device }, dash.el("td", {}, r.device),
        dash.el("td", { class: "state" }, dash.badge(r.state)),
        dash.el("td", {}, r.progress === null ? "" : dash.el("progress", { max: 1, value: r.progress }), r.progress === null ? "" : ` ${Math.round(r.progress * 100)}%`),
        dash.el("td", { class: "reason" }, r.reason || "")))))));
}

// Latest `edge-agent models bench` figures per device and model: one row per batch size and thread count.
async function loadBench() {
  const { bench } = await dash.api("/bench");
  const box = document.getElementById("bench");
  if (bench.length === 0) {
    box.replaceChildren(dash.el("p", { class: "empty" }, "No benchmark reported yet: run " +
      "`edge-agent models bench NAME` on a device; its sync role reports the figures."));
    return;
  }
  const ms = (v) => v.toFixed(3);
  const head = ["Device", "Model", "Version", "Batch", "Threads", "p50 ms", "p99 ms", "Rows/s",
    "Preprocess p50", "Infer p50", "Postprocess p50", "Memory MB", "Measured"];
  box.replaceChildren(dash.el("table", {}, dash.el("tr", {}, ...head.map((h) => dash.el("th", {}, h))),
    ...bench.flatMap((b) => b.figures.rows.map((r) => dash.el("tr",
      { "data-device": b.device, "data-model": b.model, "data-batch": r.batch, "data-threads": r.threads },
      dash.el("td", {}, b.device), dash.el("td", {}, b.model), dash.el("td", {}, b.version),
      dash.el("td", {}, String(r.batch)), dash.el("td", {}, String(r.threads)),
      dash.el("td", { class: "p50" }, ms(r.p50_ms)), dash.el("td", { class: "p99" }, ms(r.p99_ms)),
      dash.el("td", { class: "rps" }, r.throughput_rps.toFixed(1)),
      dash.el("td", {}, ms(r.stages.preprocess.p50_ms)), dash.el("td", { class: "infer" }, ms(r.stages.infer.p50_ms)),
      dash.el("td", {}, ms(r.stages.postprocess.p50_ms)),
      dash.el("td", { class: "memory" }, b.figures.memory_mb === null ? "-" : b.figures.memory_mb.toFixed(1)),
      dash.el("td", {}, dash.time(b.ts)))))));
}

async function deploy(event) {
  event.preventDefault();
  const form = event.target, out = document.getElementById("deploy-out");
  const all = form.all.checked;
  const devices = [...form.querySelectorAll("[name=device]:checked")].map((b) => b.value);
  if (!all && devices.length === 0) { out.textContent = "Pick at least one device, or all devices."; return; }
  out.textContent = "Deploying...";
  try {
    const body = { model: form.model.value, version: form.version.value, ...(all ? { all: true } : { devices }) };
    const dep = await dash.api("/deployments", { method: "POST", body });
    out.textContent = `Deployment ${dep.id} sent: follow it below.`;
    await loadDeployments();
  } catch (e) {
    out.textContent = `Not deployed: ${e.message}`;
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  await dash.session();
  document.getElementById("deploy").addEventListener("submit", deploy);
  const safely = (f) => f().catch((e) => dash.banner("load", `Could not load: ${e.message}`));
  safely(loadModels); safely(loadDeployments); safely(loadBench);
  dash.live((snap) => {
    drawDevices(snap.devices);
    if (snap.deployment_update !== lastUpdate) { lastUpdate = snap.deployment_update; safely(loadDeployments); }
    if (snap.bench_update !== lastBench) { lastBench = snap.bench_update; safely(loadBench); }
  });
});
