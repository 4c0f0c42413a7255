import { describe, expect, it } from "vitest";
import { colormap, columnOfUnit, proposalMarks, toRGBA, unitsOfColumn } from "../src/heatmap.js";

const VIOLET = [68, 1, 84];
const TEAL = [33, 145, 140];
const YELLOW = [253, 231, 37];
const RED = [230, 60, 60];
const BLUE = [60, 140, 240];
const luminance = ([r, g, b]) => 0.2126 * r + 0.7152 * g + 0.0722 * b;

// Block boundaries of payload.downsample: np.linspace(0, n, w + 1).astype(int), i.e. floor(j * n / w)
// (checked against numpy for the (n, w) pairs below).
const pyStart = (j, n, w) => Math.floor((j * n) / w);
const pyColumnOfUnit = (u, n, w) => {
  let j = 0;
  while (j + 1 < w && pyStart(j + 1, n, w) <= u) j++;
  return j;
};

describe("colormap", () => {
  it("hits the three stops at 0, 127.5 and 255", () => {
    expect(colormap(0)).toEqual(VIOLET);
    expect(colormap(255)).toEqual(YELLOW);
    expect(colormap(127.5)).toEqual(TEAL);
  });

  it("clamps values outside 0..255", () => {
    expect(colormap(-40)).toEqual(VIOLET);
    expect(colormap(1000)).toEqual(YELLOW);
  });

  it("returns integer channels in 0..255", () => {
    for (let v = 0; v <= 255; v++) {
      const c = colormap(v);
      expect(c).toHaveLength(3);
      for (const x of c) {
        expect(Number.isInteger(x)).toBe(true);
        expect(x).toBeGreaterThanOrEqual(0);
        expect(x).toBeLessThanOrEqual(255);
      }
    }
  });

  it("gets brighter (luminance and green never fall) as the value grows", () => {
    let prev = colormap(0);
    for (let v = 1; v <= 255; v++) {
      const c = colormap(v);
      expect(luminance(c)).toBeGreaterThanOrEqual(luminance(prev) - 1e-9);
      expect(c[1]).toBeGreaterThanOrEqual(prev[1]);
      prev = c;
    }
    expect(luminance(colormap(255)) - luminance(colormap(0))).toBeGreaterThan(150);
  });
});

describe("toRGBA", () => {
  it("returns h*w*4 opaque pixels in colormap colours, row-major", () => {
    const bytes = new Uint8Array([0, 255, 127, 10, 20, 30]);
    const out = toRGBA(bytes, 2, 3);
    expect(out).toBeInstanceOf(Uint8ClampedArray);
    expect(out.length).toBe(2 * 3 * 4);
    for (let i = 0; i < 6; i++) {
      expect([...out.slice(i * 4, i * 4 + 3)]).toEqual(colormap(bytes[i]));
      expect(out[i * 4 + 3]).toBe(255);
    }
  });

  it.each([[1, 1], [3, 4], [12, 48], [1, 200]])("sizes an %ix%i image", (h, w) => {
    expect(toRGBA(new Uint8Array(h * w), h, w).length).toBe(h * w * 4);
  });

  it("throws when the byte count does not match h x w", () => {
    expect(() => toRGBA(new Uint8Array(5), 2, 3)).toThrow("heatmap has 5 bytes, expected 2x3");
    expect(() => toRGBA(new Uint8Array(7), 2, 3)).toThrow(/7 bytes, expected 2x3/);
    expect(() => toRGBA(new Uint8Array(0), 1, 1)).toThrow(/expected 1x1/);
  });

  it("tints whole marked columns: drop red, keep blue, others untouched", () => {
    const h = 3, w = 4;
    const bytes = new Uint8Array(h * w).map((_, i) => i * 20);
    const out = toRGBA(bytes, h, w, new Map([[1, "drop"], [3, "keep"]]));
    for (let r = 0; r < h; r++) {
      for (let c = 0; c < w; c++) {
        const i = r * w + c;
        const px = [...out.slice(i * 4, i * 4 + 3)];
        if (c === 1) expect(px).toEqual(RED);
        else if (c === 3) expect(px).toEqual(BLUE);
        else expect(px).toEqual(colormap(bytes[i]));
        expect(out[i * 4 + 3]).toBe(255);
      }
    }
  });

  it("ignores marks it does not know and columns outside the image", () => {
    const bytes = new Uint8Array([50, 100]);
    const plain = toRGBA(bytes, 1, 2);
    expect(toRGBA(bytes, 1, 2, new Map([[0, "other"], [7, "drop"]]))).toEqual(plain);
  });
});

describe("columnOfUnit / unitsOfColumn", () => {
  it("is the identity when there are no more units than columns", () => {
    for (const [n, w] of [[1, 48], [10, 48], [48, 48]]) {
      for (let u = 0; u < n; u++) {
        expect(columnOfUnit(u, n, w)).toBe(u);
        expect(unitsOfColumn(u, n, w)).toEqual([u, u]);
      }
    }
  });

  it.each([[49, 48], [64, 48], [100, 48], [97, 48], [1000, 48], [200, 128], [300, 128], [7, 3]])(
    "n=%i units over w=%i columns: the two are inverse and the columns partition the units",
    (n, w) => {
      // every unit lies in the range of its own column
      for (let u = 0; u < n; u++) {
        const c = columnOfUnit(u, n, w);
        expect(c).toBeGreaterThanOrEqual(0);
        expect(c).toBeLessThan(w);
        const [first, last] = unitsOfColumn(c, n, w);
        expect(first).toBeLessThanOrEqual(u);
        expect(last).toBeGreaterThanOrEqual(u);
      }
      // columns cover 0..n-1 contiguously, each with at least one unit, without overlap
      let next = 0;
      for (let c = 0; c < w; c++) {
        const [first, last] = unitsOfColumn(c, n, w);
        expect(first).toBe(next);
        expect(last).toBeGreaterThanOrEqual(first);
        for (let u = first; u <= last; u++) expect(columnOfUnit(u, n, w)).toBe(c);
        next = last + 1;
      }
      expect(next).toBe(n);
    },
  );

  it("is monotone in the unit index", () => {
    for (const [n, w] of [[64, 48], [1000, 48]]) {
      for (let u = 1; u < n; u++) expect(columnOfUnit(u, n, w)).toBeGreaterThanOrEqual(columnOfUnit(u - 1, n, w));
      expect(columnOfUnit(0, n, w)).toBe(0);
      expect(columnOfUnit(n - 1, n, w)).toBe(w - 1);
    }
  });

  // BUG: payload.downsample puts unit u into column j when floor(j*n/w) <= u < floor((j+1)*n/w)
  // (np.linspace(0, n, w+1).astype(int)), but columnOfUnit uses floor(u*w/n), i.e. column j starts at
  // ceil(j*n/w). With 64 units over 48 columns unit 1 is averaged into column 1 in Python and tinted
  // in column 0 here; with 49 units nearly every unit is tinted one column left of where it is drawn.
  it("places units in the same column as payload.downsample averages them", () => {
    // numpy: downsample(one_hot(1, 64), 1, 48) is non-zero in column 1; one_hot(5, 64) in column 4
    expect(columnOfUnit(1, 64, 48)).toBe(1);
    expect(columnOfUnit(5, 64, 48)).toBe(4);
    for (const [n, w] of [[49, 48], [64, 48], [100, 48], [300, 128]]) {
      for (let u = 0; u < n; u++) expect(columnOfUnit(u, n, w)).toBe(pyColumnOfUnit(u, n, w));
      for (let c = 0; c < w; c++) expect(unitsOfColumn(c, n, w)).toEqual([pyStart(c, n, w), pyStart(c + 1, n, w) - 1]);
    }
  });
});

describe("proposalMarks", () => {
  it("is empty without a proposal or without units", () => {
    expect(proposalMarks(null, 10, 10).size).toBe(0);
    expect(proposalMarks(undefined, 10, 10).size).toBe(0);
    expect(proposalMarks({ drop: [1], keep: [2] }, 0, 10).size).toBe(0);
    expect(proposalMarks({ drop: [1], keep: [2] }, null, 10).size).toBe(0);
  });

  it("marks dropped units red and the units they merge into blue, one column each", () => {
    const marks = proposalMarks({ drop: [1, 4], keep: [2, 7] }, 10, 10);
    expect([...marks.entries()].sort((a, b) => a[0] - b[0]))
      .toEqual([[1, "drop"], [2, "keep"], [4, "drop"], [7, "keep"]]);
  });

  it("skips keep = -1 (a unit dropped without a merge target)", () => {
    const marks = proposalMarks({ drop: [3, 5], keep: [-1, 6] }, 10, 10);
    expect(marks.get(3)).toBe("drop");
    expect(marks.get(5)).toBe("drop");
    expect(marks.get(6)).toBe("keep");
    expect(marks.size).toBe(3);
    expect([...marks.keys()]).not.toContain(-1);
  });

  it("lets drop win when a dropped and a kept unit share a column", () => {
    // 100 units over 48 columns: units 0 and 1 both fall in column 0
    const marks = proposalMarks({ drop: [1], keep: [0] }, 100, 48);
    expect(columnOfUnit(0, 100, 48)).toBe(columnOfUnit(1, 100, 48));
    expect(marks.get(columnOfUnit(1, 100, 48))).toBe("drop");
    expect(marks.size).toBe(1);
  });

  it("maps units to image columns when downsampled", () => {
    const marks = proposalMarks({ drop: [999], keep: [0] }, 1000, 48);
    expect(marks.get(47)).toBe("drop");
    expect(marks.get(0)).toBe("keep");
    for (const c of marks.keys()) expect(c).toBeLessThan(48);
  });
});
