// Heatmaps: uint8 magnitudes (from the kernel, as a binary buffer) -> canvas pixels.
// Pure functions first (tested in node), drawing last.

/** A perceptual-ish ramp from the background to the accent colour, as [r, g, b]. */
export function colormap(v) {
  const t = Math.max(0, Math.min(255, v)) / 255;
  // dark blue -> teal -> yellow (viridis-like endpoints, three stops)
  const stops = [[68, 1, 84], [33, 145, 140], [253, 231, 37]];
  const x = t * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f));
}

const LUT = Array.from({ length: 256 }, (_, v) => colormap(v));

/** RGBA pixels for an h x w uint8 image (row-major), with marked columns tinted. */
export function toRGBA(bytes, h, w, marks = new Map()) {
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
        out[o] = 230; out[o + 1] = 60; out[o + 2] = 60;
      } else if (mark === "keep") {
        out[o] = 60; out[o + 1] = 140; out[o + 2] = 240;
      } else if (mark === "went") {
        out[o] = 255; out[o + 1] = 140; out[o + 2] = 0;
      } else if (mark === "back") {
        out[o] = 40; out[o + 1] = 170; out[o + 2] = 80;
      } else {
        out[o] = red; out[o + 1] = green; out[o + 2] = blue;
      }
      out[o + 3] = 255;
    }
  }
  return out;
}

/** Heatmap column showing unit u of n units when the image is w columns wide. */
export function columnOfUnit(u, n, w) {
  // column j averages units floor(j n / w) .. floor((j + 1) n / w) - 1 (payload.downsample)
  return n <= w ? u : Math.min(w - 1, Math.ceil(((u + 1) * w) / n) - 1);
}

/** Units covered by image column c (inverse of columnOfUnit), as [first, last]. */
export function unitsOfColumn(c, n, w) {
  if (n <= w) return [c, c];
  const first = Math.floor((c * n) / w);
  return [first, Math.min(n - 1, Math.max(first, Math.floor(((c + 1) * n) / w) - 1))];
}

/** Column marks for a proposal: dropped units red, the units they merge into blue. */
export function proposalMarks(proposal, n, w) {
  const marks = new Map();
  if (!proposal || !n) return marks;
  proposal.keep.forEach((k) => { if (k >= 0) marks.set(columnOfUnit(k, n, w), "keep"); });
  proposal.drop.forEach((d) => marks.set(columnOfUnit(d, n, w), "drop"));
  return marks;
}

/**
 * Column marks for two history points compared: units that went between them (orange) and units
 * alive at the second point but not the first (green, when comparing backwards).
 */
export function compareMarks(cmpRow, n, w) {
  const marks = new Map();
  if (!cmpRow || !n) return marks;
  (cmpRow.back || []).forEach((u) => marks.set(columnOfUnit(u, n, w), "back"));
  (cmpRow.went || []).forEach((u) => marks.set(columnOfUnit(u, n, w), "went"));
  return marks;
}

/** Draw onto a canvas (its size is set to the image; CSS scales it). */
export function drawHeatmap(canvas, img, marks) {
  canvas.width = img.w;
  canvas.height = img.h;
  const ctx = canvas.getContext("2d");
  if (!ctx) return false;
  ctx.putImageData(new ImageData(toRGBA(img.data, img.h, img.w, marks), img.w, img.h), 0, 0);
  return true;
}
