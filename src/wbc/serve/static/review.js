// wbc review page: create a case from smear fields, review every cell (gallery by class or the field with
// its outlines), reclassify with a click, a number key or the menu, sign off. Plain JavaScript, no
// dependencies, works offline. User text (case names, file names, reviewer names) only ever goes in
// through textContent or setAttribute, never as HTML. Uses common.js ($, el, NAMES, displayName), loaded first.
"use strict";

Object.assign(NAMES, { not_wbc: "Not a WBC", unidentifiable: "Unidentifiable" });  // NAMES: common.js
const SPECIAL_COLOURS = { not_wbc: "#5b6676", unidentifiable: "#17202b" };
const SVG = "http://www.w3.org/2000/svg";

const state = {
  meta: null, doc: null, view: "gallery", sel: null, order: [], keys: {}, confirming: null, confirmingSeen: null,
  busy: false, saving: null, queue: [],  // busy: labels are being saved; saving: the one sent; queue: those to send
  opening: 0,  // counts the cases asked for: only the last one asked for is shown
};
const colourOf = (c) => SPECIAL_COLOURS[c] || (state.meta && state.meta.colours && state.meta.colours[c]) || "#9aa7b8";
const fmt1 = (v) => (v === null || v === undefined ? "" : fixed(v));  // fixed: common.js, the reports' rounding
// the model's confidence in a cell, never shown as the review threshold it fell below (confidenceText, common.js)
const confText = (c, digits) => `${confidenceText(c.model_confidence, state.doc.review_threshold, digits)} %`;
const signed = () => Boolean(state.doc && state.doc.signed_by);

// One place for every request: authentication headers, if the server needs them, go here.
async function api(url, options) {
  const resp = await fetch(url, Object.assign({ credentials: "same-origin" }, options || {}));
  if (resp.status === 401) {  // the login expired (or never happened): sign in again, as the main page does
    window.location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);  // then back here
    return { ok: false, status: 401, body: { error: "unauthorized", detail: "please sign in", errors: [] } };
  }
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  return { ok: resp.ok, status: resp.status, body };
}

function problem(res) {
  const b = res.body || {};
  if (Array.isArray(b.errors) && b.errors.length) return b.errors.map((e) => e.error).join("; ");
  return b.detail || `the server answered ${res.status}`;
}

// ------------------------------------------------------------------ cases list and creation

async function init() {
  $("new-case").addEventListener("submit", (e) => { e.preventDefault(); createCase(); });
  $("view-gallery").addEventListener("click", () => setView("gallery"));
  $("view-fields").addEventListener("click", () => setView("fields"));
  $("sign-off").addEventListener("click", askSignOff);
  $("confirm-sign-off").addEventListener("click", signOff);
  $("cancel-sign-off").addEventListener("click", () => showConfirm(false));
  const reviewer = $("reviewer");
  try { reviewer.value = localStorage.getItem("wbc.reviewer") || ""; } catch (_) { /* private mode */ }
  reviewer.addEventListener("change", () => {
    try { localStorage.setItem("wbc.reviewer", reviewer.value.trim()); } catch (_) { /* ignore */ }
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("popstate", () => openFromURL());
  // labels given and not yet saved are lost with the page: the browser asks before a reload, a closed tab or a link
  // followed (before wbc 0.34.0 they were dropped without a word)
  window.addEventListener("beforeunload", (e) => {
    if (unsaved().length) { e.preventDefault(); e.returnValue = ""; }
  });
  const [model, health] = await Promise.all([api("/model"), api("/health")]);
  if (model.ok) state.meta = model.body;
  $("sign-out").hidden = !(health.ok && health.body.security && health.body.security.api_keys);
  await loadCases();
  await openFromURL();
  document.body.dataset.ready = "true";
}

async function loadCases() {
  const res = await api("/cases");
  const tbody = $("case-list").querySelector("tbody");
  if (!res.ok) { $("cases-status").textContent = `Cases unavailable: ${problem(res)}`; tbody.replaceChildren(); return; }
  const cases = res.body.cases.slice().reverse();
  tbody.replaceChildren(...cases.map((c) => el("tr", { "data-case": c.id },
    el("td", { class: "name", text: c.name }),
    el("td", { class: "num", text: String(c.n_fields) }),
    el("td", { class: "num", text: String(c.n_cells) }),
    el("td", { class: "num changed", text: String(c.n_changed) }),
    el("td", {}, el("span", { class: `badge ${c.signed_by ? "signed" : "open"}`, text: c.signed_by ? "Signed off" : "Open" })),
    el("td", {}, el("button", { type: "button", class: "open-case", "data-case": c.id,
      "aria-label": `Open case ${c.name}`, onclick: () => openCase(c.id, true) }, "Open")))));
  if (!cases.length) tbody.append(el("tr", {}, el("td", { colspan: "6", text: "No case yet." })));
}

// The case list's Changed count of case `doc`, as the case now has it: the list is loaded with the page, but a label
// changes it (before wbc 0.32.0 it read 2 beside a case header's 3 until the page was reloaded).
function updateListed(doc) {
  const td = $("case-list").querySelector(`tr[data-case="${doc.id}"] td.changed`);
  if (td) td.textContent = String(doc.n_changed);
}

async function createCase() {
  const name = $("case-name").value.trim();
  const files = Array.from($("case-files").files);
  if (!name) { $("cases-status").textContent = "Give the case a name."; $("case-name").focus(); return; }
  if (!files.length) { $("cases-status").textContent = "Choose one or more smear fields."; $("case-files").focus(); return; }
  const fd = new FormData();
  fd.append("name", name);
  fd.append("user", $("reviewer").value.trim());
  // the chosen names, which the server prefers to the parts' own (a browser sends a " in a name as %22)
  fd.append("names", JSON.stringify(files.map((f) => f.name)));
  $("create-case").disabled = true;
  // each field's bytes read first: a file moved or rewritten since it was chosen refuses the case, named (before wbc
  // 0.37.0 the upload failed as "no answer from the server", the file unnamed); a case is of every field chosen
  const unread = [];
  for (const f of files) {
    const bytes = await readChosen(f);
    if (bytes) fd.append("files", bytes, f.name);
    else unread.push(f.name);
  }
  if (unread.length) {
    $("create-case").disabled = false;
    $("cases-status").textContent = `Not created: ${unread.map(unreadableChosen).join("; ")}.`;
    return;
  }
  $("cases-status").textContent = `Analysing ${files.length} field(s)…`;
  let res;
  try { res = await api("/cases", { method: "POST", body: fd }); } catch (err) {
    res = { ok: false, status: 0, body: { detail: `no answer from the server (${err.message})` } };
  }
  $("create-case").disabled = false;
  if (!res.ok) { $("cases-status").textContent = `Not created: ${problem(res)}`; return; }
  // a field's warnings (a TIFF of several fields of which only the first was analysed, ...) are said at once; those
  // of several fields are counted, each listed with its field below: the same out-of-distribution sentence, field by
  // field, made this line one paragraph of 11 (BCCD's ten fields, wbc 0.29.0)
  const warned = res.body.fields.filter((f) => f.warnings.length);
  const said = warned.length === 1 ? ` ${warned[0].image}: ${warned[0].warnings.join("; ")}.`
    : warned.length ? ` ${warned.length} of ${res.body.fields.length} fields carry a warning, listed with each field below.` : "";
  $("cases-status").textContent = `Case created: ${res.body.n_cells} cell(s) in ${res.body.fields.length} field(s).` + said;
  $("new-case").reset();
  await loadCases();
  state.opening += 1;  // the new case is shown, not an Open clicked while it was analysed
  showCase(res.body);
  history.pushState({}, "", `/review?case=${res.body.id}`);
  $("case").focus();
}

// The case the address names, or none: Back to /review closes the case shown (before wbc 0.32.0 it stayed on screen,
// open to labels, under the list's address).
async function openFromURL() {
  const id = new URLSearchParams(location.search).get("case");
  if (id && /^\d+$/.test(id)) { await openCase(Number(id), false); return; }
  state.opening += 1;  // an Open still on its way shows nothing now
  showConfirm(false);
  state.doc = null;
  state.sel = null;
  $("case").hidden = true;
}

// The case asked for last is shown: an earlier Open answered late is dropped (before wbc 0.32.0, on a slow link, the
// first of two Opens clicked in a row replaced the second).
async function openCase(id, push) {
  const n = ++state.opening;
  const res = await api(`/cases/${id}`);
  if (n !== state.opening) return;
  if (!res.ok) { $("cases-status").textContent = `Cannot open case ${id}: ${problem(res)}`; return; }
  if (push) history.pushState({}, "", `/review?case=${id}`);
  showCase(res.body);
  $("case").focus();
}

// ------------------------------------------------------------------ the case

function showCase(doc) {
  showConfirm(false);  // a sign-off asked for the case shown before never signs this one
  // the corrections this page has shown: a sign-off is refused (409 changed) when the case has others
  doc.corrections_seen = doc.corrections.length;
  state.doc = doc;
  updateListed(doc);
  state.sel = null;
  state.keys = {};
  doc.classes.slice(0, 8).forEach((c, i) => { state.keys[String(i + 1)] = c; });
  $("last-class-key").textContent = String(Math.min(8, doc.classes.length));  // 7 since wbc 0.30.0: no platelet
  state.keys["9"] = "not_wbc";
  state.keys["0"] = "unidentifiable";
  state.keys.n = "not_wbc";
  state.keys.u = "unidentifiable";
  $("case").hidden = false;
  $("case-heading").textContent = `Case ${doc.name}`;
  $("report-link").href = `/cases/${doc.id}/report`;
  $("pdf-link").href = `/cases/${doc.id}/report.pdf`;
  buildMenu();
  renderAll();
  const first = ordered()[0];
  if (first) select(first.id, false);
}

function renderAll() {
  const d = state.doc;
  const thr = d.review_threshold;  // as the case report says it (wbc.formats.threshold_text), in percent
  const below = thr > 0 && thr < 1 ? ` (review below ${thresholdText(thr)} % confidence)` : "";
  $("case-meta").textContent = `${d.fields.length} field(s) · ${d.n_cells} cell(s) · ${d.n_flagged} flagged by the model`
    + `${below} · ${d.n_reviewed} reviewed · ${d.n_changed} changed · model ${d.model_id}`;
  const st = $("case-status");
  st.className = `badge ${signed() ? "signed" : "open"}`;
  st.textContent = signed() ? "Signed off (read-only)" : "Open";
  $("case").classList.toggle("readonly", signed());
  $("sign-off").hidden = signed();
  if (signed()) showConfirm(false);
  const stx = $("signed-text");
  stx.hidden = !signed();
  stx.textContent = signed() ? `Signed off by ${d.signed_by} on ${d.signed_at}. The case is read-only.` : "";
  renderDifferential();
  if (state.view === "gallery") renderGallery(); else renderFields();
  renderDetail();
}

function cellById(id) { return state.doc.cells.find((c) => c.id === id); }

// Gallery order: cells the model flagged and nobody reviewed yet first (least confident first), then one
// group per class (flagged first within it).
function groups() {
  const d = state.doc;
  const byConf = (a, b) => (b.model_review - a.model_review) || (a.model_confidence - b.model_confidence) || (a.id - b.id);
  const pending = d.cells.filter((c) => c.model_review && !c.reviewed).sort(byConf);
  const out = [{ key: "flagged", title: "Flagged for review", cells: pending }];
  for (const lab of d.labels) {
    const cells = d.cells.filter((c) => c.label === lab && !(c.model_review && !c.reviewed)).sort(byConf);
    if (cells.length) out.push({ key: lab, title: displayName(lab), cells });
  }
  return out.filter((g) => g.cells.length);
}

function ordered() {
  if (state.view === "gallery") return groups().flatMap((g) => g.cells);
  return state.doc.cells.slice().sort((a, b) => (a.field - b.field) || (a.cell_no - b.cell_no));
}

function cellTitle(c) {
  const conf = confText(c, 1);
  const model = c.changed ? `, model said ${displayName(c.model_label)} ${conf}` : ` ${conf}`;
  return `Cell ${c.id}, field ${c.field}: ${displayName(c.label)}${model}`
    + `${c.model_review && !c.reviewed ? ", flagged" : ""}${c.reviewed ? ", reviewed" : ""}`;
}

function renderGallery() {
  const root = $("gallery");
  state.order = ordered().map((c) => c.id);
  root.replaceChildren(...groups().map((g) => el("section", { class: `group ${g.key === "flagged" ? "flagged" : ""}`, role: "group",
    "aria-label": `${g.title}: ${g.cells.length}` },
  el("h4", {}, g.key !== "flagged" ? el("span", { class: "swatch", style: { background: colourOf(g.key) }, "aria-hidden": "true" }) : "",
    g.title, el("span", { class: "n", text: `(${g.cells.length})` })),
  el("div", { class: "tiles" }, g.cells.map(tile)))));
  showSaving();
}

// A cell's and a field's image URLs are the case document's (view_url, image_url): they carry the image's content
// version, so a browser that kept case 1's cell 1 of another case store never shows it here (wbc 0.30.0 did).
function tile(c) {
  const cls = ["tile", c.model_review && !c.reviewed ? "flag" : "", c.changed ? "changed" : "", c.reviewed ? "reviewed" : ""];
  return el("button", {
    type: "button", class: cls.filter(Boolean).join(" "), role: "option", "data-cell": c.id,
    "aria-selected": String(state.sel === c.id), tabindex: state.sel === c.id ? "0" : "-1", "aria-label": cellTitle(c),
    onclick: () => select(c.id, true),
  },
  el("img", { src: c.view_url, alt: "", loading: "lazy", width: "94", height: "94" }),
  el("span", { class: "t-label", text: displayName(c.label) }),
  el("span", { class: "t-sub", text: c.changed ? `was ${displayName(c.model_label)}` : `${confText(c, 0)} · #${c.id}` }));
}

function renderFields() {
  const root = $("fields");
  state.order = ordered().map((c) => c.id);
  root.replaceChildren(...state.doc.fields.map((f) => {
    const cells = state.doc.cells.filter((x) => x.field_id === f.id);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${f.width} ${f.height}`);
    svg.setAttribute("role", "listbox");
    svg.setAttribute("aria-label", `Cells in ${f.image}`);
    for (const c of cells) {
      const g = document.createElementNS(SVG, "g");
      g.setAttribute("role", "option");
      g.setAttribute("data-cell", String(c.id));
      g.setAttribute("tabindex", state.sel === c.id ? "0" : "-1");
      g.setAttribute("aria-selected", String(state.sel === c.id));
      g.setAttribute("aria-label", cellTitle(c));
      if (c.model_review && !c.reviewed) g.setAttribute("class", "flag");
      const polys = c.outline.length ? c.outline : [[[c.box[0], c.box[1]], [c.box[2], c.box[1]], [c.box[2], c.box[3]], [c.box[0], c.box[3]]]];
      for (const poly of polys) {
        const p = document.createElementNS(SVG, "polygon");
        p.setAttribute("points", poly.map((xy) => xy.join(",")).join(" "));
        p.setAttribute("stroke", colourOf(c.label));
        g.append(p);
      }
      const t = document.createElementNS(SVG, "text");
      t.textContent = `${c.id} ${displayName(c.label)}`;
      // a label that would run past the field's right edge ends there instead: the SVG cut it ("31 Not a…") before
      // wbc 0.36.0. Its width is estimated (bold 16 px: at most about 11 units a character): the SVG is not laid out yet.
      const wide = t.textContent.length * 11;
      if (c.box[0] + wide > f.width) {
        t.setAttribute("text-anchor", "end");
        t.setAttribute("x", String(Math.min(f.width - 2, Math.max(c.box[2], wide))));
      } else t.setAttribute("x", String(c.box[0]));
      t.setAttribute("y", String(Math.max(16, c.box[1] - 4)));
      g.append(t);
      g.addEventListener("click", () => select(c.id, true));
      svg.append(g);
    }
    return el("figure", { class: "field-figure" },
      el("div", { class: "field-frame" },
        el("img", { src: f.image_url, alt: `Field ${f.position}: ${f.image}`,
          width: String(f.width), height: String(f.height) }), svg),
      el("figcaption", { text: `Field ${f.position}: ${f.image} · ${f.n_cells} cell(s)`
        + (f.colour_calibration ? " · colours calibrated on its red cells before classifying" : "")
        + (f.warnings.length ? ` · ${f.warnings.map((w) => w + sinceReviewed(warnedCells(w, cells))).join("; ")}` : "") }));
  }));
  showSaving();
}

// The cells of its field a warning speaks of, and what became of those a person reviewed, as the case report says
// it (wbc.cases.report.warned_cells, since_reviewed): a warning is stored as analysed ("each is counted in the class
// shown"), which before wbc 0.36.0 the caption showed unchanged beside the cell marked Not a WBC.
const OUTSIDE_REASON = /^the model favours .+? \(.*\), outside the (chosen classes|classes counted on smears)$/;

function warnedCells(w, cells) {
  if (w.startsWith("does not look like a blood-smear field")) {
    return cells.filter((c) => c.model_reasons.includes("its field does not look like a blood smear"));
  }
  if (w.includes("cells are most likely a class ")) return cells.filter((c) => c.model_reasons.some((r) => OUTSIDE_REASON.test(r)));
  if (w.includes(" look unlike the model's training data")) return cells.filter((c) => c.ood);
  return [];
}

function sinceReviewed(cells) {
  const reviewed = cells.filter((c) => c.reviewed);
  if (!reviewed.length) return "";
  const fate = (c) => `cell #${c.id} ${!c.changed ? "confirmed" : ["not_wbc", "unidentifiable"].includes(c.label) ? "marked" : "relabelled"} `
    + `${displayName(c.label)} by ${c.reviewed_by}`;
  const more = reviewed.length > 5 ? ` and ${reviewed.length - 5} more` : "";
  const rest = reviewed.length < cells.length ? `; ${cells.length - reviewed.length} not reviewed` : "";
  return `; since reviewed: ${reviewed.slice(0, 5).map(fate).join(", ")}${more}${rest}`;
}

function setView(view) {
  state.view = view;
  $("view-gallery").setAttribute("aria-pressed", String(view === "gallery"));
  $("view-fields").setAttribute("aria-pressed", String(view === "fields"));
  $("gallery").hidden = view !== "gallery";
  $("fields").hidden = view !== "fields";
  if (view === "gallery") renderGallery(); else renderFields();
  if (state.sel !== null) focusSelected();
}

function selectedNode() {
  const root = state.view === "gallery" ? $("gallery") : $("fields");
  return root.querySelector(`[data-cell="${state.sel}"]`);
}

function focusSelected() {
  const node = selectedNode();
  if (node) { node.focus({ preventScroll: false }); if (node.scrollIntoView) node.scrollIntoView({ block: "nearest" }); }
}

function select(id, focus) {
  state.sel = id;
  const root = state.view === "gallery" ? $("gallery") : $("fields");
  for (const n of root.querySelectorAll("[data-cell]")) {
    const on = Number(n.getAttribute("data-cell")) === id;
    n.setAttribute("aria-selected", String(on));
    n.setAttribute("tabindex", on ? "0" : "-1");
  }
  renderDetail();
  if (focus) focusSelected();
}

function move(step) {
  if (!state.order.length) return;
  let i = state.order.indexOf(state.sel);
  i = i < 0 ? 0 : Math.min(state.order.length - 1, Math.max(0, i + step));
  select(state.order[i], true);
}

function buildMenu() {
  const keyOf = Object.fromEntries(Object.entries(state.keys).filter(([k]) => /\d/.test(k)).map(([k, v]) => [v, k]));
  $("label-menu").replaceChildren(...state.doc.labels.map((lab) => el("button", {
    type: "button", "data-label": lab, "aria-pressed": "false", onclick: () => setLabel(lab),
  }, keyOf[lab] ? el("kbd", { text: keyOf[lab] }) : "", el("span", { class: "swatch", style: { background: colourOf(lab) }, "aria-hidden": "true" }),
  displayName(lab))));
}

function renderDetail() {
  const c = state.sel !== null ? cellById(state.sel) : null;
  const box = $("cell-detail");
  for (const b of $("label-menu").querySelectorAll("button")) {
    b.setAttribute("aria-pressed", String(Boolean(c) && b.getAttribute("data-label") === c.label));
    b.disabled = signed() || !c;
  }
  if (!c) { box.replaceChildren(el("p", { class: "note", text: "Click a cell or use the arrow keys." })); return; }
  // one decimal, the model's call as the Model line gives it (a cell flagged at 98.5 % read "99 %" here before wbc
  // 0.32.0, the very reading confidenceText prevents)
  const probs = Object.entries(c.model_probabilities || {}).sort((a, b) => b[1] - a[1]).slice(0, 3)
    .map(([k, v]) => `${displayName(k)} ${k === c.model_label ? confText(c, 1) : `${fixed(100 * v)} %`}`).join(", ");
  box.replaceChildren(el("div", { class: "big" },
    el("img", { src: c.view_url, alt: `Cell ${c.id}` }),
    el("dl", {},
      el("dt", { text: "Cell" }), el("dd", { text: `#${c.id}, field ${c.field}` }),
      el("dt", { text: "Now" }), el("dd", { id: "current-label", text: displayName(c.label) }),
      el("dt", { text: "Model" }), el("dd", { text: `${displayName(c.model_label)} (${confText(c, 1)})` }),
      el("dt", { text: "Top 3" }), el("dd", { text: probs }),
      c.model_review ? el("dt", { text: "Flag" }) : "", c.model_review ? el("dd", { text: (c.model_reasons || []).join("; ") || "review" }) : "",
      c.reviewed ? el("dt", { text: "Reviewed" }) : "", c.reviewed ? el("dd", { text: `${c.reviewed_by}, ${c.reviewed_at}` }) : "")));
}

function renderDifferential() {
  const d = state.doc;
  const model = Object.fromEntries(d.model_differential.rows.map((r) => [r.class, r]));
  const rows = d.differential.rows.map((r) => el("tr", { class: r.count !== model[r.class].count ? "differs" : (r.count ? "" : "zero"), "data-class": r.class },
    el("th", { scope: "row" }, el("span", { class: "swatch", style: { background: colourOf(r.class) }, "aria-hidden": "true" }), displayName(r.class)),
    el("td", { class: "num count", text: String(r.count) }),
    // no WBC counted: no share either, where the API keeps a WBC class's 0.0 (the case report and differential.csv
    // alike; before wbc 0.33.0 this read "0.0")
    el("td", { class: "num", text: r.percent === null || r.total === 0 ? (r.count ? "n/a (no WBC counted)" : "")
      : fmt1(r.percent) + (r.unit === "per 100 WBC" ? "†" : "") }),
    el("td", { class: "num ci", text: r.total ? `${fmt1(r.ci95_low)}–${fmt1(r.ci95_high)}` : "" }),
    el("td", { class: "num", text: String(model[r.class].count) })));
  for (const lab of ["not_wbc", "unidentifiable"]) {
    const n = d.differential.excluded[lab] || 0;
    rows.push(el("tr", { class: n ? "differs" : "zero", "data-class": lab },
      el("th", { scope: "row", text: displayName(lab) }), el("td", { class: "num count", text: String(n) }),
      el("td", {}), el("td", {}), el("td", { class: "num", text: "0" })));
  }
  $("review-diff").querySelector("tbody").replaceChildren(...rows);
  // the † only where a row carries one: a five-part case counts no erythroblasts (as the web page and the case report)
  const rates = d.differential.rows.some((r) => r.unit === "per 100 WBC") ? "; † per 100 white cells, outside the total" : "";
  $("review-diff-caption").textContent = `${countedNote(d)}; model's counts `
    + `beside them${rates}. Platelets are not counted in smear analysis.`;
}

// How many white cells are counted and whose calls they are, as the case report says it
// (wbc.cases.report.counted_note); before wbc 0.36.0 "(reviewed calls)", however few were reviewed.
function countedNote(d) {
  const wbcs = new Set(d.differential.rows.filter((r) => r.unit !== "per 100 WBC").map((r) => r.class));
  const counted = d.cells.filter((c) => wbcs.has(c.label));
  const unopened = counted.filter((c) => !c.reviewed);
  const head = `${d.differential.total} white cells counted`;
  if (!counted.length) return head;
  if (!unopened.length) return `${head}, every one reviewed`;
  const fate = d.signed_by ? "accepted at sign-off without being opened" : "not reviewed yet";
  const flagged = unopened.filter((c) => c.model_review).length;
  return `${head}: ${counted.length - unopened.length} reviewed, ${unopened.length} the model's calls ${fate}`
    + (flagged ? ` (${flagged} of them flagged for review)` : "");
}

// ------------------------------------------------------------------ editing

function say(text) { $("review-status").textContent = text; }

function reviewerName() {
  const name = $("reviewer").value.trim();
  if (!name) { say("Type your name as Reviewer (top of the page) first: every change records who made it."); $("reviewer").focus(); }
  return name;
}

// A label (a key, Enter or the menu) is for the cell selected when it is given, and the selection moves on at once:
// the next key is for the next cell even while the server has not answered the last. Labels are saved one after
// another, in the order given; until then the cells show as saving, and the panel says which. Before wbc 0.32.0 a
// key pressed while the last label was saving was dropped without a word, the selection then moved on, and the
// reviewer's following key labelled the cell after the one it was meant for.
function setLabel(label) {
  if (!state.doc || state.sel === null) return;
  if (signed()) { say("This case is signed off and read-only."); return; }
  const user = reviewerName();
  if (!user) return;
  // a label changes the numbers the open confirmation asks about: it closes, and Sign off… asks with the new ones
  // (before wbc 0.32.0 it stayed, and its Sign off was refused as if a colleague had changed the case)
  if (state.confirming !== null) showConfirm(false);
  const id = state.sel;
  state.queue.push({ d: state.doc, id, label, user });
  const hadFocus = document.activeElement && document.activeElement.closest && document.activeElement.closest("#gallery, #fields");
  // next: the cell that follows this one in the order shown (the gallery moves it once its answer comes)
  const pos = state.order.indexOf(id);
  const next = state.order.slice(pos + 1)[0] ?? state.order.slice(0, pos).reverse()[0] ?? id;
  select(next, Boolean(hadFocus));
  showSaving();
  if (!state.busy) saveQueue();
}

// The labels given and not yet saved, in order: the one being sent, then the queue.
function unsaved() { return (state.saving ? [state.saving] : []).concat(state.queue); }

const onScreen = (item) => Boolean(state.doc) && item.d.id === state.doc.id;  // a label of the case on screen

function labelText(item) {
  return `cell ${item.id}${onScreen(item) ? "" : ` of case ${item.d.name}`} (${displayName(item.label)})`;
}

// Which cells are waiting for the server, on their tiles and outlines and in words under the menu.
function showSaving() {
  const items = unsaved();
  const ids = new Set(items.filter(onScreen).map((x) => x.id));
  for (const n of document.querySelectorAll("#gallery [data-cell], #fields [data-cell]")) {
    n.classList.toggle("saving", ids.has(Number(n.getAttribute("data-cell"))));
  }
  const box = $("saving");
  box.hidden = !items.length;
  box.textContent = items.length ? `Saving ${items.map(labelText).join(", ")}…` : "";
}

async function saveQueue() {
  state.busy = true;
  while (state.queue.length) {
    state.saving = state.queue.shift();
    showSaving();
    const ok = await saveLabel(state.saving);
    state.saving = null;
    if (!ok) {  // the labels given after it are not sent: the page names them, none lands unseen
      const dropped = state.queue.splice(0);
      if (dropped.length) say(`${$("review-status").textContent} Not sent either: ${dropped.map(labelText).join(", ")}; press their keys again.`);
    }
  }
  state.busy = false;
  showSaving();
}

async function saveLabel(item) {
  const { d, id, label, user } = item;  // the answer belongs to case d, even if another one is open when it comes
  let res;
  try {
    res = await api(`/cases/${d.id}/cells/${id}/label`, {
      // expected: the call this page shows (after the labels saved before this one); a cell a colleague relabelled
      // since is not overwritten (409, reloaded)
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ label, user, expected: d.cells.find((c) => c.id === id).label }),
    });
  } catch (err) {
    res = { ok: false, status: 0, body: { detail: `no answer from the server (${err.message}); try again` } };
  }
  if (state.doc !== d) {  // another case was opened meanwhile: say so, and leave the case now shown alone
    if (res.ok) updateListed({ id: d.id, n_changed: res.body.n_changed });
    say(res.ok ? `Cell ${id} of case ${d.name}: ${displayName(label)} (saved).`
      : `Cell ${id} of case ${d.name} not saved: ${problem(res)}`);
    return res.ok;
  }
  const hadFocus = document.activeElement && document.activeElement.closest && document.activeElement.closest("#gallery, #fields");
  if (!res.ok) {
    if (res.status === 409) await openCase(d.id, false);
    if (state.doc && state.doc.id === d.id && cellById(id)) select(id, Boolean(hadFocus));  // the cell to label again
    say(`Not saved: ${problem(res)}`);
    return false;
  }
  d.corrections_seen += 1;  // each saved label is one correction
  const i = d.cells.findIndex((c) => c.id === id);
  d.cells[i] = Object.assign({}, d.cells[i], res.body.cell);
  d.differential = res.body.differential;
  d.model_differential = res.body.model_differential;
  d.n_reviewed = res.body.n_reviewed;
  d.n_changed = res.body.n_changed;
  updateListed(d);
  say(`Cell ${id}: ${displayName(label)}${label === res.body.cell.model_label ? " (confirmed)" : ""}.`);
  renderAll();  // keeps the selection, which moved on when the label was given
  if (hadFocus) focusSelected();
  return true;
}

function onKey(e) {
  if (e.altKey || e.ctrlKey || e.metaKey || !state.doc || $("case").hidden) return;
  if (e.key === "Escape" && state.confirming !== null) {  // an alertdialog closes on Escape, as Cancel does
    e.preventDefault();
    showConfirm(false);
    $("sign-off").focus();
    return;
  }
  const t = e.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) return;
  const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (k === "g") { setView("gallery"); e.preventDefault(); return; }
  if (k === "f") { setView("fields"); e.preventDefault(); return; }
  if (state.confirming !== null) return;
  const inCells = t && t.closest && t.closest("#gallery, #fields");
  if (["ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp", "Home", "End"].includes(k) && (inCells || t === document.body)) {
    e.preventDefault();
    if (k === "Home") select(state.order[0], true);
    else if (k === "End") select(state.order[state.order.length - 1], true);
    else move(k === "ArrowRight" || k === "ArrowDown" ? 1 : -1);
    return;
  }
  if (state.sel === null || !(inCells || t === document.body || (t && t.closest && t.closest("#cell-panel")))) return;
  if (k in state.keys) { e.preventDefault(); setLabel(state.keys[k]); return; }
  if (k === "Enter" && inCells) { e.preventDefault(); setLabel(cellById(state.sel).label); }
}

// ------------------------------------------------------------------ sign-off

// on: the case the confirmation asks about (its id is what signOff signs, the corrections it had then are what the
// server checks the case against), or false
function showConfirm(on) {
  state.confirming = on ? on.id : null;
  state.confirmingSeen = on ? on.corrections_seen : null;
  $("confirm-box").hidden = !on;
  $("sign-off").hidden = Boolean(on) || signed();
}

function askSignOff() {
  const user = reviewerName();
  if (!user) return;
  if (unsaved().length) { say("Labels are still being saved: sign off once they are (the numbers asked about are the saved ones)."); return; }
  const d = state.doc;
  const pending = d.cells.filter((c) => c.model_review && !c.reviewed).length;
  $("confirm-text").textContent = `Sign off case ${d.name} as ${user}? ${d.differential.total} white cells counted, `
    + `${d.n_changed} changed by review${pending ? `, ${pending} flagged cell(s) not looked at yet` : ""}. `
    + "The case becomes read-only.";
  showConfirm(d);
  $("confirm-sign-off").focus();
}

async function signOff() {
  const id = state.confirming;
  const seen = state.confirmingSeen;
  showConfirm(false);
  if (id === null || !state.doc || state.doc.id !== id) return;  // only the case the confirmation named
  const user = reviewerName();
  if (!user) return;
  let res;
  try {
    res = await api(`/cases/${id}/sign-off`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user, corrections_seen: seen }),
    });
  } catch (err) {
    res = { ok: false, status: 0, body: { detail: `no answer from the server (${err.message}); try again` } };
  }
  if (!res.ok) {
    // changed by someone else meanwhile (or signed off already): show the case as it is now, then say why
    if (res.status === 409 && state.doc && state.doc.id === id) await openCase(id, false);
    say(`Not signed off: ${problem(res)}`);
    return;
  }
  if (!state.doc || state.doc.id !== id) { await loadCases(); return; }  // another case was opened meanwhile
  const sel = state.sel;
  state.doc = res.body;
  renderAll();
  if (sel !== null) select(sel, false);
  say("Signed off. The report is ready.");
  $("report-link").focus();
  await loadCases();
}

document.addEventListener("DOMContentLoaded", init);
