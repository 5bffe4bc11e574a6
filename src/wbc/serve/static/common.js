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
