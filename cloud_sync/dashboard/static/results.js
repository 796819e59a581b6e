// The results page: query by device, model and time range; cursor paging; CSV export of the same query.
"use strict";

const paging = { cursors: [null], page: 0 };

function params(cursor) {
  const form = document.getElementById("query"), q = new URLSearchParams();
  for (const name of ["device", "model"]) if (form[name].value.trim()) q.set(name, form[name].value.trim());
  for (const name of ["since", "until"]) if (form[name].value) q.set(name, String(new Date(form[name].value).getTime() / 1000));
  const csv = new URLSearchParams(q);
  document.getElementById("csv").href = `/dashboard/results.csv?${csv}`;
  q.set("limit", form.limit.value);
  if (cursor) q.set("cursor", cursor);
  return q;
}

async function search() {
  const empty = document.getElementById("results-empty");
  try {
    const doc = await dash.api(`/results?${params(paging.cursors[paging.page])}`);
    document.querySelector("#results tbody").replaceChildren(...doc.results.map((r) => dash.el("tr", {},
      dash.el("td", {}, dash.time(r.created)),
      dash.el("td", {}, dash.el("a", { href: `/dashboard/devices/${encodeURIComponent(r.device)}` }, r.device)),
      dash.el("td", {}, `${r.model} ${r.version}`), dash.el("td", {}, r.label || "-"),
      dash.el("td", {}, dash.el("code", {}, JSON.stringify(r.body))))));
    paging.cursors[paging.page + 1] = doc.next_cursor;
    document.getElementById("next").disabled = !doc.next_cursor;
    document.getElementById("first").disabled = paging.page === 0;
    document.getElementById("page").textContent = `page ${paging.page + 1}`;
    empty.hidden = doc.results.length > 0;
    empty.textContent = "No result matches: widen the time range or clear the device and model fields.";
  } catch (e) {
    empty.hidden = false;
    empty.textContent = `Could not load results: ${e.message}`;
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  await dash.session();
  document.getElementById("query").addEventListener("submit", (e) => { e.preventDefault(); paging.page = 0; search(); });
  document.getElementById("next").addEventListener("click", () => { paging.page += 1; search(); });
  document.getElementById("first").addEventListener("click", () => { paging.page = 0; search(); });
  dash.api("/devices").then((d) => document.getElementById("device-list").replaceChildren(
    ...d.devices.map((x) => dash.el("option", { value: x.id })))).catch(() => {});
  search();
});
