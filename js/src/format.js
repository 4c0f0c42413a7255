// Number formats and small pure helpers of the view (tested in node).

export const fmt = {
  int: (v) => (v == null ? "–" : Number(v).toLocaleString("en-US")),
  pct: (v) => (v == null ? "–" : `${(100 * v).toFixed(1)}%`),
  /** Bytes as KiB / MiB / GiB. */
  bytes: (v) => {
    if (v == null) return "–";
    const units = ["bytes", "KiB", "MiB", "GiB"];
    let n = Number(v), i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i === 0 ? `${n} bytes` : `${n.toFixed(1)} ${units[i]}`;
  },
  /** Counts with k / M / G (FLOPs, parameters in tight places). */
  si: (v) => {
    if (v == null) return "–";
    const n = Number(v);
    const a = Math.abs(n);
    if (a >= 1e9) return `${(n / 1e9).toFixed(2)} G`;
    if (a >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
    if (a >= 1e4) return `${(n / 1e3).toFixed(1)} k`;
    return n.toLocaleString("en-US");
  },
  num: (v) => (v == null ? "–" : Number(v).toPrecision(4)),
  /** Seconds as "12 s" / "3 min 5 s". */
  secs: (v) => {
    if (v == null || !Number.isFinite(v)) return "";
    const s = Math.max(0, Math.round(v));
    return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
  },
};

/** The progress line of a run: "42% · iteration 7 · ~3 s left". */
export function progressText(progress, info) {
  const i = info || {};
  const parts = [`${Math.round(100 * (i.fraction ?? progress ?? 0))}%`];
  if (i.iteration) parts.push(`iteration ${i.iteration}`);
  if (i.eta != null && Number.isFinite(i.eta)) parts.push(`~${fmt.secs(i.eta)} left`);
  return parts.join(" · ");
}

/** Rows whose name or type contains the filter (case-insensitive), with their ancestors. */
export function filterRows(rows, text) {
  const q = (text || "").trim().toLowerCase();
  if (!q) return null;
  const byName = new Map(rows.map((r) => [r.name, r]));
  const keep = new Set();
  for (const r of rows) {
    if (r.name.toLowerCase().includes(q) || String(r.label || "").toLowerCase().includes(q)
      || String(r.type || "").toLowerCase().includes(q)) {
      for (let x = r; x; x = x.parent != null ? byName.get(x.parent) : null) keep.add(x.name);
    }
  }
  return rows.filter((r) => keep.has(r.name));
}

/** What a marked heatmap column means: "unit 5 merges into unit 4" / "unit 7 is removed". */
export function markText(proposal, units) {
  if (!proposal || !units) return "";
  const [first, last] = units;
  const out = [];
  proposal.drop.forEach((d, i) => {
    if (d < first || d > last) return;
    const k = proposal.keep[i];
    out.push(k >= 0 ? `unit ${d} merges into unit ${k}` : `unit ${d} is removed`);
  });
  proposal.keep.forEach((k, i) => {
    if (k >= first && k <= last) out.push(`unit ${k} receives unit ${proposal.drop[i]}`);
  });
  return out.join("; ");
}

/** Points of a sparkline (width w, height h) of ys over xs, scaled by yMax. */
export function sparkPoints(xs, ys, w, h, yMax) {
  const pts = [];
  const top = yMax > 0 ? yMax : 1;
  xs.forEach((x, i) => {
    const y = ys[i];
    if (y == null || !Number.isFinite(y)) return;
    pts.push(`${(x * w).toFixed(1)},${(h - (Math.min(y, top) / top) * h).toFixed(1)}`);
  });
  return pts.join(" ");
}

/** What a heatmap column means while two history points are compared: "unit 5 went between points 0 and 3". */
export function compareText(cmpRow, units, a, b) {
  if (!cmpRow || !units) return "";
  const [first, last] = units;
  const inside = (xs) => (xs || []).filter((u) => u >= first && u <= last);
  const went = inside(cmpRow.went), back = inside(cmpRow.back);
  const list = (xs) => (xs.length === 1 ? `unit ${xs[0]}` : `units ${xs.join(", ")}`);
  const out = [];
  if (went.length) out.push(`${list(went)} went between points ${a} and ${b}`);
  if (back.length) out.push(`${list(back)} alive at point ${b}, not at point ${a}`);
  return out.join("; ");
}

/**
 * The preview line's figures: the certified bound and (with eval data) the accuracy after accepting.
 * state: "pending" (nothing yet), "stale" (an earlier state's figure, being recomputed), "done", or "" (no eval data).
 */
export function previewParts(pv) {
  const staleNote = " (of the previous state; computing…)";
  let bound;
  if (pv.bound == null) bound = pv.bound_pending ? "bound: computing…" : "no certified bound";
  else bound = `no output moves by more than ${fmt.num(pv.bound)} (certified)${pv.bound_stale ? staleNote : ""}`;
  let accuracy = "", state = "";
  if (pv.eval) {
    if (pv.accuracy == null) {
      state = pv.accuracy_pending ? "pending" : "";
      accuracy = pv.accuracy_pending ? "accuracy after: computing…" : "";
    } else {
      state = pv.accuracy_stale ? "stale" : "done";
      const n = pv.samples != null ? ` on ${fmt.int(pv.samples)} eval samples` : "";
      accuracy = `accuracy ${fmt.pct(pv.accuracy_now)} → ${fmt.pct(pv.accuracy)}${n}${pv.accuracy_stale ? staleNote : ""}`;
    }
  }
  return { bound, accuracy, state, boundStale: Boolean(pv.bound_stale) };
}

/** One deploy table row's cells: model, file, size, times smaller, accuracy, change, robust kept, agreement. */
export function deployCells(r, eps) {
  const file = r.path ? r.path.split(/[\\/]/).pop() : "(temporary copy)";
  const kept = eps != null && r.robust_kept ? r.robust_kept[String(eps)] : null;
  const drop = r.accuracy_drop == null ? "–" : `${r.accuracy_drop > 0 ? "−" : "+"}${Math.abs(100 * r.accuracy_drop).toFixed(2)} pt`;
  return [r.name, file, r.bytes ? fmt.bytes(r.bytes) : "–", r.times_smaller == null ? "–" : `${r.times_smaller.toFixed(1)}×`,
    fmt.pct(r.accuracy), drop, keptText(kept).text, fmt.pct(r.agreement)];
}

/**
 * Robustness kept (robust eval samples of the pruned model over the original's count) as {text, title}.
 * Above 100 % the pruned model is robust on more samples than the original: said so in words, since a
 * count ratio cannot say that every originally robust sample is still robust (some may be lost, others gained).
 */
export function keptText(v) {
  if (v == null) return { text: "–", title: "" };
  if (v <= 1) return { text: fmt.pct(v), title: "robust eval samples as a share of the original's" };
  const more = `${(100 * (v - 1)).toFixed(1)}%`;
  return { text: `${fmt.pct(v)} · more than the original`,
    title: `robust on ${more} more eval samples than the original (counts compared: some samples robust for the `
      + "original may no longer be, others became robust; the count is not capped at 100 %)" };
}
