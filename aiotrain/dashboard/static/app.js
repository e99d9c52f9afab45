// aiotrain dashboard: runs table, overlaid live charts, run detail, artifacts.
// Plain browser JavaScript over the JSON API in app.py; charts are drawn by plotly.js, served
// from the installed plotly package. URLs are relative so the app works under any mount prefix.
//
// Everything shown comes from files that training code (or anyone who can write the tracking
// folder) wrote: no value ever goes through an HTML parser. Pages are built from DOM nodes with
// h(), whose strings become text nodes; names in URLs are encoded with encodeURIComponent, and
// text handed to plotly (which reads a few HTML-like tags) is entity-escaped first.
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const view = () => $("#view");
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (v) => (v === null || v === undefined ? "-" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)))) : Array.isArray(v) ? v.join(",") : String(v));
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
const dur = (s) => { if (s === null || s === undefined) return "-"; s = Math.round(s); const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, x = s % 60; return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(x).padStart(2, "0"); };
const COLORS = ["#2f6fdf", "#e4572e", "#17a398", "#f3a712", "#8c54d0", "#c0392b", "#34495e", "#16a085", "#d35400", "#7f8c8d"];
// a run key "project/id" as URL path segments, and back from the location hash
const keyPath = (key) => String(key).split("/").map(encodeURIComponent).join("/");
const pathKey = (path) => path.split("/").map(decodeURIComponent).join("/");

// an element: attributes (on* are handlers, class/value/checked are properties), children as
// nodes or strings (text, never HTML)
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") || k === "value" || k === "checked") el[k] = v;
    else if (k === "class") el.className = v;
    else if (k === "data") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid !== null && kid !== undefined && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}
const fill = (el, ...kids) => { el.replaceChildren(); kids.flat(Infinity).forEach((k) => { if (k !== null && k !== undefined && k !== false) el.append(k instanceof Node ? k : String(k)); }); return el; };
const muted = (text) => h("span", { class: "muted" }, text);
const tag = (t) => h("span", { class: "tag" }, t);
const badge = (status) => h("span", { class: "badge " + status }, status);

async function api(path) {
  const r = await fetch(path);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// state kept across re-renders of the runs page
const S = {
  filter: "", q: "", sort: "-created", columns: null, selected: new Set(), keys: null,
  x: "step", smooth: 0, log: false, live: true, rows: [], data: {}, source: null, cursor: null,
};

function route() {
  stopLive();
  const h = location.hash.slice(1) || "/";
  document.querySelectorAll("header nav a").forEach((a) => a.classList.remove("on"));
  if (h.startsWith("/run/")) { $("#nav-runs").classList.add("on"); runPage(pathKey(h.slice(5))); }
  else if (h.startsWith("/artifacts")) { $("#nav-artifacts").classList.add("on"); artifactsPage(); }
  else { $("#nav-runs").classList.add("on"); runsPage(); }
}
window.addEventListener("hashchange", route);
window.addEventListener("load", route);

// ---------------------------------------------------------------------------------- runs page
async function runsPage() {
  fill(view(),
    h("div", { class: "panel" },
      h("div", { class: "controls" },
        h("input", { type: "text", id: "q", placeholder: "search name, id, tag, notes", value: S.q }),
        h("input", { type: "text", id: "filter", class: "wide", placeholder: "filters: status=finished config.lr<0.1 val/acc>=0.9 tag=base", value: S.filter }),
        h("input", { type: "text", id: "columns", class: "wide", placeholder: "columns: config.KEY, metric names" }),
        h("span", { id: "count", class: "muted" }), " ", h("span", { id: "err", class: "error" })),
      h("div", { class: "tablewrap" }, h("table", { id: "runs" }))),
    h("div", { class: "panel", id: "compare" }));
  const reload = debounce(loadRuns, 250);
  $("#q").oninput = (e) => { S.q = e.target.value; reload(); };
  $("#filter").oninput = (e) => { S.filter = e.target.value; reload(); };
  $("#columns").onchange = (e) => { S.columns = e.target.value.split(",").map((c) => c.trim()).filter(Boolean); loadRuns(); };
  await loadRuns();
  S.timer ??= setInterval(() => { if ($("#runs")) loadRuns(true); }, 5000);
}

function debounce(fn, ms) { let t; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; }

async function loadRuns(quiet) {
  const p = new URLSearchParams();
  S.filter.split(/\s+/).filter(Boolean).forEach((f) => p.append("filter", f));
  if (S.q) p.set("q", S.q);
  if (S.sort) p.set("sort", S.sort);
  if (S.columns) p.set("columns", S.columns.join(","));
  let data;
  try { data = await api("api/runs?" + p); }
  catch (e) { if ($("#err")) $("#err").textContent = e.message; return; }
  if (!$("#runs")) return; // the user went to another page meanwhile
  $("#err").textContent = "";
  $("#root").textContent = data.root;
  if (!S.columns) {
    S.columns = [...data.varying_config.slice(0, 4).map((k) => "config." + k),
                 ...data.metric_keys.filter((k) => !k.startsWith("system/")).slice(0, 4)];
    $("#columns").value = S.columns.join(", ");
    return loadRuns(quiet);
  }
  $("#columns").value = S.columns.join(", ");
  S.rows = data.rows;
  $("#count").textContent = `${data.rows.length} of ${data.total} runs · ${data.elapsed_ms} ms`;
  if (!S.selected.size && data.rows.length) {
    const newest = [...data.rows].sort((a, b) => b.created - a.created)[0];
    S.selected.add(newest.key);
  }
  renderTable();
  if (!quiet || !$("#compare .charts")) renderCompare();
}

function renderTable() {
  const cols = [["", null], ["name", "name"], ["host", "host"], ["status", "status"], ["tags", "tags"], ["created", "created"], ["duration", "duration"],
                ...S.columns.map((c) => [c, c])];
  const arrow = (k) => (S.sort === k ? " ▲" : S.sort === "-" + k ? " ▼" : "");
  const sortBy = (k) => () => { S.sort = S.sort === "-" + k ? k : "-" + k; loadRuns(); };
  const head = h("thead", null, h("tr", null, cols.map(([label, key]) =>
    h("th", { data: { key: key || "" }, onclick: key ? sortBy(key) : null }, label, key ? arrow(key) : ""))));
  const body = h("tbody", null, S.rows.map((r) => {
    const sel = S.selected.has(r.key);
    const pick = (e) => {
      const row = e.target.closest("tr");
      e.target.checked ? S.selected.add(r.key) : S.selected.delete(r.key);
      row.classList.toggle("sel", e.target.checked);
      S.keys = null; renderCompare();
    };
    return h("tr", { class: sel ? "sel" : "", data: { key: r.key } },
      h("td", null, h("input", { type: "checkbox", class: "pick", checked: sel, onchange: pick })),
      h("td", null, h("a", { href: "#/run/" + keyPath(r.key) }, r.name), " ", muted(r.key)),
      h("td", null, r.host || ""),
      h("td", null, badge(r.status)),
      h("td", null, r.tags.map(tag)),
      h("td", null, when(r.created)), h("td", { class: "num" }, dur(r.duration)),
      S.columns.map((c) => h("td", { class: "num" }, fmt(c.startsWith("config.") ? r.config[c.slice(7)] : r.summary[c]))));
  }));
  fill($("#runs"), head, body);
}

// --------------------------------------------------------------------- charts of selected runs
async function renderCompare() {
  const box = $("#compare");
  if (!box) return;
  stopLive();
  const runs = [...S.selected];
  if (!runs.length) { fill(box, muted("select runs to chart and compare them")); return; }
  const gen = S.gen = (S.gen || 0) + 1;
  const details = await Promise.all(runs.map((k) => api("api/runs/" + keyPath(k)).catch(() => null)));
  if (gen !== S.gen) return; // the selection changed meanwhile: a newer render owns the box
  const ok = details.filter(Boolean);
  const allKeys = [...new Set(ok.flatMap((d) => [...d.metric_keys, ...d.system_keys]))];
  if (!S.keys) {
    const user = allKeys.filter((k) => !k.startsWith("system/")).slice(0, 8);
    const sys = ["system/cpu_percent", "system/proc_rss_mb"].filter((k) => allKeys.includes(k));
    S.keys = [...user, ...sys];
  }
  const pickKey = () => { S.keys = [...box.querySelectorAll("input.key:checked")].map((c) => c.value); loadSeries(); };
  const xaxis = h("select", { id: "xaxis", onchange: (e) => { S.x = e.target.value; drawAll(); } },
    h("option", { value: "step" }, "step"), h("option", { value: "time" }, "wall time"));
  fill(box,
    h("h2", null, `${ok.length} selected run${ok.length > 1 ? "s" : ""}`),
    h("div", { class: "controls" },
      h("label", null, "x ", xaxis),
      h("label", null, "smoothing ",
        h("input", { type: "range", id: "smooth", min: 0, max: 0.99, step: 0.01, value: S.smooth,
                     oninput: (e) => { S.smooth = +e.target.value; $("#smoothv").textContent = S.smooth; drawAll(); } }),
        " ", h("span", { id: "smoothv" }, S.smooth)),
      h("label", null, h("input", { type: "checkbox", id: "logy", checked: S.log, onchange: (e) => { S.log = e.target.checked; drawAll(); } }), " log scale"),
      h("label", null, h("input", { type: "checkbox", id: "live", checked: S.live, onchange: (e) => { S.live = e.target.checked; S.live ? startLive() : stopLive(); } }), " live")),
    h("div", { class: "keys" }, allKeys.map((k) =>
      h("label", null, h("input", { type: "checkbox", class: "key", value: k, checked: S.keys.includes(k), onchange: pickKey }), " ", k))),
    h("div", { class: "charts", id: "charts" }),
    ok.length > 1 ? configDiff(ok) : null);
  xaxis.value = S.x;
  S.names = Object.fromEntries(ok.map((d) => [d.key, d.name]));
  await loadSeries();
}

async function loadSeries() {
  stopLive();
  const runs = [...S.selected], keys = S.keys;
  const p = new URLSearchParams({ points: "1500" });
  runs.forEach((r) => p.append("run", r));
  keys.forEach((k) => p.append("key", k));
  const data = await api("api/series?" + p);
  if (S.keys !== keys) return; // keys or selection changed meanwhile: a newer load follows
  S.data = {};
  for (const s of data.series) (S.data[s.key] ??= {})[s.run] = s;
  S.cursor = data.cursor;
  const charts = $("#charts");
  if (!charts) return;
  fill(charts, S.keys.map((k, i) => h("div", { class: "chart", id: "chart-" + i, data: { key: k } })));
  drawAll();
  if (S.live) startLive();
}

function smooth(ys, a) {
  if (!a) return ys;
  const out = new Array(ys.length); let m = null, w = 0;
  for (let i = 0; i < ys.length; i++) { // debiased EMA, as TensorBoard does
    m = (m ?? 0) * a + (1 - a) * ys[i]; w = w * a + (1 - a); out[i] = m / w;
  }
  return out;
}

function drawAll() { S.keys.forEach((k, i) => draw(k, i)); }

function draw(key, i) {
  const el = document.getElementById("chart-" + i);
  if (!el) return;
  const runs = [...S.selected];
  const traces = runs.map((run, j) => {
    const s = (S.data[key] || {})[run];
    if (!s) return null;
    const x = S.x === "step" ? s.step : s.time.map((t) => new Date(t * 1000));
    return { x, y: smooth(s.value, S.smooth), name: esc(S.names?.[run] || run), mode: s.value.length > 1 ? "lines" : "markers",
             line: { color: COLORS[j % COLORS.length], width: 1.6 }, hovertemplate: "%{y:.5g}<extra>%{fullData.name}</extra>" };
  }).filter(Boolean);
  const total = Object.values(S.data[key] || {}).reduce((n, s) => n + s.total, 0);
  const note = total > 1500 * runs.length ? ` <span style="font-size:11px;color:#888">(${Number(total).toLocaleString()} points, min/max kept)</span>` : "";
  Plotly.react(el, traces, {
    title: { text: esc(key) + note, font: { size: 13 }, x: 0.01, xanchor: "left" },
    margin: { l: 50, r: 10, t: 32, b: 36 }, showlegend: runs.length > 1, legend: { orientation: "h", x: 1, xanchor: "right", y: 1.1, font: { size: 11 } },
    xaxis: { title: { text: S.x === "step" ? "step" : "" } }, yaxis: { type: S.log ? "log" : "linear" },
  }, { displaylogo: false, responsive: true });
}

function startLive() {
  stopLive();
  if (!S.keys.length || !S.cursor) return;
  const p = new URLSearchParams({ cursor: JSON.stringify(S.cursor) });
  [...S.selected].forEach((r) => p.append("run", r));
  S.keys.forEach((k) => p.append("key", k));
  const src = new EventSource("api/stream?" + p);
  S.source = src;
  const pending = new Set();
  // a stream stopped (selection or keys changed) may still have a redraw due: drop it
  const flush = debounce(() => { if (S.source === src && S.keys) pending.forEach((i) => draw(S.keys[i], i)); pending.clear(); }, 100);
  src.onmessage = (e) => {
    const m = JSON.parse(e.data);
    const s = ((S.data[m.key] ??= {})[m.run] ??= { run: m.run, key: m.key, step: [], time: [], value: [], total: 0 });
    s.step.push(...m.step); s.time.push(...m.time); s.value.push(...m.value); s.total += m.value.length;
    pending.add(S.keys.indexOf(m.key)); flush();
    $("#live-state").textContent = "live · last update " + new Date().toLocaleTimeString();
  };
  src.onerror = () => { $("#live-state").textContent = "live: reconnecting"; };
}

function stopLive() { if (S.source) { S.source.close(); S.source = null; } }

function configDiff(details) {
  const flat = (o, p = "", out = {}) => { for (const [k, v] of Object.entries(o || {})) (v && typeof v === "object" && !Array.isArray(v)) ? flat(v, p + k + ".", out) : (out[p + k] = v); return out; };
  const cfgs = details.map((d) => flat(d.config));
  const keys = [...new Set(cfgs.flatMap(Object.keys))].sort();
  const differ = keys.filter((k) => new Set(cfgs.map((c) => JSON.stringify(c[k]))).size > 1);
  const sums = [...new Set(details.flatMap((d) => Object.keys(d.summary)))].filter((k) => !k.startsWith("system/")).sort();
  return [
    h("h2", { class: "spaced" }, `config differences (${differ.length} of ${keys.length} keys) and summaries`),
    h("div", { class: "tablewrap" }, h("table", { class: "diff" },
      h("tr", null, h("th", null, "key"), details.map((d) => h("th", null, d.name))),
      differ.map((k) => h("tr", null, h("td", null, "config." + k), cfgs.map((c) => h("td", { class: "changed" }, fmt(c[k]))))),
      sums.map((k) => h("tr", null, h("td", null, k), details.map((d) => h("td", { class: "num" }, fmt(d.summary[k]))))))),
  ];
}

// ---------------------------------------------------------------------------------- one run
const kvTable = (o) => h("table", null, Object.entries(o).map(([k, v]) =>
  h("tr", null, h("td", null, k), h("td", { class: "num" }, typeof v === "object" && v !== null ? JSON.stringify(v) : fmt(v)))));
const filePath = (key, path) => "files/" + keyPath(key) + "/" + String(path).split("/").map(encodeURIComponent).join("/");

async function runPage(key) {
  let d;
  try { d = await api("api/runs/" + keyPath(key)); } catch (e) { fill(view(), h("p", { class: "error" }, e.message)); return; }
  fill(view(),
    h("div", { class: "panel" },
      h("h2", null, d.name, " ", badge(d.status), " ", muted(d.key)),
      h("div", null, d.tags.map(tag), " created ", when(d.created), d.finished ? " · finished " + when(d.finished) : ""),
      d.notes ? h("p", null, d.notes) : null, d.error ? h("p", { class: "error" }, d.error) : null,
      h("p", null, h("a", { href: "#/", id: "chart-this", onclick: () => { S.selected = new Set([d.key]); S.keys = null; } }, "chart this run"))),
    h("div", { class: "grid2" },
      h("div", { class: "panel" }, h("h2", null, "summary"), kvTable(d.summary)),
      h("div", { class: "panel" }, h("h2", null, "config"), h("pre", null, JSON.stringify(d.config, null, 2)))),
    h("div", { class: "grid2" },
      h("div", { class: "panel" }, h("h2", null, "system"), kvTable(d.system)),
      h("div", { class: "panel" }, h("h2", null, "artifacts"),
        h("p", null, "logged: ", d.artifacts.logged.join(", ") || "-"), h("p", null, "used: ", d.artifacts.used.join(", ") || "-"),
        h("p", { class: "muted" }, "metric keys: ", d.metric_keys.join(", "), h("br"), "system keys: ", d.system_keys.join(", ")))),
    h("div", { id: "images" }), h("div", { id: "hists" }), h("div", { id: "tables" }));
  stepped("#images", "images", d.images, (e) => h("div", { class: "media" },
    h("img", { src: filePath(d.key, e.path), width: Math.max(96, Math.min(256, Number(e.width) * 8 || 96)) }), h("div", { class: "muted" }, e.caption)));
  stepped("#hists", "histograms", d.histograms, (e) => {
    const el = h("div", { class: "hist" });
    setTimeout(() => Plotly.react(el, [{ type: "bar", x: e.bins.slice(0, -1).map((b, i) => (b + e.bins[i + 1]) / 2), y: e.counts, marker: { color: COLORS[0] } }],
      { margin: { l: 40, r: 10, t: 10, b: 30 }, height: 220 }, { displaylogo: false }), 0);
    return el;
  });
  const box = $("#tables");
  for (const [name, entries] of Object.entries(d.tables)) {
    const e = entries[entries.length - 1];
    const rows = (await api(`api/table/${keyPath(d.key)}?path=${encodeURIComponent(e.path)}&limit=50`)).rows;
    box.append(h("div", { class: "panel" },
      h("h2", null, "table ", name, " ", muted(`step ${e.step}, ${e.nrows} rows`)),
      h("div", { class: "tablewrap" }, h("table", null,
        h("tr", null, e.columns.map((c) => h("th", null, c))),
        rows.map((r) => h("tr", null, (Array.isArray(r) ? r : Object.values(r)).map((v) => h("td", null, fmt(v)))))))));
  }
}

// one panel per key with a slider over the logged steps
function stepped(sel, title, byKey, render) {
  const box = $(sel);
  Object.entries(byKey).forEach(([name, entries]) => {
    const label = muted(""), shown = h("div");
    const show = (i) => { label.textContent = `step ${entries[i].step} (${i + 1}/${entries.length})`; fill(shown, render(entries[i])); };
    box.append(h("div", { class: "panel" },
      h("h2", null, title, ": ", name, " ", label),
      h("input", { type: "range", class: "slider", min: 0, max: entries.length - 1, value: entries.length - 1, oninput: (e) => show(+e.target.value) }),
      shown));
    show(entries.length - 1);
  });
}

// ------------------------------------------------------------------------------- artifacts
async function artifactsPage() {
  const d = await api("api/artifacts");
  const run = (r) => r ? h("a", { href: "#/run/" + keyPath(r.project + "/" + r.id) }, r.id) : "-";
  const rows = [];
  for (const a of d.artifacts) for (const v of a.versions) {
    rows.push(h("tr", null, h("td", null, a.project + "/" + a.name), h("td", null, a.type), h("td", null, "v" + v.version),
      h("td", null, v.aliases.map(tag)), h("td", { class: "num" }, v.files), h("td", { class: "num" }, (Number(v.size) / 1024).toFixed(1) + " KiB"),
      h("td", null, when(v.created)), h("td", null, run(v.producer)),
      h("td", null, v.consumers.length ? v.consumers.flatMap((c, i) => (i ? [", ", run(c)] : [run(c)])) : "-")));
  }
  const lineage = h("div", { id: "lineage", class: "lineage" });
  fill(view(),
    h("div", { class: "panel" }, h("h2", null, "lineage (runs → artifact versions → runs)"), lineage),
    h("div", { class: "panel" }, h("h2", null, "artifacts"), h("table", null,
      h("tr", null, ["artifact", "type", "version", "aliases", "files", "size", "created", "producer", "consumers"].map((c) => h("th", null, c))),
      rows)));
  lineageGraph(lineage, d.graph);
}

function lineageGraph(el, g) {
  if (!g.nodes.length) { fill(el, muted("no artifacts yet")); el.classList.remove("lineage"); return; }
  const depth = Object.fromEntries(g.nodes.map((n) => [n.id, 0]));
  for (let pass = 0; pass < g.nodes.length; pass++) { // longest path from a source: the node's column
    let moved = false;
    for (const e of g.edges) if (depth[e.to] < depth[e.from] + 1) { depth[e.to] = depth[e.from] + 1; moved = true; }
    if (!moved) break;
  }
  const rows = {}, pos = {};
  for (const n of g.nodes) { const c = depth[n.id]; rows[c] = (rows[c] || 0) + 1; pos[n.id] = [c, rows[c]]; }
  const lx = [], ly = [];
  for (const e of g.edges) { lx.push(pos[e.from][0], pos[e.to][0], null); ly.push(-pos[e.from][1], -pos[e.to][1], null); }
  const kind = (k) => g.nodes.filter((n) => n.kind === k);
  const nodes = (k, color, symbol) => ({ type: "scatter", mode: "markers+text", name: k, x: kind(k).map((n) => pos[n.id][0]), y: kind(k).map((n) => -pos[n.id][1]),
    text: kind(k).map((n) => esc(n.label)), textposition: "bottom center", marker: { size: 16, color, symbol } });
  Plotly.react(el, [{ type: "scatter", mode: "lines", x: lx, y: ly, line: { color: "#b8bfcc" }, hoverinfo: "skip", showlegend: false },
    nodes("run", COLORS[0], "circle"), nodes("artifact", COLORS[1], "square")],
    { margin: { l: 20, r: 20, t: 10, b: 20 }, xaxis: { visible: false }, yaxis: { visible: false } }, { displaylogo: false });
}
