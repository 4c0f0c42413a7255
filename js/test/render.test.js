// @vitest-environment jsdom
// The widget rendered in jsdom against a fake anywidget model: what a person clicks is what the kernel gets.
import { describe, expect, it } from "vitest";
import widget from "../src/widget.js";
import { fakeModel } from "./fake_model.js";

const row = (name, status, extra = {}) => ({
  name, type: "Dense", shape: "(None, 8)", depth: 0, parent: null, params: 10, group: name, status,
  units_alive: 8, units_total: 8, reason: status === "not prunable" ? "reaches the model output" : "",
  heatmap: true, proposal: status === "pending" ? { action: "merge", drop: [1], keep: [0], params_saved: 3 } : null,
  ...extra,
});

function mount(layers, extra = {}) {
  const model = fakeModel({
    layers, settings: { strategy: "impact", step: 0.05, target: 0.5 }, strategies: ["baseline", "impact"],
    metrics: {}, metrics_history: [], history: [], position: 0, running: false, progress: 0, error: "",
    export_path: "pruned.keras", ...extra,
  });
  const el = document.createElement("div");
  document.body.append(el);
  widget.render({ model, el });
  return { model, el };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

describe("rendered widget", () => {
  it("asks for heatmaps, shows one row per layer with status and reason", () => {
    const { model, el } = mount([row("d1", "pending"), row("out", "not prunable")]);
    expect(model.sent[0]).toEqual({ type: "action", action: "hello" });
    const rows = el.querySelectorAll(".pw-row[data-layer]");
    expect([...rows].map((r) => r.dataset.layer)).toEqual(["d1", "out"]);
    const chip = el.querySelector(".pw-row[data-layer='out'] .pw-chip");
    expect(chip.textContent).toBe("not prunable");
    expect(chip.title).toContain("output");
    expect(el.querySelector(".pw-row[data-layer='out'] .pw-accept").disabled).toBe(true);
  });

  it("sends accept for the clicked row and for 'a' on the focused row", () => {
    const { model, el } = mount([row("d1", "pending"), row("d2", "pending")]);
    el.querySelector(".pw-row[data-layer='d2'] .pw-accept").click();
    expect(model.sent.at(-1)).toEqual({ type: "action", action: "accept", layer: "d2" });
    const tree = el.querySelector(".pw-tree");
    tree.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowDown", bubbles: true }));
    tree.dispatchEvent(new KeyboardEvent("keydown", { key: "a", bubbles: true }));
    expect(model.sent.at(-1)).toEqual({ type: "action", action: "accept", layer: "d2" });
    tree.dispatchEvent(new KeyboardEvent("keydown", { key: "l", bubbles: true }));
    expect(model.sent.at(-1)).toEqual({ type: "action", action: "lock", layer: "d2" });
  });

  it("toolbar buttons follow the state and keep their identity across updates", async () => {
    const { model, el } = mount([row("d1", "ready")]);
    const undo = el.querySelector(".pw-undo");
    const isOff = (b) => b.getAttribute("aria-disabled") === "true";
    expect(isOff(undo)).toBe(true);
    expect(isOff(el.querySelector(".pw-cancel"))).toBe(true);
    model.update("history", [{ index: 1, kind: "propose", label: "propose iteration 1", applied: true }]);
    model.update("position", 1);
    model.update("running", true);
    await tick();
    expect(el.querySelector(".pw-undo")).toBe(undo);  // updated in place, never replaced
    expect(isOff(undo)).toBe(true);  // running
    expect(isOff(el.querySelector(".pw-cancel"))).toBe(false);
    el.querySelector(".pw-cancel").click();
    expect(model.sent.at(-1)).toEqual({ type: "action", action: "cancel" });
    model.update("running", false);
    await tick();
    expect(isOff(undo)).toBe(false);
    el.querySelector(".pw-hist[data-index='1']").click();
    expect(model.sent.at(-1)).toEqual({ type: "action", action: "goto", n: 1 });
  });

  it("shows errors and draws heatmaps from binary buffers", () => {
    const calls = [];
    HTMLCanvasElement.prototype.getContext = () => ({ putImageData: (img) => calls.push([img.width, img.height]) });
    globalThis.ImageData = class { constructor(data, w, h) { this.data = data; this.width = w; this.height = h; } };
    const { model, el } = mount([row("d1", "pending")]);
    model.trigger("msg:custom", { type: "error", message: "layer 'x' is not prunable" }, []);
    expect(el.querySelector(".pw-error").textContent).toContain("not prunable");
    const bytes = new Uint8Array(2 * 4).fill(100);
    model.trigger("msg:custom", { type: "heatmaps", names: ["d1"], shapes: [[2, 4]] }, [new DataView(bytes.buffer)]);
    expect(calls).toContainEqual([4, 2]);
  });
});
