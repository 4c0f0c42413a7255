// The layer tree: which rows are visible, and keyboard movement between them.

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
