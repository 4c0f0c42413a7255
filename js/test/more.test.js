// @vitest-environment jsdom
// Accuracy after accepting (pending, stale, done), compared points marked in the heatmap and on blocks,
// a collapsed block's sensitivity (its most sensitive member), and deploying from the widget.
import { describe, expect, it } from "vitest";
import { compareMarks, toRGBA } from "../src/heatmap.js";
import { compareText, deployCells, previewParts } from "../src/format.js";
import { blockCurve, blockWent, descendants } from "../src/tree.js";
import widget from "../src/widget.js";
import { fakeModel } from "./fake_model.js";

const curve = (name, bound, score = []) => ({ name, ratios: [0, 0.5, 0.9], bound, agreement: [1, 1, 1],
  accuracy: [null, null, null], params: [0, 1, 2], flops: [0, 1, 2], score });
const ROWS = [
  { name: "blk", type: "Block", depth: 0, parent: null, group: null, heatmap: false },
  { name: "a", type: "Conv2D", depth: 1, parent: "blk", group: "a", heatmap: true, units_total: 8 },
  { name: "inner", type: "Block", depth: 1, parent: "blk", group: null, heatmap: false },
  { name: "b", type: "Conv2D", depth: 2, parent: "inner", group: "b", heatmap: true, units_total: 8 },
  { name: "c", type: "Dense", depth: 0, parent: null, group: "c", heatmap: true, units_total: 4 },
];

describe("pure helpers", () => {
  it("the preview line: pending, stale, done; no accuracy without eval data", () => {
    const base = { units: 2, params: 20, flops: 40, bound: 0.5, bound_pending: false, eval: true };
    expect(previewParts({ ...base, accuracy: null, accuracy_pending: true })).toMatchObject(
      { accuracy: "accuracy after: computing…", state: "pending" });
    const stale = previewParts({ ...base, accuracy: 0.9, accuracy_now: 0.95, samples: 500, accuracy_pending: true,
      accuracy_stale: true });
    expect(stale.state).toBe("stale");
    expect(stale.accuracy).toBe("accuracy 95.0% → 90.0% on 500 eval samples (of the previous state; computing…)");
    const done = previewParts({ ...base, accuracy: 0.9, accuracy_now: 0.95, samples: 500 });
    expect(done).toMatchObject({ state: "done", accuracy: "accuracy 95.0% → 90.0% on 500 eval samples" });
    expect(previewParts({ ...base, eval: false })).toMatchObject({ accuracy: "", state: "" });
    expect(previewParts({ ...base, bound_stale: true }).bound).toContain("previous state");
  });

  it("compared points: orange columns for units that went, green for units back, and what a column says", () => {
    const marks = compareMarks({ went: [1, 5], back: [2] }, 8, 8);
    expect([...marks]).toEqual([[2, "back"], [1, "went"], [5, "went"]]);
    expect([...compareMarks({ went: [7], back: [] }, 16, 4)]).toEqual([[1, "went"]]); // column 1 shows units 4-7
    const px = toRGBA(new Uint8Array(8), 1, 8, marks);
    expect([...px.slice(4, 8)]).toEqual([255, 140, 0, 255]);
    expect(compareText({ went: [1, 5], back: [] }, [0, 3], 0, 2)).toBe("unit 1 went between points 0 and 2");
    expect(compareText({ went: [1, 5], back: [] }, [6, 7], 0, 2)).toBe("");
  });

  it("a block's sensitivity is its most sensitive member's curve (bound first, score without bounds)", () => {
    expect(descendants(ROWS, "blk").map((r) => r.name)).toEqual(["a", "inner", "b"]);
    const curves = { a: curve("a", [0, 0.5, 1]), b: curve("b", [0, 2, 3]), c: curve("c", [0, 9, 9]) };
    expect(blockCurve(ROWS, "blk", curves)).toMatchObject({ member: "b", members: 2 });
    const unbounded = { a: curve("a", [0, null, null], [0, 1, 5]), b: curve("b", [0, null, null], [0, 1, 2]) };
    expect(blockCurve(ROWS, "blk", unbounded).member).toBe("a");
    const mixed = { a: curve("a", [0, null, null], [0, 1, 50]), b: curve("b", [0, 0.1, 0.2]) };
    expect(blockCurve(ROWS, "blk", mixed).member).toBe("b"); // a certified bound outranks a score
    expect(blockCurve(ROWS, "blk", {})).toBeNull();
    expect(blockWent(ROWS, "blk", [{ name: "a", went_count: 3 }, { name: "b", went_count: 0 }, { name: "c", went_count: 9 }]))
      .toEqual({ went: 3, layers: 1 });
  });

  it("deploy table cells", () => {
    const r = { name: "pruned + tflite-int8", path: "/tmp/out/m.int8.tflite", bytes: 2048, times_smaller: 8.25,
      accuracy: 0.97, accuracy_drop: 0.004, robust_kept: { "0.01": 0.9 }, agreement: 0.99 };
    expect(deployCells(r, 0.01)).toEqual(["pruned + tflite-int8", "m.int8.tflite", "2.0 KiB", "8.3×", "97.0%",
      "−0.40 pt", "90.0%", "99.0%"]);
    expect(deployCells({ name: "original", path: null, bytes: 0 }, undefined)[1]).toBe("(temporary copy)");
  });
});

const tick = () => new Promise((r) => setTimeout(r, 0));
const LAYERS = [
  { name: "blk", type: "Block", shape: "", depth: 0, parent: null, params: 0, group: null, status: "",
    units_alive: null, units_total: null, reason: "", heatmap: false, proposal: null },
  { name: "a", type: "Conv2D", shape: "(None, 4, 4, 8)", depth: 1, parent: "blk", params: 80, group: "a",
    status: "pending", units_alive: 8, units_total: 8, reason: "", heatmap: true,
    proposal: { action: "merge", drop: [1], keep: [0], params_saved: 10 } },
  { name: "b", type: "Conv2D", shape: "(None, 4, 4, 8)", depth: 1, parent: "blk", params: 80, group: "b",
    status: "ready", units_alive: 8, units_total: 8, reason: "", heatmap: true, proposal: null },
];
const OFFERED = [{ name: "keras", description: "float32 .keras", data: false, default: true },
  { name: "tflite-int8", description: "LiteRT dynamic-range int8", data: false, default: true },
  { name: "onnx", description: "ONNX float32", data: false, default: false },
  { name: "tflite-full-int8", description: "LiteRT full-integer int8 (calibrated)", data: true, default: false }];

function mount(extra = {}) {
  const model = fakeModel({
    layers: structuredClone(LAYERS), settings: { strategy: "impact", step: 0.05, target: 0.5 }, strategies: ["impact"],
    metrics: {}, metrics_history: [], history: [], position: 0, running: false, progress: 0, error: "", notice: "",
    export_path: "pruned.keras", live_params: {}, previews: {}, sensitivity: { status: "idle" }, plan: {}, compare: {},
    progress_info: {}, deploy: { status: "idle", eval: false, offered: OFFERED }, ...extra,
  });
  const el = document.createElement("div");
  document.body.append(el);
  widget.render({ model, el });
  const $ = (s) => el.querySelector(s);
  const $$ = (s) => [...el.querySelectorAll(s)];
  const actions = () => model.sent.filter((m) => m.action !== "hello");
  return { model, el, $, $$, actions };
}

describe("rendered", () => {
  it("the accuracy after accepting: computing, then the figure, then stale when the state moves", async () => {
    const pv = { units: 1, params: 10, flops: 20, drop: [1], bound: 0.5, bound_pending: false, eval: true,
      accuracy: null, accuracy_pending: true };
    const { $, el, model } = mount({ previews: { a: pv } });
    el.querySelector(".pw-row[data-layer='blk']").click(); // open the block
    await tick();
    const acc = () => $(".pw-preview[data-layer='a'] .pw-preview-acc");
    expect(acc().dataset.state).toBe("pending");
    expect(acc().textContent).toBe("accuracy after: computing…");
    await model.update("previews", { a: { ...pv, accuracy: 0.93, accuracy_now: 0.97, samples: 500, accuracy_pending: false } });
    await tick();
    expect(acc().dataset.state).toBe("done");
    expect(acc().textContent).toBe("accuracy 97.0% → 93.0% on 500 eval samples");
    expect(acc().classList.contains("pw-stale")).toBe(false);
    await model.update("previews", { a: { ...pv, accuracy: 0.93, accuracy_now: 0.97, samples: 500, accuracy_pending: true,
      accuracy_stale: true } });
    await tick();
    expect(acc().dataset.state).toBe("stale");
    expect(acc().classList.contains("pw-stale")).toBe(true);
  });

  it("a collapsed block shows its most sensitive member's curve; open, each member its own", async () => {
    const sens = { status: "done", current: true, curves: { a: curve("a", [0, 0.5, 1]), b: curve("b", [0, 2, 3]) } };
    const { $, $$, el } = mount({ sensitivity: sens });
    const spark = $(".pw-row[data-layer='blk'] .pw-spark-block");
    expect(spark.getAttribute("data-layer")).toBe("blk");
    expect(spark.querySelector("title").textContent).toContain("most sensitive of 2 prunable layers is b");
    el.querySelector(".pw-row[data-layer='blk']").click();
    await tick();
    expect($(".pw-row[data-layer='blk'] .pw-spark")).toBeNull();
    expect($$(".pw-spark").map((s) => s.getAttribute("data-layer"))).toEqual(["a", "b"]);
  });

  it("comparing two points: the block says how many units went; the legend explains the mark", async () => {
    const { $, el, model } = mount();
    expect(el.classList.contains("pw-comparing")).toBe(false);
    await model.update("compare", { a: 0, b: 2, metrics_a: null, metrics_b: null, layers: [
      { name: "a", units_a: 8, units_b: 5, params_a: 80, params_b: 50, went: [1, 2, 6], went_count: 3, back: [], back_count: 0 },
      { name: "b", units_a: 8, units_b: 8, params_a: 80, params_b: 80, went: [], went_count: 0, back: [], back_count: 0 }] });
    await tick();
    expect(el.classList.contains("pw-comparing")).toBe(true);
    expect($(".pw-row[data-layer='blk'] .pw-units").textContent).toBe("3 went");
    expect($(".pw-row[data-layer='blk'] .pw-units").title).toContain("3 units went in 1 layer of this block");
    el.querySelector(".pw-row[data-layer='blk']").click();
    await tick();
    expect($(".pw-went[data-layer='a']").textContent).toBe("between points 0 and 2: units 1, 2, 6 went");
    expect($(".pw-went[data-layer='b']")).toBeNull();
    expect($(".pw-heat-legend").textContent).toContain("went between the compared points");
  });

  it("deploy: tick formats, choose a folder, deploy; confirm overwriting; the table", async () => {
    const { $, $$, model, actions } = mount();
    const boxes = $$(".pw-deploy-format");
    expect(boxes.map((b) => [b.value, b.checked, b.disabled])).toEqual([["keras", true, false],
      ["tflite-int8", true, false], ["onnx", false, false], ["tflite-full-int8", false, true]]);
    expect(boxes[3].parentElement.title).toContain("eval_data");
    boxes[2].click(); // onnx on
    boxes[0].click(); // keras off
    const dir = $(".pw-deploy-dir");
    dir.value = "/tmp/x";
    dir.dispatchEvent(new Event("input"));
    $(".pw-deploy").click();
    expect(actions()).toEqual([{ type: "action", action: "deploy", formats: ["tflite-int8", "onnx"], dir: "/tmp/x" }]);
    model.trigger("msg:custom", { type: "confirm_overwrite", kind: "deploy", paths: ["/tmp/x/pruned.int8.tflite"],
      dir: "/tmp/x", formats: ["tflite-int8", "onnx"] }, []);
    expect($(".pw-confirm").textContent).toContain("A file exists in /tmp/x: pruned.int8.tflite. Overwrite?");
    expect(document.activeElement.classList.contains("pw-keep")).toBe(true);
    $(".pw-overwrite").click();
    expect(actions().at(-1)).toEqual({ type: "action", action: "deploy", formats: ["tflite-int8", "onnx"], dir: "/tmp/x",
      overwrite: true });
    await model.update("deploy", { status: "running", step: "writing and verifying pruned + onnx", eval: false, offered: OFFERED });
    await tick();
    expect($(".pw-deploy-status").textContent).toBe("deploying: writing and verifying pruned + onnx…");
    expect($(".pw-deploy").getAttribute("aria-disabled")).toBe("true");
    expect($$(".pw-deploy-format").map((b) => b.checked)).toEqual([false, true, true, false]); // the ticks stay
    const box = $(".pw-deploy-format");
    await model.update("metrics", { accuracy: 0.5 });
    await tick();
    expect($(".pw-deploy-format")).toBe(box); // a redraw keeps the controls (a key held on one still lands)
    await model.update("deploy", { status: "done", eval: false, offered: OFFERED, epsilons: [], n_eval: null, n_probes: 256,
      rows: [{ name: "original", path: null, bytes: 4096, times_smaller: 1, accuracy: null, agreement: 1 },
        { name: "pruned + onnx", path: "/tmp/x/pruned.onnx", bytes: 1024, times_smaller: 4, accuracy: null, agreement: 0.98,
          note: "" }] });
    await tick();
    const tr = $$(".pw-deploy-table tr").find((x) => x.dataset.name === "pruned + onnx"); // (jsdom: no "+" in selectors)
    const cells = [...tr.querySelectorAll("td")].map((td) => td.textContent);
    expect(cells).toEqual(["pruned + onnx", "pruned.onnx", "1.0 KiB", "4.0×", "–", "–", "–", "98.0%"]);
    expect($(".pw-deploy-status")).toBeNull();
  });
});
