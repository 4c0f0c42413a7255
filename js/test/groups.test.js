// @vitest-environment jsdom
// A layer with several unit groups (attention heads, key_dim, value_dim) shows one row per group, each decided
// and locked on its own; robustness kept above 100 % is said in words; a redraw keeps the tree's scroll.
import { describe, expect, it } from "vitest";
import { actionName, actionTarget, keyAction, rowLabel } from "../src/tree.js";
import { deployCells, filterRows, keptText } from "../src/format.js";
import widget from "../src/widget.js";
import { fakeModel } from "./fake_model.js";

const mhaRow = (name, group, part, units, params) => ({ name, type: "MultiHeadAttention", shape: "(None, 6, 8)",
  depth: 0, parent: null, params, layer_params: 292, group, layer: "mha", part, label: `mha · ${part}`,
  units_total: units, reason: "", heatmap: true });
const LAYERS = [
  mhaRow("mha", "mha", "heads", 3, 96), mhaRow("mha/key_dim", "mha/key_dim", "key_dim", 4, 72),
  mhaRow("mha/value_dim", "mha/value_dim", "value_dim", 4, 88),
  { name: "d1", type: "Dense", shape: "(None, 10)", depth: 0, parent: null, params: 90, group: "d1",
    units_total: 10, reason: "", heatmap: true },
];
const STATES = {
  mha: { status: "pending", units_alive: 3, proposal: { action: "drop", drop: [1], keep: [-1], params_saved: 32 } },
  "mha/key_dim": { status: "pending", units_alive: 4, proposal: { action: "drop", drop: [0], keep: [-1], params_saved: 18 } },
  "mha/value_dim": { status: "ready", units_alive: 4, proposal: null },
  d1: { status: "ready", units_alive: 10, proposal: null },
};

function mount(extra = {}) {
  const model = fakeModel({
    layers: LAYERS, states: STATES, settings: { strategy: "impact", step: 0.05, target: 0.5 },
    strategies: ["impact"], metrics: {}, metrics_pending: false, metrics_history: [], history: [], position: 0,
    running: false, progress: 0, error: "", export_path: "pruned.keras",
    live_params: { mha: 292, "mha/key_dim": 54, d1: 90 }, ...extra,
  });
  const el = document.createElement("div");
  document.body.append(el);
  widget.render({ model, el });
  return { model, el };
}
const tick = () => new Promise((r) => setTimeout(r, 0));
const row = (el, name) => el.querySelector(`.pw-row[data-layer='${name}']`);
const key = (el, k) => el.querySelector(".pw-tree").dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true }));

describe("group rows (pure helpers)", () => {
  it("label, accessible name and action target name the layer and the group", () => {
    expect(rowLabel(LAYERS[1])).toBe("mha · key_dim");
    expect(rowLabel(LAYERS[3])).toBe("d1");
    expect(actionName("Lock", LAYERS[1])).toBe("Lock mha key_dim");
    expect(actionName("Lock", LAYERS[3])).toBe("Lock d1");
    expect(actionTarget(LAYERS[1])).toBe("mha/key_dim");
    expect(actionTarget(LAYERS[0])).toBe("mha");
    // a single-group row still names its layer (the session resolves it), as before
    expect(actionTarget({ name: "res_b", group: "res_a+res_b" })).toBe("res_b");
    expect(keyAction("l", { ...LAYERS[1], status: "ready" })).toBe("lock");
  });

  it("the filter finds a group by its label", () => {
    const rows = LAYERS.map((r) => ({ ...r }));
    expect(filterRows(rows, "mha · value").map((r) => r.name)).toEqual(["mha/value_dim"]);
    expect(filterRows(rows, "key_dim").map((r) => r.name)).toEqual(["mha/key_dim"]);
  });
});

describe("rendered group rows", () => {
  it("shows one row per group with its own units, params, chip and buttons", () => {
    const { el } = mount();
    const names = [...el.querySelectorAll(".pw-row[data-layer] .pw-name")].map((n) => n.textContent);
    expect(names).toEqual(["mha · heads", "mha · key_dim", "mha · value_dim", "d1"]);
    expect(row(el, "mha/key_dim").querySelector(".pw-units").textContent).toBe("4 / 4");
    expect(row(el, "mha/key_dim").querySelector(".pw-params").textContent).toBe("54");
    expect(row(el, "mha/key_dim").querySelector(".pw-params").title).toContain("this group's units");
    expect(row(el, "mha/value_dim").querySelector(".pw-chip").textContent).toBe("ready");
    const lock = row(el, "mha/key_dim").querySelector(".pw-lock");
    expect(lock.getAttribute("aria-label")).toBe("Lock mha key_dim");
    expect(row(el, "mha").querySelector(".pw-accept").getAttribute("aria-label")).toBe("Accept mha heads");
    expect(row(el, "d1").querySelector(".pw-lock").getAttribute("aria-label")).toBe("Lock d1");
  });

  it("sends every action to the row's group, by click and by key", () => {
    const { model, el } = mount();
    row(el, "mha/key_dim").querySelector(".pw-lock").click();
    expect(model.sent.at(-1)).toEqual({ type: "action", action: "lock", layer: "mha/key_dim" });
    row(el, "mha/key_dim").querySelector(".pw-accept").click();
    expect(model.sent.at(-1)).toEqual({ type: "action", action: "accept", layer: "mha/key_dim" });
    key(el, "ArrowDown"); key(el, "ArrowDown"); // mha · value_dim
    expect(el.querySelector(".pw-focus").dataset.layer).toBe("mha/value_dim");
    key(el, "l");
    expect(model.sent.at(-1)).toEqual({ type: "action", action: "lock", layer: "mha/value_dim" });
  });

  it("follows each group's own state, sensitivity, plan and preview", async () => {
    const curve = (name) => ({ name, ratios: [0, 0.5], bound: [0, 0.2], agreement: [1, 0.9], accuracy: [null, null],
      params: [0, 10], flops: [0, 10] });
    const { model, el } = mount({
      sensitivity: { status: "done", current: true, curves: { mha: curve("mha"), "mha/key_dim": curve("mha/key_dim") } },
      plan: { targets: { "mha/key_dim": 0.5 }, message: "1 layer pruned to its own share removes ~9 %", reached: true },
      previews: { "mha/key_dim": { units: 1, params: 18, flops: 100, drop: [0], bound: 0.1, eval: false } },
    });
    expect(row(el, "mha/key_dim").querySelector(".pw-spark").dataset.layer).toBe("mha/key_dim");
    expect(row(el, "mha/key_dim").querySelector(".pw-plan-share").textContent).toBe("50.0%");
    expect(row(el, "mha").querySelector(".pw-plan-share")).toBeNull();
    expect(el.querySelector(".pw-preview").dataset.layer).toBe("mha/key_dim");
    model.update("states", { ...STATES, "mha/key_dim": { status: "locked", units_alive: 4, proposal: null } });
    await tick();
    expect(row(el, "mha/key_dim").dataset.status).toBe("locked");
    expect(row(el, "mha").dataset.status).toBe("pending");
    expect(row(el, "mha/key_dim").querySelector(".pw-unlock").getAttribute("aria-label")).toBe("Unlock mha key_dim");
    row(el, "mha/key_dim").click(); // the side panel names the group
    expect(el.querySelector(".pw-sens-panel h4").textContent).toBe("Sensitivity of mha · key_dim");
  });

  it("gives the keyboard focus back to the tree when a clicked button is redrawn away", async () => {
    // (the scroll position kept on redraw is checked in a real browser: jsdom does no layout)
    const { model, el } = mount();
    const tree = el.querySelector(".pw-tree");
    const accept = row(el, "mha").querySelector(".pw-accept");
    accept.focus();
    accept.click();
    model.update("states", { ...STATES, mha: { status: "accepted", units_alive: 2, proposal: null } });
    await tick();
    expect(row(el, "mha").dataset.status).toBe("accepted");
    expect(accept.isConnected).toBe(false);
    expect(document.activeElement).toBe(tree);
  });
});

describe("robustness kept", () => {
  it("says a share above 100 % in words instead of a bare percentage", () => {
    expect(keptText(0.95).text).toBe("95.0%");
    const k = keptText(1.037);
    expect(k.text).toBe("103.7% · more than the original");
    expect(k.title).toContain("3.7% more eval samples than the original");
    expect(keptText(null).text).toBe("–");
    expect(deployCells({ name: "keras", robust_kept: { 0.1: 1.037 } }, 0.1)[6]).toBe("103.7% · more than the original");
  });

  it("shows it so in the metrics list", () => {
    const { el } = mount({ metrics: { robust_preserved: { 0.1: 1.037 }, eval_samples: 100 } });
    const dd = el.querySelector("dd[data-metric='robust @0.1']");
    expect(dd.textContent).toBe("103.7% · more than the original");
    expect(dd.title).toContain("not capped");
    expect(dd.title).toContain("on 100 eval samples");
  });
});
