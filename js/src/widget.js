// PruningWidget front end (anywidget ESM): a thin view over the kernel-side session.
import { drawHeatmap, proposalMarks, unitsOfColumn } from "./heatmap.js";
import {
  childSummary, keyAction, mergeRows, moveFocus, rowActions, summaryStatus, summaryText, treeKey, unitsText,
  visibleRows,
} from "./tree.js";
import { applyHeatmaps, asBytes, detailAt, sendAction } from "./wire.js";

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

const fmt = {
  int: (v) => (v == null ? "–" : Number(v).toLocaleString("en-US")),
  pct: (v) => (v == null ? "–" : `${(100 * v).toFixed(1)}%`),
  kib: (v) => (v == null ? "–" : `${(v / 1024).toFixed(1)} KiB`),
};

/** A small SVG line chart of metrics across history positions. */
function chart(history) {
  const W = 220, H = 80, P = 4;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "pw-chart");
  const series = [
    ["accuracy", "var(--pw-accent)"], ["agreement", "var(--pw-ok)"], ["share_pruned", "var(--pw-warn)"],
  ];
  if (history.length < 1) return svg;
  const xs = history.map((m) => m.position);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  for (const [key, color] of series) {
    const pts = history.filter((m) => m[key] != null)
      .map((m) => `${P + ((m.position - x0) / (x1 - x0)) * (W - 2 * P)},${H - P - m[key] * (H - 2 * P)}`);
    if (!pts.length) continue;
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", "1.5");
    line.setAttribute("data-series", key);
    svg.append(line);
  }
  return svg;
}

function render({ model, el: root }) {
  const heatmaps = new Map();
  const expanded = new Set(); // blocks and nested models opened
  const details = new Map(); // layer -> detail message with data
  const openDetail = new Set();
  let focus = 0;
  let notice = ""; // a kernel reply (error, "exported …") shown until the session's state next changes

  root.classList.add("pw-root");
  const toolbar = el("div", { class: "pw-toolbar", role: "toolbar" });
  const banner = el("div", { class: "pw-error", role: "alert" });
  // data-lm-suppress-shortcuts: while the tree has focus its keys are its own, not JupyterLab's
  // (command mode binds a, s, l and the arrows to notebook commands).
  const tree = el("div", { class: "pw-tree", role: "tree", tabindex: "0", "aria-label": "layers",
    "data-lm-suppress-shortcuts": "true" });
  const side = el("div", { class: "pw-side" });
  root.append(toolbar, banner, el("div", { class: "pw-main" }, [tree, side]));

  const act = (action, fields) => sendAction(model, action, fields);
  // Rows as shown: the fixed tree merged with the groups' states; rebuilt when either trait changes.
  let rowsCache = null;
  const allRows = () => (rowsCache ??= mergeRows(model.get("layers"), model.get("states")));
  let parentsCache = null;
  const isParent = (name) => (parentsCache ??= new Set(allRows().map((r) => r.parent))).has(name);

  // The toolbar is built once and updated in place, so a button never vanishes under the pointer.
  const button = (text, cls, onclick) => el("button", { class: `pw-btn ${cls}`, text, onclick });
  const strategy = el("select", { class: "pw-strategy", "aria-label": "strategy",
    onchange: (e) => act("configure", { settings: { strategy: e.target.value } }) });
  const numInput = (key) => el("input", { type: "number", min: "0.01", max: "0.99", step: "0.01",
    class: `pw-${key}`, "aria-label": key,
    onchange: (e) => act("configure", { settings: { [key]: Number(e.target.value) } }) });
  const stepInput = numInput("step");
  const targetInput = numInput("target");
  const path = el("input", { class: "pw-export-path", "aria-label": "export path",
    onchange: (e) => { model.set("export_path", e.target.value); model.save_changes(); } });
  const buttons = {
    propose: button("Propose next iteration", "pw-propose", () => act("propose")),
    acceptAll: button("Accept all pending", "pw-accept-all", () => act("accept_all")),
    run: button("Run to target", "pw-run", () => act("run")),
    cancel: button("Cancel", "pw-cancel", () => act("cancel")),
    undo: button("Undo", "pw-undo", () => act("undo")),
    redo: button("Redo", "pw-redo", () => act("redo")),
    export: button("Export", "pw-export", () => act("export", { path: path.value })),
  };
  const progress = el("progress", { class: "pw-progress", max: "1" });
  toolbar.append(strategy, el("label", { class: "pw-num" }, ["step ", stepInput]),
    el("label", { class: "pw-num" }, ["target ", targetInput]), buttons.propose, buttons.acceptAll, buttons.run,
    buttons.cancel, buttons.undo, buttons.redo, path, buttons.export, progress);

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
    buttons.propose.disabled = running;
    buttons.acceptAll.disabled = running || !pending;
    buttons.run.disabled = running;
    buttons.cancel.disabled = !running;
    buttons.undo.disabled = running || pos === 0;
    buttons.redo.disabled = running || pos >= hist.length;
    buttons.export.disabled = running;
    progress.value = Number(model.get("progress") || 0);
    progress.hidden = !running;
  }

  function drawBanner() {
    const msg = model.get("error") || notice;
    banner.textContent = msg;
    banner.hidden = !msg;
  }

  function drawRow(row, index) {
    const acts = rowActions(row);
    const canvas = el("canvas", { class: "pw-heat", "data-layer": row.name });
    const img = heatmaps.get(row.name);
    if (img) {
      drawHeatmap(canvas, img, proposalMarks(row.proposal, row.units_total, img.w));
      canvas.title = `${row.name}: |weights| (inputs down, units across)` +
        (row.proposal ? `; proposal: ${row.proposal.drop.length} units go` : "");
    }
    const nested = isParent(row.name);
    const counts = nested ? childSummary(allRows(), row.name) : {};
    const summary = summaryText(counts);
    const chipStatus = row.status || summaryStatus(counts);
    const chipClass = `pw-chip pw-${chipStatus.replace(" ", "-")}${summary ? " pw-summary" : ""}`;
    const chip = chipStatus ? el("span", { class: chipClass, text: row.status || summary,
      title: row.reason || row.status || summary }) : el("span");
    const button = (name, label, on) => el("button", { class: `pw-row-btn pw-${name}`, text: label,
      disabled: !on, onclick: (e) => { e.stopPropagation(); act(name, { layer: row.name }); } });
    const r = el("div", {
      class: `pw-row${index === focus ? " pw-focus" : ""}${row.depth ? " pw-child" : ""}`, role: "treeitem",
      "data-layer": row.name, "data-status": row.status, "aria-selected": index === focus ? "true" : "false",
      "aria-expanded": nested ? String(expanded.has(row.name)) : false,
      onclick: () => { focus = index; toggleDetail(row); },
    }, [
      el("span", { class: "pw-name", style: `padding-left:${row.depth * 16}px`,
        text: `${nested ? (expanded.has(row.name) ? "▾ " : "▸ ") : ""}${row.name}` }),
      el("span", { class: "pw-type", text: row.type }),
      el("span", { class: "pw-shape", text: row.shape }),
      el("span", { class: "pw-units", text: unitsText(row) }),
      el("span", { class: "pw-params", text: fmt.int(row.params) }),
      chip, row.heatmap ? canvas : el("span", { class: "pw-heat-empty" }),
      el("span", { class: "pw-actions" }, row.group ? [
        button("accept", "Accept", acts.accept), button("skip", "Skip", acts.skip),
        acts.unlock ? button("unlock", "Unlock", true) : button("lock", "Lock", acts.lock)] : []),
    ]);
    const frag = [r];
    if (openDetail.has(row.name)) frag.push(drawDetail(row));
    return frag;
  }

  function drawDetail(row) {
    const d = details.get(row.name);
    const box = el("div", { class: "pw-detail", "data-layer": row.name });
    const kindBtn = (kind) => el("button", { class: `pw-detail-${kind}`, text: kind,
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
  }

  function drawTree() {
    const rows = visibleRows(allRows(), expanded);
    focus = Math.min(focus, Math.max(0, rows.length - 1));
    const header = el("div", { class: "pw-row pw-head" }, ["layer", "type", "output", "units", "params", "status",
      "weights", ""].map((t) => el("span", { text: t })));
    tree.replaceChildren(header, ...rows.flatMap((r, i) => drawRow(r, i)));
  }

  function drawSide() {
    const m = model.get("metrics") || {};
    const size = m.size || {};
    const rob = m.robust_preserved || {};
    const items = [["parameters", fmt.int(size.params)], ["size", fmt.kib(size.bytes)],
      ["FLOPs", fmt.int(size.flops)], ["pruned", fmt.pct(m.share_pruned)], ["accuracy", fmt.pct(m.accuracy)],
      ...Object.entries(rob).map(([e, v]) => [`robust @${e}`, fmt.pct(v)]),
      ["agreement", fmt.pct(m.agreement)],
      ["bound width", m.output_bound_width == null ? "–" : Number(m.output_bound_width).toPrecision(4)]];
    const hist = model.get("history") || [];
    const pos = model.get("position");
    side.replaceChildren(
      el("h4", { text: model.get("metrics_pending") ? "Metrics (computing…)" : "Metrics",
        class: model.get("metrics_pending") ? "pw-pending-metrics" : "" }),
      el("dl", { class: "pw-metrics" }, items.flatMap(([k, v]) => [el("dt", { text: k }),
        el("dd", { text: v, "data-metric": k })])),
      chart(model.get("metrics_history") || []),
      el("h4", { text: "History" }),
      el("ol", { class: "pw-history", start: "0" }, [
        el("li", { class: `pw-hist${pos === 0 ? " pw-current" : ""}`, "data-index": "0", text: "original model",
          onclick: () => act("goto", { n: 0 }) }),
        ...hist.map((h) => el("li", {
          class: `pw-hist${h.applied ? "" : " pw-undone"}${h.index === pos ? " pw-current" : ""}`,
          "data-index": String(h.index), text: h.label, onclick: () => act("goto", { n: h.index }) })),
      ]),
    );
  }

  tree.addEventListener("keydown", (e) => {
    const rows = visibleRows(allRows(), expanded);
    const next = moveFocus(rows.length, focus, e.key);
    if (next !== null) { focus = next; e.preventDefault(); drawTree(); return; }
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
    if (action) { act(action, { layer: rows[focus].name }); e.preventDefault(); }
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
    else if (msg.type === "exported") { notice = `exported ${msg.path}`; drawBanner(); }
  });
  // One redraw per batch of trait changes (a kernel update changes several traits at once).
  let queued = false;
  const redrawNow = () => { queued = false; drawToolbar(); drawBanner(); drawTree(); drawSide(); };
  const redraw = () => { if (!queued) { queued = true; queueMicrotask(redrawNow); } };
  const newRows = () => { rowsCache = null; parentsCache = null; notice = ""; redraw(); };
  const newState = () => { notice = ""; redraw(); }; // metrics landing later are not a new state
  for (const t of ["layers", "states", "settings", "history", "position", "running", "progress", "metrics",
    "metrics_pending", "metrics_history", "error", "strategies"]) {
    model.on(`change:${t}`, t === "layers" || t === "states" ? newRows
      : ["history", "position", "error"].includes(t) ? newState : redraw);
  }
  redrawNow();
  act("hello"); // ask for every heatmap: this view may be new
  return () => {};
}

export default { render };
