"""Where our side of ``compare_reference.py`` spends its time, per phase.

Why: the runs it times are tens of milliseconds spread over Keras surgery, bounds, scores, pairing and
edits; a profiler's overhead distorts such short calls, so this wraps the engine's functions with a
plain timer (exclusive times: a phase nested in another is subtracted from it) and runs
``compare_reference.run_ours`` unchanged on the same trained models.

    python benchmarks/phases_reference.py                   # MLP and CNN, every mode
    python benchmarks/phases_reference.py --models cnn --modes impact --repeats 21

Models are trained once (``compare_reference.train``) and cached as ``.keras`` files under
``--cache`` (default: a ``paoding-phases`` folder in the temp directory).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import compare_reference as cr  # noqa: E402

_acc: dict[str, float] = {}
_stack: list[float] = []


def _wrap(owner: Any, name: str, phase: str) -> None:
    """Replace ``owner.name`` by a timed call adding its exclusive time to ``phase``."""
    f = getattr(owner, name)

    def timed(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        _stack.append(0.0)
        try:
            return f(*a, **k)
        finally:
            dt = time.perf_counter() - t
            child = _stack.pop()
            _acc[phase] = _acc.get(phase, 0.0) + dt - child
            if _stack:
                _stack[-1] += dt

    setattr(owner, name, timed)


def instrument() -> None:
    from paoding_widgets.engine import bounds, pruner, strategies, surgery, units
    from paoding_widgets.session import running

    _wrap(bounds.Propagator, "values", "value bounds")
    _wrap(bounds.Propagator, "deltas", "impact propagation")
    _wrap(strategies, "saliency_matrix", "saliency (Gram matrix)")
    _wrap(strategies, "disjoint_pairs", "pairing")
    _wrap(units.UnitView, "impact", "impact scores (excl. propagation)")
    _wrap(pruner, "impact_increment", "impact increment")
    _wrap(pruner, "apply_edit", "edits")
    _wrap(surgery, "clone", "pruned_model(): Keras clone_model")
    _wrap(surgery, "physical_model", "pruned_model(): slicing, feeds")
    _wrap(pruner.Pruner, "propose", "proposal bookkeeping")
    _wrap(running.RunMixin, "_run_loop", "session loop bookkeeping")


def load_model(kind: str, cache: Path, log: Callable[[str], None]) -> Any:
    import keras

    path = cache / f"{kind}.keras"
    if path.exists():
        return keras.models.load_model(path)
    model, _, _ = cr.train(kind, log)
    cache.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=cr.csv_choice(cr.MODELS), default=list(cr.MODELS))
    ap.add_argument("--modes", type=cr.csv_choice(cr.MODES), default=list(cr.MODES))
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "paoding-phases")
    args = ap.parse_args(argv)
    instrument()
    print(f"load average {os.getloadavg()[0]:.2f}")
    for kind in args.models:
        model = load_model(kind, args.cache, print)
        for mode in args.modes:
            cr.run_ours(model, mode, 2)  # warm-up
            _acc.clear()
            run, pruned = cr.run_ours(model, mode, args.repeats)
            mean = sum(run["seconds_all"]) / args.repeats * 1e3
            parts = {k: v / args.repeats * 1e3 for k, v in _acc.items() if v}
            rest = mean - sum(parts.values())
            print(f"{kind}/{mode}: median {run['seconds'] * 1e3:.1f} ms, mean {mean:.1f} ms, "
                  f"min {min(run['seconds_all']) * 1e3:.1f} ms; widths {cr.hidden_widths(pruned)}")
            for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) + [("session init + rest", rest)]:
                print(f"    {k:40s} {v:7.2f} ms  {100 * v / mean:5.1f} %")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
