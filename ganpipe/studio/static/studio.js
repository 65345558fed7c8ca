// ganpipe studio: the page's behaviour over /api/ (see ganpipe/studio/app.py). No build step.
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const body = document.body.dataset;
const state = { models: null, tab: "generate", interp: null, runsLoaded: false };

async function api(path, options) {
  const r = await fetch(path, options);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new Error((data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}

function show(id, message) {
  const box = $(id);
  box.textContent = message || "";
  box.hidden = !message;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

const fmt = (v) => (v === null || v === undefined ? "–" : Math.abs(v) >= 100 ? v.toFixed(1) : Number(v.toPrecision(4)).toString());
const pngSrc = (b64) => `data:image/png;base64,${b64}`;

// ---- tabs -------------------------------------------------------------------------------------------
function openTab(name) {
  if (!["generate", "compare", "history", "runs"].includes(name)) name = "generate";
  state.tab = name;
  for (const b of document.querySelectorAll("nav [data-tab]")) b.setAttribute("aria-selected", b.dataset.tab === name);
  for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== `tab-${name}`;
  if (name === "history") loadHistory();
  if (name === "runs" && !state.runsLoaded) loadRuns();
}

// ---- models -----------------------------------------------------------------------------------------
async function loadModels() {
  state.models = await api("/api/models");
  const m = state.models;
  const choices = [];
  for (const [alias, v] of Object.entries(m.aliases).sort()) choices.push([alias, `${alias} (v${v})`]);
  for (const v of m.versions) choices.push([v.version, `v${v.version}${v.aliases.length ? " · " + v.aliases.join(", ") : ""}`]);
  const select = $("#gen-model");
  const kept = select.value;
  select.replaceChildren(...choices.map(([value, label]) => el("option", { value, text: label })));
  if (kept && choices.some(([v]) => v === kept)) select.value = kept;
  else if (m.aliases[m.alias]) select.value = m.alias;
  const promote = $("#promote-version");
  promote.replaceChildren(...m.versions.map((v) => el("option", { value: v.version, text: `v${v.version} (${v.gate.decision || "?"})` })));
  const box = $("#compare-versions");
  const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  const defaults = checked.size ? checked : new Set(m.versions.slice(0, 2).map((v) => v.version));
  box.replaceChildren(el("legend", { text: "Versions" }),
    ...m.versions.map((v) => {
      const input = el("input", { type: "checkbox", value: v.version, name: "version" });
      input.checked = defaults.has(v.version);
      return el("label", { class: "check" }, input, ` v${v.version}${v.aliases.length ? " (" + v.aliases.join(", ") + ")" : ""}`);
    }));
  if (!m.versions.length) show("#gen-error", `nothing is registered in ${m.model_name} yet: run \`ganpipe run\` first`);
  else await modelChanged();
}

async function modelChanged() {
  show("#gen-error", "");
  try {
    const info = await api(`/api/model?model=${encodeURIComponent($("#gen-model").value)}`);
    const cls = $("#gen-class");
    $("#gen-class-label").hidden = !info.num_classes;
    cls.replaceChildren(el("option", { value: "", text: "by seed (seed mod classes)" }),
      ...Array.from({ length: info.num_classes }, (_, k) => el("option", { value: String(k), text: String(k) })));
    $("#gen-info").textContent = `v${info.version} · ${info.resolution} px · ${info.num_classes ? info.num_classes + " classes" : "unconditional"}`;
  } catch (e) { show("#gen-error", e.message); }
}

// ---- generate ---------------------------------------------------------------------------------------
function tile(img, label) {
  const t = el("figure", { class: "tile" }, el("img", { src: pngSrc(img.png), alt: label, "data-seed": img.seed }), el("figcaption", { text: label }));
  t.addEventListener("click", () => openViewer(img));
  return t;
}

function openViewer(img) {
  const p = img.provenance;
  $("#viewer-image").src = pngSrc(img.png);
  $("#viewer-provenance").replaceChildren(...Object.entries(p).map(([k, v]) => el("tr", {}, el("th", { text: k.replace(/^ganpipe:/, "") }), el("td", { text: v }))));
  const link = $("#viewer-download");
  link.href = pngSrc(img.png);
  link.download = `ganpipe-v${p["ganpipe:version"]}-seed${img.seed}${img.class === null ? "" : "-class" + img.class}.png`;
  $("#viewer").showModal();
}

async function generate(ev) {
  if (ev) ev.preventDefault();
  show("#gen-error", "");
  const q = new URLSearchParams({ model: $("#gen-model").value, seed: $("#gen-seed").value, n: $("#gen-n").value, psi: $("#gen-psi").value });
  if (!$("#gen-class-label").hidden && $("#gen-class").value !== "") q.set("class", $("#gen-class").value);
  const t0 = performance.now();
  $("#gen-go").disabled = true;
  try {
    const r = await api(`/api/generate?${q}`);
    $("#gen-grid").replaceChildren(...r.images.map((img) => tile(img, `seed ${img.seed}${img.class === null ? "" : " · class " + img.class}`)));
    $("#gen-timing").textContent = `${r.images.length} images from v${r.model.version}${r.model.alias ? " (" + r.model.alias + ")" : ""} in ${((performance.now() - t0) / 1000).toFixed(2)} s`;
  } catch (e) { show("#gen-error", e.message); }
  finally { $("#gen-go").disabled = false; }
}

async function interpolate(ev) {
  ev.preventDefault();
  show("#interp-error", "");
  stopInterp();
  const q = new URLSearchParams({ model: $("#gen-model").value, a: $("#interp-a").value, b: $("#interp-b").value, frames: $("#interp-frames").value, psi: $("#gen-psi").value });
  if (!$("#gen-class-label").hidden && $("#gen-class").value !== "") q.set("class", $("#gen-class").value);
  try {
    const r = await api(`/api/interpolate?${q}`);
    let i = 0;
    const frame = () => {
      $("#interp-frame").src = pngSrc(r.frames[i]);
      $("#interp-caption").textContent = `frame ${i + 1}/${r.frames.length}: seed ${$("#interp-a").value} → ${$("#interp-b").value}`;
      $("#interp-frame").dataset.frame = String(i + 1);
      i = (i + 1) % r.frames.length;
    };
    frame();
    $("#interp").hidden = false;
    state.interp = setInterval(frame, 1000 / 12);
    $("#interp-pause").disabled = false;
  } catch (e) { show("#interp-error", e.message); }
}

function stopInterp() {
  if (state.interp) clearInterval(state.interp);
  state.interp = null;
  $("#interp-pause").disabled = true;
}

// ---- compare ----------------------------------------------------------------------------------------
async function compare(ev) {
  if (ev) ev.preventDefault();
  show("#cmp-error", "");
  const versions = [...document.querySelectorAll("#compare-versions input:checked")].map((i) => i.value);
  const q = new URLSearchParams({ versions: versions.join(","), seed: $("#cmp-seed").value, n: $("#cmp-n").value, psi: $("#cmp-psi").value });
  $("#cmp-go").disabled = true;
  try {
    const r = await api(`/api/compare?${q}`);
    $("#cmp-columns").replaceChildren(...r.versions.map((v) => el("div", { class: "column", "data-version": v.version },
      el("h3", { text: `v${v.version}${v.aliases.length ? " · " + v.aliases.join(", ") : ""}` }),
      el("p", { class: "info", text: `gate: ${v.gate.decision || "?"} · registered ${v.created}` }),
      el("div", { class: "grid" }, ...r.images[v.version].map((img) => tile(img, `seed ${img.seed}`))))));
    const t = r.table;
    $("#cmp-protocol").textContent = `scores under protocol ${t.fingerprint || "unknown"} (the latest version's)`;
    const apart = t.columns.filter((c) => !c.comparable);
    show("#cmp-incomparable", apart.length ? apart.map((c) => `v${c.version}: ${c.scores_from}`).join("; ") + " (no numbers side by side)" : "");
    const head = el("tr", {}, el("th", { text: "metric" }), ...t.columns.map((c) => el("th", { text: `v${c.version}` + (c.comparable ? "" : " (not comparable)") })));
    const rows = t.rows.map((row) => el("tr", { "data-metric": row.metric },
      el("th", { text: `${row.metric} ${row.higher_is_better ? "↑" : "↓"}` }),
      ...row.values.map((v, i) => {
        const [lo, hi] = row.intervals[i];
        const text = !t.columns[i].comparable ? "not comparable" : v === null ? "–" : `${fmt(v)}${lo !== null && lo !== undefined ? ` [${fmt(lo)}, ${fmt(hi)}]` : ""}`;
        return el("td", { class: row.best[i] ? "best" : "", text });
      })));
    $("#cmp-table").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
    gatePanel($("#cmp-gate"), t.gate);
  } catch (e) { show("#cmp-error", e.message); }
  finally { $("#cmp-go").disabled = false; }
}

function gatePanel(box, g) {
  box.replaceChildren(el("h3", { text: `Gate on v${g.version}: ${g.decision || "no decision recorded"}` }),
    el("p", { class: "reason", text: g.reason || "" }),
    ...(g.difference ? [el("p", { class: "info", text: `${body.primary} difference (challenger − champion) with interval: ${g.difference}` })] : []),
    el("ul", {}, ...g.checks.map((c) => el("li", { class: c.passed ? "pass" : "fail", text: `${c.passed ? "pass" : "FAIL"} · ${c.name}: ${c.detail}` }))));
}

// ---- history ----------------------------------------------------------------------------------------
async function loadHistory() {
  show("#history-error", "");
  try {
    const h = await api("/api/history");
    const primary = body.primary;
    $("#versions-table").replaceChildren(
      el("thead", {}, el("tr", {}, ...["version", "aliases", "registered", "gate", primary, "why"].map((x) => el("th", { text: x })))),
      el("tbody", {}, ...h.versions.map((v) => el("tr", { "data-version": v.version },
        el("td", { text: `v${v.version}` }), el("td", { text: v.aliases.join(", ") || "–" }), el("td", { text: v.created }),
        el("td", { class: v.gate.decision, text: v.gate.decision || "?" }), el("td", { text: fmt(v.scores[primary]) }),
        el("td", { class: "reason", text: v.gate.reason }))))
    );
    $("#moves-table").replaceChildren(
      el("thead", {}, el("tr", {}, ...["when", "alias", "from → to", "by", "via", "reason", "gate verdict on the new holder"].map((x) => el("th", { text: x })))),
      el("tbody", {}, ...h.moves.map((m) => el("tr", {},
        el("td", { text: m.at }), el("td", { text: m.alias }), el("td", { text: `${m.from ? "v" + m.from : "–"} → v${m.to}` }),
        el("td", { text: m.by }), el("td", { text: m.via }), el("td", { class: "reason", text: m.reason }),
        el("td", { text: m.gate && m.gate.decision ? `${m.gate.decision}: ${m.gate.reason}` : "–" }))))
    );
  } catch (e) { show("#history-error", e.message); }
}

async function change(ev, path, payload) {
  ev.preventDefault();
  show("#history-error", "");
  show("#history-done", "");
  let done = "", failed = "";
  try {
    const r = await api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
    const m = r.move;
    done = `${m.alias}: ${m.from ? "v" + m.from : "–"} → v${m.to} (${m.via}); the post-promotion check passed`;
    await loadModels();
  } catch (e) { failed = e.message; }
  await loadHistory();
  show("#history-done", done);
  if (failed) show("#history-error", failed);
}

// ---- runs -------------------------------------------------------------------------------------------
async function loadRuns() {
  show("#runs-error", "");
  try {
    const r = await api("/api/runs");
    state.runsLoaded = true;
    $("#run-select").replaceChildren(...r.runs.map((x) => el("option", { value: x.run_id, text: `${x.name} · ${x.started} · ${x.status}` })));
    if (r.runs.length) await loadRun();
    else show("#runs-error", "no training runs in this project's experiment yet");
  } catch (e) { show("#runs-error", e.message); }
}

function plot(id, title, series) {
  const traces = series.filter(([, c]) => c).map(([name, c]) => ({ x: c.kimg, y: c.value, name, mode: c.kimg.length > 40 ? "lines" : "lines+markers", type: "scatter" }));
  const layout = { title: { text: title, font: { size: 14 }, y: 0.97 }, margin: { l: 50, r: 10, t: 56, b: 40 }, height: 260,
    xaxis: { title: { text: "kimg" } }, legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" }, showlegend: traces.length > 1 };
  if (window.Plotly) Plotly.react(id, traces, layout, { displaylogo: false, responsive: true });
}

async function loadRun() {
  const id = $("#run-select").value;
  show("#runs-error", "");
  try {
    const r = await api(`/api/runs/${encodeURIComponent(id)}`);
    const c = r.curves;
    plot("plot-kid", "quick KID (lower is better)", [["quick_kid", c.quick_kid]]);
    plot("plot-diversity", "diversity and duplicate rate", [["diversity", c.diversity], ["duplicate_rate", c.duplicate_rate]]);
    plot("plot-losses", "losses", [["loss_G", c.loss_G], ["loss_D", c.loss_D]]);
    $("#run-snapshots").replaceChildren(...r.snapshots.map((s) => el("figure", { class: "snapshot" },
      el("img", { src: s.url, alt: `snapshot at ${s.kimg} kimg`, loading: "lazy" }), el("figcaption", { text: `${s.kimg} kimg` }))));
    const links = [];
    if (r.links.mlflow) links.push(el("a", { href: r.links.mlflow, target: "_blank", text: "run in the MLflow UI" }));
    if (r.links.prefect) links.push(el("a", { href: r.links.prefect, target: "_blank", text: "flow run in the Prefect UI" }));
    if (!links.length) links.push(el("span", { class: "info", text: "(start with --mlflow-ui URL / --prefect-ui URL to link the UIs)" }));
    $("#run-links").replaceChildren(...links);
  } catch (e) { show("#runs-error", e.message); }
}

// ---- wiring -----------------------------------------------------------------------------------------
function wire() {
  for (const b of document.querySelectorAll("nav [data-tab]")) b.addEventListener("click", () => { location.hash = b.dataset.tab; });
  window.addEventListener("hashchange", () => openTab(location.hash.slice(1)));
  for (const [range, out] of [["#gen-psi", "#gen-psi-value"], ["#cmp-psi", "#cmp-psi-value"]])
    $(range).addEventListener("input", () => { $(out).textContent = Number($(range).value).toFixed(2); });
  $("#gen-model").addEventListener("change", modelChanged);
  $("#generate-form").addEventListener("submit", generate);
  $("#interp-form").addEventListener("submit", interpolate);
  $("#interp-pause").addEventListener("click", stopInterp);
  $("#compare-form").addEventListener("submit", compare);
  $("#promote-form").addEventListener("submit", (ev) => change(ev, "/api/promote", { version: $("#promote-version").value, reason: $("#promote-reason").value }));
  $("#rollback-form").addEventListener("submit", (ev) => change(ev, "/api/rollback", { reason: $("#rollback-reason").value }));
  $("#run-select").addEventListener("change", loadRun);
}

wire();
openTab(location.hash.slice(1));
loadModels().then(() => { document.body.dataset.ready = "true"; }).catch((e) => { show("#gen-error", e.message); document.body.dataset.ready = "true"; });
