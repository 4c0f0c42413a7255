// @vitest-environment jsdom
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { columnOfUnit } from "../src/heatmap.js";
import widget from "../src/widget.js";

// ---------------------------------------------------------------- fixtures

const layer = (name, extra = {}) => ({
  name, type: "Dense", shape: "(None, 64)", depth: 0, parent: null, params: 1000, group: name,
  status: "ready", units_alive: 64, units_total: 64, reason: "", heatmap: true, proposal: null, ...extra,
});

const LAYERS = [
  layer("input", { type: "InputLayer", params: 0, group: null, status: "", units_alive: null, units_total: null,
    heatmap: false }),
  layer("dense_1", { status: "pending", reason: "proposal: drop 2 units",
    proposal: { action: "merge", drop: [3, 5], keep: [4, -1], params_saved: 100 } }),
  layer("encoder", { type: "Sequential", group: null, status: "", units_alive: null, units_total: null,
    heatmap: false }),
  layer("encoder/inner", { depth: 1, parent: "encoder", group: null, status: "", heatmap: false,
    units_alive: null, units_total: null, reason: "inside a nested model (kept whole)" }),
  layer("dense_2", { status: "locked", reason: "locked by you" }),
  layer("conv", { type: "Conv2D", status: "not prunable", reason: "feeds a Flatten of unknown size" }),
  layer("dense_3", { status: "accepted" }),
];
const VISIBLE = ["input", "dense_1", "encoder", "dense_2", "conv", "dense_3"];

function fakeModel(init = {}) {
  const state = {
    layers: structuredClone(LAYERS),
    settings: { strategy: "greedy", step: 0.1, target: 0.5 },
    strategies: ["greedy", "random"],
    metrics: { size: { params: 12345, bytes: 2048, flops: 999 }, accuracy: 0.981, share_pruned: 0.25,
      agreement: 0.99, robust_preserved: { "0.01": 0.9 }, output_bound_width: 0.123456 },
    metrics_history: [{ position: 0, accuracy: 0.99, agreement: 1, share_pruned: 0 },
      { position: 1, accuracy: 0.98, agreement: 0.99, share_pruned: 0.25 }],
    history: [],
    position: 0,
    running: false,
    progress: 0,
    error: "",
    export_path: "pruned.keras",
    ...init,
  };
  const listeners = new Map();
  return {
    state,
    sent: [],
    saves: 0,
    get(k) { return state[k]; },
    set(k, v) { state[k] = v; },
    save_changes() { this.saves += 1; },
    on(event, cb) {
      if (!listeners.has(event)) listeners.set(event, []);
      listeners.get(event).push(cb);
    },
    off() {},
    send(msg) { this.sent.push(structuredClone(msg)); },
    // test helpers: what the kernel side would do
    listeners,
    // trait changes redraw once per batch (queueMicrotask): await the returned promise
    async change(values) {
      Object.assign(state, values);
      for (const k of Object.keys(values)) for (const cb of listeners.get(`change:${k}`) || []) cb();
      await new Promise((r) => setTimeout(r, 0));
    },
    custom(msg, buffers = []) {
      for (const cb of listeners.get("msg:custom") || []) cb(msg, buffers);
    },
    actions() { return this.sent.filter((m) => m.action !== "hello"); },
  };
}

function mount(init) {
  const model = fakeModel(init);
  const root = document.createElement("div");
  document.body.append(root);
  const cleanup = widget.render({ model, el: root });
  const $ = (sel) => root.querySelector(sel);
  const $$ = (sel) => [...root.querySelectorAll(sel)];
  const rows = () => $$(".pw-tree [role=treeitem]");
  const rowOf = (name) => root.querySelector(`.pw-tree [role=treeitem][data-layer="${name}"]`);
  const key = (k, target = $(".pw-tree")) => {
    const ev = new KeyboardEvent("keydown", { key: k, bubbles: true, cancelable: true });
    target.dispatchEvent(ev);
    return ev;
  };
  return { model, root, cleanup, $, $$, rows, rowOf, key };
}

// heatmaps as anywidget delivers them: DataViews, here deliberately offset into a bigger buffer
function heatmapMessage(entries) {
  const names = [], shapes = [], buffers = [];
  for (const [name, h, w, fill = (i) => i % 256] of entries) {
    const pad = 7;
    const big = new Uint8Array(h * w + 2 * pad).fill(99);
    for (let i = 0; i < h * w; i++) big[pad + i] = fill(i);
    names.push(name);
    shapes.push([h, w]);
    buffers.push(new DataView(big.buffer, pad, h * w));
  }
  return [{ type: "heatmaps", names, shapes }, buffers];
}

// jsdom has no 2D context (without the `canvas` package) and no ImageData: record what would be drawn
function stubCanvas() {
  const puts = [];
  vi.stubGlobal("ImageData", class ImageData {
    constructor(data, width, height) { this.data = data; this.width = width; this.height = height; }
  });
  vi.spyOn(HTMLCanvasElement.prototype, "getContext").mockImplementation(function getContext(kind) {
    if (kind !== "2d") return null;
    const canvas = this;
    return { putImageData: (img, x, y) => puts.push({ canvas, img, x, y }) };
  });
  return puts;
}

beforeEach(() => {
  document.body.replaceChildren();
});
afterEach(() => {
  vi.restoreAllMocks();
  vi.unstubAllGlobals();
});

// ---------------------------------------------------------------- tests

describe("render", () => {
  it("sends hello once on render and listens to every synced trait and custom messages", () => {
    const { model, cleanup } = mount();
    expect(model.sent).toEqual([{ type: "action", action: "hello" }]);
    for (const t of ["layers", "states", "settings", "history", "position", "running", "progress", "metrics",
      "metrics_pending", "metrics_history", "error", "strategies"]) {
      expect(model.listeners.get(`change:${t}`), t).toHaveLength(1);
    }
    expect(model.listeners.get("msg:custom")).toHaveLength(1);
    expect(typeof cleanup).toBe("function");
    expect(() => cleanup()).not.toThrow();
  });

  it("renders with an empty model without throwing", () => {
    const model = fakeModel({ layers: [], settings: {}, strategies: [], metrics: {}, metrics_history: [],
      history: [], position: 0 });
    const root = document.createElement("div");
    expect(() => widget.render({ model, el: root })).not.toThrow();
    expect(root.querySelectorAll("[role=treeitem]")).toHaveLength(0);
  });
});

describe("layer tree", () => {
  it("shows one row per visible layer, in order", () => {
    const { rows } = mount();
    expect(rows().map((r) => r.dataset.layer)).toEqual(VISIBLE);
  });

  it("shows the status chip with the reason as its title", () => {
    const { rowOf } = mount();
    const chip = (n) => rowOf(n).querySelector(".pw-chip");
    expect(chip("dense_1").textContent).toBe("pending");
    expect(chip("dense_1").title).toBe("proposal: drop 2 units");
    expect(chip("dense_1").classList.contains("pw-pending")).toBe(true);
    expect(chip("dense_2").textContent).toBe("locked");
    expect(chip("dense_2").title).toBe("locked by you");
    expect(chip("conv").textContent).toBe("not prunable");
    expect(chip("conv").title).toBe("feeds a Flatten of unknown size");
    expect(chip("conv").classList.contains("pw-not-prunable")).toBe(true);
    expect(chip("dense_3").title).toBe("accepted"); // no reason: the status itself
    expect(chip("input")).toBeNull(); // no status, no chip
    expect(rowOf("dense_1").dataset.status).toBe("pending");
  });

  it("shows name, type, shape, units and params", () => {
    const { rowOf } = mount();
    const r = rowOf("dense_1");
    expect(r.querySelector(".pw-name").textContent).toBe("dense_1");
    expect(r.querySelector(".pw-type").textContent).toBe("Dense");
    expect(r.querySelector(".pw-shape").textContent).toBe("(None, 64)");
    expect(r.querySelector(".pw-units").textContent).toBe("64 / 64");
    expect(r.querySelector(".pw-params").textContent).toBe("1,000");
    expect(rowOf("input").querySelector(".pw-units").textContent).toBe("");
  });

  it("enables the row buttons according to the status", () => {
    const { rowOf } = mount();
    const state = (n) => Object.fromEntries([...rowOf(n).querySelectorAll(".pw-row-btn")]
      .map((b) => [b.textContent, !b.disabled]));
    expect(state("dense_1")).toEqual({ Accept: true, Skip: true, Lock: true });
    expect(state("dense_2")).toEqual({ Accept: false, Skip: false, Unlock: true });
    expect(state("conv")).toEqual({ Accept: false, Skip: false, Lock: false });
    expect(state("dense_3")).toEqual({ Accept: false, Skip: false, Lock: true });
    expect(rowOf("input").querySelectorAll("button")).toHaveLength(0); // no group, no buttons
  });

  it("clicking Accept / Skip / Lock / Unlock sends the action for that layer", () => {
    const { model, rowOf } = mount();
    rowOf("dense_1").querySelector(".pw-accept").click();
    rowOf("dense_1").querySelector(".pw-skip").click();
    rowOf("dense_1").querySelector(".pw-lock").click();
    rowOf("dense_2").querySelector(".pw-unlock").click();
    expect(model.actions()).toEqual([
      { type: "action", action: "accept", layer: "dense_1" },
      { type: "action", action: "skip", layer: "dense_1" },
      { type: "action", action: "lock", layer: "dense_1" },
      { type: "action", action: "unlock", layer: "dense_2" },
    ]);
  });

  it("a row button click does not also open the row's detail", () => {
    const { model, rowOf, root } = mount();
    rowOf("dense_1").querySelector(".pw-accept").click();
    expect(model.actions().map((m) => m.action)).toEqual(["accept"]);
    expect(root.querySelector(".pw-detail")).toBeNull();
  });

  it("disabled buttons send nothing when clicked", () => {
    const { model, rowOf } = mount();
    rowOf("conv").querySelector(".pw-lock").click();
    rowOf("dense_2").querySelector(".pw-accept").click();
    expect(model.actions()).toEqual([]);
  });

  it("follows layer changes from the kernel", async () => {
    const { model, rowOf, rows } = mount();
    const layers = structuredClone(LAYERS);
    layers[1] = { ...layers[1], status: "accepted", reason: "", proposal: null, units_alive: 62 };
    await model.change({ layers });
    expect(rows()).toHaveLength(VISIBLE.length);
    expect(rowOf("dense_1").querySelector(".pw-chip").textContent).toBe("accepted");
    expect(rowOf("dense_1").querySelector(".pw-units").textContent).toBe("62 / 64");
    expect(rowOf("dense_1").querySelector(".pw-accept").disabled).toBe(true);
  });

  it("clicking a nested model expands and collapses its children", () => {
    const { rowOf, rows } = mount();
    expect(rowOf("encoder").getAttribute("aria-expanded")).toBe("false");
    expect(rowOf("encoder").querySelector(".pw-name").textContent).toBe("▸ encoder");
    expect(rowOf("dense_1").hasAttribute("aria-expanded")).toBe(false);
    rowOf("encoder").click();
    expect(rows().map((r) => r.dataset.layer)).toEqual(
      ["input", "dense_1", "encoder", "encoder/inner", "dense_2", "conv", "dense_3"]);
    expect(rowOf("encoder").getAttribute("aria-expanded")).toBe("true");
    expect(rowOf("encoder/inner").classList.contains("pw-child")).toBe(true);
    expect(rowOf("encoder/inner").querySelector(".pw-chip")).toBeNull();
    rowOf("encoder").click();
    expect(rows().map((r) => r.dataset.layer)).toEqual(VISIBLE);
  });
});

describe("keyboard", () => {
  it("focuses the first row, moves with the arrows and stops at the ends", () => {
    const { rows, key } = mount();
    const focused = () => rows().filter((r) => r.getAttribute("aria-selected") === "true").map((r) => r.dataset.layer);
    expect(focused()).toEqual(["input"]);
    const ev = key("ArrowDown");
    expect(ev.defaultPrevented).toBe(true);
    expect(focused()).toEqual(["dense_1"]);
    expect(rows()[1].classList.contains("pw-focus")).toBe(true);
    key("End");
    expect(focused()).toEqual(["dense_3"]);
    key("ArrowDown");
    expect(focused()).toEqual(["dense_3"]);
    key("Home");
    key("ArrowUp");
    expect(focused()).toEqual(["input"]);
  });

  it('ArrowDown then "a" accepts the focused pending row', () => {
    const { model, key } = mount();
    key("ArrowDown");
    const ev = key("a");
    expect(ev.defaultPrevented).toBe(true);
    expect(model.actions()).toEqual([{ type: "action", action: "accept", layer: "dense_1" }]);
  });

  it('"s" skips the focused pending row', () => {
    const { model, key } = mount();
    key("ArrowDown");
    key("s");
    expect(model.actions()).toEqual([{ type: "action", action: "skip", layer: "dense_1" }]);
  });

  it('"a" and "s" do nothing on rows that are not pending', () => {
    const { model, key } = mount();
    key("a"); // input: no group
    key("ArrowDown"); key("ArrowDown"); key("ArrowDown"); // dense_2, locked
    const ev = key("a");
    key("s");
    expect(ev.defaultPrevented).toBe(false);
    expect(model.actions()).toEqual([]);
  });

  it('"l" locks an unlocked row and unlocks a locked one', () => {
    const { model, key } = mount();
    key("ArrowDown");
    key("l"); // dense_1 pending -> lock
    key("ArrowDown"); key("ArrowDown");
    key("l"); // dense_2 locked -> unlock
    key("End");
    key("l"); // dense_3 accepted -> lock
    expect(model.actions()).toEqual([
      { type: "action", action: "lock", layer: "dense_1" },
      { type: "action", action: "unlock", layer: "dense_2" },
      { type: "action", action: "lock", layer: "dense_3" },
    ]);
  });

  it("Enter expands the focused nested model", () => {
    const { rows, key } = mount();
    key("ArrowDown"); key("ArrowDown");
    const ev = key("Enter");
    expect(ev.defaultPrevented).toBe(true);
    expect(rows().map((r) => r.dataset.layer)).toContain("encoder/inner");
    key(" ");
    expect(rows().map((r) => r.dataset.layer)).not.toContain("encoder/inner");
  });

  it("the focus follows the tree when rows disappear", async () => {
    const { model, rows, key } = mount();
    key("End");
    await model.change({ layers: LAYERS.slice(0, 2) });
    expect(rows().map((r) => r.getAttribute("aria-selected"))).toEqual(["false", "true"]);
  });

  // BUG: the tree's keydown handler treats Enter/Space from anywhere inside it, including the row
  // buttons: it toggles the focused row's detail and calls preventDefault(), which cancels the button's
  // own keyboard activation. A keyboard user who tabs to "Accept" and presses Enter gets no accept.
  it("Enter on a focused row button is left to the button", () => {
    const { model, rowOf, root, key } = mount();
    const accept = rowOf("dense_1").querySelector(".pw-accept");
    accept.focus();
    const ev = key("Enter", accept);
    expect(ev.defaultPrevented).toBe(false);
    expect(root.querySelector(".pw-detail")).toBeNull();
    expect(model.actions()).toEqual([]);
  });

  // BUG: with no visible rows, Enter/Space calls toggleDetail(undefined), which throws a TypeError
  // ("Cannot read properties of undefined (reading 'name')") inside the event listener.
  it("Enter on an empty tree does not throw", () => {
    const errors = [];
    const onError = (e) => { errors.push(e.error); e.preventDefault(); };
    window.addEventListener("error", onError);
    try {
      const { key } = mount({ layers: [] });
      key("Enter");
      key(" ");
    } finally {
      window.removeEventListener("error", onError);
    }
    expect(errors).toEqual([]);
  });
});

describe("toolbar", () => {
  const btn = (ctx, cls) => ctx.$(`.pw-toolbar .${cls}`);
  // toolbar buttons are "off" with aria-disabled (they stay in the tab order); fields with disabled
  const isOff = (b) => b.disabled || b.getAttribute("aria-disabled") === "true";

  it("Propose / Accept all / Run / Undo / Redo / Export send their actions", () => {
    const ctx = mount({ history: [{ index: 1, kind: "propose", label: "propose iteration 1", applied: true },
      { index: 2, kind: "accept", label: "accept dense_1", applied: false }], position: 1 });
    for (const cls of ["pw-propose", "pw-accept-all", "pw-run", "pw-undo", "pw-redo", "pw-export"]) {
      expect(isOff(btn(ctx, cls)), cls).toBe(false);
      btn(ctx, cls).click();
    }
    expect(ctx.model.actions()).toEqual([
      { type: "action", action: "propose" },
      { type: "action", action: "accept_all" },
      { type: "action", action: "run" },
      { type: "action", action: "undo" },
      { type: "action", action: "redo" },
      { type: "action", action: "export", path: "pruned.keras" },
    ]);
  });

  it("Cancel is only enabled while running, and sends cancel", async () => {
    const ctx = mount();
    expect(isOff(btn(ctx, "pw-cancel"))).toBe(true);
    expect(ctx.$(".pw-progress").hidden).toBe(true);
    await ctx.model.change({ running: true, progress: 0.4 });
    expect(isOff(btn(ctx, "pw-cancel"))).toBe(false);
    expect(ctx.$(".pw-progress").hidden).toBe(false);
    expect(ctx.$(".pw-progress").value).toBeCloseTo(0.4);
    btn(ctx, "pw-cancel").click();
    expect(ctx.model.actions()).toEqual([{ type: "action", action: "cancel" }]);
  });

  it("disables everything but Cancel while running", async () => {
    const ctx = mount({ history: [{ index: 1, kind: "propose", label: "p", applied: true }], position: 1 });
    await ctx.model.change({ running: true });
    for (const cls of ["pw-propose", "pw-accept-all", "pw-run", "pw-undo", "pw-redo", "pw-export", "pw-strategy",
      "pw-step", "pw-target"]) {
      expect(isOff(btn(ctx, cls)), cls).toBe(true);
    }
    await ctx.model.change({ running: false });
    expect(isOff(btn(ctx, "pw-propose"))).toBe(false);
    expect(isOff(btn(ctx, "pw-cancel"))).toBe(true);
  });

  it("Undo is disabled at position 0 and Redo at the end of the history", async () => {
    const history = [{ index: 1, kind: "propose", label: "propose iteration 1", applied: true },
      { index: 2, kind: "accept", label: "accept dense_1", applied: true }];
    const ctx = mount({ history, position: 0 });
    expect(isOff(btn(ctx, "pw-undo"))).toBe(true);
    expect(isOff(btn(ctx, "pw-redo"))).toBe(false);
    await ctx.model.change({ position: 1 });
    expect(isOff(btn(ctx, "pw-undo"))).toBe(false);
    expect(isOff(btn(ctx, "pw-redo"))).toBe(false);
    await ctx.model.change({ position: 2 });
    expect(isOff(btn(ctx, "pw-undo"))).toBe(false);
    expect(isOff(btn(ctx, "pw-redo"))).toBe(true);
    btn(ctx, "pw-redo").click();
    expect(ctx.model.actions()).toEqual([]);
  });

  it("Accept all is enabled only while some layer is pending", async () => {
    const ctx = mount();
    expect(isOff(btn(ctx, "pw-accept-all"))).toBe(false);
    await ctx.model.change({ layers: LAYERS.map((l) => ({ ...l, status: l.status === "pending" ? "ready" : l.status })) });
    expect(isOff(btn(ctx, "pw-accept-all"))).toBe(true);
  });

  it("shows the settings and sends configure when they change", async () => {
    const ctx = mount();
    const strategy = btn(ctx, "pw-strategy");
    expect([...strategy.options].map((o) => o.value)).toEqual(["greedy", "random"]);
    expect(strategy.value).toBe("greedy");
    expect(btn(ctx, "pw-step").value).toBe("0.1");
    expect(btn(ctx, "pw-target").value).toBe("0.5");
    strategy.value = "random";
    strategy.dispatchEvent(new Event("change"));
    btn(ctx, "pw-step").value = "0.2";
    btn(ctx, "pw-step").dispatchEvent(new Event("change"));
    btn(ctx, "pw-target").value = "0.75";
    btn(ctx, "pw-target").dispatchEvent(new Event("change"));
    expect(ctx.model.actions()).toEqual([
      { type: "action", action: "configure", settings: { strategy: "random" } },
      { type: "action", action: "configure", settings: { step: 0.2 } },
      { type: "action", action: "configure", settings: { target: 0.75 } },
    ]);
    await ctx.model.change({ settings: { strategy: "random", step: 0.2, target: 0.75 } });
    expect(strategy.value).toBe("random");
  });

  it("the export path is saved to the model and used by Export", () => {
    const ctx = mount();
    const path = btn(ctx, "pw-export-path");
    expect(path.value).toBe("pruned.keras");
    path.value = "out/small.keras";
    path.dispatchEvent(new Event("change"));
    expect(ctx.model.get("export_path")).toBe("out/small.keras");
    expect(ctx.model.saves).toBe(1);
    btn(ctx, "pw-export").click();
    expect(ctx.model.actions()).toEqual([{ type: "action", action: "export", path: "out/small.keras" }]);
  });
});

describe("error banner", () => {
  it("is hidden without an error", () => {
    const { $ } = mount();
    expect($(".pw-error").hidden).toBe(true);
    expect($(".pw-error").getAttribute("role")).toBe("alert");
  });

  it("shows the error trait and hides again when it clears", async () => {
    const { model, $ } = mount({ error: "unknown layer 'x'" });
    expect($(".pw-error").hidden).toBe(false);
    expect($(".pw-error").textContent).toBe("unknown layer 'x'");
    await model.change({ error: "" });
    expect($(".pw-error").hidden).toBe(true);
  });

  it("shows error messages from the kernel", () => {
    const { model, $ } = mount();
    model.custom({ type: "error", message: "layer 'conv' is not prunable" });
    expect($(".pw-error").hidden).toBe(false);
    expect($(".pw-error").textContent).toBe("layer 'conv' is not prunable");
  });

  it("the error trait wins over an older message", async () => {
    const { model, $ } = mount();
    model.custom({ type: "error", message: "old" });
    await model.change({ error: "new" });
    expect($(".pw-error").textContent).toBe("new");
  });

  it("shows where an export went as a notice, not as an error", async () => {
    const { model, $ } = mount();
    model.custom({ type: "exported", path: "/tmp/pruned.keras" });
    await model.change({ notice: "exported /tmp/pruned.keras (2.0 KiB)" });
    expect($(".pw-error").hidden).toBe(true);
    expect($(".pw-notice").hidden).toBe(false);
    expect($(".pw-notice").getAttribute("role")).toBe("status");
    expect($(".pw-notice").textContent).toBe("exported /tmp/pruned.keras (2.0 KiB)");
    await model.change({ notice: "" });
    expect($(".pw-notice").hidden).toBe(true);
  });

  it("asks before overwriting a file, in the widget", () => {
    const { model, $ } = mount();
    $(".pw-format").value = "tflite16";
    $(".pw-export").click();
    expect(model.actions().at(-1)).toEqual({ type: "action", action: "export", path: "pruned.keras", format: "tflite16" });
    model.custom({ type: "confirm_overwrite", path: "pruned.tflite", format: "tflite16" });
    expect($(".pw-confirm").hidden).toBe(false);
    expect($(".pw-confirm").textContent).toContain("pruned.tflite exists");
    $(".pw-overwrite").click();
    expect(model.actions().at(-1)).toEqual({ type: "action", action: "export", path: "pruned.tflite",
      format: "tflite16", overwrite: true });
    expect($(".pw-confirm").hidden).toBe(true);
    model.custom({ type: "confirm_overwrite", path: "pruned.tflite", format: "tflite16" });
    $(".pw-keep").click();
    expect($(".pw-confirm").hidden).toBe(true);
    expect(model.actions().filter((m) => m.action === "export")).toHaveLength(2);
  });

  // BUG: the kernel reports a refused action both ways (error trait + {type: "error"} message) and
  // clears the trait on the next successful action, but the remembered message (lastError) is only
  // cleared by an "exported" message, so the banner keeps showing the stale error after success.
  it("hides a kernel error once the next action succeeds (error trait cleared)", async () => {
    const { model, $ } = mount();
    await model.change({ error: "layer 'conv' is not prunable" });
    model.custom({ type: "error", message: "layer 'conv' is not prunable" });
    await model.change({ error: "" }); // next action succeeded
    expect($(".pw-error").hidden).toBe(true);
    expect($(".pw-error").textContent).toBe("");
  });
});

describe("history and metrics", () => {
  const history = [
    { index: 1, kind: "propose", label: "propose iteration 1", applied: true, share_pruned: 0 },
    { index: 2, kind: "accept", label: "accept dense_1", applied: true, share_pruned: 0.1 },
    { index: 3, kind: "accept", label: "accept dense_2", applied: false, share_pruned: 0.2 },
  ];

  it("lists the original model and every entry, marking the current and undone ones", () => {
    const { $$ } = mount({ history, position: 2 });
    const items = $$(".pw-history li");
    expect(items.map((li) => li.querySelector(".pw-hist-label").textContent))
      .toEqual(["original model", "propose iteration 1", "accept dense_1", "accept dense_2"]);
    expect(items.map((li) => li.dataset.index)).toEqual(["0", "1", "2", "3"]);
    expect(items.map((li) => li.classList.contains("pw-current"))).toEqual([false, false, true, false]);
    expect(items.map((li) => li.classList.contains("pw-undone"))).toEqual([false, false, false, true]);
  });

  it("clicking an item sends goto with its index", () => {
    const { model, $ } = mount({ history, position: 2 });
    $('.pw-history li[data-index="3"]').click();
    $('.pw-history li[data-index="1"]').click();
    $('.pw-history li[data-index="0"]').click();
    expect(model.actions()).toEqual([
      { type: "action", action: "goto", n: 3 },
      { type: "action", action: "goto", n: 1 },
      { type: "action", action: "goto", n: 0 },
    ]);
  });

  it("marks the original model as current at position 0 and follows position changes", async () => {
    const { model, $ } = mount({ history, position: 0 });
    expect($('.pw-history li[data-index="0"]').classList.contains("pw-current")).toBe(true);
    await model.change({ position: 3 });
    expect($('.pw-history li[data-index="0"]').classList.contains("pw-current")).toBe(false);
    expect($('.pw-history li[data-index="3"]').classList.contains("pw-current")).toBe(true);
  });

  it("formats the metrics and draws the chart", () => {
    const { $, $$ } = mount();
    const metric = (k) => $(`.pw-metrics dd[data-metric="${k}"]`).textContent;
    expect(metric("parameters")).toBe("12,345");
    expect(metric("size")).toBe("2.0 KiB");
    expect(metric("accuracy")).toBe("98.1%");
    expect(metric("pruned")).toBe("25.0%");
    expect(metric("robust @0.01")).toBe("90.0%");
    expect(metric("bound width")).toBe("0.1235");
    expect(metric("FLOPs")).toBe("999");
    expect($$(".pw-chart polyline").map((p) => p.getAttribute("data-series")))
      .toEqual(["accuracy", "agreement"]); // share pruned is the x axis
    expect($$(".pw-chart circle")).toHaveLength(4); // a dot per point: readable with one point
    expect($$(".pw-chart circle title")[0].textContent).toBe("point 0: accuracy 99.0% at 0.0% pruned");
    expect($(".pw-metrics dt[title]").title).toContain("physically smaller");
  });

  it("shows dashes for missing metrics", () => {
    const { $ } = mount({ metrics: {} });
    expect($('.pw-metrics dd[data-metric="accuracy"]').textContent).toBe("–");
    expect($('.pw-metrics dd[data-metric="bound width"]').textContent).toBe("–");
  });
});

describe("heatmaps", () => {
  it("draw on the layer canvases without throwing when jsdom has no 2D context", () => {
    vi.spyOn(console, "error").mockImplementation(() => {}); // jsdom: "Not implemented: getContext"
    const { model, rowOf } = mount();
    const [msg, buffers] = heatmapMessage([["dense_1", 12, 48], ["dense_2", 12, 48]]);
    expect(() => model.custom(msg, buffers)).not.toThrow();
    const canvas = rowOf("dense_1").querySelector("canvas.pw-heat");
    expect(canvas.width).toBe(48);
    expect(canvas.height).toBe(12);
    expect(canvas.title).toBe("dense_1: |weights| (inputs down, units across); proposal: 2 units go "
      + "(point at a marked column)");
    expect(rowOf("dense_2").querySelector("canvas.pw-heat").title).toBe("dense_2: |weights| (inputs down, units across)");
    expect(rowOf("dense_3").querySelector("canvas.pw-heat").width).toBe(300); // no heatmap yet: default size
    expect(rowOf("input").querySelector("canvas")).toBeNull();
  });

  it("put h x w image data on the canvas, with the proposal's columns tinted", () => {
    const puts = stubCanvas();
    const { model, rowOf } = mount();
    expect(puts).toHaveLength(0);
    const [msg, buffers] = heatmapMessage([["dense_1", 12, 48, () => 0], ["dense_3", 2, 5]]);
    model.custom(msg, buffers);
    expect(puts).toHaveLength(2);
    const byLayer = Object.fromEntries(puts.map((p) => [p.canvas.dataset.layer, p]));
    const { img, x, y, canvas } = byLayer.dense_1;
    expect([x, y]).toEqual([0, 0]);
    expect(img.width).toBe(48);
    expect(img.height).toBe(12);
    expect(img.data).toBeInstanceOf(Uint8ClampedArray);
    expect(img.data.length).toBe(12 * 48 * 4);
    expect(canvas).toBe(rowOf("dense_1").querySelector("canvas"));
    // 64 units over 48 columns: dropped units 3 and 5 red in their columns (top to bottom), keep 4 blue unless
    // it shares a column with a dropped unit; keep -1 (no merge target) is not drawn
    const px = (c, r = 0) => [...img.data.slice((r * 48 + c) * 4, (r * 48 + c) * 4 + 4)];
    const RED = [230, 60, 60, 255], BLUE = [60, 140, 240, 255];
    const dropCols = [3, 5].map((u) => columnOfUnit(u, 64, 48));
    for (const c of dropCols) for (const r of [0, 11]) expect(px(c, r)).toEqual(RED);
    const keepCol = columnOfUnit(4, 64, 48);
    if (!dropCols.includes(keepCol)) expect(px(keepCol, 5)).toEqual(BLUE);
    const tinted = new Set([...dropCols, keepCol]);
    for (let c = 0; c < 48; c++) if (!tinted.has(c)) expect(px(c, 6)).toEqual([68, 1, 84, 255]); // value 0
    expect(byLayer.dense_3.img.width).toBe(5);
    expect(byLayer.dense_3.img.height).toBe(2);
    // the DataView's offset is respected: the padding bytes (99) never reach the image
    expect([...byLayer.dense_3.img.data.slice(0, 3)]).toEqual([68, 1, 84]);
  });

  it("are kept across redraws and replaced by newer ones", async () => {
    const puts = stubCanvas();
    const { model } = mount();
    model.custom(...heatmapMessage([["dense_1", 12, 48]]));
    puts.length = 0;
    await model.change({ position: 0 }); // any trait change redraws the tree with the cached heatmaps
    expect(puts.map((p) => [p.canvas.dataset.layer, p.img.width, p.img.height])).toEqual([["dense_1", 48, 12]]);
    puts.length = 0;
    model.custom(...heatmapMessage([["dense_1", 4, 8]]));
    expect(puts.map((p) => [p.img.width, p.img.height])).toEqual([[8, 4]]);
  });

  it("a batch of trait changes redraws once, after the current task", async () => {
    const puts = stubCanvas();
    const { model, rowOf } = mount();
    model.custom(...heatmapMessage([["dense_1", 12, 48]]));
    puts.length = 0;
    const before = rowOf("dense_1");
    const pending = model.change({ layers: structuredClone(LAYERS), position: 0, history: [], running: false });
    expect(rowOf("dense_1")).toBe(before); // not yet redrawn
    await pending;
    expect(rowOf("dense_1")).not.toBe(before);
    expect(puts).toHaveLength(1); // one tree redraw, not one per trait
  });

  it("a malformed heatmaps message is shown in the banner and leaves the tree as it was", () => {
    stubCanvas();
    const { model, rows, $ } = mount();
    const [msg, buffers] = heatmapMessage([["dense_1", 12, 48]]);
    expect(() => model.custom({ ...msg, shapes: [[12, 47]] }, buffers)).not.toThrow();
    expect($(".pw-error").textContent).toMatch(/dense_1/);
    expect(rows()).toHaveLength(VISIBLE.length);
  });
});

describe("detail view", () => {
  const detailMsg = (name, kind = "weights") => {
    const h = 4, w = 8;
    const data = Uint8Array.from({ length: h * w }, (_, i) => (i === 13 ? 255 : 0));
    return [{ type: "detail", name, kind, shape: [h, w], source_shape: [40, 16], max: 0.5 },
      [new DataView(data.buffer)]];
  };

  it("clicking a layer with a heatmap asks for its weights detail and shows a placeholder", () => {
    const { model, rowOf, root } = mount();
    rowOf("dense_1").click();
    expect(model.actions()).toEqual([{ type: "action", action: "detail", layer: "dense_1", kind: "weights" }]);
    expect(root.querySelector('.pw-detail[data-layer="dense_1"]').textContent).toContain("loading…");
    rowOf("dense_1").click(); // closes, asks nothing more
    expect(root.querySelector(".pw-detail")).toBeNull();
    expect(model.actions()).toHaveLength(1);
    rowOf("input").click(); // no heatmap, no children: nothing
    expect(model.actions()).toHaveLength(1);
  });

  it("the weights / saliency buttons ask for that kind", () => {
    const { model, rowOf, root } = mount();
    rowOf("dense_1").click();
    root.querySelector(".pw-detail-saliency").click();
    root.querySelector(".pw-detail-weights").click();
    expect(model.actions().slice(1)).toEqual([
      { type: "action", action: "detail", layer: "dense_1", kind: "saliency" },
      { type: "action", action: "detail", layer: "dense_1", kind: "weights" },
    ]);
    expect(root.querySelector(".pw-detail")).not.toBeNull(); // the buttons do not close it
  });

  it("draws the detail and names the value under the pointer", () => {
    const puts = stubCanvas();
    const { model, rowOf, root } = mount();
    rowOf("dense_1").click();
    model.custom(...detailMsg("dense_1"));
    const canvas = root.querySelector(".pw-detail canvas.pw-detail-canvas");
    expect(canvas).not.toBeNull();
    const put = puts.find((p) => p.canvas === canvas);
    expect([put.img.width, put.img.height]).toEqual([8, 4]);
    canvas.getBoundingClientRect = () => ({ left: 10, top: 20, width: 80, height: 40, right: 90, bottom: 60 });
    // pixel (r=1, c=5) holds 255 -> value = max; it covers source rows 10–19 and units 10–11
    canvas.dispatchEvent(new MouseEvent("mousemove", { clientX: 10 + 55, clientY: 20 + 15, bubbles: true }));
    expect(root.querySelector(".pw-tip").textContent).toBe("inputs 10–19, units 10–11: mean |w| ≈ 0.500");
  });

  it("labels a saliency detail by kept and removed unit", () => {
    stubCanvas();
    const { model, rowOf, root } = mount();
    rowOf("dense_1").click();
    model.custom(...detailMsg("dense_1", "saliency"));
    const canvas = root.querySelector(".pw-detail-canvas");
    canvas.getBoundingClientRect = () => ({ left: 0, top: 0, width: 8, height: 4 });
    canvas.dispatchEvent(new MouseEvent("mousemove", { clientX: 0, clientY: 0 }));
    expect(root.querySelector(".pw-tip").textContent).toBe("kept unit 0–9, removed unit 0–1: saliency ≈ 0.00");
  });

  it("a detail message without a 2D context does not throw", () => {
    vi.spyOn(console, "error").mockImplementation(() => {});
    const { model, rowOf, root } = mount();
    rowOf("dense_1").click();
    expect(() => model.custom(...detailMsg("dense_1"))).not.toThrow();
    expect(root.querySelector(".pw-detail-canvas").width).toBe(8);
  });
});
