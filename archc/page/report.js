// archc report: the page's behaviour. Reads the JSON in #archc-data (written by
// archc/page/__init__.py) and builds four tabs: diagram, layers, plots, memory.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("archc-data").textContent);
  const layers = data.layers;
  const byName = new Map(layers.map((l, i) => [l.name, Object.assign(l, { index: i })]));
  const blocks = new Map(data.blocks.map((b) => [b.path, b]));
  const app = document.getElementById("app");

  // ------------------------------------------------------------------ formatting
  function human(n) {
    const units = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "K"]];
    for (const [f, p] of units) {
      if (Math.abs(n) >= f) {
        const v = n / f;
        return v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0) + p;
      }
    }
    return String(+Number(n).toPrecision(4));
  }
  function bytes(n) {
    for (const [f, u] of [[2 ** 30, "GiB"], [2 ** 20, "MiB"], [2 ** 10, "KiB"]]) {
      if (n >= f) return (n / f).toFixed(1) + " " + u;
    }
    return Math.round(n) + " B";
  }
  const exact = (n) => Number(n).toLocaleString("en-US");
  function rf(field) {
    if (!field || field.whole) return "whole input";
    const size = field.size.length && field.size.every((s) => s === field.size[0])
      ? String(field.size[0]) : field.size.join("x");
    return size;
  }
  function rfSize(field) {
    return !field || field.whole ? null : Math.max(...field.size);
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }
  const NS = "http://www.w3.org/2000/svg";
  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ------------------------------------------------------------------ page frame
  const t = data.totals;
  const inputs = Object.entries(data.inputs).map(([k, v]) => k + " " + v.join("x")).join(", ");
  const outputs = Object.entries(data.outputs).map(([k, v]) => k + " " + v.shape.join("x")).join(", ");
  app.append(el("header", {},
    el("h1", {}, data.name),
    el("div", { class: "sub" }, (data.spec || "") + " \u2014 " + inputs + " \u2192 " + outputs +
      " \u2014 batch " + data.batch + " \u2014 archc " + data.version),
    el("div", { class: "cards", id: "totals" },
      card(exact(t.params), "parameters (" + exact(t.trainable_params) + " trainable)", "params"),
      card(human(t.macs), "MACs (" + exact(t.macs) + ")", "macs"),
      card(human(t.flops), "FLOPs", "flops"),
      card(bytes(t.param_bytes), "weights"),
      card(bytes(t.inference_peak_bytes), "activations at the inference peak"),
      card(String(layers.length), "layers"))));
  function card(value, label, key) {
    return el("div", { class: "card", "data-total": key || "" }, el("b", {}, value), el("span", {}, label));
  }
  const tabs = [["diagram", "Diagram"], ["layers", "Layers"], ["plots", "Plots"], ["memory", "Memory"]];
  if (data.run) tabs.push(["run", "Run"]);
  if (data.compare) tabs.push(["compare", "Compare"]);
  const nav = el("nav", {});
  const sections = {};
  for (const [key, title] of tabs) {
    nav.append(el("button", { "data-tab": key, onclick: () => show(key) }, title));
    sections[key] = el("section", { id: "tab-" + key });
  }
  app.append(nav, ...Object.values(sections));
  let plotted = false, ranDrawn = false, compareDrawn = false;
  function show(key) {
    for (const b of nav.children) b.classList.toggle("on", b.dataset.tab === key);
    for (const [k, s] of Object.entries(sections)) s.classList.toggle("on", k === key);
    if (key === "plots" && !plotted) { plotted = true; drawPlots(); }
    if (key === "run" && !ranDrawn) { ranDrawn = true; drawRun(); }
    if (key === "compare" && !compareDrawn) { compareDrawn = true; drawCompare(); }
  }

  // ------------------------------------------------------------------ diagram
  const viewSelect = el("select", { id: "view", onchange: () => setView(+viewSelect.value) });
  data.views.forEach((v, i) => viewSelect.append(el("option", { value: i }, v.label + " (" + v.nodes + " nodes)")));
  const search = el("input", { id: "search", type: "search", placeholder: "find a layer\u2026",
    oninput: () => find(search.value) });
  const found = el("span", { class: "note", id: "found" });
  const viewport = el("div", { id: "viewport" });
  const canvas = el("div", { id: "canvas" });
  viewport.append(canvas);
  const details = el("div", { id: "details" }, el("p", { class: "empty" }, "Click a layer or a block."));
  sections.diagram.append(
    el("div", { class: "toolbar" }, "Show ", viewSelect,
      el("button", { onclick: () => zoomBy(1.25) }, "+"),
      el("button", { onclick: () => zoomBy(0.8) }, "\u2212"),
      el("button", { id: "fit", onclick: fit }, "fit"), search, found,
      el("span", { class: "note" }, "drag to pan, wheel to zoom; click a collapsed block to open it, a block's title to close it")),
    el("div", { id: "diagram-wrap" }, viewport, details));

  let view = 0;
  let pan = { x: 0, y: 0, k: 1 };
  function place() { canvas.style.transform = `translate(${pan.x}px,${pan.y}px) scale(${pan.k})`; }
  function diagramNodes() { return canvas.querySelectorAll("svg g.node"); }
  function titleOf(g) { const tt = g.querySelector("title"); return tt ? tt.textContent : ""; }

  function setView(i, focus) {
    view = i;
    viewSelect.value = String(i);
    canvas.innerHTML = data.views[i].svg;
    const svg = canvas.querySelector("svg");
    for (const g of diagramNodes()) g.addEventListener("click", (e) => { if (!moved) onNode(titleOf(g)); e.stopPropagation(); });
    for (const g of canvas.querySelectorAll("svg g.cluster")) {
      const path = titleOf(g).replace(/^cluster_/, "");
      const label = g.querySelector(":scope > text");
      if (label) label.addEventListener("click", (e) => { if (!moved) collapse(path); e.stopPropagation(); });
    }
    svg.removeAttribute("width");
    svg.removeAttribute("height");
    const box = svg.viewBox.baseVal;
    svg.style.width = box.width * 4 / 3 + "px";
    svg.style.height = box.height * 4 / 3 + "px";
    fit();
    if (search.value) find(search.value);
    if (focus) { const g = nodeFor(focus); if (g) { select(g); centre(g); } }
  }
  function fit() {
    const svg = canvas.querySelector("svg");
    if (!svg) return;
    const w = parseFloat(svg.style.width), h = parseFloat(svg.style.height);
    const vw = viewport.clientWidth || 800, vh = viewport.clientHeight || 600;
    pan.k = Math.min(vw / w, vh / h, 1.5);
    pan.x = (vw - w * pan.k) / 2;
    pan.y = Math.max(0, (vh - h * pan.k) / 2);
    place();
  }
  function zoomBy(f, cx, cy) {
    if (cx === undefined) { cx = viewport.clientWidth / 2; cy = viewport.clientHeight / 2; }
    const k = Math.min(8, Math.max(0.02, pan.k * f));
    pan.x = cx - (cx - pan.x) * k / pan.k;
    pan.y = cy - (cy - pan.y) * k / pan.k;
    pan.k = k;
    place();
  }
  function centre(g) {
    const r = g.getBoundingClientRect(), v = viewport.getBoundingClientRect();
    if (pan.k < 0.6) zoomBy(0.9 / pan.k, r.left + r.width / 2 - v.left, r.top + r.height / 2 - v.top);
    const r2 = g.getBoundingClientRect();
    pan.x += v.left + v.width / 2 - (r2.left + r2.width / 2);
    pan.y += v.top + v.height / 2 - (r2.top + r2.height / 2);
    place();
  }
  viewport.addEventListener("wheel", (e) => {
    e.preventDefault();
    const v = viewport.getBoundingClientRect();
    zoomBy(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - v.left, e.clientY - v.top);
  }, { passive: false });
  let drag = null, moved = false;
  viewport.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, px: pan.x, py: pan.y }; moved = false; });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) { moved = true; viewport.classList.add("dragging"); }
    pan.x = drag.px + dx; pan.y = drag.py + dy; place();
  });
  window.addEventListener("mouseup", () => { drag = null; viewport.classList.remove("dragging"); setTimeout(() => { moved = false; }, 0); });

  // which diagram node of the current view stands for a layer (itself or its collapsed block)
  function nodeFor(name) {
    const collapsed = data.views[view].collapsed;
    const layer = byName.get(name);
    let id = "n_" + name;
    if (layer) {
      for (const [cid, paths] of Object.entries(collapsed)) {
        if (paths.some((p) => layer.scope.includes(p))) { id = cid; break; }
      }
    } else if (blocks.has(name)) {
      for (const [cid, paths] of Object.entries(collapsed)) if (paths.includes(name)) id = cid;
    }
    for (const g of diagramNodes()) if (titleOf(g) === id) return g;
    return null;
  }
  // the first view from the current one on that draws the layer as its own node
  function viewShowing(layer) {
    for (let i = view; i < data.views.length; i++) {
      if (!Object.values(data.views[i].collapsed).some((ps) => ps.some((p) => layer.scope.includes(p)))) return i;
    }
    return data.views.length - 1;
  }
  function select(g) {
    for (const other of canvas.querySelectorAll("g.node.selected")) other.classList.remove("selected");
    if (g) g.classList.add("selected");
  }
  function onNode(id) {
    const g = [...diagramNodes()].find((n) => titleOf(n) === id);
    select(g);
    if (id.startsWith("n_")) return showLayer(id.slice(2));
    const paths = data.views[view].collapsed[id];
    if (paths) showBlock(paths);
  }
  // open a collapsed block: the next view in which it is not one node
  function expand(path) {
    for (let i = view + 1; i < data.views.length; i++) {
      if (!Object.values(data.views[i].collapsed).some((ps) => ps.includes(path))) {
        const first = layers.find((l) => l.scope.includes(path));
        return setView(i, first && first.name);
      }
    }
  }
  // close an open block: the view that draws blocks at its depth as single nodes
  function collapse(path) {
    const depth = data.block_levels[path] + 1;
    const i = data.views.findIndex((v) => v.depth === depth);
    if (i >= 0) { setView(i, path); showBlock([path]); }
  }

  function row(label, value) { return el("tr", {}, el("td", {}, label), el("td", {}, value)); }
  function showLayer(name) {
    const l = byName.get(name);
    if (!l) return;
    const attrs = Object.entries(l.attrs).filter(([, v]) => v !== null).map(([k, v]) => k + ": " + JSON.stringify(v)).join(", ");
    const table = el("table", {},
      row("kind", l.kind), row("block", l.scope.length ? l.scope[l.scope.length - 1] : "(top level)"),
      row("inputs", l.inputs.map((n, i) => n + " " + l.input_shapes[i]).join(", ") || "\u2014"),
      row("output", l.shape),
      row("attributes", attrs || "\u2014"),
      row("parameters", exact(l.params) + (l.trainable ? "" : " (frozen)") + (l.shares ? " (uses " + l.shares + "'s)" : "")),
      row("MACs", exact(l.macs) + " (" + human(l.macs) + ")"),
      row("FLOPs", exact(l.flops) + " (" + human(l.flops) + ")"),
      row("activation memory", bytes(l.activation_bytes) + " (" + exact(l.activation_bytes) + " B)"),
      row("saved for backward", bytes(l.saved_bytes)),
      row("bytes moved", bytes(l.bytes_moved)),
      row("arithmetic intensity", l.arithmetic_intensity === null ? "\u2014" : l.arithmetic_intensity.toFixed(2) + " FLOP/B"),
      row("receptive field", l.receptive_field.whole ? "the whole input"
        : rf(l.receptive_field) + " px, stride " + l.receptive_field.stride.join("x")));
    if (l.latency_s !== null && l.latency_s !== undefined) table.append(row("roofline latency", (l.latency_s * 1e6).toFixed(2) + " \u00b5s (" + l.bound + "-bound)"));
    if (l.fused.length) table.append(row("fused", l.fused.join(", ")));
    if (l.training_only) table.append(row("runs", "in training only (for the training outputs); left out of inference and its totals"));
    const actions = el("div", { class: "actions" });
    if (l.scope.length) {
      const path = l.scope[l.scope.length - 1];
      actions.append(el("button", { onclick: () => collapse(path) }, "collapse " + path));
    }
    details.replaceChildren(el("h2", { "data-layer": l.name }, l.name), table, actions);
  }
  function showBlock(paths) {
    const bs = paths.map((p) => blocks.get(p)).filter(Boolean);
    if (!bs.length) return;
    const sum = (k) => bs.reduce((s, b) => s + b[k], 0);
    const members = layers.filter((l) => paths.some((p) => l.scope.includes(p)));
    const title = paths.length > 1 ? paths[0] + " .. " + paths[paths.length - 1] : paths[0];
    const last = bs[bs.length - 1];
    const table = el("table", {},
      row("block", bs[0].block + (bs.length > 1 ? " x" + bs.length : bs[0].count ? " x" + bs[0].count : "")),
      row("layers", String(members.length)),
      row("output", last.output_shape.join("x") + " (" + last.output + ")"),
      row("parameters", exact(sum("params"))),
      row("MACs", exact(sum("macs")) + " (" + human(sum("macs")) + ")"),
      row("FLOPs", exact(sum("flops")) + " (" + human(sum("flops")) + ")"),
      row("receptive field", last.receptive_field.whole ? "the whole input" : rf(last.receptive_field) + " px"));
    const actions = el("div", { class: "actions" },
      el("button", { onclick: () => expand(paths[0]) }, "open " + paths[0]));
    details.replaceChildren(el("h2", { "data-block": paths[0] }, title), table, actions);
  }
  function find(text) {
    const q = text.trim().toLowerCase();
    for (const g of canvas.querySelectorAll("g.node.found")) g.classList.remove("found");
    if (!q) { found.textContent = ""; return; }
    const hits = layers.filter((l) => l.name.toLowerCase().includes(q) || l.kind.toLowerCase().includes(q));
    const nodes = new Set(hits.map((l) => nodeFor(l.name)).filter(Boolean));
    for (const g of nodes) g.classList.add("found");
    found.textContent = hits.length + " layer" + (hits.length === 1 ? "" : "s");
    if (hits.length) {
      const exactHit = hits.find((l) => l.name.toLowerCase() === q) || hits[0];
      if (exactHit.name.toLowerCase() === q) {  // a whole name: open the blocks it sits in
        const shown = viewShowing(exactHit);
        if (shown !== view) { setView(shown, exactHit.name); return showLayer(exactHit.name); }
      }
      const g = nodeFor(exactHit.name);
      if (g) centre(g);
      showLayer(exactHit.name);
    }
  }

  // ------------------------------------------------------------------ layer table
  const COLUMNS = [
    ["index", "#", true], ["name", "layer", false], ["kind", "type", false], ["shape", "output", false],
    ["params", "params", true, true], ["macs", "MACs", true, true], ["flops", "FLOPs", true],
    ["activation_bytes", "memory", true, true], ["rf", "RF", true]];
  const maxima = {};
  for (const [key] of COLUMNS) maxima[key] = Math.max(1, ...layers.map((l) => +l[key] || 0));
  const filter = el("input", { id: "filter", type: "search", placeholder: "filter by name, type or block\u2026",
    oninput: () => fillTable() });
  const head = el("tr", {});
  const body = el("tbody", {});
  let sortKey = "index", sortDir = 1;
  for (const [key, title, numeric] of COLUMNS) {
    head.append(el("th", { "data-key": key, class: numeric ? "num" : "",
      onclick: () => { if (sortKey === key) sortDir = -sortDir; else { sortKey = key; sortDir = numeric && key !== "index" ? -1 : 1; } fillTable(); } }, title));
  }
  sections.layers.append(el("div", { class: "toolbar" }, filter, el("span", { class: "note", id: "shown" })),
    el("table", { class: "layers", id: "layer-table" }, el("thead", {}, head), body));
  function value(l, key) { return key === "rf" ? (rfSize(l.receptive_field) ?? Infinity) : l[key]; }
  function fillTable() {
    const q = filter.value.trim().toLowerCase();
    const rows = layers.filter((l) => !q || l.name.toLowerCase().includes(q) || l.kind.toLowerCase().includes(q) ||
      l.scope.some((s) => s.toLowerCase().includes(q)));
    rows.sort((a, b) => {
      const x = value(a, sortKey), y = value(b, sortKey);
      return (typeof x === "number" ? x - y : String(x).localeCompare(String(y))) * sortDir || a.index - b.index;
    });
    for (const th of head.children) {
      th.classList.toggle("sorted-desc", th.dataset.key === sortKey && sortDir < 0);
      th.classList.toggle("sorted-asc", th.dataset.key === sortKey && sortDir > 0);
    }
    body.replaceChildren(...rows.map((l) => {
      const tr = el("tr", { "data-layer": l.name, onclick: () => { show("diagram"); const g = nodeFor(l.name); select(g); if (g) centre(g); showLayer(l.name); } });
      for (const [key, , numeric, bar] of COLUMNS) {
        let text;
        if (key === "name") {
          const parent = l.scope.length ? l.scope[l.scope.length - 1] : "";
          const local = parent && l.name.startsWith(parent + ".") ? l.name.slice(parent.length + 1) : l.name;
          const cell = el("td", { style: "padding-left:" + (6 + 14 * l.scope.length) + "px" });
          if (parent) cell.append(el("span", { class: "block-path" }, parent + "."));
          cell.append(local);
          tr.append(cell);
          continue;
        }
        text = key === "index" ? l.index + 1 : key === "rf" ? rf(l.receptive_field)
          : key === "activation_bytes" ? bytes(l[key]) : numeric ? exact(l[key]) : l[key];
        const cell = el("td", { class: (numeric ? "num" : "") + (bar ? " bar" : ""), "data-key": key });
        if (bar) cell.append(el("i", { style: "width:" + (100 * (l[key] || 0) / maxima[key]).toFixed(1) + "%" }));
        cell.append(el("span", {}, text));
        tr.append(cell);
      }
      return tr;
    }), el("tr", { class: "total" }, el("td", {}, ""), el("td", {}, "total"), el("td", {}, ""), el("td", {}, ""),
      el("td", { class: "num" }, exact(t.params)), el("td", { class: "num" }, exact(t.macs)),
      el("td", { class: "num" }, exact(t.flops)), el("td", { class: "num" }, bytes(t.activation_bytes)), el("td", {}, "")));
    document.getElementById("shown").textContent = rows.length + " of " + layers.length + " layers";
  }

  // ------------------------------------------------------------------ plots
  function axes(svg, W, H, m, xs, ys, xlabel, ylabel, logX, logY) {
    const sx = (v) => m.l + (W - m.l - m.r) * (tf(v, logX) - tf(xs[0], logX)) / ((tf(xs[1], logX) - tf(xs[0], logX)) || 1);
    const sy = (v) => H - m.b - (H - m.t - m.b) * (tf(v, logY) - tf(ys[0], logY)) / ((tf(ys[1], logY) - tf(ys[0], logY)) || 1);
    svg.append(svgEl("line", { x1: m.l, y1: H - m.b, x2: W - m.r, y2: H - m.b, stroke: "#999" }),
      svgEl("line", { x1: m.l, y1: m.t, x2: m.l, y2: H - m.b, stroke: "#999" }),
      svgEl("text", { x: (W + m.l - m.r) / 2, y: H - 4, "text-anchor": "middle" }, xlabel),
      svgEl("text", { x: 12, y: (H - m.b + m.t) / 2, transform: `rotate(-90 12 ${(H - m.b + m.t) / 2})`, "text-anchor": "middle" }, ylabel));
    for (const v of ticks(ys, logY)) {
      svg.append(svgEl("line", { x1: m.l - 3, x2: W - m.r, y1: sy(v), y2: sy(v), stroke: "#eee" }),
        svgEl("text", { x: m.l - 5, y: sy(v) + 4, "text-anchor": "end" }, human(v)));
    }
    for (const v of ticks(xs, logX)) {
      svg.append(svgEl("text", { x: sx(v), y: H - m.b + 14, "text-anchor": "middle" }, human(v)));
    }
    return [sx, sy];
  }
  function tf(v, log) { return log ? Math.log10(Math.max(v, 1e-12)) : v; }
  function ticks([lo, hi], log) {
    if (log) {
      const out = [];
      for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) if (10 ** e >= lo && 10 ** e <= hi) out.push(10 ** e);
      return out;
    }
    const step = 10 ** Math.floor(Math.log10((hi - lo) / 4 || 1));
    const n = Math.ceil((hi - lo) / step / 5) * step || 1;
    const out = [];
    for (let i = Math.ceil(lo / n); i * n <= hi + 1e-9 * n; i++) out.push(+(i * n).toPrecision(12));
    return out;
  }
  function plot(title, legend) {
    const box = el("div", { class: "plot" }, el("h3", {}, title));
    const svg = svgEl("svg", { viewBox: "0 0 560 260", width: "100%" });
    box.append(svg);
    if (legend) box.append(el("div", { class: "legend" }, legend));
    return [box, svg];
  }
  function polyline(svg, pts, colour) {
    svg.append(svgEl("polyline", { points: pts.map(([x, y]) => x.toFixed(1) + "," + y.toFixed(1)).join(" "),
      fill: "none", stroke: colour, "stroke-width": 1.8 }));
  }
  function drawPlots() {
    const grid = el("div", { class: "plots" });
    sections.plots.append(grid);
    const m = { l: 60, r: 14, t: 10, b: 34 };
    // receptive field and feature-map size by depth
    {
      const spatial = layers.filter((l) => l.output_shape.length === 3);
      const [box, svg] = plot("Receptive field and feature-map size by depth",
        "blue: receptive field (px, largest side); orange: feature-map height; x: layer in execution order");
      grid.append(box);
      const fields = spatial.map((l) => [l.index, rfSize(l.receptive_field)]).filter(([, v]) => v !== null);
      const sizes = spatial.map((l) => [l.index, l.output_shape[1]]);
      const ymax = Math.max(1, ...fields.map(([, v]) => v), ...sizes.map(([, v]) => v));
      const [sx, sy] = axes(svg, 560, 260, m, [0, Math.max(1, layers.length - 1)], [0, ymax], "layer", "pixels");
      polyline(svg, fields.map(([x, y]) => [sx(x), sy(y)]), "#2b6cb0");
      polyline(svg, sizes.map(([x, y]) => [sx(x), sy(y)]), "#dd6b20");
    }
    // cost per top-level block (or per layer where there are no blocks)
    {
      const top = data.blocks.filter((b) => data.block_levels[b.path] === 0);
      const items = top.length ? top.map((b) => [b.path + ": " + b.block, b.macs, b.params])
        : layers.filter((l) => l.macs || l.params).map((l) => [l.name, l.macs, l.params]);
      const shown = items.slice(0, 40);
      const [box, svg] = plot("Cost per " + (top.length ? "top-level block" : "layer"),
        "bars: MACs (blue) and parameters (green), each as a share of the largest" + (items.length > 40 ? "; first 40 of " + items.length : ""));
      grid.append(box);
      const rowH = Math.max(8, Math.min(22, 220 / shown.length));
      svg.setAttribute("viewBox", `0 0 560 ${Math.max(60, rowH * shown.length + 20)}`);
      const mm = Math.max(1, ...shown.map((i) => i[1])), pm = Math.max(1, ...shown.map((i) => i[2]));
      shown.forEach(([label, macs, params], i) => {
        const y = 6 + i * rowH;
        svg.append(svgEl("text", { x: 200, y: y + rowH * 0.7, "text-anchor": "end" }, label.length > 32 ? label.slice(0, 31) + "\u2026" : label),
          svgEl("rect", { x: 206, y: y + 1, height: rowH / 2 - 1, width: 250 * macs / mm, fill: "#6baed6" }),
          svgEl("rect", { x: 206, y: y + rowH / 2, height: rowH / 2 - 1, width: 250 * params / pm, fill: "#74c476" }),
          svgEl("text", { x: 460, y: y + rowH * 0.7 }, human(macs) + " / " + human(params)));
      });
    }
    // activation memory over the execution order (the inference memory plan's liveness)
    {
      const live = data.live_bytes;
      const [box, svg] = plot("Activation memory over the execution order (inference, batch " + data.batch + ")",
        "bytes live after each layer's output is allocated; the peak is " + bytes(t.inference_peak_bytes));
      grid.append(box);
      const [sx, sy] = axes(svg, 560, 260, m, [0, Math.max(1, live.length - 1)], [0, Math.max(1, ...live)], "layer", "bytes");
      polyline(svg, live.map((v, i) => [sx(i), sy(v)]), "#805ad5");
    }
    // roofline
    {
      const d = data.device;
      const [box, svg] = plot(d ? "Roofline: " + d.name : "Roofline",
        d ? "each layer at its arithmetic intensity on the device's roof (red: memory-bound, blue: compute-bound)"
          : "");
      grid.append(box);
      if (!d) {
        svg.append(svgEl("text", { x: 280, y: 130, "text-anchor": "middle" }, "no device chosen: archc report --device cpu|h100|h200"));
      } else {
        const pts = layers.filter((l) => l.arithmetic_intensity);
        const xs = [Math.min(0.01, ...pts.map((l) => l.arithmetic_intensity)), Math.max(1000, ...pts.map((l) => l.arithmetic_intensity))];
        const roof = (i) => Math.min(d.peak_flops, d.bandwidth * i);
        const ys = [roof(xs[0]) / 2, d.peak_flops * 2];
        const [sx, sy] = axes(svg, 560, 260, m, xs, ys, "arithmetic intensity (FLOP/byte)", "FLOP/s", true, true);
        const knee = d.peak_flops / d.bandwidth;
        polyline(svg, [[sx(xs[0]), sy(roof(xs[0]))], [sx(knee), sy(d.peak_flops)], [sx(xs[1]), sy(d.peak_flops)]], "#333");
        for (const l of pts) {
          const dot = svgEl("circle", { cx: sx(l.arithmetic_intensity), cy: sy(roof(l.arithmetic_intensity)), r: 3.2,
            fill: l.bound === "compute" ? "#2b6cb0" : "#e53e3e", "fill-opacity": 0.6 });
          dot.append(svgEl("title", {}, l.name + ": " + l.arithmetic_intensity.toFixed(2) + " FLOP/B"));
          svg.append(dot);
        }
      }
    }
  }

  // ------------------------------------------------------------------ a training run
  const COLOURS = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#718096"];
  function lineChart(title, series, xlabel, ylabel, note) {
    const legend = el("div", { class: "legend" }, ...series.map((s, i) =>
      el("span", { style: "color:" + COLOURS[i % COLOURS.length] + ";margin-right:12px" }, "■ " + s.name)),
      note ? " " + note : "");
    const [box, svg] = plot(title);
    box.append(legend);
    const all = series.flatMap((s) => s.points);
    if (!all.length) { svg.append(svgEl("text", { x: 280, y: 130, "text-anchor": "middle" }, "nothing logged")); return box; }
    const xs = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    const ys = [Math.min(0, ...all.map((p) => p[1])), Math.max(...all.map((p) => p[1])) || 1];
    const [sx, sy] = axes(svg, 560, 260, { l: 60, r: 14, t: 10, b: 34 }, xs, ys, xlabel, ylabel);
    series.forEach((s, i) => {
      const colour = COLOURS[i % COLOURS.length];
      const g = svgEl("g", { "data-series": s.name });
      if (s.points.length > 1) polyline(g, s.points.map(([x, y]) => [sx(x), sy(y)]), colour);
      for (const [x, y] of s.points.length <= 60 ? s.points : []) {
        const dot = svgEl("circle", { cx: sx(x), cy: sy(y), r: 2.6, fill: colour });
        dot.append(svgEl("title", {}, s.name + " " + (+y.toPrecision(4)) + " at " + xlabel + " " + x));
        g.append(dot);
      }
      svg.append(g);
    });
    return box;
  }
  function drawRun() {
    const run = data.run, rows = run.epochs;
    const key = (k) => rows.filter((r) => typeof r[k] === "number").map((r) => [r.epoch, r[k]]);
    const metricKeys = [...new Set(rows.flatMap((r) => Object.keys(r)))].filter((k) =>
      (k.startsWith("test_") && k !== "test_loss") || k === "train_accuracy");
    const primary = metricKeys.find((k) => k.startsWith("test_")) || null;
    const best = primary && rows.length ? rows.reduce((a, b) => (b[primary] > a[primary] ? b : a)) : null;
    const seconds = rows.reduce((s, r) => s + (r.seconds || 0), 0);
    const speed = rows.length ? rows.reduce((s, r) => s + (r.images_per_s || 0), 0) / rows.length : 0;
    sections.run.append(el("p", {}, "Run folder " + run.folder + " (task: " + run.task +
      (run.classes.length ? ", classes: " + run.classes.join(", ") : "") + ")"),
      el("div", { class: "cards", id: "run-cards" },
        card(String(rows.length), "epochs"),
        card(best ? (+best[primary].toFixed(4)).toString() : "—", best ? "best " + primary.replace("test_", "test ") + " (epoch " + best.epoch + ")" : "no test metric"),
        card(seconds >= 120 ? (seconds / 60).toFixed(1) + " min" : seconds.toFixed(1) + " s", "training time"),
        card(Math.round(speed) + " img/s", "mean training speed")));
    const grid = el("div", { class: "plots" });
    sections.run.append(grid);
    const steps = rows.flatMap((r) => r.loss_steps || []);
    const perStep = steps.length > rows.length;
    // the epoch's mean training loss sits at the epoch's last step when steps are known
    const at = (r) => (perStep && typeof r.steps === "number" ? r.steps : r.epoch);
    grid.append(lineChart("Loss", [
      ...(perStep ? [{ name: "training loss per step", points: steps }] : []),
      { name: "training loss (epoch mean)", points: rows.filter((r) => typeof r.train_loss === "number").map((r) => [at(r), r.train_loss]) },
      { name: "test loss", points: rows.filter((r) => typeof r.test_loss === "number").map((r) => [at(r), r.test_loss]) }],
      perStep ? "step" : "epoch", "loss"));
    grid.append(lineChart("Metrics per epoch", metricKeys.map((k) => ({ name: k.replace("_", " "), points: key(k) })), "epoch", "value"));
    grid.append(lineChart("Learning rate per epoch", [{ name: "lr", points: key("lr") }], "epoch", "learning rate"));
    grid.append(lineChart("Training speed per epoch", [{ name: "images/s", points: key("images_per_s") }], "epoch", "images/s"));
    if (run.evaluation) drawEvaluation(run.evaluation);
    else sections.run.append(el("p", { class: "empty" }, "No held-out evaluation: archc report --run RUN_DIR --data SOURCE adds the confusion matrix, per-class numbers and pictures of the predictions."));
    sections.run.append(el("h3", {}, "Settings"), el("table", { class: "memory", id: "run-settings" },
      ...Object.entries(run.settings).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, JSON.stringify(v))))));
  }

  function drawEvaluation(ev) {
    const box = el("div", { id: "evaluation" });
    sections.run.append(box);
    box.append(el("h3", {}, "The best weights on " + ev.images + " held-out images of " + ev.data),
      el("table", { class: "memory", id: "eval-metrics" }, ...Object.entries(ev.metrics).map(([k, v]) =>
        el("tr", { "data-key": k }, el("td", {}, k.replace("_", " ")), el("td", {}, String(+v.toFixed(4)))))));
    const pct = (v) => (v === null || v === undefined ? "\u2014" : (100 * v).toFixed(1) + "%");
    if (ev.per_class) {
      const head = ["class", "precision", "recall", "IoU", ev.task === "segment" ? "pixels" : "images"];
      box.append(el("h3", {}, "Per class"), el("table", { class: "layers", id: "per-class" },
        el("thead", {}, el("tr", {}, ...head.map((h, i) => el("th", { class: i ? "num" : "" }, h)))),
        el("tbody", {}, ...ev.classes.map((c, i) => el("tr", { "data-class": c }, el("td", {}, c),
          el("td", { class: "num" }, pct(ev.per_class.precision[i])), el("td", { class: "num" }, pct(ev.per_class.recall[i])),
          el("td", { class: "num" }, pct(ev.per_class.iou[i])), el("td", { class: "num" }, exact(ev.support[i])))))));
    }
    if (ev.confusion) {
      const peak = Math.max(1, ...ev.confusion.flat());
      const cell = (v, diag) => el("td", { class: "num", style: "background:rgba(" + (diag ? "43,108,176," : "229,62,62,") +
        (v ? 0.15 + 0.75 * v / peak : 0).toFixed(2) + ")" }, String(v));
      box.append(el("h3", {}, "Confusion matrix (rows: truth, columns: predicted)"),
        el("table", { class: "layers", id: "confusion" },
          el("thead", {}, el("tr", {}, el("th", {}, ""), ...ev.classes.map((c) => el("th", { class: "num" }, c)))),
          el("tbody", {}, ...ev.confusion.map((row, i) => el("tr", {}, el("th", {}, ev.classes[i]),
            ...row.map((v, j) => cell(v, i === j)))))));
    }
    if (ev.pictures.length) {
      box.append(el("h3", {}, "Predictions on the first held-out images"),
        el("div", { class: "pictures", id: "pictures" }, ...ev.pictures.map((p) => el("figure", {},
          el("img", { src: p.png, alt: p.name }),
          el("figcaption", {}, p.name + ": " + p.found + (p.truth !== null && p.truth !== undefined ? " (truth: " + p.truth + ")" : ""))))));
    }
  }

  // ------------------------------------------------------------------ two networks side by side
  function change(a, b, fmt) {
    if (a === b) return "same";
    const d = b - a, sign = d > 0 ? "+" : "\u2212";
    return sign + fmt(Math.abs(d)) + (a ? " (" + (d > 0 ? "+" : "\u2212") + Math.abs(100 * d / a).toFixed(1) + "%)" : "");
  }
  function comparison(id, head, rows) {
    return el("table", { class: "layers", id },
      el("thead", {}, el("tr", {}, ...head.map((h, i) => el("th", { class: i ? "num" : "" }, h)))),
      el("tbody", {}, ...rows.map((r) => el("tr", { "data-key": r[0] }, ...r.map((c, i) => el("td", { class: i ? "num" : "" }, c))))));
  }
  function drawCompare() {
    const o = data.compare, u = o.totals;
    const label = (d) => d.name + " (" + (d.spec || "") + ")";
    sections.compare.append(el("p", {}, "A: " + label(data) + " \u2014 B: " + label(o)));
    const metrics = [["parameters", "params", exact], ["trainable parameters", "trainable_params", exact],
      ["MACs", "macs", exact], ["FLOPs", "flops", exact], ["weights", "param_bytes", bytes],
      ["activations at the inference peak", "inference_peak_bytes", bytes],
      ["saved for backward (training)", "training_saved_bytes", bytes]];
    const rows = metrics.map(([title, k, fmt]) => [title, fmt(t[k]), fmt(u[k]), change(t[k], u[k], fmt)]);
    rows.push(["layers", String(layers.length), String(o.layers_count), change(layers.length, o.layers_count, String)]);
    const outs = (d) => Object.values(d.outputs).map((v) => v.shape.join("x")).join(", ");
    rows.push(["outputs", outs(data), outs(o), outs(data) === outs(o) ? "same" : "changed"]);
    sections.compare.append(el("h3", {}, "Totals"), comparison("compare-totals", ["", "A", "B", "B \u2212 A"], rows));
    // blocks by path: the top levels, where variants usually differ
    const ours = new Map(data.blocks.filter((b) => data.block_levels[b.path] <= 1).map((b) => [b.path, b]));
    const theirs = new Map(o.blocks.map((b) => [b.path, b]));
    const paths = [...new Set([...ours.keys(), ...[...theirs.keys()].filter((p) => p.split(".").length <= 2)])];
    const blockRows = paths.map((p) => {
      const a = ours.get(p), b = theirs.get(p);
      return [p, a ? human(a.macs) + " / " + exact(a.params) : "\u2014", b ? human(b.macs) + " / " + exact(b.params) : "\u2014",
        a && b ? change(a.macs, b.macs, human) : a ? "only in A" : "only in B"];
    });
    if (blockRows.length) sections.compare.append(el("h3", {}, "Blocks (MACs / parameters)"), comparison("compare-blocks", ["block", "A", "B", "MACs change"], blockRows));
    // layers by name: what differs
    const other = new Map(o.layers.map((l) => [l.name, l]));
    const diff = [];
    for (const l of layers) {
      const m = other.get(l.name);
      if (!m) diff.push([l.name, l.kind + " " + l.shape + ", " + exact(l.params), "\u2014", "only in A"]);
      else if (m.kind !== l.kind || m.shape !== l.shape || m.params !== l.params || m.macs !== l.macs)
        diff.push([l.name, l.kind + " " + l.shape + ", " + exact(l.params), m.kind + " " + m.shape + ", " + exact(m.params), change(l.macs, m.macs, human) + " MACs"]);
    }
    for (const m of o.layers) if (!byName.has(m.name)) diff.push([m.name, "\u2014", m.kind + " " + m.shape + ", " + exact(m.params), "only in B"]);
    sections.compare.append(el("h3", {}, "Layers that differ (" + diff.length + " of " + new Set([...byName.keys(), ...other.keys()]).size + ")"),
      comparison("compare-layers", ["layer", "A: type, output, params", "B: type, output, params", "change"], diff));
  }

  // ------------------------------------------------------------------ memory
  {
    const opt = t.optimizer_state_bytes;
    const train = (state) => t.param_bytes + t.gradient_bytes + state + t.training_saved_bytes;
    const table = el("table", { class: "memory", id: "memory-table" },
      el("tr", {}, el("th", {}, ""), el("th", {}, "inference"), el("th", {}, "SGD"), el("th", {}, "SGD momentum"), el("th", {}, "Adam")),
      el("tr", {}, el("td", {}, "weights"), ...[0, 1, 2, 3].map(() => el("td", {}, bytes(t.param_bytes)))),
      el("tr", {}, el("td", {}, "gradients"), el("td", {}, "\u2014"), ...[0, 1, 2].map(() => el("td", {}, bytes(t.gradient_bytes)))),
      el("tr", {}, el("td", {}, "optimizer state"), el("td", {}, "\u2014"), el("td", {}, bytes(opt.sgd)),
        el("td", {}, bytes(opt.sgd_momentum)), el("td", {}, bytes(opt.adam))),
      el("tr", {}, el("td", {}, "activations"), el("td", {}, bytes(t.inference_peak_bytes) + " at the peak"),
        ...[0, 1, 2].map(() => el("td", {}, bytes(t.training_saved_bytes) + " saved for backward"))),
      el("tr", {}, el("td", {}, el("b", {}, "total")), el("td", {}, el("b", {}, bytes(t.param_bytes + t.inference_peak_bytes))),
        el("td", {}, el("b", {}, bytes(train(opt.sgd)))), el("td", {}, el("b", {}, bytes(train(opt.sgd_momentum)))),
        el("td", {}, el("b", {}, bytes(train(opt.adam))))));
    sections.memory.append(el("p", {}, "Memory at batch " + data.batch + " in float32 (the training columns: weights, gradients, optimizer state and the activations the backward pass keeps)."), table);
    const vars = Object.entries(data.variables || {});
    if (vars.length) {
      sections.memory.append(el("h3", {}, "Variables"), el("table", { class: "memory" },
        ...vars.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, JSON.stringify(v))))));
    }
  }

  fillTable();
  show("diagram");
  setView(data.first_view);
  window.archcReport = { data, setView, showLayer, find, expand, collapse, view: () => view };
})();
