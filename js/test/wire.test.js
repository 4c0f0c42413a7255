import { describe, expect, it, vi } from "vitest";
import { applyHeatmaps, asBytes, detailAt, sendAction } from "../src/wire.js";

describe("asBytes", () => {
  it("returns a Uint8Array as is", () => {
    const a = new Uint8Array([1, 2, 3]);
    expect(asBytes(a)).toBe(a);
  });

  it("views a whole ArrayBuffer without copying", () => {
    const buf = new Uint8Array([9, 8, 7, 6]).buffer;
    const out = asBytes(buf);
    expect(out).toBeInstanceOf(Uint8Array);
    expect([...out]).toEqual([9, 8, 7, 6]);
    expect(out.buffer).toBe(buf);
  });

  it("respects a DataView's byteOffset and byteLength", () => {
    const buf = new Uint8Array([0, 1, 2, 3, 4, 5, 6, 7]).buffer;
    const out = asBytes(new DataView(buf, 3, 4));
    expect([...out]).toEqual([3, 4, 5, 6]);
    expect(out.buffer).toBe(buf); // a view, not a copy
    expect(out.byteOffset).toBe(3);
    expect(asBytes(new DataView(buf)).length).toBe(8);
    expect(asBytes(new DataView(buf, 8)).length).toBe(0);
  });

  it("keeps a Uint8Array's offset (a sub-array of a bigger buffer)", () => {
    const big = new Uint8Array([10, 11, 12, 13, 14, 15]);
    const sub = big.subarray(2, 5);
    expect([...asBytes(sub)]).toEqual([12, 13, 14]);
  });

  it("rejects anything else", () => {
    for (const bad of [null, undefined, [1, 2], "abc", new Uint16Array(2), new Int8Array(2), { byteLength: 2 }]) {
      expect(() => asBytes(bad)).toThrow("unexpected buffer type");
    }
  });
});

describe("applyHeatmaps", () => {
  const dv = (bytes, pad = 0) => {
    const buf = new Uint8Array(bytes.length + 2 * pad);
    buf.set(bytes, pad);
    return new DataView(buf.buffer, pad, bytes.length);
  };

  it("stores each heatmap by name with its shape and bytes, and returns the names", () => {
    const cache = new Map();
    const changed = applyHeatmaps(cache, { type: "heatmaps", names: ["a", "b"], shapes: [[2, 3], [1, 2]] },
      [dv([1, 2, 3, 4, 5, 6], 5), new Uint8Array([7, 8]).buffer]);
    expect(changed).toEqual(["a", "b"]);
    expect(cache.size).toBe(2);
    expect(cache.get("a").h).toBe(2);
    expect(cache.get("a").w).toBe(3);
    expect([...cache.get("a").data]).toEqual([1, 2, 3, 4, 5, 6]);
    expect(cache.get("b")).toMatchObject({ h: 1, w: 2 });
    expect([...cache.get("b").data]).toEqual([7, 8]);
  });

  it("replaces changed entries and keeps the others", () => {
    const cache = new Map();
    applyHeatmaps(cache, { names: ["a", "b"], shapes: [[1, 1], [1, 1]] }, [new Uint8Array([1]), new Uint8Array([2])]);
    const changed = applyHeatmaps(cache, { names: ["b"], shapes: [[1, 2]] }, [new Uint8Array([3, 4])]);
    expect(changed).toEqual(["b"]);
    expect([...cache.get("a").data]).toEqual([1]);
    expect(cache.get("b")).toMatchObject({ h: 1, w: 2 });
    expect([...cache.get("b").data]).toEqual([3, 4]);
  });

  it("accepts an empty message", () => {
    const cache = new Map();
    expect(applyHeatmaps(cache, { names: [], shapes: [] }, [])).toEqual([]);
    expect(cache.size).toBe(0);
  });

  it("throws when names, shapes and buffers differ in length", () => {
    const cache = new Map();
    const one = [new Uint8Array([1])];
    const msg = "heatmap message: names, shapes and buffers differ in length";
    expect(() => applyHeatmaps(cache, { names: ["a", "b"], shapes: [[1, 1], [1, 1]] }, one)).toThrow(msg);
    expect(() => applyHeatmaps(cache, { names: ["a"], shapes: [] }, one)).toThrow(msg);
    expect(() => applyHeatmaps(cache, { names: ["a"], shapes: [[1, 1], [1, 1]] }, one)).toThrow(msg);
    expect(() => applyHeatmaps(cache, { names: [], shapes: [] }, one)).toThrow(msg);
    expect(cache.size).toBe(0);
  });

  it("throws when a buffer does not hold h*w bytes, naming the layer", () => {
    const cache = new Map();
    expect(() => applyHeatmaps(cache, { names: ["dense"], shapes: [[2, 3]] }, [new Uint8Array(5)]))
      .toThrow("heatmap dense: 5 bytes for 2x3");
    // the DataView's own length counts, not the length of the buffer under it
    expect(() => applyHeatmaps(cache, { names: ["dense"], shapes: [[2, 3]] }, [dv([1, 2, 3, 4, 5], 4)]))
      .toThrow(/5 bytes for 2x3/);
    expect(cache.has("dense")).toBe(false);
  });
});

describe("sendAction", () => {
  it("sends {type: 'action', action, ...fields}", () => {
    const model = { send: vi.fn() };
    sendAction(model, "accept", { layer: "dense" });
    sendAction(model, "propose");
    sendAction(model, "configure", { settings: { step: 0.1 } });
    expect(model.send.mock.calls).toEqual([
      [{ type: "action", action: "accept", layer: "dense" }],
      [{ type: "action", action: "propose" }],
      [{ type: "action", action: "configure", settings: { step: 0.1 } }],
    ]);
  });

  it("keeps falsy fields (goto 0 = the original model)", () => {
    const model = { send: vi.fn() };
    sendAction(model, "goto", { n: 0 });
    expect(model.send).toHaveBeenCalledWith({ type: "action", action: "goto", n: 0 });
  });
});

describe("detailAt", () => {
  // a 4x8 image (h=4 rows, w=8 columns) of a 4x8 source: one pixel per source cell
  const img = (h, w, source, max = 2) => ({
    shape: [h, w], source_shape: source, max,
    data: Uint8Array.from({ length: h * w }, (_, i) => i % 256),
  });

  it("maps the four corners of the drawn image to the four corner pixels", () => {
    const d = img(4, 8, [4, 8]);
    const W = 160, H = 40;
    expect(detailAt(d, 0, 0, W, H)).toMatchObject({ row: [0, 0], col: [0, 0] });
    expect(detailAt(d, W - 0.01, 0, W, H)).toMatchObject({ row: [0, 0], col: [7, 7] });
    expect(detailAt(d, 0, H - 0.01, W, H)).toMatchObject({ row: [3, 3], col: [0, 0] });
    expect(detailAt(d, W - 0.01, H - 0.01, W, H)).toMatchObject({ row: [3, 3], col: [7, 7] });
  });

  it("clamps pointers on or beyond the edges", () => {
    const d = img(4, 8, [4, 8]);
    expect(detailAt(d, 160, 40, 160, 40)).toMatchObject({ row: [3, 3], col: [7, 7] });
    expect(detailAt(d, 500, 500, 160, 40)).toMatchObject({ row: [3, 3], col: [7, 7] });
    expect(detailAt(d, -5, -5, 160, 40)).toMatchObject({ row: [0, 0], col: [0, 0] });
  });

  it("reads the pixel under the pointer, row-major", () => {
    const d = img(4, 8, [4, 8], 255 * 255);
    // pixel (r=2, c=5) -> data index 21; value = (21/255)^2 * max = 21^2
    const at = detailAt(d, 5 * 20 + 10, 2 * 10 + 5, 160, 40);
    expect(at.row).toEqual([2, 2]);
    expect(at.col).toEqual([5, 5]);
    expect(at.value).toBeCloseTo(21 * 21, 9);
  });

  it("undoes the square-root scaling of payload.to_uint8: 0 -> 0, 255 -> max, 128 -> ~max/4", () => {
    const d = { shape: [1, 3], source_shape: [1, 3], max: 0.8, data: new Uint8Array([0, 255, 128]) };
    expect(detailAt(d, 0.5, 0.5, 3, 1).value).toBe(0);
    expect(detailAt(d, 1.5, 0.5, 3, 1).value).toBeCloseTo(0.8, 12);
    expect(detailAt(d, 2.5, 0.5, 3, 1).value).toBeCloseTo(0.8 * (128 / 255) ** 2, 12);
    // round trip of to_uint8: v = round(sqrt(x / max) * 255)
    for (const x of [0.01, 0.1, 0.3, 0.79]) {
      const v = Math.round(Math.sqrt(x / 0.8) * 255);
      const back = detailAt({ ...d, data: new Uint8Array([v, v, v]) }, 0, 0, 3, 1).value;
      expect(Math.abs(back - x)).toBeLessThan(0.8 * 2 * Math.sqrt(x / 0.8) / 255 + 1e-9);
    }
  });

  it("reports the source rows/columns a pixel covers when downsampled (exact division)", () => {
    const d = img(2, 4, [6, 12]); // 3 source rows, 3 source columns per pixel
    expect(detailAt(d, 0, 0, 4, 2)).toMatchObject({ row: [0, 2], col: [0, 2] });
    expect(detailAt(d, 3.5, 1.5, 4, 2)).toMatchObject({ row: [3, 5], col: [9, 11] });
    expect(detailAt(d, 1.5, 0, 4, 2)).toMatchObject({ col: [3, 5] });
  });

  it("covers the first and last source cells at the corners (uneven division)", () => {
    const d = img(128, 128, [200, 300]);
    expect(detailAt(d, 0, 0, 128, 128).row[0]).toBe(0);
    expect(detailAt(d, 0, 0, 128, 128).col[0]).toBe(0);
    expect(detailAt(d, 127.9, 127.9, 128, 128).row[1]).toBe(199);
    expect(detailAt(d, 127.9, 127.9, 128, 128).col[1]).toBe(299);
  });

  // BUG: payload.downsample gives pixel i the source rows floor(i*m/n) .. floor((i+1)*m/n) - 1
  // (np.linspace(0, m, n + 1).astype(int)), but detailAt ends the span at ceil((i+1)*m/n) - 1, so when
  // m is not a multiple of n adjacent pixels overlap: for a 200-row kernel in a 128-pixel detail,
  // pixel 0 is reported as rows 0–1 (it is row 0 only) and pixel 1 as rows 1–3 (it is rows 1–2).
  it("reports the same source spans as payload.downsample, without overlap", () => {
    const n = 128, m = 200;
    const d = img(n, n, [m, m]);
    // numpy: np.linspace(0, 200, 129).astype(int)[:4] == [0, 1, 3, 4]
    expect(detailAt(d, 0, 0.5, n, n).row).toEqual([0, 0]);
    expect(detailAt(d, 0, 1.5, n, n).row).toEqual([1, 2]);
    let next = 0;
    for (let i = 0; i < n; i++) {
      const { row } = detailAt(d, 0, i + 0.5, n, n);
      expect(row[0]).toBe(next);
      expect(row[1]).toBe(Math.floor(((i + 1) * m) / n) - 1);
      next = row[1] + 1;
    }
    expect(next).toBe(m);
  });
});
