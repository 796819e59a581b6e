// Staged rollouts: start one, follow its waves (per-device state, the shadow figures that decided),
// pause / resume / abort. Refreshed every second.
"use strict";

const catalog = {};

async function loadModels() {
  const { models } = await dash.api("/models");
  const full = await Promise.all(models.map((m) => dash.api(`/models/${encodeURIComponent(m.name)}`)));
  for (const m of full) catalog[m.name] = m.versions.map((v) => v.version);
  const model = document.querySelector("[name=model]");
  model.replaceChildren(...Object.keys(catalog).map((n) => dash.el("option", {}, n)));
  model.onchange = () => document.querySelector("[name=version]").replaceChildren(
    ...(catalog[model.value] || []).map((v) => dash.el("option", {}, v)));
  model.onchange();
}

const pct = (x) => (x === null || x === undefined ? "-" : `${(x * 100).toFixed(1)} %`);
const num = (x, d = 2) => (x === null || x === undefined ? "-" : Number(x).toFixed(d));

function waveTable(r, wave, i) {
  const states = wave.device_states || {};
  return dash.el("section", { class: "wave", "data-wave": i + 1 },
    dash.el("h3", {}, `Wave ${i + 1} `, dash.el("span", { class: "wave-state" }, dash.badge(wave.state))),
    wave.decision ? dash.el("p", { class: "decision" }, wave.decision) : null,
    dash.el("table", {}, dash.el("tr", {}, ...["Device", "State", "Samples", "Agreement", "Output diff", "Latency active / candidate (ms)", "Reason"].map((h) => dash.el("th", {}, h))),
      ...wave.devices.map((d) => {
        const f = (wave.figures || {})[d] || {}, s = states[d] || {};
        const breach = f.agreement !== undefined && f.agreement !== null && f.agreement < r.thresholds.min_agreement;
        return dash.el("tr", { "data-device": d },
          dash.el("td", {}, d), dash.el("td", { class: "state" }, s.state ? dash.badge(s.state) : "-"),
          dash.el("td", { class: "samples" }, f.samples ?? "-"),
          dash.el("td", { class: `agreement${breach ? " failed" : ""}` }, pct(f.agreement)),
          dash.el("td", {}, num(f.mean_abs_diff, 4)),
          dash.el("td", {}, `${num(f.active_ms_p50)} / ${num(f.candidate_ms_p50)}`),
          dash.el("td", { class: "reason" }, s.reason || ""));
      })));
}

async function act(id, action) {
  try { await dash.api(`/rollouts/${id}/${action}`, { method: "POST", body: {} }); }
  catch (e) { dash.banner("act", `Could not ${action}: ${e.message}`); }
  await loadRollouts();
}

async function loadRollouts() {
  const { rollouts } = await dash.api("/rollouts?limit=10");
  const box = document.getElementById("rollouts");
  if (rollouts.length === 0) { box.replaceChildren(dash.el("p", { class: "empty" }, "No rollout yet: start one above.")); return; }
  const full = await Promise.all(rollouts.map((r) => dash.api(`/rollouts/${r.id}`)));
  box.replaceChildren(...full.map((r) => dash.el("section", { class: "card rollout", "data-rollout": r.id },
    dash.el("h2", {}, `${r.model} ${r.version} `, dash.el("span", { class: "rollout-state" }, dash.badge(r.state)),
      dash.el("span", { class: "muted" }, ` ${r.id}`)),
    dash.el("p", { class: "reason" }, r.reason || `wave ${Math.min(r.wave + 1, r.waves.length)} of ${r.waves.length}`),
    dash.el("p", { class: "muted" }, `thresholds: agreement >= ${r.thresholds.min_agreement}, ` +
      `${r.thresholds.min_samples} samples, latency ratio <= ${r.thresholds.max_latency_ratio}, failures <= ${pct(r.thresholds.max_failure_rate)}`),
    dash.el("div", { class: "toolbar" },
      dash.el("button", { type: "button", class: "pause", disabled: r.state !== "running", onclick: () => act(r.id, "pause") }, "Pause"),
      dash.el("button", { type: "button", class: "resume", disabled: r.state !== "paused", onclick: () => act(r.id, "resume") }, "Resume"),
      dash.el("button", { type: "button", class: "abort", disabled: !["running", "paused"].includes(r.state), onclick: () => act(r.id, "abort") }, "Abort")),
    ...r.waves.map((w, i) => waveTable(r, w, i)))));
}

async function start(event) {
  event.preventDefault();
  const form = event.target, out = document.getElementById("start-out");
  out.textContent = "Starting...";
  try {
    const thresholds = { min_agreement: Number(form.min_agreement.value), min_samples: Number(form.min_samples.value),
      max_latency_ratio: Number(form.max_latency_ratio.value) };
    const r = await dash.api("/rollouts", { method: "POST", body: { model: form.model.value, version: form.version.value, all: true, thresholds } });
    out.textContent = `Rollout ${r.id} started: ${r.waves.length} waves.`;
    await loadRollouts();
  } catch (e) {
    out.textContent = `Not started: ${e.message}`;
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  await dash.session();
  document.getElementById("start").addEventListener("submit", start);
  const safely = (f) => f().catch((e) => dash.banner("load", `Could not load: ${e.message}`));
  safely(loadModels); safely(loadRollouts);
  setInterval(() => safely(loadRollouts), 1000);
});
