// @vitest-environment jsdom
// The tree's fixed rows merged with per-group states; blocks summarise their children and open with the keys.
import { describe, expect, it } from "vitest";
import { childSummary, mergeRows, summaryStatus, summaryText, treeKey } from "../src/tree.js";
import widget from "../src/widget.js";
import { fakeModel } from "./fake_model.js";

// What the kernel sends: `layers` once (no status on grouped rows), `states` per group on every update.
const LAYERS = [
  { name: "stem", type: "Conv2D", shape: "(None, 8, 8, 8)", depth: 0, parent: null, params: 224, group: "stem",
    units_total: 8, reason: "", heatmap: true },
  { name: "conv2_block1", type: "Block", shape: "(None, 4, 4, 8)", depth: 0, parent: null, params: 600,
    group: null, status: "", units_alive: null, units_total: null, reason: "4 layers from pool to add",
    heatmap: false, proposal: null },
  { name: "res_a", type: "Conv2D", shape: "(None, 4, 4, 8)", depth: 1, parent: "conv2_block1", params: 584,
    group: "res_a+res_b", units_total: 8, reason: "", heatmap: true },
  { name: "res_b", type: "Conv2D", shape: "(None, 4, 4, 8)", depth: 1, parent: "conv2_block1", params: 72,
    group: "res_a+res_b", units_total: 8, reason: "", heatmap: true },
  { name: "add", type: "Add", shape: "(None, 4, 4, 8)", depth: 1, parent: "conv2_block1", params: 0,
    group: null, status: "", units_alive: null, units_total: null, reason: "", heatmap: false, proposal: null },
  { name: "logits", type: "Dense", shape: "(None, 3)", depth: 0, parent: null, params: 27, group: "logits",
    units_total: 3, reason: "reaches the model output", heatmap: true },
];
const STATES = {
  stem: { status: "accepted", units_alive: 6, proposal: null },
  "res_a+res_b": { status: "pending", units_alive: 8, proposal: { action: "drop", drop: [2], keep: [], params_saved: 9 } },
  logits: { status: "not prunable", units_alive: 3, proposal: null },
};

describe("mergeRows", () => {
  it("fills each grouped row from its group's state and leaves the rest alone", () => {
    const rows = mergeRows(LAYERS, STATES);
    expect(rows.map((r) => r.status)).toEqual(["accepted", "", "pending", "pending", "", "not prunable"]);
    expect(rows[0].units_alive).toBe(6);
    expect(rows[2].proposal.drop).toEqual([2]);
    expect(rows[1]).toBe(LAYERS[1]); // rows without a group are not copied
    expect(LAYERS[0].status).toBeUndefined(); // the trait's own rows are not mutated
  });

  it("copes with missing traits and with states for unknown groups", () => {
    expect(mergeRows(undefined, undefined)).toEqual([]);
    expect(mergeRows(LAYERS, { nobody: { status: "pending" } })[0].status).toBeUndefined();
  });
});

describe("childSummary / summaryText", () => {
  it("counts the statuses of grouped descendants, nested parents included", () => {
    const rows = mergeRows(LAYERS, STATES);
    expect(childSummary(rows, "conv2_block1")).toEqual({ pending: 2 });
    expect(childSummary(rows, "stem")).toEqual({});
    const nested = [...rows, { name: "deep", depth: 2, parent: "res_a", group: "deep", status: "locked" }];
    expect(childSummary(nested, "conv2_block1")).toEqual({ pending: 2, locked: 1 });
  });

  it("names what needs the user first", () => {
    expect(summaryText({ accepted: 3, pending: 1 })).toBe("1 pending");
    expect(summaryText({ accepted: 3, locked: 2 })).toBe("2 locked");
    expect(summaryText({ ready: 4 })).toBe("");
    expect(summaryStatus({ accepted: 3, pending: 1 })).toBe("pending");
    expect(summaryStatus({ ready: 4 })).toBe("");
  });
});

describe("treeKey", () => {
  const block = LAYERS[1], child = LAYERS[2], top = LAYERS[0];
  it("opens and closes parents and climbs from a child", () => {
    expect(treeKey("ArrowRight", block, true, false)).toBe("open");
    expect(treeKey("ArrowRight", block, true, true)).toBe(null);
    expect(treeKey("ArrowLeft", block, true, true)).toBe("close");
    expect(treeKey("ArrowLeft", child, false, false)).toBe("parent");
    expect(treeKey("ArrowLeft", top, false, false)).toBe(null);
    expect(treeKey("ArrowRight", top, false, false)).toBe(null);
    expect(treeKey("ArrowLeft", undefined, false, false)).toBe(null);
  });
});

function mount(extra = {}) {
  const model = fakeModel({
    layers: LAYERS, states: STATES, settings: { strategy: "impact", step: 0.05, target: 0.5 },
    strategies: ["impact"], metrics: {}, metrics_pending: false, metrics_history: [], history: [], position: 0,
    running: false, progress: 0, error: "", export_path: "pruned.keras", ...extra,
  });
  const el = document.createElement("div");
  document.body.append(el);
  widget.render({ model, el });
  return { model, el };
}

const tick = () => new Promise((r) => setTimeout(r, 0));
const shown = (el) => [...el.querySelectorAll(".pw-row[data-layer]")].map((r) => r.dataset.layer);
const key = (el, k) => el.querySelector(".pw-tree").dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true }));

describe("rendered blocks", () => {
  it("starts closed with a summary chip, opens with a click and with the arrow keys", () => {
    const { el } = mount();
    expect(el.querySelector(".pw-tree").dataset.lmSuppressShortcuts).toBe("true"); // JupyterLab keeps its keys off
    expect(shown(el)).toEqual(["stem", "conv2_block1", "logits"]);
    const block = el.querySelector(".pw-row[data-layer='conv2_block1']");
    expect(block.getAttribute("aria-expanded")).toBe("false");
    expect(block.querySelector(".pw-chip").textContent).toBe("2 pending");
    expect(block.querySelector(".pw-chip").className).toContain("pw-pending");
    expect(block.querySelector(".pw-accept")).toBeNull(); // a block has no row actions
    block.click();
    expect(shown(el)).toEqual(["stem", "conv2_block1", "res_a", "res_b", "add", "logits"]);
    el.querySelector(".pw-row[data-layer='conv2_block1']").click();
    expect(shown(el)).toEqual(["stem", "conv2_block1", "logits"]);
    expect(el.querySelector(".pw-focus").dataset.layer).toBe("conv2_block1"); // a click focuses the row
    key(el, "ArrowRight");
    expect(shown(el)).toContain("res_a");
    key(el, "ArrowDown"); // res_a
    expect(el.querySelector(".pw-focus").dataset.layer).toBe("res_a");
    key(el, "ArrowLeft"); // back up to the block
    expect(el.querySelector(".pw-focus").dataset.layer).toBe("conv2_block1");
    key(el, "ArrowLeft"); // and close it
    expect(shown(el)).toEqual(["stem", "conv2_block1", "logits"]);
  });

  it("acts on a child's group and follows new states without a new tree", async () => {
    const { model, el } = mount();
    el.querySelector(".pw-row[data-layer='conv2_block1']").click();
    el.querySelector(".pw-row[data-layer='res_b'] .pw-accept").click();
    expect(model.sent.at(-1)).toEqual({ type: "action", action: "accept", layer: "res_b" });
    model.update("states", { ...STATES, "res_a+res_b": { status: "accepted", units_alive: 7, proposal: null } });
    await tick();
    expect(el.querySelector(".pw-row[data-layer='res_a'] .pw-units").textContent).toBe("7 / 8");
    expect(el.querySelector(".pw-row[data-layer='res_a']").dataset.status).toBe("accepted");
    expect(el.querySelector(".pw-row[data-layer='conv2_block1'] .pw-chip").textContent).toBe("2 accepted");
    expect(el.querySelector(".pw-accept-all").getAttribute("aria-disabled")).toBe("true"); // nothing pending any more
  });

  it("says when the metrics are being computed", async () => {
    const { model, el } = mount({ metrics_pending: true });
    expect(el.querySelector(".pw-side h4").textContent).toContain("computing");
    model.update("metrics_pending", false);
    await tick();
    expect(el.querySelector(".pw-side h4").textContent).toBe("Metrics");
  });
});
