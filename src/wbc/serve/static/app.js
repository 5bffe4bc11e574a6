// wbc web page: upload images, call the wbc HTTP API, show results. Plain JavaScript, no dependencies,
// works offline. User-supplied text (file names) is only ever inserted with textContent. Uses common.js
// ($, el, NAMES, displayName), loaded first.
"use strict";

const state = {
  meta: null, limits: { max_upload_mb: 25, max_files: 500 }, mode: "smear", files: [], runs: [], busy: false,
  errors: [],  // the run's problems as the page lists them: the JSON download keeps them (since wbc 0.34.0)
  copies: [], notes: [],  // the copies left out, counted once ({filename, same_as}) and their notes, as /classify's
  // a run's end asked for: "stopped" (the Stop button) or "timeout" (a request unanswered for requestTimeoutS); and
  // how to abort the request under way (runFetch)
  halt: null, abort: null, requestTimeoutS: 300,
};

const colourOf = (c) => (state.meta && state.meta.colours && state.meta.colours[c]) || "#9aa7b8";
const pct = (v) => `${fixed(v)} %`;  // fixed: common.js, the rule the printed reports round with
const fmtMB = (bytes) => (bytes < 1048576 ? `${Math.max(1, Math.round(bytes / 1024))} KiB`
  : `${(bytes / 1048576).toFixed(1)} MiB`);

function swatch(label) {
  return el("span", { class: "swatch", style: { background: colourOf(label) }, "aria-hidden": "true" });
}

async function fetchJSON(url, options) {
  const resp = await fetch(url, options);
  if (resp.status === 401) {  // the login expired (or never happened): sign in again
    window.location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);  // then back here
    return { ok: false, status: 401, body: { error: "unauthorized", detail: "please sign in", errors: [] } };
  }
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  return { ok: resp.ok, status: resp.status, body };
}

// A request of a run: Stop aborts it, and so does a server that has not answered in state.requestTimeoutS (a frozen
// process, a dropped link: before wbc 0.37.0 the page waited for ever, its downloads off, the fields analysed lost to
// the reload that was the only way out). Rejects with `why`: "stopped", "timeout", or null (no answer at all).
async function runFetch(url, options) {
  const ctl = new AbortController();
  let why = null;
  state.abort = () => { why = "stopped"; ctl.abort(); };
  const timer = setTimeout(() => { why = "timeout"; ctl.abort(); }, state.requestTimeoutS * 1000);
  try {
    return await fetchJSON(url, { ...options, signal: ctl.signal });
  } catch (err) {
    if (why === "timeout") state.halt = "timeout";
    const said = why === "timeout" ? `no answer from the server in ${state.requestTimeoutS} s`
      : why === "stopped" ? "the run was stopped" : `no answer from the server (${err.message})`;
    throw Object.assign(new Error(said), { why });
  } finally {
    clearTimeout(timer);
    state.abort = null;
  }
}

// Stop: the request under way is aborted and no other is sent; what was analysed stays, and downloads.
function stopRun() {
  if (!state.busy) return;
  state.halt = "stopped";
  $("stop-button").disabled = true;
  if (state.abort) state.abort();
}

// The files a run left out when it ended early (Stop, or a server that stopped answering): one line, under the name
// the page gives a request's files, each failed alike (their copies too).
function leftOut(files, errors, failed) {
  if (!files.length) return;
  const who = filesWho(files);
  errors.push(`${who}: not analysed: ${state.halt === "timeout" ? "the run ended when the server stopped answering"
    : "the run was stopped"}`);
  for (const f of files) failed.set(f, failure(errors[errors.length - 1], who));
}

// Files as a line names them: the one's name, or how many and the first and last.
const filesWho = (files) => (files.length > 1 ? `${files.length} files (${files[0].name} to `
  + `${files[files.length - 1].name})` : files[0].name);

// A file name as a browser sends it in a multipart upload (the HTML standard: " CR LF as %22 %0D %0A, and % as it
// is), so the server has it that way; the page shows and exports the chosen name (File.name), never this one.
const sentName = (name) => name.replace(/"/g, "%22").replace(/\r/g, "%0D").replace(/\n/g, "%0A");

// A file's problem as the server words it ({filename, error}), under its chosen name: `realName` maps the name sent
// (given the entry too, whose `index` may say which file it is).
const fileProblem = (e, realName) => (e.filename && e.error.startsWith(`${e.filename}:`)
  ? realName(e.filename, e) + e.error.slice(e.filename.length) : e.error);

function problemText(res, fallbackName, realName = (n) => n) {
  const b = res.body;
  if (b && Array.isArray(b.errors) && b.errors.length) return b.errors.map((e) => fileProblem(e, realName));
  if (b && b.detail) return [`${fallbackName}: ${b.detail}`];
  return [`${fallbackName}: the server answered ${res.status}`];
}

// ------------------------------------------------------------------ start-up

async function init() {
  bindForm();
  try {
    const [health, model] = await Promise.all([fetchJSON("/health"), fetchJSON("/model")]);
    if (!health.ok || !model.ok) throw new Error(`server answered ${health.status}`);
    state.meta = model.body;
    if (health.body.limits) state.limits = health.body.limits;
    $("sign-out").hidden = !(health.body.security && health.body.security.api_keys);
    const nAnswered = answered().length, nClasses = model.body.classes.length;
    $("mi-model").textContent = `${model.body.model_id} · ${nAnswered < nClasses ? `${nAnswered} of ` : ""}${nClasses} classes`;
    $("mi-threshold").textContent = thresholdLine(model.body.review_threshold);
    $("mi-segmenter").textContent = model.body.segmenter.name || "–";
    document.body.dataset.ready = "true";
  } catch (err) {
    $("mi-model").textContent = "not reachable";
    showErrors([`Cannot reach the wbc server (${err.message}). Ask the person who runs it to start it.`]);
  }
  updateFiles([]);
}

// The review threshold as the page says it: 98.6 %, the digits a cell's confidence is shown with (thresholdText,
// common.js); 1: every cell reviewed (its labelled cells did not show the target); 0: off.
function thresholdLine(thr) {
  return thr >= 1 ? "100 % (every cell)" : thr > 0 ? `${thresholdText(thr)} % confidence` : "off";
}

function bindForm() {
  const input = $("file-input");
  input.addEventListener("change", () => updateFiles(Array.from(input.files)));
  for (const r of document.querySelectorAll("input[name=mode]")) {
    r.addEventListener("change", () => {
      state.mode = r.value;
      $("annotated-option").hidden = state.mode !== "smear";
      updateFiles(state.files);
    });
  }
  const zone = $("dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    updateFiles(Array.from(e.dataTransfer.files));
  });
  $("upload-form").addEventListener("submit", (e) => { e.preventDefault(); run(); });
  $("dl-json").addEventListener("click", downloadJSON);
  $("dl-cells").addEventListener("click", downloadCellsCSV);
  $("dl-diff").addEventListener("click", downloadDifferentialCSV);
  $("stop-button").addEventListener("click", stopRun);
}

function updateFiles(files) {
  state.files = files;
  const total = files.reduce((s, f) => s + f.size, 0);
  const what = state.mode === "smear" ? "smear field" : "single-cell image";
  $("file-summary").textContent = files.length
    ? `${files.length} ${what}${files.length > 1 ? "s" : ""} selected (${fmtMB(total)})` : "";
  $("run-button").disabled = state.busy || !files.length || !state.meta;  // one run at a time
  $("run-button").textContent = state.mode === "smear" ? "Analyse" : "Classify";
}

// ------------------------------------------------------------------ running

function setBusy(busy, text, done, total) {
  state.busy = busy;
  $("run-button").disabled = busy || !state.files.length;
  $("file-input").disabled = busy;
  // a download is of a finished run: mid-run, the differential CSV paired this run's fields with the last run's ALL
  for (const id of ["dl-json", "dl-cells", "dl-diff"]) $(id).disabled = busy;
  $("stop-button").hidden = !busy;
  $("progress-wrap").hidden = !busy;
  if (total) { $("progress").max = total; $("progress").value = done; }
  $("status").textContent = text || "";
}

function showErrors(messages) {
  $("error-list").replaceChildren(...messages.map((m) => el("li", { text: m })));
  $("errors").hidden = !messages.length;
}

// Notes on files the run counted once (copies): not under "could not be analysed", as every file was.
function showNotes(messages) {
  $("note-list").replaceChildren(...messages.map((m) => el("li", { text: m })));
  $("notes").hidden = !messages.length;
}

async function run() {
  const files = state.files.slice();
  if (!files.length || state.busy) return;
  const mode = state.mode;
  const errors = [];
  const limit = state.limits.max_upload_mb * 1048576;
  const usable = files.filter((f) => {
    if (f.size > limit) {
      errors.push(`${f.name}: ${fmtMB(f.size)} is over the server's limit of ${state.limits.max_upload_mb} MiB`);
      return false;
    }
    return true;
  });
  Object.assign(state, { halt: null, abort: null });
  $("stop-button").disabled = false;
  setBusy(true, "Looking for copies among the files…");  // the run's own progress follows
  const { kept, copies } = await withoutCopies(usable);
  const failed = new Map();  // each kept File that could not be analysed -> failure(): its copies fail alike
  // what is on screen, put back if this run analyses nothing (before wbc 0.34.0 a run of one unreadable file, or one
  // the server never answered, wiped the last run's cards, differential and downloads)
  const before = { runs: state.runs, differential: state.differential, errors: state.errors, copies: state.copies,
    notes: state.notes, hidden: $("results").hidden,
    nodes: ["cards", "stats", "diff-caption", "diff-note"].map((id) => [id, [...$(id).childNodes]]),
    rows: [...$("diff-table").querySelector("tbody").childNodes] };
  state.runs = [];
  state.errors = [];
  state.copies = [];
  state.notes = [];
  clearSummary();  // the last run's tiles and pooled differential never sit above (or download with) this run's fields
  $("diff-caption").textContent = "The differential is pooled once every file is analysed.";
  $("cards").replaceChildren();
  $("results").hidden = true;
  showErrors([]);
  showNotes([]);
  const t0 = performance.now();
  if (mode === "smear") await runSmears(kept, errors, failed);
  else await runCells(kept, errors, failed, new Map(files.map((f, i) => [f, i])));
  const { counted, notes } = placeCopies(copies, errors, failed, mode === "smear" ? "analysed" : "classified");
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  if (state.runs.length) {
    try {
      // a server that stopped answering is not asked again (Stop would be the only way on)
      if (state.halt === "timeout") {
        throw Object.assign(new Error(`no answer from the server in ${state.requestTimeoutS} s`), { why: "timeout" });
      }
      await renderSummary(mode);
    } catch (err) {  // e.g. the server stopped: no summary, never a stuck page
      clearSummary();
      errors.push(`The pooled differential could not be computed: ${err.answered ? `the server answered (${err.message})`
        : "why" in err ? err.message : `no answer from the server (${err.message})`}.`);  // runFetch's words, or not
    }
    Object.assign(state, { errors, copies: counted, notes });
    showErrors(errors);
    showNotes(notes);
    $("results").hidden = false;
    // a copy counted once was analysed too (before wbc 0.37.0, "Done: 1 of 3" above "f1 (1).jpg: ... analysed and
    // counted once")
    const nDone = (mode === "smear" ? state.runs.length : allCells().length) + counted.length;
    const nCopies = counted.length ? ` (${counted.length} ${counted.length === 1 ? "a copy" : "copies"} of another, `
      + "counted once)" : "";
    setBusy(false, `${state.halt ? "Stopped" : "Done"}: ${nDone} of ${files.length} file(s) analysed${nCopies} in `
      + `${secs} s.`);
    $("results").focus({ preventScroll: false });
  } else {
    if (before.runs.length) {  // nothing analysed: the last results stay, and the page says whose they are
      Object.assign(state, { runs: before.runs, differential: before.differential, errors: before.errors,
        copies: before.copies, notes: before.notes });
      for (const [id, nodes] of before.nodes) $(id).replaceChildren(...nodes);
      $("diff-table").querySelector("tbody").replaceChildren(...before.rows);
      $("results").hidden = before.hidden;
      errors.push("Nothing was analysed this time: the results below are those of the run before.");
      // and what that run said, as its JSON download keeps it (before wbc 0.37.0 its problems and notes went away)
      errors.push(...before.errors.map((e) => `From the run before: ${e}`));
    }
    showErrors(errors);
    showNotes(before.runs.length ? before.notes : notes);
    setBusy(false, "No file could be analysed.");
  }
}

// The chosen files without those of another's bytes (a field or cell downloaded twice, `cell.jpg` and `cell (1).jpg`),
// and those copies as [copy, the file kept], as `wbc analyze` and `wbc classify` keep each image once (the one kept:
// the shortest name, then the first in sort order, wbc.batch.kept_of_copies). Since wbc 0.36.0: before, the smear
// mode analysed a copied field again and pooled its cells twice, and /classify saw no copy in another request. Only
// files of a size another has are read, one at a time, and compared byte for byte within a hash's group.
async function withoutCopies(files) {
  const bySize = new Map();
  for (const f of files) bySize.set(f.size, [...(bySize.get(f.size) || []), f]);
  const copyOf = new Map();
  for (const same of bySize.values()) {
    if (same.length < 2) continue;
    const groups = new Map();  // FNV-1a of the bytes -> the groups of files of one content, each kept by its first
    for (const f of same) {
      let bytes;
      try { bytes = new Uint8Array(await f.arrayBuffer()); } catch (_) { continue; }  // unreadable: its upload says so
      let h = 0x811c9dc5;
      for (let i = 0; i < bytes.length; i += 1) h = Math.imul(h ^ bytes[i], 0x01000193);
      const candidates = groups.get(h) || [];
      let match = null;
      for (const group of candidates) {  // the first of a group read again to compare: bytes are never all held
        const first = new Uint8Array(await group[0].arrayBuffer());
        if (first.every((v, i) => v === bytes[i])) { match = group; break; }
      }
      if (match) match.push(f);
      else candidates.push([f]);
      groups.set(h, candidates);
    }
    for (const candidates of groups.values()) {
      for (const group of candidates) {
        if (group.length < 2) continue;
        const keep = group.reduce((a, b) => (b.name.length < a.name.length
          || (b.name.length === a.name.length && b.name < a.name) ? b : a));
        for (const f of group) if (f !== keep) copyOf.set(f, keep);
      }
    }
  }
  const copies = files.filter((f) => copyOf.has(f)).map((f) => [f, copyOf.get(f)]);
  return { kept: files.filter((f) => !copyOf.has(f)), copies };
}

// A kept file that could not be analysed, for its copies (placeCopies): the line the page lists, and the problem
// past the name it starts with (`who`: the file, or the batch a whole refusal names).
const failure = (line, who) => ({ line, why: line.startsWith(`${who}:`) ? line.slice(who.length) : `: ${line}` });

// The copies withoutCopies left out, worded once the run is done, as `wbc analyze` and `wbc classify` word them
// (wbc.batch.with_failed_copies): a copy of a file that could not be analysed is one of `errors`, after that file's,
// with its problem (two empty files: both "file is empty"); the others are notes, "analysed and counted once", and
// `counted` ({filename, same_as}, /classify's `copies`). Worded after the run: a copy is "counted once" only if the
// file kept was, and a note is no file that "could not be analysed".
function placeCopies(copies, errors, failed, verb) {
  const counted = [], notes = [];
  const after = new Map();  // a failed file's line -> its copies' lines
  for (const [copy, original] of copies) {
    const f = failed.get(original);
    if (f) {
      after.set(f.line, [...(after.get(f.line) || []), copy.name + f.why]);
    } else {
      counted.push({ filename: copy.name, same_as: original.name });
      notes.push(`${copy.name}: the same image as another input, ${verb} and counted once (${original.name} has the `
        + "same bytes)");
    }
  }
  const listed = [];
  for (const line of errors) { listed.push(line, ...(after.get(line) || [])); after.delete(line); }
  for (const lines of after.values()) listed.push(...lines);
  errors.splice(0, errors.length, ...listed);
  return { counted, notes };
}

// No summary tiles and no pooled differential: between runs, and when the pooled one could not be computed.
function clearSummary() {
  state.differential = [];
  $("stats").replaceChildren();
  $("diff-table").querySelector("tbody").replaceChildren();
  $("diff-caption").textContent = "";
  $("diff-note").textContent = "";
}

async function runSmears(files, errors, failed) {
  const annotated = $("opt-annotated").checked;
  for (const [i, f] of files.entries()) {
    if (state.halt) { leftOut(files.slice(i), errors, failed); break; }
    setBusy(true, `Analysing ${i + 1} of ${files.length}: ${f.name}…`, i, files.length);
    const bytes = await readChosen(f);  // the bytes sent: a file moved since it was chosen fails alone, named
    if (!bytes) {
      errors.push(unreadableChosen(f.name));
      failed.set(f, failure(errors[errors.length - 1], f.name));
      continue;
    }
    const fd = new FormData();
    fd.append("file", bytes, f.name);
    let res;
    try {
      res = await runFetch(`/analyze?annotated=${annotated}`, { method: "POST", body: fd });
    } catch (err) {
      if (err.why === "stopped") { leftOut(files.slice(i), errors, failed); break; }
      errors.push(`${f.name}: ${err.message}`);
      failed.set(f, failure(errors[errors.length - 1], f.name));
      continue;  // after a timeout, the loop's next turn lists the rest
    }
    if (!res.ok) {
      const lines = problemText(res, f.name, () => f.name);
      errors.push(...lines);
      failed.set(f, failure(lines.find((l) => l.startsWith(`${f.name}:`)) || lines[0], f.name));
      continue;
    }
    const data = { ...res.body, image: f.name };  // the chosen name, not the one sent (a " as %22, before wbc 0.34.0)
    state.runs.push({ kind: "smear", name: f.name, data });
    $("cards").append(smearCard(data));
    $("results").hidden = false;
  }
}

function batches(files) {
  const out = [];
  const maxBytes = 0.9 * state.limits.max_upload_mb * 1048576;
  let cur = [], size = 0;
  for (const f of files) {
    if (cur.length && (cur.length >= Math.min(200, state.limits.max_files) || size + f.size > maxBytes)) {
      out.push(cur); cur = []; size = 0;
    }
    cur.push(f); size += f.size;
  }
  if (cur.length) out.push(cur);
  return out;
}

// `place`: each File's 0-based place among the files chosen for the run, the `index` its result gets (a request's
// own `index`, the part's place in that request, restarts in each and skips the files not sent).
async function runCells(files, errors, failed, place) {
  const results = [];
  const thumbs = new Map();
  const said = [];  // every request's /classify warnings, worded again over the run's cells (runNotes)
  let done = 0;
  const all = batches(files);
  for (const [b, chosen] of all.entries()) {
    if (state.halt) { leftOut(all.slice(b).flat(), errors, failed); break; }
    setBusy(true, `Classifying ${done + 1}–${done + chosen.length} of ${files.length}…`, done, files.length);
    // each file's bytes read first: one moved or rewritten since it was chosen fails alone, named, and the others are
    // sent (before wbc 0.37.0 it failed the request's every file as "no answer from the server")
    const fd = new FormData();
    const batch = [];
    for (const f of chosen) {
      const bytes = await readChosen(f);
      if (bytes) {
        batch.push(f);
        fd.append("files", bytes, f.name);
      } else {
        errors.push(unreadableChosen(f.name));
        failed.set(f, failure(errors[errors.length - 1], f.name));
      }
    }
    if (!batch.length) { done += chosen.length; continue; }
    let res;
    try {
      res = await runFetch("/classify", { method: "POST", body: fd });
    } catch (err) {
      if (err.why === "stopped") { leftOut(batch.concat(all.slice(b + 1).flat()), errors, failed); break; }
      const from = `${batch.length} file(s) from ${batch[0].name}`;
      errors.push(`${from}: ${err.message}`);
      for (const f of batch) failed.set(f, failure(errors[errors.length - 1], from));
      done += chosen.length;
      continue;  // after a timeout, the loop's next turn lists the rest
    }
    done += chosen.length;
    // the File an entry (result or error) answers: its `index`, the part's place in the request, `batch` being the
    // parts sent in order (since wbc 0.37.0); of two files named alike, one unreadable, both failed before
    const partOf = (x) => (x && Number.isInteger(x.index) ? batch[x.index] : undefined);
    const real = (n, e) => {  // the chosen name a name sent stands for: the entry's file, or, for a server giving no
      if (partOf(e)) return partOf(e).name;  // index, the one of the batch's sent so if only one is
      const names = new Set(batch.filter((f) => sentName(f.name) === n).map((f) => f.name));
      return names.size === 1 ? [...names][0] : n;
    };
    // a refusal of the whole batch (429, 503, 413: no file's own problem) names every file it leaves out, not the
    // first one alone as if only it had failed (before wbc 0.34.0)
    const who = batch.length > 1 ? `${batch.length} files (${batch[0].name} to ${batch[batch.length - 1].name})`
      : batch[0].name;
    const named = (f, e) => (partOf(e) ? partOf(e) === f  // a file's own problem; by name from an older server
      : f.name === e.filename || sentName(f.name) === e.filename);
    if (!res.ok) {  // every file of the batch failed: its own problem if one is named, else the batch's
      const lines = problemText(res, who, real);
      errors.push(...lines);
      const own = (res.body && res.body.errors) || [];
      for (const f of batch) {
        const e = own.find((x) => named(f, x));
        failed.set(f, e ? failure(fileProblem(e, real), real(e.filename, e)) : failure(lines[0], who));
      }
      continue;
    }
    results.push(...res.body.results);
    pairThumbs(batch, res.body, thumbs, place);
    for (const e of res.body.errors || []) {
      errors.push(fileProblem(e, real));
      for (const f of batch) if (named(f, e)) failed.set(f, failure(errors[errors.length - 1], real(e.filename, e)));
    }
    said.push(...(res.body.warnings || []));
  }
  if (results.length) {
    const warnings = runNotes(results, said);
    // the warnings shown above the table go into the JSON download too (since wbc 0.34.0), as /classify gives them
    state.runs.push({ kind: "cells", name: "single cells", data: { model_id: state.meta.model_id, results, warnings } });
    $("cards").append(cellsCard(results, thumbs, warnings));
  }
}

// The run's sentences about its cells, worded once over all of them as `wbc classify` words them for the same cells
// (and /classify for one request): wbc.classify.outside_note, other_cells_note and several_images_note, counted from
// the cells' review reasons, and wbc.ood.ood_sentence, from their `ood`, in that order. A run of more than one request
// (over 200 files) showed each request's sentences, "2 of 200 ... 2 of 200 ... 1 of 50 images", and a request of
// unusual cells the advice of a share the run did not have (before wbc 0.37.0). `said`: the requests' own sentences:
// the out-of-distribution advice past the counts is theirs (it depends on how the model was adapted; a run's share is
// never above every request's), and a sentence of another kind is kept as it is, once.
// wbc.classify.outside_reason's words: the class the model favours, left out by the chosen classes or by a smear's
const OUTSIDE_REASON = /^the model favours (.+?) \(.*\), outside the (chosen classes|classes counted on smears)$/;

function runNotes(results, said) {
  const n = results.length;
  const counted = /^\d[\d,]* of \d[\d,]* (cells|images|files) /;  // the four sentences below, per request
  const withReason = (re) => results.filter((r) => (r.review_reasons || []).some((x) => re.test(x))).length;
  const notes = [];
  // outside_note: the class each cell's outside_reason names (wbc.classify.outside_of), most first, ties as they come
  const byClass = new Map(), smear = new Set();
  for (const r of results) {
    const found = (r.review_reasons || []).map((x) => OUTSIDE_REASON.exec(x)).filter((m) => m);
    if (!found.length) continue;
    byClass.set(found[0][1], (byClass.get(found[0][1]) || 0) + 1);  // the cell's class: its first such reason
    for (const m of found) if (m[2].endsWith("smears")) smear.add(m[1]);
  }
  if (byClass.size) {
    const ranked = [...byClass].sort((a, b) => b[1] - a[1]);
    const k = ranked.reduce((s, [, v]) => s + v, 0), which = ranked.map(([c, v]) => `${c} ${v}`).join(", ");
    const notCounted = ranked.filter(([c]) => smear.has(c)).length;
    notes.push(notCounted === ranked.length
      ? `${k} of ${n} cells are most likely a class a smear's differential does not count (${which}): each is `
        + "counted in the class shown and flagged for review"
      : `${k} of ${n} cells are most likely a class outside ${notCounted ? "the chosen ones or one a smear's "
        + "differential does not count" : "the chosen ones"} (${which}): each is counted in the chosen class shown `
        + "and flagged for review");
  }
  const crowded = withReason(/^\d+ nucleated cells in view: the answer is for one of them, and which one is unclear$/);
  if (crowded) {
    notes.push(`${crowded} of ${n} images show more than one nucleated cell: each is answered for one of them and `
      + "flagged for review; crop each cell on its own to have it answered");
  }
  const stacks = withReason(/^the file holds \d+ images; only the first was classified$/);
  if (stacks) {
    notes.push(`${stacks} of ${n} files ${stacks !== 1 ? "hold" : "holds"} several images; only the first of each was `
      + "classified: save each cell as a file of its own to have it counted");
  }
  const ood = results.filter((r) => r.ood).length;
  if (ood) {
    const x = 100 * ood / n;  // Python's f"{x:.0f}": the nearest, a half to even
    let whole = Math.round(x);
    if (x - Math.floor(x) === 0.5 && whole % 2) whole -= 1;
    const share = x < 1 ? "under 1%" : whole === 100 && ood < n ? "over 99%" : `${whole}%`;
    const head = `${ood} of ${n} cells (${share}) look unlike the model's training data (marked for review)`;
    const advice = said.map((w) => /look unlike the model's training data \(marked for review\)(;.*)$/.exec(w))
      .find((m) => m);
    notes.push(head + (ood / n >= 0.2 && advice ? advice[1] : ""));  // wbc.ood.too_many_ood
  }
  for (const w of said) if (!counted.test(w) && !notes.includes(w)) notes.push(w);
  return notes;
}

// Each result's own File (its thumbnail), keyed by the result: the part its `index` names (`batch` is the parts
// sent, in order; names repeat: cell_001.jpg of two samples). A result paired takes its File's name (the server has
// a " as %22, sentName: shown and exported so before wbc 0.34.0) and, as `index`, the File's place among the files
// chosen for the run (`place`): the request's own restarts in each request (0, 1, 0, 1 ... in the JSON download
// before). A server giving no `index` (before wbc 0.37.0): results pair with the batch's files in order, by name,
// and one whose name is also among the unreadable files gets no thumbnail rather than perhaps another's.
function pairThumbs(batch, body, thumbs, place) {
  const take = (r, f) => { thumbs.set(r, f); r.filename = f.name; r.index = place.get(f); };
  if (body.results.every((r) => Number.isInteger(r.index) && batch[r.index])) {
    for (const r of body.results) take(r, batch[r.index]);
    return;
  }
  const failed = new Set((body.errors || []).map((e) => e.filename));
  let j = 0;
  for (const r of body.results) {
    delete r.index;  // no place among the files chosen to give it
    let k = j;
    while (k < batch.length && batch[k].name !== r.filename && sentName(batch[k].name) !== r.filename) k += 1;
    if (k === batch.length) continue;
    if (!failed.has(r.filename)) take(r, batch[k]);
    j = k + 1;
  }
}

// ------------------------------------------------------------------ rendering

// The classes the server answers among (`wbc serve --classes`: label_set in /model); the differential shows these. A
// smear's cells are never platelets (smear_label_set: /analyze never answers it), so its differential has no such row.
const answered = (mode) => (mode === "smear" && state.meta.smear_label_set) || state.meta.label_set || state.meta.classes;

function cellCounts(mode) {
  const counts = Object.fromEntries(answered(mode).map((c) => [c, 0]));
  for (const r of state.runs) {
    const items = r.kind === "smear" ? r.data.cells : r.data.results;
    for (const c of items) if (c.label) counts[c.label] = (counts[c.label] || 0) + 1;
  }
  return counts;
}

function allCells() {
  return state.runs.flatMap((r) => (r.kind === "smear" ? r.data.cells : r.data.results));
}

async function renderSummary(mode) {
  const counts = cellCounts(mode);
  const res = await runFetch("/differential", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ counts }),
  });
  // a refusal (429 of a keyed server's rate limit, 503) is said, never shown as an empty differential (before wbc 0.34.0)
  if (!res.ok) {
    const why = res.body && res.body.detail ? `${res.status}: ${res.body.detail}` : `${res.status}`;
    throw Object.assign(new Error(why), { answered: true });
  }
  const diff = res.body.differential.filter((d) => answered(mode).includes(d.class) || d.count);
  state.differential = diff;
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const nWbc = res.body.total;  // the differential's total: the WBCs, not the NRBCs and platelets
  const nReview = allCells().filter((c) => c.review).length;
  const stats = [
    [mode === "smear" ? "Smear fields" : "Images", mode === "smear" ? state.runs.length : total, false],
    [mode === "smear" ? "Cells found and classified" : "Cells classified", total, false],
    ["Flagged for review", nReview, nReview > 0],
    ["Review if confidence below", thresholdLine(state.meta.review_threshold).replace(" confidence", ""), false],
  ];
  $("stats").replaceChildren(...stats.map(([label, value, attention]) =>
    el("div", { class: `stat${attention ? " attention" : ""}` },
      el("div", { class: "value", text: String(value) }), el("div", { class: "label", text: label }))));
  const scope = mode === "smear" && state.runs.length > 1 ? ` pooled over ${state.runs.length} fields` : "";
  const whites = (n) => `${n} white cell${n === 1 ? "" : "s"}`;
  // the rows counted per 100 WBCs that the table shows (none for a five-part server: no "erythroblasts ... per 100")
  const rates = diff.filter((d) => d.unit === "per 100 WBC").map((d) => `${displayName(d.class).toLowerCase()}s`);
  $("diff-caption").textContent = `${total} cell${total === 1 ? "" : "s"}${scope}`
    + (nWbc !== total ? `, ${whites(nWbc)} among them` : "") + "; "
    + `percent of the white cells${rates.length ? ` (${rates.join(" and ")} per 100 white cells, outside the total)` : ""}`
    + " with an exact "
    + "(Clopper–Pearson) 95 % confidence interval."
    + (mode === "smear" ? " Platelets are not counted in smear analysis (a cell the model takes for one is flagged for review)." : "");
  $("diff-table").querySelector("tbody").replaceChildren(...diff.map(diffRow));
  const more = "A manual differential counts 100–200 leukocytes; analyse more fields before reading small percentages.";
  $("diff-note").textContent = nWbc === 0  // the threshold counts the WBCs: 120 platelets are no differential
    ? `No white cell counted: there are no percentages, and no rate per 100 white cells. ${more}`
    : nWbc < 100 ? `Only ${whites(nWbc)} counted: the intervals are wide. ${more}`
      : "Cells flagged for review are counted under their most likely class; check them before reporting.";
}

function diffRow(d) {
  // with no WBC counted nothing has a value: a rate per 100 WBCs (null in the API, wbc.counts.NO_WBC_RATE), nor a
  // share, which the API gives as 0.0 with 0-100 % and report.html and differential.csv leave empty (before wbc 0.32.0
  // this table read "0.0 %, 0.0–100.0 %" under a note saying "there are no percentages")
  if (d.percent === null || !d.total) {
    return el("tr", { class: d.count ? "" : "zero" },
      el("th", { scope: "row" }, swatch(d.class), displayName(d.class)),
      el("td", { class: "num", text: String(d.count) }),
      el("td", { class: "num", text: d.count ? "n/a (no WBC counted)" : "" }),
      el("td", { class: "num", text: "" }),
      el("td", {}));
  }
  // a share of the WBCs lies within 0-100 %; a rate per 100 WBCs (erythroblasts, platelets: outside the total) may
  // pass 100. Its bar, on the same 0-100 scale, stops at the end with an arrow; its label gives the whole interval.
  const perWbc = d.unit === "per 100 WBC";
  const lo = Math.max(0, d.ci95_low), hi = perWbc ? d.ci95_high : Math.min(100, d.ci95_high);
  const drawnLo = Math.min(100, lo), drawnHi = Math.min(100, hi);
  const said = perWbc
    ? `${fixed(d.percent)} per 100 white cells, 95 % CI ${fixed(lo)} to ${fixed(hi)} per 100 white cells`
      + (hi > 100 ? " (the bar shows 0 to 100)" : "")
    : `${pct(d.percent)}, 95 % CI ${pct(lo)} to ${pct(hi)}`;
  const bar = el("div", { class: "bar", role: "img", "aria-label": `${displayName(d.class)} ${said}` },
    el("div", { class: `fill${d.percent > 100 ? " beyond" : ""}`,
      style: { width: `${Math.min(100, d.percent)}%`, background: colourOf(d.class) } }),
    el("div", { class: `ci${hi > 100 ? " open" : ""}`,
      style: { left: `${drawnLo}%`, width: `${Math.max(drawnHi - drawnLo, 0.3)}%` } }));
  return el("tr", { class: d.count ? "" : "zero" },
    el("th", { scope: "row" }, swatch(d.class), displayName(d.class)),
    el("td", { class: "num", text: String(d.count) }),
    el("td", { class: "num", text: perWbc ? `${fixed(d.percent)} /100 WBC` : pct(d.percent) }),
    el("td", { class: "num", text: perWbc ? `${fixed(lo)}–${fixed(hi)} /100 WBC` : `${fixed(lo)}–${fixed(hi)} %` }),
    el("td", {}, bar));
}

function secondBest(probs, label) {
  const alt = Object.entries(probs || {}).filter(([k]) => k !== label).sort((a, b) => b[1] - a[1])[0];
  return alt && alt[1] >= 0.01 ? `${displayName(alt[0])} ${fixed(100 * alt[1], 0)} %` : "–";
}

// A cell's confidence beside its flag: never shown as the threshold it fell below (confidenceText, common.js).
function confCell(conf) {
  return el("td", { class: "num" }, el("span", { class: "conf" },
    `${confidenceText(conf, state.meta.review_threshold)} %`,
    el("span", { class: "conf-bar", "aria-hidden": "true" }, el("span", { style: { width: `${100 * conf}%` } }))));
}

function flagCell(c) {
  if (!c.review) return el("td", {}, el("span", { class: "badge ok", text: "OK" }));
  return el("td", {}, el("span", { class: "badge review", text: "⚑ Review" }),
    (c.review_reasons || []).length ? el("span", { class: "reasons", text: c.review_reasons.join("; ") }) : null);
}

function cellsTable(headers, rows, caption) {
  return el("div", { class: "cells-wrap" }, el("table", { class: "cells" },
    el("caption", { class: "visually-hidden", text: caption }),
    el("thead", {}, el("tr", {}, headers.map(([h, cls]) => el("th", { scope: "col", class: cls || null, text: h })))),
    el("tbody", {}, rows)));
}

function smearCard(d) {
  const card = el("article", { class: "panel image-card", "aria-label": `Results for ${d.image}` });
  const nRev = d.cells.filter((c) => c.review).length;
  card.append(el("div", { class: "card-head" },
    el("h3", { text: d.image }),
    el("span", { class: "card-meta",
      text: `${d.width} × ${d.height} px · ${d.n_cells} cell${d.n_cells === 1 ? "" : "s"} · ${nRev} flagged for review`
        + (d.colour_calibration ? " · colours calibrated on the field's red cells" : "") })));
  for (const w of d.warnings || []) card.append(el("p", { class: "warning", text: `Note: ${w}` }));

  let frame = null, highlight = null;
  const body = el("div", { class: `card-body${d.annotated_png ? "" : " no-image"}` });
  if (d.annotated_png) {
    highlight = el("div", { class: "highlight", hidden: true });
    frame = el("div", { class: "figure-frame" },
      el("img", { src: `data:image/png;base64,${d.annotated_png}`, class: "annotated",
        alt: `Annotated smear ${d.image}: ${d.n_cells} leukocytes outlined and labelled` }), highlight);
    body.append(el("figure", {}, frame, el("figcaption", {
      text: "Outlines: cell (outer) and nucleus (inner), coloured by class; a red double box marks cells to review. "
        + "Select a row to locate the cell." })));
  }
  const show = (c) => {
    if (!highlight) return;
    const [x0, y0, x1, y1] = c.box;
    Object.assign(highlight.style, { left: `${100 * x0 / d.width}%`, top: `${100 * y0 / d.height}%`,
      width: `${100 * (x1 - x0) / d.width}%`, height: `${100 * (y1 - y0) / d.height}%` });
    highlight.hidden = false;
  };
  const hide = () => { if (highlight) highlight.hidden = true; };
  const rows = d.cells.map((c) => el("tr", {
    class: c.review ? "review" : "", tabindex: "0", onmouseenter: () => show(c), onmouseleave: hide,
    onfocus: () => show(c), onblur: hide },
  el("td", { class: "num", text: String(c.id) }),
  el("td", { class: "label" }, swatch(c.label), displayName(c.label),
    el("span", { class: "alt-line", text: `next: ${secondBest(c.probabilities, c.label)}` })),
  confCell(c.confidence || 0),
  flagCell(c)));
  const side = el("div", {});
  if (rows.length) {
    side.append(cellsTable([["#", "num"], ["Class"], ["Confidence", "num"], ["Flag"]], rows,
      `Cells found in ${d.image}`));
  } else {
    side.append(el("p", { text: "No leukocyte was found in this field." }));
  }
  body.append(side);
  card.append(body);
  return card;
}

function cellsCard(results, thumbs, warnings = []) {
  const card = el("article", { class: "panel image-card", "aria-label": "Single-cell results" });
  card.append(el("div", { class: "card-head" }, el("h3", { text: "Single-cell images" }),
    el("span", { class: "card-meta", text: `${results.length} classified` })));
  for (const w of warnings) card.append(el("p", { class: "warning", text: `Note: ${w}` }));
  const rows = results.map((r) => {
    const f = thumbs.get(r);
    const img = f ? el("img", { class: "thumb", src: URL.createObjectURL(f), alt: `Cell image ${r.filename}` }) : "";
    return el("tr", { class: r.review ? "review" : "", tabindex: "0" },
      el("td", {}, img),
      el("td", {}, el("span", { class: "filename", text: r.filename })),
      el("td", { class: "label" }, swatch(r.label), displayName(r.label)),
      confCell(r.confidence),
      el("td", { class: "alt", text: secondBest(r.probabilities, r.label) }),
      flagCell(r));
  });
  card.append(cellsTable([["Image"], ["File"], ["Class"], ["Confidence", "num"], ["Alternative"], ["Flag"]],
    rows, "Single-cell classifications"));
  return card;
}

// ------------------------------------------------------------------ downloads

function save(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// Whether Python's float() reads the text as a finite number (wbc.formats._is_number): "-0.5", "1e3", " 2 ", "1_000".
function isNumber(text) {
  const t = text.trim();
  const digits = "\\d(?:_?\\d)*";
  return new RegExp(`^[+-]?(?:${digits}(?:\\.(?:${digits})?)?|\\.${digits})(?:[eE][+-]?${digits})?$`).test(t)
    && Number.isFinite(Number(t.replace(/_/g, "")));
}

// A CSV cell no spreadsheet runs as a formula, as wbc.formats.neutralise writes it (CWE-1236): text starting,
// after any apostrophes, with = + - @ tab or CR, and not a number, gets one more apostrophe in front.
function neutralise(v) {
  if (typeof v !== "string") return v;
  const rest = v.replace(/^'+/, "");
  return /^[=+\-@\t\r]/.test(rest) && !isNumber(rest) ? `'${v}` : v;
}

// A differential row's percent and bounds as differential.csv writes them (wbc.formats.write_differential_csv): empty
// with no WBC counted, where the API gives a share as 0.0 with an interval of 0-100; else wbc.counts.half_up(v, 2), as
// Python writes a float (16.67, 0.0, 3900.0). Before wbc 0.34.0 the page wrote the API's 4 decimals (16.6667, 0, 3900).
function csvShare(d) {
  if (!d.total) return ["", "", ""];
  const asFloat = (text) => { const t = String(Number(text)); return /[.e]/.test(t) ? t : `${t}.0`; };
  return [fixed(100 * d.count / d.total, 2), csvBound(d, d.ci95_low, false), csvBound(d, d.ci95_high, true)]
    .map(asFloat);
}

// An interval bound at 2 decimals, rounded half up from the exact bound as wbc analyze rounds it, not from the API's 4
// decimals: a bound the API gives as x.xx50 may be x.xx495… (down) or x.xx5… (up); which one, the binomial tail at
// x.xx5 tells (the Clopper–Pearson bound is a quantile of the beta distribution, whose tail is a binomial sum).
function csvBound(d, v, upper) {
  const t = fixed(v, 4);
  if (!t.endsWith("50")) return fixed(v, 2);  // rounding the 4 decimals again gives the exact value's 2
  const perWbc = d.unit === "per 100 WBC";  // a rate per 100 WBCs: the ratio p/(1-p) of the share k/(k+n)
  const at = Number(t) / 100, p = perWbc ? at / (1 + at) : at;
  const n = perWbc ? d.count + d.total : d.total, k = d.count, tail = (1 - 0.95) / 2;
  // lower bound: Beta(k, n-k+1)'s tail quantile, below p when P(X >= k) > tail; upper: Beta(k+1, n-k)'s 1 - tail
  // quantile, below p when P(X <= k) < tail (X binomial of n and p)
  const below = upper ? binomialSum(n, p, 0, k) < tail : binomialSum(n, p, k, n) > tail;
  return below ? t.slice(0, -2) : fixed(v, 2);
}

// P(lo <= X <= hi) for X binomial of n trials and p, term by term in logs (no under- or overflow).
function binomialSum(n, p, lo, hi) {
  const lf = [0];
  for (let i = 1; i <= n; i += 1) lf.push(lf[i - 1] + Math.log(i));
  const lp = Math.log(p), lq = Math.log1p(-p);
  let s = 0;
  for (let i = lo; i <= hi; i += 1) s += Math.exp(lf[n] - lf[i] - lf[n - i] + i * lp + (n - i) * lq);
  return s;
}

function csvLine(values) {
  return values.map((v) => {
    const s = v === null || v === undefined ? "" : String(neutralise(v));
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  }).join(",");
}

function downloadJSON() {
  const runs = state.runs.map((r) => {
    const { annotated_png: _omit, ...rest } = r.data; // the annotated images stay out of the JSON
    return { kind: r.kind, ...rest };
  });
  // errors: the files the run could not analyse, as the page listed them (left out before wbc 0.34.0); copies and
  // warnings: the copies counted once, as /classify gives them (analysed, so none of the errors)
  const doc = { model: state.meta, differential: state.differential, results: runs, errors: state.errors,
    copies: state.copies, warnings: state.notes };
  save("wbc_results.json", JSON.stringify(doc, null, 2), "application/json");
}

function downloadCellsCSV() {
  const classes = state.meta.classes;
  const lines = [csvLine(["image", "id", "x0", "y0", "x1", "y1", "label", "confidence", "review",
    ...classes.map((c) => `p_${c}`), "review_reasons"])];
  const reasons = (c) => (c.review_reasons || []).join("; ");  // as wbc.formats.reasons_text writes them
  for (const r of state.runs) {
    if (r.kind === "smear") {
      for (const c of r.data.cells) {
        lines.push(csvLine([r.data.image, c.id, ...c.box, c.label, c.confidence, c.review ? 1 : 0,
          ...classes.map((k) => (c.probabilities || {})[k] ?? ""), reasons(c)]));
      }
    } else {
      for (const c of r.data.results) {
        lines.push(csvLine([c.filename, "", "", "", "", "", c.label, c.confidence, c.review ? 1 : 0,
          ...classes.map((k) => (c.probabilities || {})[k] ?? ""), reasons(c)]));
      }
    }
  }
  save("wbc_cells.csv", lines.join("\n") + "\n", "text/csv");
}

function downloadDifferentialCSV() {
  // differential.csv's columns (wbc.counts.DIFFERENTIAL_HEADER), its unit last: "percent" or "per 100 WBC"
  const lines = [csvLine(["image", "class", "count", "total", "percent", "ci95_low", "ci95_high", "unit"])];
  for (const r of state.runs) {
    if (r.kind === "smear") {
      for (const d of r.data.differential) {
        lines.push(csvLine([r.data.image, d.class, d.count, d.total, ...csvShare(d), d.unit]));
      }
    }
  }
  for (const d of state.differential || []) {
    lines.push(csvLine(["ALL", d.class, d.count, d.total, ...csvShare(d), d.unit]));
  }
  save("wbc_differential.csv", lines.join("\n") + "\n", "text/csv");
}

document.addEventListener("DOMContentLoaded", init);
