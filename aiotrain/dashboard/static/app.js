// aiotrain dashboard: runs table, overlaid live charts, run detail, artifacts.
// Plain browser JavaScript over the JSON API in app.py; charts are drawn by plotly.js, served
// from the installed plotly package. URLs are relative so the app works under any mount prefix.
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const view = () => $("#view");
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (v) => (v === null || v === undefined ? "-" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)))) : Array.isArray(v) ? v.join(",") : String(v));
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
const dur = (s) => { if (s === null || s === undefined) return "-"; s = Math.round(s); const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, x = s % 60; return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(x).padStart(2, "0"); };
const COLORS = ["#2f6fdf", "#e4572e", "#17a398", "#f3a712", "#8c54d0", "#c0392b", "#34495e", "#16a085", "#d35400", "#7f8c8d"];

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
  if (h.startsWith("/run/")) { $("#nav-runs").classList.add("on"); runPage(h.slice(5)); }
  else if (h.startsWith("/artifacts")) { $("#nav-artifacts").classList.add("on"); artifactsPage(); }
  else { $("#nav-runs").classList.add("on"); runsPage(); }
}
window.addEventListener("hashchange", route);
window.addEventListener("load", route);

// ---------------------------------------------------------------------------------- runs page
async function runsPage() {
  view().innerHTML = `
  <div class="panel">
    <div class="controls">
      <input type="text" id="q" placeholder="search name, id, tag, notes" value="${esc(S.q)}">
      <input type="text" id="filter" class="wide" placeholder="filters: status=finished config.lr<0.1 val/acc>=0.9 tag=base" value="${esc(S.filter)}">
      <input type="text" id="columns" class="wide" placeholder="columns: config.KEY, metric names">
      <span id="count" class="muted"></span> <span id="err" class="error"></span>
    </div>
    <div class="tablewrap"><table id="runs"></table></div>
  </div>
  <div class="panel" id="compare"></div>`;
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
  try { data = await api("api/runs?" + p); $("#err").textContent = ""; }
  catch (e) { $("#err").textContent = e.message; return; }
  if (!$("#runs")) return;
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
  let html = "<thead><tr>" + cols.map(([label, key]) => `<th data-key="${esc(key || "")}">${esc(label)}${key ? arrow(key) : ""}</th>`).join("") + "</tr></thead><tbody>";
  for (const r of S.rows) {
    const sel = S.selected.has(r.key);
    html += `<tr class="${sel ? "sel" : ""}" data-key="${esc(r.key)}"><td><input type="checkbox" class="pick" ${sel ? "checked" : ""}></td>
      <td><a href="#/run/${esc(r.key)}">${esc(r.name)}</a> <span class="muted">${esc(r.key)}</span></td>
      <td>${esc(r.host || "")}</td>
      <td><span class="badge ${esc(r.status)}">${esc(r.status)}</span></td>
      <td>${r.tags.map((t) => `<span class="tag">${esc(t)}</span>`).join("")}</td>
      <td>${esc(when(r.created))}</td><td class="num">${dur(r.duration)}</td>
      ${S.columns.map((c) => `<td class="num">${esc(fmt(c.startsWith("config.") ? r.config[c.slice(7)] : r.summary[c]))}</td>`).join("")}</tr>`;
  }
  $("#runs").innerHTML = html + "</tbody>";
  $("#runs").querySelectorAll("th[data-key]").forEach((th) => th.onclick = () => {
    const k = th.dataset.key; if (!k) return;
    S.sort = S.sort === "-" + k ? k : "-" + k; loadRuns();
  });
  $("#runs").querySelectorAll("input.pick").forEach((cb) => cb.onchange = () => {
    const key = cb.closest("tr").dataset.key;
    cb.checked ? S.selected.add(key) : S.selected.delete(key);
    cb.closest("tr").classList.toggle("sel", cb.checked);
    S.keys = null; renderCompare();
  });
}

// --------------------------------------------------------------------- charts of selected runs
async function renderCompare() {
  const box = $("#compare");
  if (!box) return;
  stopLive();
  const runs = [...S.selected];
  if (!runs.length) { box.innerHTML = '<span class="muted">select runs to chart and compare them</span>'; return; }
  const details = await Promise.all(runs.map((k) => api("api/runs/" + k).catch(() => null)));
  const ok = details.filter(Boolean);
  const allKeys = [...new Set(ok.flatMap((d) => [...d.metric_keys, ...d.system_keys]))];
  if (!S.keys) {
    const user = allKeys.filter((k) => !k.startsWith("system/")).slice(0, 8);
    const sys = ["system/cpu_percent", "system/proc_rss_mb"].filter((k) => allKeys.includes(k));
    S.keys = [...user, ...sys];
  }
  box.innerHTML = `
    <h2>${ok.length} selected run${ok.length > 1 ? "s" : ""}</h2>
    <div class="controls">
      <label>x <select id="xaxis"><option value="step">step</option><option value="time">wall time</option></select></label>
      <label>smoothing <input type="range" id="smooth" min="0" max="0.99" step="0.01" value="${S.smooth}"> <span id="smoothv">${S.smooth}</span></label>
      <label><input type="checkbox" id="logy" ${S.log ? "checked" : ""}> log scale</label>
      <label><input type="checkbox" id="live" ${S.live ? "checked" : ""}> live</label>
    </div>
    <div class="keys">${allKeys.map((k) => `<label><input type="checkbox" class="key" value="${esc(k)}" ${S.keys.includes(k) ? "checked" : ""}> ${esc(k)}</label>`).join("")}</div>
    <div class="charts" id="charts"></div>
    ${ok.length > 1 ? configDiff(ok) : ""}`;
  $("#xaxis").value = S.x;
  $("#xaxis").onchange = (e) => { S.x = e.target.value; drawAll(); };
  $("#smooth").oninput = (e) => { S.smooth = +e.target.value; $("#smoothv").textContent = S.smooth; drawAll(); };
  $("#logy").onchange = (e) => { S.log = e.target.checked; drawAll(); };
  $("#live").onchange = (e) => { S.live = e.target.checked; S.live ? startLive() : stopLive(); };
  box.querySelectorAll("input.key").forEach((cb) => cb.onchange = () => {
    S.keys = [...box.querySelectorAll("input.key:checked")].map((c) => c.value); loadSeries();
  });
  S.names = Object.fromEntries(ok.map((d) => [d.key, d.name]));
  await loadSeries();
}

async function loadSeries() {
  stopLive();
  const runs = [...S.selected];
  const p = new URLSearchParams({ points: "1500" });
  runs.forEach((r) => p.append("run", r));
  S.keys.forEach((k) => p.append("key", k));
  const data = await api("api/series?" + p);
  S.data = {};
  for (const s of data.series) (S.data[s.key] ??= {})[s.run] = s;
  S.cursor = data.cursor;
  const charts = $("#charts");
  if (!charts) return;
  charts.innerHTML = S.keys.map((k, i) => `<div class="chart" id="chart-${i}" data-key="${esc(k)}"></div>`).join("");
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
    const t0 = s.time.length ? s.time[0] : 0;
    const x = S.x === "step" ? s.step : s.time.map((t) => new Date(t * 1000));
    return { x, y: smooth(s.value, S.smooth), name: S.names?.[run] || run, mode: s.value.length > 1 ? "lines" : "markers",
             line: { color: COLORS[j % COLORS.length], width: 1.6 }, hovertemplate: "%{y:.5g}<extra>%{fullData.name}</extra>" };
  }).filter(Boolean);
  const total = Object.values(S.data[key] || {}).reduce((n, s) => n + s.total, 0);
  Plotly.react(el, traces, {
    title: { text: key + (total > 1500 * runs.length ? ` <span style="font-size:11px;color:#888">(${total.toLocaleString()} points, min/max kept)</span>` : ""), font: { size: 13 }, x: 0.01, xanchor: "left" },
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
  const head = "<tr><th>key</th>" + details.map((d) => `<th>${esc(d.name)}</th>`).join("") + "</tr>";
  const rows = differ.map((k) => `<tr><td>config.${esc(k)}</td>${cfgs.map((c) => `<td class="changed">${esc(fmt(c[k]))}</td>`).join("")}</tr>`).join("")
    + sums.map((k) => `<tr><td>${esc(k)}</td>${details.map((d) => `<td class="num">${esc(fmt(d.summary[k]))}</td>`).join("")}</tr>`).join("");
  return `<h2 style="margin-top:14px">config differences (${differ.length} of ${keys.length} keys) and summaries</h2><div class="tablewrap"><table class="diff">${head}${rows}</table></div>`;
}

// ---------------------------------------------------------------------------------- one run
async function runPage(key) {
  let d;
  try { d = await api("api/runs/" + key); } catch (e) { view().innerHTML = `<p class="error">${esc(e.message)}</p>`; return; }
  const kv = (o) => "<table>" + Object.entries(o).map(([k, v]) => `<tr><td>${esc(k)}</td><td class="num">${esc(typeof v === "object" && v !== null ? JSON.stringify(v) : fmt(v))}</td></tr>`).join("") + "</table>";
  view().innerHTML = `
  <div class="panel"><h2>${esc(d.name)} <span class="badge ${esc(d.status)}">${esc(d.status)}</span> <span class="muted">${esc(d.key)}</span></h2>
    <div>${d.tags.map((t) => `<span class="tag">${esc(t)}</span>`).join("")} created ${esc(when(d.created))}${d.finished ? " · finished " + esc(when(d.finished)) : ""}</div>
    ${d.notes ? `<p>${esc(d.notes)}</p>` : ""}${d.error ? `<p class="error">${esc(d.error)}</p>` : ""}
    <p><a href="#/" id="chart-this">chart this run</a></p></div>
  <div class="grid2">
    <div class="panel"><h2>summary</h2>${kv(d.summary)}</div>
    <div class="panel"><h2>config</h2><pre>${esc(JSON.stringify(d.config, null, 2))}</pre></div>
  </div>
  <div class="grid2">
    <div class="panel"><h2>system</h2>${kv(d.system)}</div>
    <div class="panel"><h2>artifacts</h2><p>logged: ${d.artifacts.logged.map(esc).join(", ") || "-"}</p><p>used: ${d.artifacts.used.map(esc).join(", ") || "-"}</p>
      <p class="muted">metric keys: ${esc(d.metric_keys.join(", "))}<br>system keys: ${esc(d.system_keys.join(", "))}</p></div>
  </div>
  <div id="images"></div><div id="hists"></div><div id="tables"></div>`;
  $("#chart-this").onclick = () => { S.selected = new Set([d.key]); S.keys = null; };
  stepped("#images", "images", d.images, (e) => `<div class="media"><img src="files/${esc(d.key)}/${esc(e.path)}" width="${Math.max(96, Math.min(256, e.width * 8))}"><div class="muted">${esc(e.caption)}</div></div>`);
  stepped("#hists", "histograms", d.histograms, (e, id) => { setTimeout(() => Plotly.react(id, [{ type: "bar", x: e.bins.slice(0, -1).map((b, i) => (b + e.bins[i + 1]) / 2), y: e.counts, marker: { color: COLORS[0] } }], { margin: { l: 40, r: 10, t: 10, b: 30 }, height: 220 }, { displaylogo: false }), 0); return `<div id="${id}" style="height:220px"></div>`; });
  const tables = Object.entries(d.tables);
  if (tables.length) {
    const box = $("#tables");
    for (const [name, entries] of tables) {
      const e = entries[entries.length - 1];
      const rows = (await api(`api/table/${d.key}?path=${encodeURIComponent(e.path)}&limit=50`)).rows;
      box.insertAdjacentHTML("beforeend", `<div class="panel"><h2>table ${esc(name)} <span class="muted">step ${e.step}, ${e.nrows} rows</span></h2><div class="tablewrap"><table><tr>${e.columns.map((c) => `<th>${esc(c)}</th>`).join("")}</tr>${rows.map((r) => "<tr>" + (Array.isArray(r) ? r : Object.values(r)).map((v) => `<td>${esc(fmt(v))}</td>`).join("") + "</tr>").join("")}</table></div></div>`);
    }
  }
}

// one panel per key with a slider over the logged steps
function stepped(sel, title, byKey, render) {
  const box = $(sel);
  Object.entries(byKey).forEach(([name, entries], n) => {
    const id = `${title}-${n}`;
    box.insertAdjacentHTML("beforeend", `<div class="panel"><h2>${esc(title)}: ${esc(name)} <span class="muted" id="${id}-s"></span></h2>
      <input type="range" min="0" max="${entries.length - 1}" value="${entries.length - 1}" id="${id}-r" style="width:320px"><div id="${id}-v"></div></div>`);
    const show = (i) => { $(`#${id}-s`).textContent = `step ${entries[i].step} (${i + 1}/${entries.length})`; $(`#${id}-v`).innerHTML = render(entries[i], id + "-plot"); };
    $(`#${id}-r`).oninput = (e) => show(+e.target.value);
    show(entries.length - 1);
  });
}

// ------------------------------------------------------------------------------- artifacts
async function artifactsPage() {
  const d = await api("api/artifacts");
  let html = '<div class="panel"><h2>lineage (runs → artifact versions → runs)</h2><div id="lineage" style="height:360px"></div></div><div class="panel"><h2>artifacts</h2><table><tr><th>artifact</th><th>type</th><th>version</th><th>aliases</th><th>files</th><th>size</th><th>created</th><th>producer</th><th>consumers</th></tr>';
  for (const a of d.artifacts) for (const v of a.versions) {
    const run = (r) => r ? `<a href="#/run/${esc(r.project)}/${esc(r.id)}">${esc(r.id)}</a>` : "-";
    html += `<tr><td>${esc(a.project)}/${esc(a.name)}</td><td>${esc(a.type)}</td><td>v${v.version}</td><td>${v.aliases.map((x) => `<span class="tag">${esc(x)}</span>`).join("")}</td>
      <td class="num">${v.files}</td><td class="num">${(v.size / 1024).toFixed(1)} KiB</td><td>${esc(when(v.created))}</td><td>${run(v.producer)}</td><td>${v.consumers.map(run).join(", ") || "-"}</td></tr>`;
  }
  view().innerHTML = html + "</table></div>";
  lineageGraph($("#lineage"), d.graph);
}

function lineageGraph(el, g) {
  if (!g.nodes.length) { el.innerHTML = '<span class="muted">no artifacts yet</span>'; el.style.height = "auto"; return; }
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
    text: kind(k).map((n) => n.label), textposition: "bottom center", marker: { size: 16, color, symbol } });
  Plotly.react(el, [{ type: "scatter", mode: "lines", x: lx, y: ly, line: { color: "#b8bfcc" }, hoverinfo: "skip", showlegend: false },
    nodes("run", COLORS[0], "circle"), nodes("artifact", COLORS[1], "square")],
    { margin: { l: 20, r: 20, t: 10, b: 20 }, xaxis: { visible: false }, yaxis: { visible: false } }, { displaylogo: false });
}
