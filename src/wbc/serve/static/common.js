// wbc pages' shared helpers (loaded before app.js and review.js, as a classic script: these names are globals
// for the page's own script). Plain JavaScript, no dependencies. User text only ever goes in through
// textContent or setAttribute, never as HTML.
"use strict";

// Display names of the model's classes; a page may add its own (review adds its special labels).
const NAMES = {
  basophil: "Basophil", eosinophil: "Eosinophil", erythroblast: "Erythroblast",
  ig: "Immature granulocyte", lymphocyte: "Lymphocyte", monocyte: "Monocyte",
  neutrophil: "Neutrophil", platelet: "Platelet",
};

const $ = (id) => document.getElementById(id);

// A DOM element: attrs "class", "text" (textContent), "style" (object), "on<event>" (listener), else
// attributes (true: present, null/undefined/false: left out); children are nodes or text.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const displayName = (c) => NAMES[c] || (c ? c.charAt(0).toUpperCase() + c.slice(1) : "–");

// `v` with `digits` decimals, rounded half up (away from zero) from its shortest decimal form: wbc.counts.fixed's
// rule, step for step, so the pages and the printed reports show one number (toFixed rounds the binary value:
// 31.25 read 31.3 here and 31.2 on paper before wbc 0.30.0, 0.15 reads 0.1).
function fixed(v, digits = 1) {
  const x = Number(v);
  if (!Number.isFinite(x)) return String(x);
  const [mant, exp] = Math.abs(x).toExponential().split("e");  // the shortest digits, as Python's repr has them
  const sig = mant.replace(".", "");
  const keep = Number(exp) + 1 + digits;  // the significant digits kept: those before the point and `digits` more
  let n = keep > 0 ? BigInt(sig.slice(0, keep).padEnd(keep, "0")) : 0n;
  if (keep >= 0 && Number(sig[keep] || "0") >= 5) n += 1n;  // the first digit dropped decides
  const t = n.toString().padStart(digits + 1, "0");
  return (x < 0 && n > 0n ? "-" : "") + (digits > 0 ? `${t.slice(0, -digits)}.${t.slice(-digits)}` : t);
}

// What a number shown with `digits` decimals reads as when `scale` (100: percent) multiplies it.
const scaled = (v, digits, scale) => fixed(scale * v, digits);

// A cell's confidence as a page shows it beside its flag (wbc.formats.confidence_text): `digits` decimals, more
// while it would read as the review threshold `thr` at those digits, or as the threshold as the page shows it
// (thresholdText; compared as values: 98.60 reads as 98.6), or as 100 % though below 1, so a flagged cell's confidence
// never reads as the threshold it fell below (0.9854 under 0.9863 read "99 %" under "99 %", 0.98597 "98.60 %" under
// "98.6 %"). At most 5 digits more, and no zeros past the decimals `conf` itself has.
function confidenceText(conf, thr, digits = 1, scale = 100) {
  const k = scale > 0 ? Math.round(Math.log10(scale)) : 0;
  const shown = thr > 0 && thr < 1 ? Number(thresholdText(thr, Math.max(0, 3 - k), scale)) : null;
  const [mant, exp] = Math.abs(Number(conf)).toExponential().split("e");  // its shortest digits, as Python's repr
  const own = Math.max(0, mant.replace(".", "").length - 1 - Number(exp) - k);  // the decimals it has, scaled
  let d = digits;
  for (; d < digits + 5; d += 1) {
    const c = scaled(conf, d, scale);
    if (!(shown !== null && (c === scaled(thr, d, scale) || (d < own && Number(c) === shown)))
        && !(conf < 1 && c === scaled(1, d, scale))) break;
  }
  return scaled(conf, d, scale);
}

// The review threshold as a page shows it (wbc.formats.threshold_text): 98.6 % (the digits a confidence is shown
// with), one trailing zero dropped (99 %), more while a threshold below 1 would read as 100 %.
function thresholdText(thr, digits = 1, scale = 100) {
  let d = digits;
  while (d < digits + 5 && thr < 1 && scaled(thr, d, scale) === scaled(1, d, scale)) d += 1;
  const text = scaled(thr, d, scale);
  return d === digits && digits > 0 && text.endsWith("0") ? text.slice(0, -1).replace(/\.$/, "") : text;
}

// A chosen file's bytes as they are now, in memory, or null when the browser can no longer read it: moved, deleted or
// rewritten since it was chosen (Chromium refuses a File whose disk file changed). An upload of such a File failed
// its whole request with "Failed to fetch", the error of a server that does not answer, so a page blamed the server
// and, in one /classify request, lost the other 199 cells (before wbc 0.37.0); the bytes read first are sent instead.
async function readChosen(file) {
  try {
    return new Blob([await file.arrayBuffer()], { type: file.type });
  } catch (_) {
    return null;
  }
}

// The words for a chosen file readChosen could not read.
const unreadableChosen = (name) => `${name}: could not be read from disk (moved, deleted or changed since it was `
  + "chosen): choose it again";
