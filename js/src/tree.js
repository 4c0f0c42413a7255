// The layer tree: which rows are visible, and keyboard movement between them.

/**
 * Rows as shown: the fixed tree (trait `layers`) with each unit group's state (trait `states`:
 * status, units_alive, proposal) filled in. Rows whose group has no state keep their own fields.
 */
export function mergeRows(layers, states) {
  const st = states || {};
  return (layers || []).map((r) => (r.group != null && st[r.group] ? { ...r, ...st[r.group] } : r));
}

/** What a parent row (block or nested model) summarises of its descendants: counts per status. */
export function childSummary(rows, name) {
  const parents = new Map(rows.map((r) => [r.name, r.parent]));
  const under = (r) => {
    for (let p = r.parent; p != null; p = parents.get(p)) if (p === name) return true;
    return false;
  };
  const counts = {};
  for (const r of rows) if (r.group && r.status && under(r)) counts[r.status] = (counts[r.status] || 0) + 1;
  return counts;
}

/** The status a parent row's chip shows: what needs the user first, or "" when nothing does. */
export function summaryStatus(counts) {
  return ["pending", "locked", "accepted", "skipped"].find((k) => counts[k]) || "";
}

/** The chip text of a parent row ("2 pending"), or "". */
export function summaryText(counts) {
  const k = summaryStatus(counts);
  return k ? `${counts[k]} ${k}` : "";
}

/** Rows to show: top-level rows, and children of expanded parents. */
export function visibleRows(rows, expanded) {
  const byName = new Map(rows.map((r) => [r.name, r]));
  const shown = (r) => r.depth === 0 || (r.parent !== null && expanded.has(r.parent)
    && (!byName.has(r.parent) || shown(byName.get(r.parent))));
  return rows.filter(shown);
}

/** Whether a row has children (a nested model). */
export function hasChildren(rows, name) {
  return rows.some((r) => r.parent === name);
}

/** Index of the row to focus after a key press, or null if the key does not move. */
export function moveFocus(count, index, key) {
  if (count === 0) return null;
  switch (key) {
    case "ArrowDown": return Math.min(count - 1, index + 1);
    case "ArrowUp": return Math.max(0, index - 1);
    case "Home": return 0;
    case "End": return count - 1;
    default: return null;
  }
}

/**
 * Tree keys on the focused row: ArrowRight opens a closed parent; ArrowLeft closes an open one,
 * else goes to the row's parent. Returns "open" | "close" | "parent" | null.
 */
export function treeKey(key, row, isParent, isOpen) {
  if (!row) return null;
  if (key === "ArrowRight" && isParent && !isOpen) return "open";
  if (key === "ArrowLeft") {
    if (isParent && isOpen) return "close";
    if (row.parent != null) return "parent";
  }
  return null;
}

/** The session action a key asks for on a row ("a" accept, "s" skip, "l" lock/unlock). */
export function keyAction(key, row) {
  if (!row || !row.group) return null;
  if (key === "a" && row.status === "pending") return "accept";
  if (key === "s" && row.status === "pending") return "skip";
  if (key === "l" && row.status !== "not prunable") return row.status === "locked" ? "unlock" : "lock";
  return null;
}

/** Which row buttons are enabled for a row. */
export function rowActions(row) {
  const prunable = Boolean(row.group) && row.status !== "not prunable";
  return {
    accept: prunable && row.status === "pending",
    skip: prunable && row.status === "pending",
    lock: prunable && row.status !== "locked",
    unlock: prunable && row.status === "locked",
  };
}

/** Human units text: "alive / total". */
export function unitsText(row) {
  return row.units_total == null ? "" : `${row.units_alive} / ${row.units_total}`;
}

/** Rows under a parent row (at any depth). */
export function descendants(rows, name) {
  const parents = new Map(rows.map((r) => [r.name, r.parent]));
  return rows.filter((r) => {
    for (let p = r.parent; p != null; p = parents.get(p)) if (p === name) return true;
    return false;
  });
}

/** How sensitive a curve is: its largest certified bound, else (no bound) its largest strategy score. */
function worst(curve) {
  const bounds = curve.bound.slice(1).filter((b) => b != null);
  if (bounds.length) return [1, Math.max(...bounds)];
  const scores = (curve.score || []).filter((b) => b != null);
  return [0, scores.length ? Math.max(...scores) : 0];
}

/**
 * A collapsed block's sensitivity: the curve of its most sensitive member (largest certified bound at
 * any share; by the strategy's score when no member has a bound). Returns {curve, member, members} or null.
 */
export function blockCurve(rows, name, curves) {
  if (!curves) return null;
  const groups = [...new Set(descendants(rows, name).map((r) => r.group).filter((g) => g != null && curves[g]))];
  if (!groups.length) return null;
  let best = null, key = null;
  for (const g of groups) {
    const k = worst(curves[g]);
    if (!best || k[0] > key[0] || (k[0] === key[0] && k[1] > key[1])) { best = g; key = k; }
  }
  return { curve: curves[best], member: best, members: groups.length };
}

/** Units that went between two compared points, summed over a parent row's members: {went, layers}. */
export function blockWent(rows, name, cmpLayers) {
  if (!cmpLayers) return null;
  const groups = new Set(descendants(rows, name).map((r) => r.group).filter((g) => g != null));
  let went = 0, layers = 0;
  for (const l of cmpLayers) {
    if (groups.has(l.name) && l.went_count) { went += l.went_count; layers += 1; }
  }
  return { went, layers };
}

/** What the tree shows of a row: "mha · key_dim" for one of a layer's several unit groups, else its name. */
export function rowLabel(row) {
  return row.label || row.name;
}

/** A row button's accessible name: the action, the layer and (for one of a layer's groups) the group. */
export function actionName(label, row) {
  return row.part ? `${label} ${row.layer} ${row.part}` : `${label} ${row.name}`;
}

/**
 * What the session's actions (accept, skip, lock) name for a row: the group of one of a layer's several
 * groups ("mha/key_dim"); else the layer, which the session resolves to its one group.
 */
export function actionTarget(row) {
  return row.part && row.group != null ? row.group : row.name;
}
