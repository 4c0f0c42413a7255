"""A pruning plan from sensitivity: per-layer shares reaching a global target at least predicted cost.

Why: a single share for every layer prunes fragile layers as hard as robust
ones.  From each layer's sensitivity curve (see :mod:`.sensitivity`) we pick,
greedily, the next step of whichever layer adds the least predicted cost per
parameter (or FLOP) saved, until the saving reaches the target.  Locked layers
(and any the caller names) stay whole.  The result is a dict layer -> share
that ``session.run(targets=plan.targets)`` runs, and that a user may edit.

Predicted cost of a layer at a share: its certified output-change bound (the
data-free signal, always there), plus the share of box samples whose answer
changed when agreement was measured -- scaled so a full disagreement weighs as
much as the largest bound seen.  Costs of different layers are added: a
prediction, not a guarantee (the session's metrics measure the real outcome).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import SessionError
from .sensitivity import Sensitivity


@dataclass
class Plan:
    targets: dict[str, float]  # layer -> share of its units pruned in the end
    metric: str  # "params" or "flops"
    goal: float  # share of the model's parameters (or FLOPs) to remove
    saved: int  # predicted parameters (or FLOPs) removed
    total: int
    cost: float  # predicted cost (sum of per-layer costs)
    reached: bool
    message: str = ""
    locked: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"targets": {k: round(v, 4) for k, v in self.targets.items()}, "metric": self.metric,
                "goal": self.goal, "saved": self.saved, "total": self.total,
                "share": self.saved / self.total if self.total else 0.0,
                "cost": None if not math.isfinite(self.cost) else round(self.cost, 6), "reached": self.reached,
                "message": self.message, "locked": list(self.locked)}


def _costs(sens: Sensitivity) -> dict[str, list[float]]:
    bounds = [b for c in sens.curves.values() for b in c.bound if b is not None and math.isfinite(b)]
    scale = max(bounds) if bounds and max(bounds) > 0 else 1.0
    scores = [x for c in sens.curves.values() for x in c.score if x is not None and math.isfinite(x)]
    score_scale = scale / max(scores) if scores and max(scores) > 0 else 0.0
    out = {}
    for name, c in sens.curves.items():
        costs = []
        for i, (b, a) in enumerate(zip(c.bound, c.agreement)):
            if b is None or not math.isfinite(b):
                # no certified bound (a deep net's bounds overflow): the samples speak, else the strategy's score
                s = c.score[i] if i < len(c.score) and c.score[i] is not None else None
                if a is not None:
                    costs.append(2 * (1.0 - a) * scale)
                elif s is not None and math.isfinite(s):
                    costs.append(s * score_scale)
                else:
                    costs.append(math.inf)
            else:
                costs.append(b + ((1.0 - a) * scale if a is not None else 0.0))
        out[name] = costs
    return out


def make_plan(sens: Sensitivity, goal: float, metric: str = "params", locked: Iterable[str] = ()) -> Plan:
    """Per-layer shares whose predicted saving (beyond the current state) reaches ``goal``, a share of
    the model's total parameters (or FLOPs)."""
    if metric not in ("params", "flops"):
        raise SessionError(f"plan metric must be 'params' or 'flops', got {metric!r}")
    if not isinstance(goal, (int, float)) or isinstance(goal, bool) or not 0 < goal < 1:
        raise SessionError(f"plan goal must be a share strictly between 0 and 1, got {goal!r}")
    locked = sorted(set(locked))
    total = sens.total_params if metric == "params" else sens.total_flops
    need = goal * total
    costs = _costs(sens)
    step = {name: 0 for name in sens.curves}
    saved = 0.0
    cost = 0.0
    free = [n for n in sens.curves if n not in locked]

    def gain(name: str, i: int) -> float:
        c = sens.curves[name]
        return float((c.params if metric == "params" else c.flops)[i])

    while saved < need:
        best, best_key = None, None
        for name in free:
            i = step[name]
            c = sens.curves[name]
            if i + 1 >= len(c.ratios):
                continue
            dg = gain(name, i + 1) - gain(name, i)
            dc = costs[name][i + 1] - costs[name][i]
            if dg <= 0 or not math.isfinite(costs[name][i + 1]):
                continue
            key = (max(dc, 0.0) / dg, -dg)
            if best_key is None or key < best_key:
                best, best_key = name, key
        if best is None:
            break
        i = step[best]
        saved += gain(best, i + 1) - gain(best, i)
        cost += costs[best][i + 1] - costs[best][i]
        step[best] = i + 1
    targets = {name: sens.curves[name].ratios[i] for name, i in step.items()
               if i > 0 and name not in locked}
    reached = saved >= need
    what = "parameters" if metric == "params" else "FLOPs"
    if reached:
        one = len(targets) == 1
        pruned = ("1 layer pruned to its own share removes" if one
                  else f"{len(targets)} layers pruned to their own shares remove")
        message = f"{pruned} ~{100 * saved / total:.1f} % of the {what} (goal {100 * goal:.0f} %)"
    else:
        message = (f"the goal of {100 * goal:.0f} % of the {what} cannot be reached"
                   + (f" with {len(locked)} locked layer{'s' if len(locked) != 1 else ''}" if locked else "")
                   + f": at most ~{100 * saved / total:.1f} % within the shares measured")
    return Plan(targets, metric, float(goal), int(saved), int(total), cost, reached, message, locked)
