// Shared by every page: session + CSRF token, API calls, the live feed, small DOM helpers.
"use strict";

const dash = {
  csrf: null,

  async session() {
    const r = await fetch("/dashboard/session", { headers: { Accept: "application/json" } });
    if (r.status === 401) { location.href = "/dashboard/login"; throw new Error("not logged in"); }
    const s = await r.json();
    dash.csrf = s.csrf_token;
    document.getElementById("who").textContent = s.user;
    return s;
  },

  // Calls the cloud API; throws an Error carrying the API's {"error"} message.
  async api(path, options = {}) {
    const opts = { ...options, headers: { Accept: "application/json", ...(options.headers || {}) } };
    if (opts.body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRF-Token"] = dash.csrf;
      opts.body = JSON.stringify(opts.body);
    }
    let r;
    try { r = await fetch(path, opts); } catch (e) { throw new Error("the cloud API is unreachable: is it running?"); }
    if (r.status === 401) { location.href = "/dashboard/login"; throw new Error("session expired"); }
    const doc = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(doc.error || `HTTP ${r.status}`);
    return doc;
  },

  // Calls onFleet(snapshot) on every fleet change; shows a banner while the feed is down.
  // The live feed: `fleet` (every device, on connecting) then `fleet-delta` (only the devices
  // that changed); both end up as one fleet snapshot handed to onFleet.
  live(onFleet) {
    const source = new EventSource("/dashboard/events");
    const known = new Map();
    const apply = (e, full) => {
      dash.banner("feed", null);
      const snap = JSON.parse(e.data);
      dash.banner("broker", snap.broker_connected === false
        ? "The cloud API is not connected to the MQTT broker: commands and deployments cannot be sent, and " +
          "online states may be stale. Check that mosquitto is running and reachable (broker_host, broker_port)."
        : null);
      dash.banner("store", snap.error || null);
      if (snap.error) return;
      if (full) known.clear();
      for (const d of snap.devices) known.set(d.id, d);
      onFleet({ ...snap, devices: Array.from(known.values()), changed: snap.devices });
    };
    source.addEventListener("fleet", (e) => apply(e, true));
    source.addEventListener("fleet-delta", (e) => apply(e, false));
    source.onerror = () => dash.banner("feed", "Live updates interrupted: reconnecting to the cloud API...");
    return source;
  },

  banner(key, text) {
    const box = document.getElementById("banners");
    let el = box.querySelector(`[data-key="${key}"]`);
    if (!text) { if (el) el.remove(); return; }
    if (!el) { el = dash.el("div", { class: "banner error", role: "alert", "data-key": key }); box.append(el); }
    el.textContent = text;
  },

  el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v === true ? "" : v);
    }
    node.append(...children.flat().filter((c) => c !== null && c !== undefined));
    return node;
  },

  badge(state) { return dash.el("span", { class: `badge ${state}` }, state.replace("_", " ")); },

  state(online) { return online === null || online === undefined ? "unknown" : online ? "online" : "offline"; },

  ago(ts) {
    if (!ts) return "never";
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return new Date(ts * 1000).toLocaleString();
  },

  time(ts) { return ts ? new Date(ts * 1000).toLocaleString() : "-"; },

  models(m) { return Object.entries(m || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "-"; },
};

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/dashboard/logout", { method: "POST", headers: { "X-CSRF-Token": dash.csrf } });
    location.href = "/dashboard/login";
  });
});
