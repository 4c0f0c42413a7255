// js/src/heatmap.js
function colormap(v) {
  const t = Math.max(0, Math.min(255, v)) / 255;
  const stops = [[68, 1, 84], [33, 145, 140], [253, 231, 37]];
  const x = t * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f));
}
var LUT = Array.from({ length: 256 }, (_, v) => colormap(v));
function toRGBA(bytes, h, w, marks = /* @__PURE__ */ new Map()) {
  if (bytes.length !== h * w) {
    throw new Error(`heatmap has ${bytes.length} bytes, expected ${h}x${w}`);
  }
  const out = new Uint8ClampedArray(h * w * 4);
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      const i = r * w + c;
      const [red, green, blue] = LUT[bytes[i]];
      const mark = marks.get(c);
      const o = i * 4;
      if (mark === "drop") {
        out[o] = 230;
        out[o + 1] = 60;
        out[o + 2] = 60;
      } else if (mark === "keep") {
        out[o] = 60;
        out[o + 1] = 140;
        out[o + 2] = 240;
      } else {
        out[o] = red;
        out[o + 1] = green;
        out[o + 2] = blue;
      }
      out[o + 3] = 255;
    }
  }
  return out;
}
function columnOfUnit(u, n, w) {
  return n <= w ? u : Math.min(w - 1, Math.ceil((u + 1) * w / n) - 1);
}
function proposalMarks(proposal, n, w) {
  const marks = /* @__PURE__ */ new Map();
  if (!proposal || !n) return marks;
  proposal.keep.forEach((k) => {
    if (k >= 0) marks.set(columnOfUnit(k, n, w), "keep");
  });
  proposal.drop.forEach((d) => marks.set(columnOfUnit(d, n, w), "drop"));
  return marks;
}
function drawHeatmap(canvas, img, marks) {
  canvas.width = img.w;
  canvas.height = img.h;
  const ctx = canvas.getContext("2d");
  if (!ctx) return false;
  ctx.putImageData(new ImageData(toRGBA(img.data, img.h, img.w, marks), img.w, img.h), 0, 0);
  return true;
}

// js/src/tree.js
function mergeRows(layers, states) {
  const st = states || {};
  return (layers || []).map((r) => r.group != null && st[r.group] ? { ...r, ...st[r.group] } : r);
}
function childSummary(rows, name) {
  const parents = new Map(rows.map((r) => [r.name, r.parent]));
  const under = (r) => {
    for (let p = r.parent; p != null; p = parents.get(p)) if (p === name) return true;
    return false;
  };
  const counts = {};
  for (const r of rows) if (r.group && r.status && under(r)) counts[r.status] = (counts[r.status] || 0) + 1;
  return counts;
}
function summaryStatus(counts) {
  return ["pending", "locked", "accepted", "skipped"].find((k) => counts[k]) || "";
}
function summaryText(counts) {
  const k = summaryStatus(counts);
  return k ? `${counts[k]} ${k}` : "";
}
function visibleRows(rows, expanded) {
  const byName = new Map(rows.map((r) => [r.name, r]));
  const shown = (r) => r.depth === 0 || r.parent !== null && expanded.has(r.parent) && (!byName.has(r.parent) || shown(byName.get(r.parent)));
  return rows.filter(shown);
}
function moveFocus(count, index, key) {
  if (count === 0) return null;
  switch (key) {
    case "ArrowDown":
      return Math.min(count - 1, index + 1);
    case "ArrowUp":
      return Math.max(0, index - 1);
    case "Home":
      return 0;
    case "End":
      return count - 1;
    default:
      return null;
  }
}
function treeKey(key, row, isParent, isOpen) {
  if (!row) return null;
  if (key === "ArrowRight" && isParent && !isOpen) return "open";
  if (key === "ArrowLeft") {
    if (isParent && isOpen) return "close";
    if (row.parent != null) return "parent";
  }
  return null;
}
function keyAction(key, row) {
  if (!row || !row.group) return null;
  if (key === "a" && row.status === "pending") return "accept";
  if (key === "s" && row.status === "pending") return "skip";
  if (key === "l" && row.status !== "not prunable") return row.status === "locked" ? "unlock" : "lock";
  return null;
}
function rowActions(row) {
  const prunable = Boolean(row.group) && row.status !== "not prunable";
  return {
    accept: prunable && row.status === "pending",
    skip: prunable && row.status === "pending",
    lock: prunable && row.status !== "locked",
    unlock: prunable && row.status === "locked"
  };
}
function unitsText(row) {
  return row.units_total == null ? "" : `${row.units_alive} / ${row.units_total}`;
}

// js/src/wire.js
function asBytes(buf) {
  if (buf instanceof Uint8Array) return buf;
  if (buf instanceof DataView) return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf instanceof ArrayBuffer) return new Uint8Array(buf);
  throw new Error("unexpected buffer type");
}
function applyHeatmaps(cache, msg, buffers) {
  if (msg.names.length !== buffers.length || msg.shapes.length !== buffers.length) {
    throw new Error("heatmap message: names, shapes and buffers differ in length");
  }
  const images = msg.names.map((name, i) => {
    const [h, w] = msg.shapes[i];
    const data = asBytes(buffers[i]);
    if (data.length !== h * w) throw new Error(`heatmap ${name}: ${data.length} bytes for ${h}x${w}`);
    return { h, w, data };
  });
  msg.names.forEach((name, i) => cache.set(name, images[i]));
  return msg.names;
}
function sendAction(model, action, fields = {}) {
  model.send({ type: "action", action, ...fields });
}
function detailAt(detail, px, py, width, height) {
  const [h, w] = detail.shape;
  const c = Math.min(w - 1, Math.max(0, Math.floor(px / width * w)));
  const r = Math.min(h - 1, Math.max(0, Math.floor(py / height * h)));
  const v = detail.data[r * w + c];
  const [rows, cols] = detail.source_shape;
  const span = (i, n, m) => [Math.floor(i * m / n), Math.max(Math.floor(i * m / n), Math.floor((i + 1) * m / n) - 1)];
  const value = (v / 255) ** 2 * detail.max;
  return { row: span(r, h, rows), col: span(c, w, cols), value };
}

// js/src/widget.js
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
var fmt = {
  int: (v) => v == null ? "\u2013" : Number(v).toLocaleString("en-US"),
  pct: (v) => v == null ? "\u2013" : `${(100 * v).toFixed(1)}%`,
  kib: (v) => v == null ? "\u2013" : `${(v / 1024).toFixed(1)} KiB`
};
function chart(history) {
  const W = 220, H = 80, P = 4;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "pw-chart");
  const series = [
    ["accuracy", "var(--pw-accent)"],
    ["agreement", "var(--pw-ok)"],
    ["share_pruned", "var(--pw-warn)"]
  ];
  if (history.length < 1) return svg;
  const xs = history.map((m) => m.position);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  for (const [key, color] of series) {
    const pts = history.filter((m) => m[key] != null).map((m) => `${P + (m.position - x0) / (x1 - x0) * (W - 2 * P)},${H - P - m[key] * (H - 2 * P)}`);
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
  const heatmaps = /* @__PURE__ */ new Map();
  const expanded = /* @__PURE__ */ new Set();
  const details = /* @__PURE__ */ new Map();
  const openDetail = /* @__PURE__ */ new Set();
  let focus = 0;
  let notice = "";
  root.classList.add("pw-root");
  const toolbar = el("div", { class: "pw-toolbar", role: "toolbar" });
  const banner = el("div", { class: "pw-error", role: "alert" });
  const tree = el("div", {
    class: "pw-tree",
    role: "tree",
    tabindex: "0",
    "aria-label": "layers",
    "data-lm-suppress-shortcuts": "true"
  });
  const side = el("div", { class: "pw-side" });
  root.append(toolbar, banner, el("div", { class: "pw-main" }, [tree, side]));
  const act = (action, fields) => sendAction(model, action, fields);
  let rowsCache = null;
  const allRows = () => rowsCache ?? (rowsCache = mergeRows(model.get("layers"), model.get("states")));
  let parentsCache = null;
  const isParent = (name) => (parentsCache ?? (parentsCache = new Set(allRows().map((r) => r.parent)))).has(name);
  const button = (text, cls, onclick) => el("button", { class: `pw-btn ${cls}`, text, onclick });
  const strategy = el("select", {
    class: "pw-strategy",
    "aria-label": "strategy",
    onchange: (e) => act("configure", { settings: { strategy: e.target.value } })
  });
  const numInput = (key) => el("input", {
    type: "number",
    min: "0.01",
    max: "0.99",
    step: "0.01",
    class: `pw-${key}`,
    "aria-label": key,
    onchange: (e) => act("configure", { settings: { [key]: Number(e.target.value) } })
  });
  const stepInput = numInput("step");
  const targetInput = numInput("target");
  const path = el("input", {
    class: "pw-export-path",
    "aria-label": "export path",
    onchange: (e) => {
      model.set("export_path", e.target.value);
      model.save_changes();
    }
  });
  const buttons = {
    propose: button("Propose next iteration", "pw-propose", () => act("propose")),
    acceptAll: button("Accept all pending", "pw-accept-all", () => act("accept_all")),
    run: button("Run to target", "pw-run", () => act("run")),
    cancel: button("Cancel", "pw-cancel", () => act("cancel")),
    undo: button("Undo", "pw-undo", () => act("undo")),
    redo: button("Redo", "pw-redo", () => act("redo")),
    export: button("Export", "pw-export", () => act("export", { path: path.value }))
  };
  const progress = el("progress", { class: "pw-progress", max: "1" });
  toolbar.append(
    strategy,
    el("label", { class: "pw-num" }, ["step ", stepInput]),
    el("label", { class: "pw-num" }, ["target ", targetInput]),
    buttons.propose,
    buttons.acceptAll,
    buttons.run,
    buttons.cancel,
    buttons.undo,
    buttons.redo,
    path,
    buttons.export,
    progress
  );
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
      canvas.title = `${row.name}: |weights| (inputs down, units across)` + (row.proposal ? `; proposal: ${row.proposal.drop.length} units go` : "");
    }
    const nested = isParent(row.name);
    const counts = nested ? childSummary(allRows(), row.name) : {};
    const summary = summaryText(counts);
    const chipStatus = row.status || summaryStatus(counts);
    const chipClass = `pw-chip pw-${chipStatus.replace(" ", "-")}${summary ? " pw-summary" : ""}`;
    const chip = chipStatus ? el("span", {
      class: chipClass,
      text: row.status || summary,
      title: row.reason || row.status || summary
    }) : el("span");
    const button2 = (name, label, on) => el("button", {
      class: `pw-row-btn pw-${name}`,
      text: label,
      disabled: !on,
      onclick: (e) => {
        e.stopPropagation();
        act(name, { layer: row.name });
      }
    });
    const r = el("div", {
      class: `pw-row${index === focus ? " pw-focus" : ""}${row.depth ? " pw-child" : ""}`,
      role: "treeitem",
      "data-layer": row.name,
      "data-status": row.status,
      "aria-selected": index === focus ? "true" : "false",
      "aria-expanded": nested ? String(expanded.has(row.name)) : false,
      onclick: () => {
        focus = index;
        toggleDetail(row);
      }
    }, [
      el("span", {
        class: "pw-name",
        style: `padding-left:${row.depth * 16}px`,
        text: `${nested ? expanded.has(row.name) ? "\u25BE " : "\u25B8 " : ""}${row.name}`
      }),
      el("span", { class: "pw-type", text: row.type }),
      el("span", { class: "pw-shape", text: row.shape }),
      el("span", { class: "pw-units", text: unitsText(row) }),
      el("span", { class: "pw-params", text: fmt.int(row.params) }),
      chip,
      row.heatmap ? canvas : el("span", { class: "pw-heat-empty" }),
      el("span", { class: "pw-actions" }, row.group ? [
        button2("accept", "Accept", acts.accept),
        button2("skip", "Skip", acts.skip),
        acts.unlock ? button2("unlock", "Unlock", true) : button2("lock", "Lock", acts.lock)
      ] : [])
    ]);
    const frag = [r];
    if (openDetail.has(row.name)) frag.push(drawDetail(row));
    return frag;
  }
  function drawDetail(row) {
    const d = details.get(row.name);
    const box = el("div", { class: "pw-detail", "data-layer": row.name });
    const kindBtn = (kind) => el("button", {
      class: `pw-detail-${kind}`,
      text: kind,
      onclick: (e) => {
        e.stopPropagation();
        act("detail", { layer: row.name, kind });
      }
    });
    box.append(el("div", { class: "pw-detail-bar" }, [kindBtn("weights"), kindBtn("saliency")]));
    if (!d) {
      box.append(el("span", { text: "loading\u2026" }));
      return box;
    }
    const canvas = el("canvas", { class: "pw-detail-canvas" });
    drawHeatmap(canvas, { h: d.shape[0], w: d.shape[1], data: d.data }, /* @__PURE__ */ new Map());
    const tip = el("div", { class: "pw-tip", text: `${d.kind}: move the pointer over the map` });
    canvas.addEventListener("mousemove", (e) => {
      const rect = canvas.getBoundingClientRect();
      const at = detailAt(d, e.clientX - rect.left, e.clientY - rect.top, rect.width, rect.height);
      const what = d.kind === "weights" ? ["inputs", "units"] : ["kept unit", "removed unit"];
      tip.textContent = `${what[0]} ${at.row[0]}\u2013${at.row[1]}, ${what[1]} ${at.col[0]}\u2013${at.col[1]}: ${d.kind === "weights" ? "mean |w|" : "saliency"} \u2248 ${at.value.toPrecision(3)}`;
    });
    box.append(canvas, tip);
    return box;
  }
  function toggleDetail(row) {
    if (isParent(row.name)) {
      expanded.has(row.name) ? expanded.delete(row.name) : expanded.add(row.name);
    } else if (row.heatmap) {
      if (openDetail.has(row.name)) openDetail.delete(row.name);
      else {
        openDetail.add(row.name);
        act("detail", { layer: row.name, kind: "weights" });
      }
    }
    drawTree();
  }
  function drawTree() {
    const rows = visibleRows(allRows(), expanded);
    focus = Math.min(focus, Math.max(0, rows.length - 1));
    const header = el("div", { class: "pw-row pw-head" }, [
      "layer",
      "type",
      "output",
      "units",
      "params",
      "status",
      "weights",
      ""
    ].map((t) => el("span", { text: t })));
    tree.replaceChildren(header, ...rows.flatMap((r, i) => drawRow(r, i)));
  }
  function drawSide() {
    const m = model.get("metrics") || {};
    const size = m.size || {};
    const rob = m.robust_preserved || {};
    const items = [
      ["parameters", fmt.int(size.params)],
      ["size", fmt.kib(size.bytes)],
      ["FLOPs", fmt.int(size.flops)],
      ["pruned", fmt.pct(m.share_pruned)],
      ["accuracy", fmt.pct(m.accuracy)],
      ...Object.entries(rob).map(([e, v]) => [`robust @${e}`, fmt.pct(v)]),
      ["agreement", fmt.pct(m.agreement)],
      ["bound width", m.output_bound_width == null ? "\u2013" : Number(m.output_bound_width).toPrecision(4)]
    ];
    const hist = model.get("history") || [];
    const pos = model.get("position");
    side.replaceChildren(
      el("h4", {
        text: model.get("metrics_pending") ? "Metrics (computing\u2026)" : "Metrics",
        class: model.get("metrics_pending") ? "pw-pending-metrics" : ""
      }),
      el("dl", { class: "pw-metrics" }, items.flatMap(([k, v]) => [
        el("dt", { text: k }),
        el("dd", { text: v, "data-metric": k })
      ])),
      chart(model.get("metrics_history") || []),
      el("h4", { text: "History" }),
      el("ol", { class: "pw-history", start: "0" }, [
        el("li", {
          class: `pw-hist${pos === 0 ? " pw-current" : ""}`,
          "data-index": "0",
          text: "original model",
          onclick: () => act("goto", { n: 0 })
        }),
        ...hist.map((h) => el("li", {
          class: `pw-hist${h.applied ? "" : " pw-undone"}${h.index === pos ? " pw-current" : ""}`,
          "data-index": String(h.index),
          text: h.label,
          onclick: () => act("goto", { n: h.index })
        }))
      ])
    );
  }
  tree.addEventListener("keydown", (e) => {
    const rows = visibleRows(allRows(), expanded);
    const next = moveFocus(rows.length, focus, e.key);
    if (next !== null) {
      focus = next;
      e.preventDefault();
      drawTree();
      return;
    }
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
    if (e.target !== tree) return;
    if ((e.key === "Enter" || e.key === " ") && rows[focus]) {
      toggleDetail(rows[focus]);
      e.preventDefault();
      return;
    }
    const action = keyAction(e.key, rows[focus]);
    if (action) {
      act(action, { layer: rows[focus].name });
      e.preventDefault();
    }
  });
  model.on("msg:custom", (msg, buffers) => {
    if (msg.type === "heatmaps") {
      try {
        applyHeatmaps(heatmaps, msg, buffers);
      } catch (err) {
        notice = String(err.message || err);
        drawBanner();
      }
      drawTree();
    } else if (msg.type === "detail") {
      details.set(msg.name, { ...msg, data: asBytes(buffers[0]) });
      drawTree();
    } else if (msg.type === "error") {
      notice = msg.message;
      drawBanner();
    } else if (msg.type === "exported") {
      notice = `exported ${msg.path}`;
      drawBanner();
    }
  });
  let queued = false;
  const redrawNow = () => {
    queued = false;
    drawToolbar();
    drawBanner();
    drawTree();
    drawSide();
  };
  const redraw = () => {
    if (!queued) {
      queued = true;
      queueMicrotask(redrawNow);
    }
  };
  const newRows = () => {
    rowsCache = null;
    parentsCache = null;
    notice = "";
    redraw();
  };
  const newState = () => {
    notice = "";
    redraw();
  };
  for (const t of [
    "layers",
    "states",
    "settings",
    "history",
    "position",
    "running",
    "progress",
    "metrics",
    "metrics_pending",
    "metrics_history",
    "error",
    "strategies"
  ]) {
    model.on(`change:${t}`, t === "layers" || t === "states" ? newRows : ["history", "position", "error"].includes(t) ? newState : redraw);
  }
  redrawNow();
  act("hello");
  return () => {
  };
}
var widget_default = { render };
export {
  widget_default as default
};
