// The message layer: actions to the kernel, heatmaps and details from it (binary buffers).

/** Bytes of a buffer as anywidget delivers it (DataView) or as tests pass it. */
export function asBytes(buf) {
  if (buf instanceof Uint8Array) return buf;
  if (buf instanceof DataView) return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf instanceof ArrayBuffer) return new Uint8Array(buf);
  throw new Error("unexpected buffer type");
}

/** Merge a {type: "heatmaps"} message into the cache (name -> {h, w, data}); returns changed names. */
export function applyHeatmaps(cache, msg, buffers) {
  if (msg.names.length !== buffers.length || msg.shapes.length !== buffers.length) {
    throw new Error("heatmap message: names, shapes and buffers differ in length");
  }
  // check every buffer first: a bad message changes nothing
  const images = msg.names.map((name, i) => {
    const [h, w] = msg.shapes[i];
    const data = asBytes(buffers[i]);
    if (data.length !== h * w) throw new Error(`heatmap ${name}: ${data.length} bytes for ${h}x${w}`);
    return { h, w, data };
  });
  msg.names.forEach((name, i) => cache.set(name, images[i]));
  return msg.names;
}

/** Send one action message. */
export function sendAction(model, action, fields = {}) {
  model.send({ type: "action", action, ...fields });
}

/** Value and units under a pointer at (px, py) in a detail image drawn at (width, height). */
export function detailAt(detail, px, py, width, height) {
  const [h, w] = detail.shape;
  const c = Math.min(w - 1, Math.max(0, Math.floor((px / width) * w)));
  const r = Math.min(h - 1, Math.max(0, Math.floor((py / height) * h)));
  const v = detail.data[r * w + c];
  const [rows, cols] = detail.source_shape;
  // pixel i of n covers source rows floor(i m / n) .. floor((i + 1) m / n) - 1 (payload.downsample)
  const span = (i, n, m) => [Math.floor((i * m) / n), Math.max(Math.floor((i * m) / n), Math.floor(((i + 1) * m) / n) - 1)];
  // pixel value is sqrt-scaled magnitude (see payload.to_uint8)
  const value = (v / 255) ** 2 * detail.max;
  return { row: span(r, h, rows), col: span(c, w, cols), value };
}
