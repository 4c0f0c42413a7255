// @vitest-environment jsdom
// Deciding in the widget: filter, live parameters, previews, sensitivity curves and plans, comparing
// history points, stale metrics, progress text, keyboard isolation from JupyterLab, formats.
import { describe, expect, it } from "vitest";
import { filterRows, fmt, markText, progressText, sparkPoints } from "../src/format.js";
import widget from "../src/widget.js";
import { fakeModel } from "./fake_model.js";

const row = (name, status, extra = {}) => ({
  name, type: "Dense", shape: "(None, 8)", depth: 0, parent: null, params: 90, group: name, status,
  units_alive: 8, units_total: 8, reason: "", heatmap: true,
  proposal: status === "pending" ? { action: "merge", drop: [1, 5], keep: [0, -1], params_saved: 20 } : null,
  ...extra,
});
const LAYERS = [row("conv2_block1_1_conv", "pending"), row("conv2_block1_2_conv", "ready"), row("dense_out", "locked")];
const CURVE = (name) => ({ name, ratios: [0, 0.5, 0.9], bound: [0, 1.5, 3], agreement: [1, 0.9, 0.5],
  accuracy: [null, null, null], params: [0, 40, 72], flops: [0, 80, 144] });

function mount(extra = {}) {
  const model = fakeModel({
    layers: structuredClone(LAYERS), settings: { strategy: "impact", step: 0.05, target: 0.5 },
    strategies: ["impact"], metrics: { size: { params: 5_000_000, bytes: 20_000_000, flops: 4_100_000_000 } },
    metrics_history: [{ position: 0, accuracy: 0.9, agreement: 1, share_pruned: 0 }], history: [], position: 0,
    running: false, progress: 0, error: "", notice: "", export_path: "pruned.keras", live_params: {},
    previews: {}, sensitivity: { status: "idle" }, plan: {}, compare: {}, progress_info: {}, ...extra,
  });
  const el = document.createElement("div");
  document.body.append(el);
  widget.render({ model, el });
  const $ = (s) => el.querySelector(s);
  const $$ = (s) => [...el.querySelectorAll(s)];
  const actions = () => model.sent.filter((m) => m.action !== "hello");
  return { model, el, $, $$, actions };
}
const tick = () => new Promise((r) => setTimeout(r, 0));

describe("formats", () => {
  it("sizes in KiB / MiB, counts in k / M / G", () => {
    expect(fmt.bytes(512)).toBe("512 bytes");
    expect(fmt.bytes(2048)).toBe("2.0 KiB");
    expect(fmt.bytes(20_000_000)).toBe("19.1 MiB");
    expect(fmt.si(999)).toBe("999");
    expect(fmt.si(4_100_000_000)).toBe("4.10 G");
    expect(fmt.si(25_600_000)).toBe("25.60 M");
    expect(fmt.secs(125)).toBe("2 min 5 s");
  });

  it("progress: percentage, iteration and time left", () => {
    expect(progressText(0.42, { fraction: 0.42, iteration: 7, eta: 3.2 })).toBe("42% · iteration 7 · ~3 s left");
    expect(progressText(0.1, {})).toBe("10%");
  });

  it("filters rows by name or type, keeping their ancestors", () => {
    const rows = [{ name: "blk", type: "Block", parent: null }, { name: "blk_conv", type: "Conv2D", parent: "blk" },
      { name: "head", type: "Dense", parent: null }];
    expect(filterRows(rows, "")).toBeNull();
    expect(filterRows(rows, "CONV").map((r) => r.name)).toEqual(["blk", "blk_conv"]);
    expect(filterRows(rows, "dense").map((r) => r.name)).toEqual(["head"]);
  });

  it("names what a marked unit does", () => {
    const p = { drop: [1, 5], keep: [0, -1] };
    expect(markText(p, [1, 1])).toBe("unit 1 merges into unit 0");
    expect(markText(p, [5, 5])).toBe("unit 5 is removed");
    expect(markText(p, [0, 0])).toBe("unit 0 receives unit 1");
    expect(markText(p, [3, 3])).toBe("");
    expect(sparkPoints([0, 0.5, 1], [0, 1, 2], 60, 16, 2)).toBe("0.0,16.0 30.0,8.0 60.0,0.0");
  });
});

describe("names, parameters, filter", () => {
  it("rows show the full name as a tooltip and the live parameters", async () => {
    const { $, model } = mount({ live_params: { conv2_block1_1_conv: 60 } });
    const r = $(".pw-row[data-layer='conv2_block1_1_conv']");
    expect(r.querySelector(".pw-name").title).toContain("conv2_block1_1_conv");
    expect(r.querySelector(".pw-params").textContent).toBe("60");
    expect(r.querySelector(".pw-params").title).toBe("60 of 90 parameters alive");
    await model.update("live_params", { conv2_block1_1_conv: 30 });
    await tick();
    expect($(".pw-row[data-layer='conv2_block1_1_conv'] .pw-params").textContent).toBe("30");
  });

  it("the filter box keeps the matching rows", () => {
    const { $, $$ } = mount();
    const f = $(".pw-filter");
    f.value = "block1_2";
    f.dispatchEvent(new Event("input"));
    expect($$(".pw-row[data-layer]").map((r) => r.dataset.layer)).toEqual(["conv2_block1_2_conv"]);
  });

  it("row buttons are named with their layer and leave the tab order to the tree", () => {
    const { $ } = mount();
    const b = $(".pw-row[data-layer='conv2_block1_1_conv'] .pw-accept");
    expect(b.getAttribute("aria-label")).toBe("Accept conv2_block1_1_conv");
    expect(b.getAttribute("tabindex")).toBe("-1");
  });
});

describe("keyboard", () => {
  it("letters typed on a toolbar button stay in the widget (JupyterLab never sees them)", () => {
    const { el, $, actions } = mount();
    let reached = 0;
    const outer = (e) => { if (e.key === "a") reached += 1; };
    document.addEventListener("keydown", outer);
    try {
      $(".pw-propose").dispatchEvent(new KeyboardEvent("keydown", { key: "a", bubbles: true }));
      expect(reached).toBe(0);
      $(".pw-propose").dispatchEvent(new KeyboardEvent("keydown", { key: "a", ctrlKey: true, bubbles: true }));
      expect(reached).toBe(1); // shortcuts with modifiers are left alone
    } finally {
      document.removeEventListener("keydown", outer);
    }
    expect(el.getAttribute("data-lm-suppress-shortcuts")).toBe("true");
    expect(actions()).toEqual([]);
  });

  it("toolbar buttons stay focusable when off, so the tab order does not jump", async () => {
    const { $, model } = mount();
    const undo = $(".pw-undo");
    expect(undo.disabled).toBe(false);
    expect(undo.getAttribute("aria-disabled")).toBe("true");
    undo.click();
    expect(model.sent.filter((m) => m.action === "undo")).toEqual([]);
  });
});

describe("before accepting", () => {
  it("a pending row shows what accepting removes and the certified bound", async () => {
    const { $, model } = mount({ previews: { conv2_block1_1_conv: { units: 2, params: 20, flops: 2_000_000,
      bound: null, bound_pending: true } } });
    const line = () => $(".pw-preview[data-layer='conv2_block1_1_conv']").textContent;
    expect(line()).toBe("Accepting removes 2 units, 20 parameters, 2.00 M FLOPs; bound: computing…");
    await model.update("previews", { conv2_block1_1_conv: { units: 2, params: 20, flops: 2_000_000, bound: 0.125,
      bound_pending: false } });
    await tick();
    expect(line()).toContain("no output moves by more than 0.1250 (certified)");
  });

  it("the heatmap has a legend with its colour scale and marks", () => {
    const { $ } = mount();
    const legend = $(".pw-heat-legend");
    expect(legend.querySelector(".pw-scale").style.background).toContain("linear-gradient");
    expect(legend.textContent).toContain("unit it merges into");
  });
});

describe("sensitivity and plan", () => {
  it("Sensitivity asks the kernel, shows progress, then curves per row and a chart for the focused row", async () => {
    const { $, $$, model, actions } = mount();
    $(".pw-sens").click();
    expect(actions()).toEqual([{ type: "action", action: "sensitivity" }]);
    await model.update("sensitivity", { status: "computing", done: 1, total: 3 });
    await tick();
    expect($(".pw-sens").textContent).toBe("Sensitivity 1/3");
    expect($(".pw-sens-cancel").hidden).toBe(false);
    $(".pw-sens-cancel").click();
    expect(actions().at(-1)).toEqual({ type: "action", action: "cancel_sensitivity" });
    const curves = Object.fromEntries(LAYERS.map((l) => [l.name, CURVE(l.name)]));
    await model.update("sensitivity", { status: "done", current: true, curves, total_params: 1000, total_flops: 2000 });
    await tick();
    expect($$(".pw-spark").map((s) => s.dataset.layer)).toEqual(LAYERS.map((l) => l.name));
    expect($(".pw-sens-chart").dataset.layer).toBe("conv2_block1_1_conv");
    expect([...$(".pw-sens-chart").querySelectorAll("polyline")].map((p) => p.dataset.series))
      .toEqual(["bound", "agreement"]);
    await model.update("sensitivity", { status: "done", current: false, curves });
    await tick();
    expect($(".pw-sens-cell").classList.contains("pw-stale")).toBe(true);
  });

  it("with eval data the chart adds accuracy and robustness kept, with their legend; robustness over 100 % stays inside", async () => {
    const curve = { ...CURVE("conv2_block1_1_conv"), accuracy: [0.9, 0.88, 0.7], robust: [1, 1.25, 0.5] };
    const curves = Object.fromEntries(LAYERS.map((l) => [l.name, l.name === curve.name ? curve : CURVE(l.name)]));
    const { $ } = mount({ sensitivity: { status: "done", current: true, curves } });
    const chart = $(".pw-sens-chart");
    expect([...chart.querySelectorAll("polyline")].map((p) => p.dataset.series))
      .toEqual(["bound", "agreement", "accuracy", "robustness kept"]);
    const robust = chart.querySelector("polyline[data-series='robustness kept']");
    const ys = robust.getAttribute("points").split(" ").map((p) => Number(p.split(",")[1]));
    expect(Math.min(...ys)).toBeGreaterThanOrEqual(6); // the plot's top edge: 125 % is drawn there
    expect([...chart.querySelectorAll("title")].map((t) => t.textContent).join("|")).toMatch(/50(\.0)?% pruned: robustness kept 125(\.0)?%/);
    const legend = chart.nextElementSibling.textContent;
    expect(legend).toContain("accuracy (eval data)");
    expect(legend).toContain("robustness kept (FGSM)");
  });

  it("makes a plan, edits a row and runs it", async () => {
    const curves = Object.fromEntries(LAYERS.map((l) => [l.name, CURVE(l.name)]));
    const { $, model, actions } = mount({ sensitivity: { status: "done", current: true, curves } });
    $(".pw-goal").value = "30";
    $(".pw-make-plan").click();
    expect(actions().at(-1)).toEqual({ type: "action", action: "plan", goal: 0.3, metric: "params" });
    await model.update("plan", { targets: { conv2_block1_1_conv: 0.5 }, reached: true, message: "1 layers …" });
    await tick();
    const input = $(".pw-plan-row[data-layer='conv2_block1_1_conv'] input");
    expect(input.value).toBe("50");
    input.value = "40";
    input.dispatchEvent(new Event("change"));
    expect(actions().at(-1)).toEqual({ type: "action", action: "plan_set", layer: "conv2_block1_1_conv", share: 0.4 });
    $(".pw-run-plan").click();
    expect(actions().at(-1)).toEqual({ type: "action", action: "run_plan" });
    expect($(".pw-row[data-layer='conv2_block1_1_conv'] .pw-plan-share").textContent).toBe("50.0%");
  });
});

describe("metrics, history, comparison", () => {
  it("marks metrics stale while computing or running", async () => {
    const { $, model } = mount();
    expect($(".pw-metrics").classList.contains("pw-stale")).toBe(false);
    expect($('dd[data-metric="size"]').textContent).toBe("19.1 MiB");
    expect($('dd[data-metric="FLOPs"]').textContent).toBe("4.10 G");
    await model.update("metrics_pending", true);
    await tick();
    expect($(".pw-metrics").classList.contains("pw-stale")).toBe(true);
    expect($(".pw-side h4").textContent).toContain("computing");
  });

  it("shows the run's progress as text", async () => {
    const { $, model } = mount();
    await model.update("running", true);
    await model.update("progress_info", { fraction: 0.5, iteration: 3, eta: 10 });
    await tick();
    expect($(".pw-progress-text").textContent).toBe("50% · iteration 3 · ~10 s left");
  });

  it("picks two points, asks for a comparison and shows it side by side", async () => {
    const history = [{ index: 1, kind: "run", label: "run: 3 iterations (target)", applied: true, share_pruned: 0.3,
      metrics: { params: 10 } }];
    const { $, model, actions } = mount({ history, position: 1 });
    $('.pw-hist[data-index="0"] .pw-pick-a').click();
    expect(actions()).toEqual([]);
    $('.pw-hist[data-index="1"] .pw-pick-b').click();
    expect(actions()).toEqual([{ type: "action", action: "compare", a: 0, b: 1 }]);
    expect($('.pw-hist[data-index="1"]').title).toContain("parameters 10");
    await model.update("compare", { a: 0, b: 1, metrics_a: { size: { params: 100 } }, metrics_b: null,
      layers: [{ name: "conv2_block1_1_conv", units_a: 8, units_b: 6, params_a: 90, params_b: 70, went: [1, 5],
        went_count: 2, back: [], back_count: 0 }] });
    await tick();
    expect($(".pw-compare").textContent).toContain("point 0");
    expect($(".pw-row[data-layer='conv2_block1_1_conv'] .pw-units").textContent).toBe("8 → 6");
    expect($(".pw-went").textContent).toContain("units 1, 5 went");
    $(".pw-compare-clear").click();
    expect(actions().at(-1)).toEqual({ type: "action", action: "compare_clear" });
  });
});

describe("reactive notebooks", () => {
  it("echoes each new session value back once (marimo re-runs the cells that read it)", async () => {
    const { model } = mount({ value: { position: 0 } });
    let saves = 0;
    model.save_changes = () => { saves += 1; };
    await model.update("value", { position: 1 });
    expect(saves).toBe(1);
    expect(model.get("value")).toEqual({ position: 1 });
    await model.update("value", { position: 1 });
    expect(saves).toBe(1); // the same value again: no echo
  });
});
