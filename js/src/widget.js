// PruningWidget front end (anywidget ESM): a thin view over the kernel-side session.
import { colormap, compareMarks, drawHeatmap, proposalMarks, unitsOfColumn } from "./heatmap.js";
import {
  actionName, actionTarget, blockCurve, blockWent, childSummary, keyAction, mergeRows, moveFocus, rowActions, rowLabel,
  summaryStatus, summaryText, treeKey, unitsText, visibleRows,
} from "./tree.js";
import { applyHeatmaps, asBytes, detailAt, sendAction } from "./wire.js";
import {
  compareText, deployCells, filterRows, fmt, keptText, markText, previewParts, progressText, sparkPoints,
} from "./format.js";

function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== false && v != null) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs = {}, text = "") {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text) e.textContent = text;
  return e;
}

const SERIES = [["accuracy", "var(--pw-accent)", "accuracy"], ["agreement", "var(--pw-ok)", "agreement (box samples)"]];

/**
 * Metrics across history points: share pruned on x (0-100 %), accuracy / agreement on y (0-100 %),
 * axes, a legend, a dot per point (readable with one point) with its values on hover.
 */
function chart(history) {
  const W = 240, H = 120, L = 30, R = 14, T = 6, B = 22;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, class: "pw-chart", role: "img",
    "aria-label": "metrics by share pruned" });
  const x = (v) => L + v * (W - L - R);
  const y = (v) => T + (1 - v) * (H - T - B);
  svg.append(svgEl("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), class: "pw-axis" }),
    svgEl("line", { x1: L, y1: T, x2: L, y2: y(0), class: "pw-axis" }));
  for (const t of [0, 0.5, 1]) {
    svg.append(svgEl("text", { x: x(t), y: H - 10, class: "pw-tick", "text-anchor": "middle" }, `${t * 100}%`),
      svgEl("text", { x: L - 3, y: y(t) + 3, class: "pw-tick", "text-anchor": "end" }, `${t * 100}%`));
  }
  svg.append(svgEl("text", { x: (L + W) / 2, y: H - 1, class: "pw-tick", "text-anchor": "middle" }, "share pruned"));
  const pts = (history || []).filter((m) => m.share_pruned != null).sort((a, b) => a.share_pruned - b.share_pruned);
  for (const [key, color, label] of SERIES) {
    const have = pts.filter((m) => m[key] != null);
    if (!have.length) continue;
    const g = svgEl("g", { "data-series": key });
    if (have.length > 1) {
      g.append(svgEl("polyline", { points: have.map((m) => `${x(m.share_pruned)},${y(m[key])}`).join(" "),
        fill: "none", stroke: color, "stroke-width": "1.5", "data-series": key }));
    }
    for (const m of have) {
      const dot = svgEl("circle", { cx: x(m.share_pruned), cy: y(m[key]), r: 2.5, fill: color, class: "pw-dot" });
      dot.append(svgEl("title", {}, `point ${m.position}: ${label} ${fmt.pct(m[key])} at ${fmt.pct(m.share_pruned)} pruned`));
      g.append(dot);
    }
    svg.append(g);
  }
  return svg;
}

function chartLegend() {
  return el("div", { class: "pw-legend" }, SERIES.map(([, color, label]) =>
    el("span", { class: "pw-legend-item" }, [el("span", { class: "pw-swatch", style: `background:${color}` }), label])));
}

/** The heatmap legend: colour scale of |w| and what the marks mean. */
function heatLegend() {
  const stops = [0, 64, 128, 192, 255].map((v) => `rgb(${colormap(v).join(",")})`).join(",");
  return el("div", { class: "pw-heat-legend", "aria-label": "heatmap legend" }, [
    el("span", { text: "weights |w|: 0" }),
    el("span", { class: "pw-scale", style: `background:linear-gradient(to right,${stops})`,
      title: "colour scale: square root of |w| over the layer's largest" }),
    el("span", { text: "max (√ scale)" }),
    el("span", { class: "pw-swatch pw-mark-drop" }), el("span", { text: "unit removed / merged away" }),
    el("span", { class: "pw-swatch pw-mark-keep" }), el("span", { text: "unit it merges into" }),
    el("span", { class: "pw-swatch pw-mark-went pw-when-compare" }),
    el("span", { class: "pw-when-compare", text: "went between the compared points" }),
  ]);
}

/** A tiny SVG curve of a layer's certified bound over its shares (scaled by the largest bound of any layer). */
function sparkline(curve, top, scoreTop, block = null) {
  const svg = svgEl("svg", { viewBox: "0 0 60 16", class: `pw-spark${block ? " pw-spark-block" : ""}`,
    "data-layer": block ? block.name : curve.name });
  const bounded = curve.bound.slice(1).some((b) => b != null);
  const ys = bounded ? curve.bound : (curve.score || []);
  const pts = sparkPoints(curve.ratios, ys, 60, 16, bounded ? top : scoreTop);
  if (pts) svg.append(svgEl("polyline", { points: pts, fill: "none", stroke: "var(--pw-warn-strong)", "stroke-width": "1.5",
    "stroke-dasharray": bounded ? "" : "2 1" }));
  const last = ys.filter((b) => b != null).pop();
  const end = fmt.pct(curve.ratios[curve.ratios.length - 1]);
  const who = block ? `${block.name}: its most sensitive of ${block.members} prunable layers is ${curve.name}; ` : "";
  svg.append(svgEl("title", {}, who + (bounded
    ? `${curve.name}: pruned alone to ${end}, no output moves by more than ${fmt.num(last)} (certified)`
    : `${curve.name}: pruned alone to ${end}, strategy score ${fmt.num(last)} (no certified bound: dashed)`)));
  return svg;
}

/** The side panel's chart of one layer's sensitivity: bound (left scale) and agreement. */
function sensitivityChart(curve) {
  const W = 240, H = 110, L = 34, R = 14, T = 6, B = 22;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, class: "pw-sens-chart", "data-layer": curve.name });
  const bounds = curve.bound.filter((b) => b != null);
  const top = Math.max(...bounds, 1e-9);
  const x = (v) => L + v * (W - L - R);
  const y = (v) => T + (1 - v) * (H - T - B);
  svg.append(svgEl("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), class: "pw-axis" }),
    svgEl("line", { x1: L, y1: T, x2: L, y2: y(0), class: "pw-axis" }));
  for (const t of [0, 0.5, 1]) svg.append(svgEl("text", { x: x(t), y: H - 10, class: "pw-tick", "text-anchor": "middle" }, `${t * 100}%`));
  svg.append(svgEl("text", { x: L - 3, y: y(1) + 6, class: "pw-tick", "text-anchor": "end" }, fmt.num(top).replace(/\.?0+$/, "")),
    svgEl("text", { x: L - 3, y: y(0), class: "pw-tick", "text-anchor": "end" }, "0"),
    svgEl("text", { x: (L + W) / 2, y: H - 1, class: "pw-tick", "text-anchor": "middle" }, "share of this layer's units pruned"));
  const line = (ys, scale, color, key) => {
    const pts = curve.ratios.map((r, i) => [r, ys[i]]).filter(([, v]) => v != null);
    if (!pts.length) return;
    // robustness kept may pass 100 %: drawn at the top, its value in the tooltip
    const yv = (v) => y(Math.min(v / scale, 1));
    svg.append(svgEl("polyline", { points: pts.map(([r, v]) => `${x(r)},${yv(v)}`).join(" "), fill: "none",
      stroke: color, "stroke-width": "1.5", "data-series": key }));
    for (const [r, v] of pts) {
      const dot = svgEl("circle", { cx: x(r), cy: yv(v), r: 2, fill: color });
      dot.append(svgEl("title", {}, `${fmt.pct(r)} pruned: ${key} ${key === "bound" ? fmt.num(v) : fmt.pct(v)}`));
      svg.append(dot);
    }
  };
  line(curve.bound, top, "var(--pw-warn-strong)", "bound");
  line(curve.agreement, 1, "var(--pw-ok)", "agreement");
  if (curve.accuracy.some((a) => a != null)) line(curve.accuracy, 1, "var(--pw-accent)", "accuracy");
  if ((curve.robust || []).some((a) => a != null)) line(curve.robust, 1, "var(--pw-robust)", "robustness kept");
  return svg;
}

const METRIC_HELP = {
  parameters: "parameters of the physically smaller model",
  size: "bytes of its weights (float32)",
  FLOPs: "floating-point operations of one forward pass",
  pruned: "share of the prunable units removed",
  accuracy: "top-1 accuracy on the session's eval data",
  agreement: "share of random inputs from the input box on which the pruned model gives the original's answer",
  "bound width": "mean width of the certified output intervals over the whole input box (data-free; smaller is tighter)",
};

function render({ model, el: root }) {
  const heatmaps = new Map();
  const expanded = new Set(); // blocks and nested models opened
  const details = new Map(); // layer -> detail message with data
  const openDetail = new Set();
  let focus = 0;
  let notice = ""; // a kernel reply (error) shown until the session's state next changes
  let confirm = null; // {path, format}: the file exists, overwrite?
  let filter = "";
  let pick = { a: null, b: null }; // history points to compare
  let deployDir = "deploy"; // the deploy folder typed (kept across redraws)
  let deployPick = null; // Set of formats ticked (null: the kernel's defaults)

  root.classList.add("pw-root");
  // Keys typed anywhere in the widget are the widget's: JupyterLab's command mode binds a, s, l, the arrows...
  // Notebook 7 listens in the capture phase, so the guard sits on the window, the first stop of every key event:
  // a plain key typed anywhere inside the widget goes to the widget only (its default action -- typing into a
  // field, pressing a focused button -- still happens).
  root.setAttribute("data-lm-suppress-shortcuts", "true");
  const guard = (e) => {
    const path = typeof e.composedPath === "function" ? e.composedPath() : [];
    const inside = path.length ? path.includes(root) : e.target instanceof Node && root.contains(e.target);
    if (!inside) return; // (the path reaches into a shadow root, as in marimo; e.target would be its host)
    if (e.ctrlKey || e.metaKey || e.altKey || e.key === "Escape" || e.key === "Tab") return;
    e.stopPropagation();
    if (path.length ? path.includes(tree) : tree.contains(e.target)) onTreeKey(e);
  };
  window.addEventListener("keydown", guard, true); // removed by the view's cleanup
  const toolbar = el("div", { class: "pw-toolbar", role: "toolbar", "aria-label": "pruning" });
  const banner = el("div", { class: "pw-error", role: "alert" });
  const noticeBox = el("div", { class: "pw-notice", role: "status" });
  const confirmBox = el("div", { class: "pw-confirm", role: "alertdialog", hidden: true });
  const tree = el("div", { class: "pw-tree", role: "tree", tabindex: "0", "aria-label": "layers",
    "data-lm-suppress-shortcuts": "true" });
  const search = el("input", { class: "pw-filter", type: "search", placeholder: "filter layers by name or type",
    "aria-label": "filter layers", oninput: (e) => { filter = e.target.value; focus = 0; drawTree(); } });
  const side = el("div", { class: "pw-side" });
  const treeBox = el("div", { class: "pw-tree-box" }, [search, tree, heatLegend()]);
  const deployBox = el("div", { class: "pw-deploy-box" });
  root.append(toolbar, banner, noticeBox, confirmBox, el("div", { class: "pw-main" }, [treeBox, side]), deployBox);

  const act = (action, fields) => sendAction(model, action, fields);
  let rowsCache = null;
  const allRows = () => (rowsCache ??= mergeRows(model.get("layers"), model.get("states")));
  let parentsCache = null;
  const isParent = (name) => (parentsCache ??= new Set(allRows().map((r) => r.parent))).has(name);
  const shownRows = () => filterRows(allRows(), filter) ?? visibleRows(allRows(), expanded);

  // Toolbar buttons stay focusable when off (aria-disabled): the tab order never jumps as they enable.
  const off = (b) => b.getAttribute("aria-disabled") === "true";
  const setOff = (b, v) => { b.setAttribute("aria-disabled", v ? "true" : "false"); };
  const button = (text, cls, onclick, title) => el("button", { class: `pw-btn ${cls}`, text, title,
    onclick: (e) => { if (!off(e.currentTarget)) onclick(e); } });
  const strategy = el("select", { class: "pw-strategy", "aria-label": "strategy",
    onchange: (e) => act("configure", { settings: { strategy: e.target.value } }) });
  const numInput = (key) => el("input", { type: "number", min: "0.01", max: "0.99", step: "0.01",
    class: `pw-input pw-${key}`, "aria-label": key,
    onchange: (e) => act("configure", { settings: { [key]: Number(e.target.value) } }) });
  const stepInput = numInput("step");
  const targetInput = numInput("target");
  const path = el("input", { class: "pw-input pw-export-path", "aria-label": "export path",
    onchange: (e) => { model.set("export_path", e.target.value); model.save_changes(); } });
  const format = el("select", { class: "pw-format", "aria-label": "export format" }, [
    el("option", { value: "keras", text: ".keras" }), el("option", { value: "tflite16", text: "TFLite float16" })]);
  const exportMsg = (overwrite) => {
    const f = { path: path.value };
    if (format.value !== "keras") f.format = format.value;
    if (overwrite) f.overwrite = true;
    return f;
  };
  const buttons = {
    propose: button("Propose next iteration", "pw-propose", () => act("propose")),
    acceptAll: button("Accept all pending", "pw-accept-all", () => act("accept_all")),
    run: button("Run to target", "pw-run", () => act("run")),
    cancel: button("Cancel", "pw-cancel", () => act("cancel")),
    undo: button("Undo", "pw-undo", () => act("undo")),
    redo: button("Redo", "pw-redo", () => act("redo")),
    export: button("Export", "pw-export", () => act("export", exportMsg(false))),
    sens: button("Sensitivity", "pw-sens", () => act("sensitivity"),
      "prune each layer alone at 10-90 % on a copy of the weights: how much can the output move? (data-free)"),
    sensCancel: button("Stop", "pw-sens-cancel", () => act("cancel_sensitivity"), "stop computing the sensitivity"),
  };
  const progress = el("progress", { class: "pw-progress", max: "1" });
  const progressLabel = el("span", { class: "pw-progress-text", "aria-live": "polite" });
  toolbar.append(strategy, el("label", { class: "pw-num" }, ["step ", stepInput]),
    el("label", { class: "pw-num" }, ["target ", targetInput]), buttons.propose, buttons.acceptAll, buttons.run,
    buttons.cancel, buttons.undo, buttons.redo, buttons.sens, buttons.sensCancel, path, format, buttons.export,
    progress, progressLabel);

  function drawToolbar() {
    const s = model.get("settings") || {};
    const running = Boolean(model.get("running"));
    const hist = model.get("history") || [];
    const pos = model.get("position");
    const names = model.get("strategies") || [];
    if ([...strategy.options].map((o) => o.value).join() !== names.join()) {
      strategy.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    }
    strategy.value = s.strategy || "";
    if (document.activeElement !== stepInput) stepInput.value = s.step ?? "";
    if (document.activeElement !== targetInput) targetInput.value = s.target ?? "";
    if (document.activeElement !== path) path.value = model.get("export_path") || "";
    const pending = allRows().some((r) => r.status === "pending");
    strategy.disabled = stepInput.disabled = targetInput.disabled = running;
    setOff(buttons.propose, running);
    setOff(buttons.acceptAll, running || !pending);
    setOff(buttons.run, running);
    setOff(buttons.cancel, !running);
    setOff(buttons.undo, running || pos === 0);
    setOff(buttons.redo, running || pos >= hist.length);
    setOff(buttons.export, running);
    const sens = model.get("sensitivity") || {};
    const computing = sens.status === "computing";
    setOff(buttons.sens, computing);
    buttons.sensCancel.hidden = !computing;
    buttons.sens.textContent = computing ? `Sensitivity ${sens.done || 0}/${sens.total || "?"}` : "Sensitivity";
    progress.value = Number(model.get("progress") || 0);
    progress.hidden = !running;
    progressLabel.hidden = !running;
    progressLabel.textContent = running ? progressText(model.get("progress"), model.get("progress_info")) : "";
  }

  function drawBanner() {
    const msg = model.get("error") || notice;
    banner.textContent = msg;
    banner.hidden = !msg;
    const note = model.get("notice") || "";
    noticeBox.textContent = note;
    noticeBox.hidden = !note || Boolean(msg);
    confirmBox.hidden = !confirm;
    if (confirm && confirm.kind === "deploy") {
      const c = confirm;
      const names = c.paths.map((x) => x.split(/[\\/]/).pop()).join(", ");
      confirmBox.replaceChildren(el("span", { text: `${c.paths.length === 1 ? "A file exists" : `${c.paths.length} files exist`} in ${c.dir}: ${names}. Overwrite?` }),
        el("button", { class: "pw-btn pw-overwrite", text: "Overwrite",
          onclick: () => { confirm = null; act("deploy", { formats: c.formats, dir: c.dir, overwrite: true }); drawBanner(); } }),
        el("button", { class: "pw-btn pw-keep", text: "Keep the files",
          onclick: () => { confirm = null; drawBanner(); } }));
    } else if (confirm) {
      const c = confirm;
      confirmBox.replaceChildren(el("span", { text: `${c.path} exists. Overwrite it?` }),
        el("button", { class: "pw-btn pw-overwrite", text: "Overwrite",
          onclick: () => { confirm = null; act("export", { ...exportMsg(true), path: c.path }); drawBanner(); } }),
        el("button", { class: "pw-btn pw-keep", text: "Keep the file",
          onclick: () => { confirm = null; drawBanner(); } }));
    }
  }

  function heatTitle(row, img, canvas, e) {
    const rect = canvas.getBoundingClientRect();
    const col = Math.min(img.w - 1, Math.max(0, Math.floor(((e.clientX - rect.left) / (rect.width || 1)) * img.w)));
    const units = row.units_total ? unitsOfColumn(col, row.units_total, img.w) : null;
    const what = units ? (units[0] === units[1] ? `unit ${units[0]}` : `units ${units[0]}–${units[1]}`) : "";
    const cmp = model.get("compare") || {};
    const cmpRow = cmp.layers ? cmp.layers.find((x) => x.name === row.group) : null;
    const mark = [markText(row.proposal, units), compareText(cmpRow, units, cmp.a, cmp.b)].filter(Boolean).join("; ");
    canvas.title = `${rowLabel(row)}, ${what}${mark ? `: ${mark}` : ""}`;
  }

  function drawRow(row, index, sens, top, scoreTop) {
    const acts = rowActions(row);
    const canvas = el("canvas", { class: "pw-heat", "data-layer": row.name });
    const img = heatmaps.get(row.name);
    const cmp = model.get("compare") || {};
    const cmpRow = row.group != null && cmp.layers ? cmp.layers.find((x) => x.name === row.group) : null;
    if (img) {
      const marks = compareMarks(cmpRow, row.units_total, img.w);
      for (const [c, m] of proposalMarks(row.proposal, row.units_total, img.w)) marks.set(c, m);
      drawHeatmap(canvas, img, marks);
      if (cmpRow && (cmpRow.went_count || cmpRow.back_count)) canvas.setAttribute("data-went", String(cmpRow.went_count));
      canvas.title = `${rowLabel(row)}: |weights| (inputs down, units across)` +
        (row.proposal ? `; proposal: ${row.proposal.drop.length} units go (point at a marked column)` : "");
      canvas.addEventListener("mousemove", (e) => heatTitle(row, img, canvas, e));
    }
    const nested = isParent(row.name);
    const counts = nested ? childSummary(allRows(), row.name) : {};
    const summary = summaryText(counts);
    const chipStatus = row.status || summaryStatus(counts);
    const chipClass = `pw-chip pw-${chipStatus.replace(" ", "-")}${summary ? " pw-summary" : ""}`;
    const chip = chipStatus ? el("span", { class: chipClass, text: row.status || summary,
      title: row.reason || row.status || summary }) : el("span", { class: "pw-chip-empty" });
    const button = (name, label, on) => el("button", { class: `pw-row-btn pw-${name}`, text: label,
      disabled: !on, tabindex: "-1", "aria-label": actionName(label, row),
      onclick: (e) => { e.stopPropagation(); act(name, { layer: actionTarget(row) }); } });
    const live = (model.get("live_params") || {})[row.name];
    const params = live != null && row.params != null ? live : row.params;
    const curve = row.group && sens.curves ? sens.curves[row.group] : null;
    const plan = (model.get("plan") || {}).targets || {};
    const agg = nested && !expanded.has(row.name) && sens.curves ? blockCurve(allRows(), row.name, sens.curves) : null;
    const sensCell = el("span", { class: `pw-sens-cell${sens.current === false ? " pw-stale" : ""}` },
      curve && row.heatmap ? [sparkline(curve, top, scoreTop)]
        : agg ? [sparkline(agg.curve, top, scoreTop, { name: row.name, members: agg.members })] : []);
    if (row.group && plan[row.group] != null && row.heatmap) {
      sensCell.append(el("span", { class: "pw-plan-share", text: fmt.pct(plan[row.group]), title: "planned share" }));
    }
    const bw = nested && cmp.layers ? blockWent(allRows(), row.name, cmp.layers) : null;
    const unitsCell = cmpRow && row.heatmap
      ? el("span", { class: "pw-units", text: `${cmpRow.units_a} → ${cmpRow.units_b}`, title: `units at point ${cmp.a} → point ${cmp.b}` })
      : bw ? el("span", { class: "pw-units pw-block-went", text: bw.went ? `${fmt.int(bw.went)} went` : "",
        title: `between points ${cmp.a} and ${cmp.b}: ${fmt.int(bw.went)} units went in ${bw.layers} layer${bw.layers === 1 ? "" : "s"} of this block` })
        : el("span", { class: "pw-units", text: unitsText(row), title: "units alive / total" });
    const r = el("div", {
      class: `pw-row${index === focus ? " pw-focus" : ""}${row.depth ? " pw-child" : ""}`, role: "treeitem",
      "data-layer": row.name, "data-status": row.status, "aria-selected": index === focus ? "true" : "false",
      "aria-expanded": nested ? String(expanded.has(row.name)) : false,
      onclick: () => { focus = index; toggleDetail(row); },
    }, [
      el("span", { class: "pw-name", style: `padding-left:${row.depth * 12}px`,
        title: `${rowLabel(row)} · ${row.type} ${row.shape || ""}${row.part ? ` (unit group ${row.group})` : ""}`,
        text: `${nested ? (expanded.has(row.name) ? "▾ " : "▸ ") : ""}${rowLabel(row)}` }),
      el("span", { class: "pw-type", text: row.type, title: row.type }),
      el("span", { class: "pw-shape", text: row.shape }),
      unitsCell,
      el("span", { class: "pw-params", text: fmt.int(params),
        title: (params !== row.params ? `${fmt.int(params)} of ${fmt.int(row.params)} parameters alive` : "parameters")
          + (row.part ? ` with this group's units (the layer has ${fmt.int(row.layer_params)})` : "") }),
      chip, row.heatmap ? canvas : el("span", { class: "pw-heat-empty" }), sensCell,
      el("span", { class: "pw-actions" }, row.group ? [
        button("accept", "Accept", acts.accept), button("skip", "Skip", acts.skip),
        acts.unlock ? button("unlock", "Unlock", true) : button("lock", "Lock", acts.lock)] : []),
    ]);
    const frag = [r];
    const pv = row.status === "pending" && row.heatmap ? (model.get("previews") || {})[row.group] : null;
    if (pv) {
      const parts = previewParts(pv);
      const line = el("span", {}, [
        el("span", { text: `Accepting removes ${pv.units} unit${pv.units === 1 ? "" : "s"}, ${fmt.int(pv.params)} parameters, ${fmt.si(pv.flops)} FLOPs; ` }),
        el("span", { class: `pw-preview-bound${parts.boundStale ? " pw-stale" : ""}`, text: parts.bound })]);
      if (parts.accuracy) {
        line.append("; ", el("span", { class: `pw-preview-acc${parts.state === "stale" ? " pw-stale" : ""}`,
          "data-state": parts.state, text: parts.accuracy,
          title: "top-1 accuracy on the session's eval data now → if this proposal alone is accepted (computed on a copy)" }));
      }
      frag.push(el("div", { class: "pw-preview", "data-layer": row.name }, [line]));
    }
    if (cmpRow && row.heatmap && (cmpRow.went_count || cmpRow.back_count)) {
      const shown = cmpRow.went.slice(0, 64);
      const text = cmpRow.went_count
        ? `between points ${cmp.a} and ${cmp.b}: unit${cmpRow.went_count === 1 ? "" : "s"} ${shown.join(", ")}${cmpRow.went_count > shown.length ? ` … (${cmpRow.went_count} in all)` : ""} went`
        : `between points ${cmp.a} and ${cmp.b}: ${cmpRow.back_count} units came back`;
      frag.push(el("div", { class: "pw-preview pw-went", "data-layer": row.name }, [el("span", { text })]));
    }
    if (openDetail.has(row.name)) frag.push(drawDetail(row));
    return frag;
  }

  function drawDetail(row) {
    const d = details.get(row.name);
    const box = el("div", { class: "pw-detail", "data-layer": row.name });
    const kindBtn = (kind) => el("button", { class: `pw-btn pw-detail-${kind}`, text: kind,
      onclick: (e) => { e.stopPropagation(); act("detail", { layer: row.name, kind }); } });
    box.append(el("div", { class: "pw-detail-bar" }, [kindBtn("weights"), kindBtn("saliency")]));
    if (!d) { box.append(el("span", { text: "loading…" })); return box; }
    const canvas = el("canvas", { class: "pw-detail-canvas" });
    drawHeatmap(canvas, { h: d.shape[0], w: d.shape[1], data: d.data }, new Map());
    const tip = el("div", { class: "pw-tip", text: `${d.kind}: move the pointer over the map` });
    canvas.addEventListener("mousemove", (e) => {
      const rect = canvas.getBoundingClientRect();
      const at = detailAt(d, e.clientX - rect.left, e.clientY - rect.top, rect.width, rect.height);
      const what = d.kind === "weights" ? ["inputs", "units"] : ["kept unit", "removed unit"];
      tip.textContent = `${what[0]} ${at.row[0]}–${at.row[1]}, ${what[1]} ${at.col[0]}–${at.col[1]}: ` +
        `${d.kind === "weights" ? "mean |w|" : "saliency"} ≈ ${at.value.toPrecision(3)}`;
    });
    box.append(canvas, tip);
    return box;
  }

  function toggleDetail(row) {
    if (isParent(row.name)) {
      expanded.has(row.name) ? expanded.delete(row.name) : expanded.add(row.name);
    } else if (row.heatmap) {
      if (openDetail.has(row.name)) openDetail.delete(row.name);
      else { openDetail.add(row.name); act("detail", { layer: row.name, kind: "weights" }); }
    }
    drawTree();
    drawSide();
  }

  function drawTree() {
    const rows = shownRows();
    focus = Math.min(focus, Math.max(0, rows.length - 1));
    const sens = model.get("sensitivity") || {};
    const tops = Object.values(sens.curves || {}).flatMap((c) => c.bound.filter((b) => b != null));
    const top = tops.length ? Math.max(...tops) : 1;
    const scores = Object.values(sens.curves || {}).flatMap((c) => (c.score || []).filter((b) => b != null));
    const scoreTop = scores.length ? Math.max(...scores) : 1;
    const header = el("div", { class: "pw-row pw-head" }, ["layer", "type", "output", "units", "params", "status",
      "weights", "sensitivity", ""].map((t, i) => el("span", { text: t, class: i === 0 ? "pw-name" : "" })));
    // A redraw keeps where the reader is: the scroll position (a narrow tree scrolls sideways) and the
    // keyboard focus (a clicked row button is replaced: the focus goes back to the tree, not the page).
    const { scrollLeft, scrollTop } = tree;
    const hadFocus = tree.contains(document.activeElement);
    tree.replaceChildren(header, ...rows.flatMap((r, i) => drawRow(r, i, sens, top, scoreTop)));
    if (hadFocus && !tree.contains(document.activeElement)) tree.focus({ preventScroll: true });
    tree.scrollLeft = scrollLeft;
    tree.scrollTop = scrollTop;
  }

  function metricItems(m) {
    const size = m.size || {};
    const rob = m.robust_preserved || {};
    const n = m.eval_samples != null ? `on ${fmt.int(m.eval_samples)} eval samples` : "";
    const p = m.probes != null ? `on ${fmt.int(m.probes)} random inputs from the box` : "";
    return [["parameters", fmt.int(size.params)], ["size", fmt.bytes(size.bytes)],
      ["FLOPs", fmt.si(size.flops)], ["pruned", fmt.pct(m.share_pruned)], ["accuracy", fmt.pct(m.accuracy), n],
      ...Object.entries(rob).map(([e, v]) => {
        const k = keptText(v);
        return [`robust @${e}`, k.text, [k.title, n].filter(Boolean).join("; ")];
      }),
      ["agreement", fmt.pct(m.agreement), p],
      ["bound width", m.output_bound_width == null ? "–" : Number(m.output_bound_width).toPrecision(4)]];
  }

  function drawSensitivityPanel() {
    const sens = model.get("sensitivity") || {};
    const box = el("div", { class: "pw-sens-panel" });
    if (sens.status === "computing") {
      box.append(el("div", { class: "pw-sens-status", text: `sensitivity: ${sens.done || 0} of ${sens.total || "?"} layers` +
        (sens.layer ? ` (last: ${sens.layer})` : "") }));
    } else if (sens.status === "cancelled") box.append(el("div", { class: "pw-sens-status", text: "sensitivity stopped" }));
    else if (sens.status === "error") box.append(el("div", { class: "pw-sens-status", text: `sensitivity failed: ${sens.message}` }));
    if (!sens.curves) return box;
    if (sens.current === false) box.append(el("div", { class: "pw-sens-status pw-stale-note", text: "of an earlier state: press Sensitivity again" }));
    const rows = shownRows();
    const row = rows[focus];
    const curve = row && row.group ? sens.curves[row.group] : null;
    if (curve) {
      box.append(el("h4", { text: `Sensitivity of ${row.part ? rowLabel(row) : curve.name}` }), sensitivityChart(curve),
        el("div", { class: "pw-legend" }, [
          el("span", { class: "pw-legend-item" }, [el("span", { class: "pw-swatch", style: "background:var(--pw-warn-strong)" }), "certified bound of the largest output change"]),
          el("span", { class: "pw-legend-item" }, [el("span", { class: "pw-swatch", style: "background:var(--pw-ok)" }), "agreement (box samples)"]),
          ...(curve.accuracy.some((a) => a != null) ? [el("span", { class: "pw-legend-item" }, [el("span", { class: "pw-swatch", style: "background:var(--pw-accent)" }), "accuracy (eval data)"])] : []),
          ...((curve.robust || []).some((a) => a != null) ? [el("span", { class: "pw-legend-item", title: "FGSM robust instances at the session's step sizes, as a share of the current state's (eval data; may pass 100 %)" }, [el("span", { class: "pw-swatch", style: "background:var(--pw-robust)" }), "robustness kept (FGSM)"])] : [])]));
    } else box.append(el("div", { class: "pw-tip", text: "select a prunable row to see its curve" }));
    for (const n of sens.notes || []) box.append(el("div", { class: "pw-tip", text: n }));
    // the plan
    const goal = el("input", { type: "number", min: "1", max: "99", step: "1", value: "50", class: "pw-input pw-goal",
      "aria-label": "plan goal (% removed)" });
    const metric = el("select", { class: "pw-plan-metric", "aria-label": "plan metric" }, [
      el("option", { value: "params", text: "parameters" }), el("option", { value: "flops", text: "FLOPs" })]);
    box.append(el("h4", { text: "Plan" }), el("div", { class: "pw-plan-bar" }, [
      el("label", {}, ["remove ", goal, " % of "]), metric,
      el("button", { class: "pw-btn pw-make-plan", text: "Make plan",
        onclick: () => act("plan", { goal: Number(goal.value) / 100, metric: metric.value }) })]));
    const plan = model.get("plan") || {};
    if (plan.targets) {
      box.append(el("div", { class: `pw-plan-msg${plan.reached ? "" : " pw-warn-text"}`, text: plan.message || "" }));
      const table = el("div", { class: "pw-plan" });
      for (const [name, share] of Object.entries(plan.targets)) {
        table.append(el("label", { class: "pw-plan-row", "data-layer": name }, [el("span", { text: name }),
          el("input", { type: "number", min: "0", max: "99", step: "1", value: String(Math.round(share * 100)),
            class: "pw-input pw-plan-share-input", "aria-label": `planned share of ${name} (%)`,
            onchange: (e) => act("plan_set", { layer: name, share: Number(e.target.value) / 100 }) }), "%"]));
      }
      box.append(table, el("div", { class: "pw-plan-bar" }, [
        el("button", { class: "pw-btn pw-run-plan", text: "Run plan", onclick: () => act("run_plan") }),
        el("button", { class: "pw-btn pw-clear-plan", text: "Clear", onclick: () => act("plan_clear") })]));
    }
    return box;
  }

  function drawCompare() {
    const cmp = model.get("compare") || {};
    if (!cmp.layers) {
      const hint = pick.a != null ? `point ${pick.a} picked: pick another with B` : "pick two points (A, B) to compare";
      return el("div", { class: "pw-tip pw-compare-hint", text: hint });
    }
    const ma = cmp.metrics_a || {}, mb = cmp.metrics_b || {};
    const table = el("table", { class: "pw-compare" });
    table.append(el("tr", {}, [el("th", { text: "" }), el("th", { text: `point ${cmp.a}` }), el("th", { text: `point ${cmp.b}` })]));
    const ia = metricItems(ma), ib = metricItems(mb);
    ia.forEach(([k, v], i) => table.append(el("tr", {}, [el("td", { text: k }), el("td", { text: cmp.metrics_a ? v : "–" }),
      el("td", { text: cmp.metrics_b ? ib[i][1] : "–" })])));
    for (const l of cmp.layers) {
      table.append(el("tr", { "data-layer": l.name }, [el("td", { text: l.name, title: l.name }),
        el("td", { text: `${l.units_a} u · ${fmt.si(l.params_a)}` }),
        el("td", { text: `${l.units_b} u · ${fmt.si(l.params_b)}`, title: l.went_count ? `${l.went_count} units went` : "" })]));
    }
    return el("div", { class: "pw-compare-box" }, [el("h4", { text: `Compare ${cmp.a} ↔ ${cmp.b}` }), table,
      el("button", { class: "pw-btn pw-compare-clear", text: "Close comparison",
        onclick: () => { pick = { a: null, b: null }; act("compare_clear"); } })]);
  }

  // The deploy controls are built once per offer and kept: a redraw while a key is down on a checkbox
  // (Space toggles on key-up) must not swap the element under the keyboard.
  let deployControls = null; // {key, bar, go}
  const deployResult = el("div", { class: "pw-deploy-result" });

  function deployBar(d) {
    const offered = d.offered;
    if (deployPick == null) deployPick = new Set(offered.filter((f) => f.default).map((f) => f.name));
    const usable = (f) => !(f.data && !d.eval);
    const boxes = offered.map((f) => el("label", { class: "pw-deploy-choice", title: usable(f) ? f.description
      : `${f.description}: calibrated on your own inputs; give the session eval_data (never invented)` }, [
      el("input", { type: "checkbox", class: "pw-deploy-format", value: f.name,
        checked: deployPick.has(f.name) && usable(f), disabled: !usable(f),
        onchange: (e) => { e.target.checked ? deployPick.add(f.name) : deployPick.delete(f.name); } }),
      f.name]));
    const dir = el("input", { class: "pw-input pw-deploy-dir", "aria-label": "deploy folder", value: deployDir,
      oninput: (e) => { deployDir = e.target.value; } });
    const go = el("button", { class: "pw-btn pw-deploy", text: "Deploy",
      title: "quantise and export the pruned model in the ticked formats, run every file and compare (in the background)",
      onclick: (e) => {
        if (off(e.currentTarget)) return;
        act("deploy", { formats: offered.filter((f) => deployPick.has(f.name) && usable(f)).map((f) => f.name),
          dir: deployDir });
      } });
    const bar = el("div", { class: "pw-deploy-bar", role: "group", "aria-label": "deploy formats" },
      [...boxes, el("label", { class: "pw-num" }, ["folder ", dir]), go]);
    return { bar, go };
  }

  function drawDeploy() {
    const d = model.get("deploy") || {};
    const offered = d.offered || [];
    if (!offered.length) { deployBox.replaceChildren(); deployControls = null; return; }
    const key = JSON.stringify([offered, d.eval]);
    if (!deployControls || deployControls.key !== key) {
      deployControls = { key, ...deployBar(d) };
      deployBox.replaceChildren(el("h4", { text: "Deploy" }), deployControls.bar, deployResult);
    }
    const busy = d.status === "running";
    setOff(deployControls.go, busy || Boolean(model.get("running")));
    deployControls.go.textContent = busy ? "Deploying…" : "Deploy";
    const parts = [];
    if (busy) parts.push(el("div", { class: "pw-deploy-status", role: "status", text: `deploying: ${d.step || "starting"}…` }));
    if (d.status === "error") parts.push(el("div", { class: "pw-deploy-status pw-warn-text", text: `deploy failed: ${d.message}` }));
    if (d.rows && d.rows.length) {
      const eps = (d.epsilons || [])[0];
      const head = ["model", "file", "size", "vs original", "accuracy", "vs pruned",
        eps != null ? `FGSM ${eps} kept` : "robust kept", "agreement"];
      const table = el("table", { class: `pw-deploy-table${busy ? " pw-stale" : ""}` }, [
        el("tr", {}, head.map((h) => el("th", { text: h }))),
        ...d.rows.map((r) => el("tr", { "data-name": r.name, title: r.note || "" },
          deployCells(r, eps).map((c, i) => el("td", { text: c, title: i === 1 && r.path ? r.path : "" }))))]);
      parts.push(table, el("div", { class: "pw-tip", text: `sizes on disk; "vs original": times smaller than the original float32 .keras; `
        + `accuracy on ${d.n_eval != null ? `${fmt.int(d.n_eval)} eval samples` : "–"}; agreement with the original on `
        + `${fmt.int(d.n_probes)} random inputs from the box; every file was loaded and run in its own runtime` }));
      for (const r of d.rows) if (r.note) parts.push(el("div", { class: "pw-tip", text: `${r.name}: ${r.note}` }));
    }
    deployResult.replaceChildren(...parts);
  }

  function drawSide() {
    const m = model.get("metrics") || {};
    const stale = Boolean(model.get("metrics_pending") || model.get("running"));
    const hist = model.get("history") || [];
    const pos = model.get("position");
    const pickBtn = (which, n) => el("button", { class: `pw-pick pw-pick-${which}${pick[which] === n ? " pw-picked" : ""}`,
      text: which.toUpperCase(), title: `compare: point ${n} as ${which.toUpperCase()}`, "aria-label": `compare point ${n} as ${which.toUpperCase()}`,
      onclick: (e) => {
        e.stopPropagation();
        pick[which] = n;
        if (pick.a != null && pick.b != null) act("compare", { a: pick.a, b: pick.b });
        drawSide();
      } });
    const histItem = (n, label, cls, hm) => el("li", { class: cls, "data-index": String(n),
      title: hm ? `parameters ${fmt.int(hm.params)} · agreement ${fmt.pct(hm.agreement)}${hm.accuracy != null ? ` · accuracy ${fmt.pct(hm.accuracy)}` : ""}` : "metrics not computed yet",
      onclick: () => act("goto", { n }) }, [el("span", { class: "pw-hist-label", text: label }),
      el("span", { class: "pw-picks" }, [pickBtn("a", n), pickBtn("b", n)])]);
    side.replaceChildren(
      el("h4", { text: stale ? "Metrics (of the previous state: computing…)" : "Metrics",
        class: stale ? "pw-pending-metrics" : "" }),
      el("dl", { class: `pw-metrics${stale ? " pw-stale" : ""}` }, metricItems(m).flatMap(([k, v, extra]) => [
        el("dt", { text: k, title: METRIC_HELP[k] || (k.startsWith("robust") ? "FGSM robustness kept: robust eval samples at this step size, as a share of the original's" : "") }),
        el("dd", { text: v, "data-metric": k, title: extra || "" })])),
      chart(model.get("metrics_history") || []), chartLegend(),
      drawSensitivityPanel(),
      el("h4", { text: "History" }),
      el("ol", { class: "pw-history", start: "0" }, [
        histItem(0, "original model", `pw-hist${pos === 0 ? " pw-current" : ""}`, (model.get("metrics_history") || []).find((x) => x.position === 0)),
        ...hist.map((h) => histItem(h.index, h.label,
          `pw-hist${h.applied ? "" : " pw-undone"}${h.index === pos ? " pw-current" : ""}`, h.metrics)),
      ]),
      drawCompare(),
    );
  }

  function onTreeKey(e) {
    const rows = shownRows();
    const next = moveFocus(rows.length, focus, e.key);
    if (next !== null) { focus = next; e.preventDefault(); drawTree(); drawSide(); return; }
    const row = rows[focus];
    const move = treeKey(e.key, row, row && isParent(row.name), row && expanded.has(row.name));
    if (move) {
      if (move === "open") expanded.add(row.name);
      else if (move === "close") expanded.delete(row.name);
      else focus = Math.max(0, rows.findIndex((r) => r.name === row.parent));
      e.preventDefault();
      drawTree();
      return;
    }
    if (e.target !== tree) return; // keys on a row's buttons belong to the buttons
    if ((e.key === "Enter" || e.key === " ") && rows[focus]) { toggleDetail(rows[focus]); e.preventDefault(); return; }
    const action = keyAction(e.key, rows[focus]);
    if (action) { act(action, { layer: actionTarget(rows[focus]) }); e.preventDefault(); }
  }
  // keys with modifiers (and Tab, Escape) are not caught by the guard: the tree still sees them
  tree.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.key === "Escape" || e.key === "Tab") onTreeKey(e);
  });

  model.on("msg:custom", (msg, buffers) => {
    if (msg.type === "heatmaps") {
      try { applyHeatmaps(heatmaps, msg, buffers); } catch (err) { notice = String(err.message || err); drawBanner(); }
      drawTree();
    }
    else if (msg.type === "detail") {
      details.set(msg.name, { ...msg, data: asBytes(buffers[0]) });
      drawTree();
    } else if (msg.type === "error") { notice = msg.message; drawBanner(); }
    else if (msg.type === "confirm_overwrite") {
      confirm = msg.kind === "deploy" ? { kind: "deploy", paths: msg.paths, dir: msg.dir, formats: msg.formats }
        : { path: msg.path, format: msg.format };
      drawBanner();
      confirmBox.querySelector(".pw-keep")?.focus(); // the keyboard lands on the safe choice
    }
    else if (msg.type === "exported") { notice = ""; confirm = null; drawBanner(); }
  });
  let queued = false;
  const redrawNow = () => {
    queued = false; drawToolbar(); drawBanner(); drawTree(); drawSide(); drawDeploy();
    root.classList.toggle("pw-comparing", Boolean((model.get("compare") || {}).layers));
  };
  const redraw = () => { if (!queued) { queued = true; queueMicrotask(redrawNow); } };
  const newRows = () => { rowsCache = null; parentsCache = null; notice = ""; redraw(); };
  const newState = () => { notice = ""; redraw(); };
  for (const t of ["layers", "states", "settings", "history", "position", "running", "progress", "metrics",
    "metrics_pending", "metrics_history", "error", "strategies", "notice", "progress_info", "live_params", "previews",
    "sensitivity", "plan", "compare", "deploy"]) {
    model.on(`change:${t}`, t === "layers" || t === "states" ? newRows
      : ["history", "position", "error"].includes(t) ? newState : redraw);
  }
  // Reactive notebooks (marimo) re-run the cells that read a widget only when its front end reports a change:
  // echo every new session value back once (the kernel accepts an echo equal to its own value, nothing else).
  let echoed = JSON.stringify(model.get("value") ?? null);
  model.on("change:value", () => {
    const v = model.get("value");
    const text = JSON.stringify(v ?? null);
    if (text === echoed || v == null) return;
    echoed = text;
    model.set("value", { ...v });
    model.save_changes();
  });
  redrawNow();
  act("hello");
  return () => { window.removeEventListener("keydown", guard, true); };
}

export default { render };
