"""Runs paoding-dl (the reference PAODING) on one model in one mode; executed inside the reference venv.

Why a separate script: paoding-dl needs legacy Keras 2 (tf-keras), numpy < 2 and pip 24, which cannot
share a process with our Keras 3 package.  ``compare_reference.py`` starts this script with the venv's
Python, in a fresh working directory (paoding writes ``paoding/logs/`` there and deletes its output path),
hands the model over as plain weight arrays (``.npz``, no pickle), and reads back a JSON summary plus the
pruned model's weights as ``.npz`` so that both tools' models are evaluated by the same code.

Standalone on purpose: only the standard library, numpy and TensorFlow/tf-keras; never imports our package.

Usage (normally only from ``compare_reference.py``)::

    TF_USE_LEGACY_KERAS=1 <venv>/bin/python reference_worker.py --versions
    TF_USE_LEGACY_KERAS=1 <venv>/bin/python reference_worker.py --weights model.npz --mode impact \\
        --out result.json --pruned-weights pruned.npz
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("baseline", "impact", "stochastic")
ALPHA_BETA = (0.75, 0.25)  # Sampler.set_strategy's default; the same weights our impact score uses


def versions() -> dict[str, Any]:
    """Versions on the reference side, for the results' header."""
    import platform
    from importlib import metadata

    import tensorflow as tf

    out = {"python": platform.python_version(), "tensorflow": tf.__version__, "numpy": np.__version__}
    for dist in ("tf-keras", "paoding-dl", "pandas", "pip"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["tf.keras is tf-keras"] = tf.keras.Sequential.__module__.startswith("tf_keras")
    return out


def load_handover(path: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Metadata and weight arrays written by ``compare_reference.save_handover`` (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        weights = [z[f"w{i}"] for i in range(meta["n_weights"])]
    return meta, weights


def build_model(kind: str, input_shape: list[int], weights: list[np.ndarray]) -> Any:
    """The same architecture as ours, in tf-keras, widths read off the weights.

    The first layer carries ``input_shape`` (no separate Input): paoding finds layers by name
    ("dense", "conv", "flatten") and its surgery reads ``batch_input_shape`` from layer 0's config.
    """
    import tensorflow as tf

    L = tf.keras.layers
    if kind == "mlp":
        layers = [L.Flatten(input_shape=tuple(input_shape))]
        kernels = weights[0::2]
        layers += [L.Dense(k.shape[1], activation="relu") for k in kernels[:-1]]
        layers.append(L.Dense(kernels[-1].shape[1]))
    elif kind == "cnn":
        c1, c2, d1, d2 = (w.shape[-1] for w in weights[0::2])
        layers = [L.Conv2D(c1, 3, activation="relu", input_shape=tuple(input_shape)), L.MaxPooling2D(),
                  L.Conv2D(c2, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(),
                  L.Dense(d1, activation="relu"), L.Dense(d2)]
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    model = tf.keras.Sequential(layers)
    model.set_weights(weights)
    return model


def model_weights(model: Any) -> list[np.ndarray]:
    return [np.asarray(w) for layer in model.layers for w in layer.get_weights()]


def layer_summary(model: Any) -> list[dict[str, Any]]:
    """Name, class and kernel shape per layer: shows what the reference actually cut."""
    out = []
    for layer in model.layers:
        w = layer.get_weights()
        out.append({"name": layer.name, "class": type(layer).__name__,
                    "kernel": list(w[0].shape) if w else None})
    return out


def make_sampler(mode: str) -> Any:
    """A paoding ``Sampler`` in ``mode`` that also counts and times its ``nominate`` calls (one per FC epoch)."""
    from paoding.sampler import Sampler
    from paoding.utility.option import SamplingMode

    class CountingSampler(Sampler):
        def nominate(self, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = super().nominate(*args, **kwargs)
            self.seconds.append(time.perf_counter() - t)
            return out

    sampler = CountingSampler()
    sampler.seconds = []
    # set_strategy, not the constructor: the constructor leaves params at (0, 0), which zeroes the impact score.
    sampler.set_strategy(mode=getattr(SamplingMode, mode.upper()), params=ALPHA_BETA)
    return sampler


def time_phases(pruner: Any, seen: dict[str, Any]) -> dict[str, float]:
    """Wrap the conv pass and the final FC surgery (which also saves a SavedModel) to split the timed call.

    The surgery's input -- the full-size model with merged-away units zeroed -- is kept in ``seen`` so the
    surgery can be checked afterwards (outside the timed call).
    """
    import paoding.pruner as paoding_pruner

    phases = {"conv pruning (L1, keras-surgeon, save)": 0.0, "FC surgery + SavedModel save": 0.0}

    def timed(fn: Any, key: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if key.startswith("FC surgery") and args:
                seen["before_surgery"] = args[0]
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[key] += time.perf_counter() - t
        return wrapper

    pruner.prune_cnv = timed(pruner.prune_cnv, "conv pruning (L1, keras-surgeon, save)")
    surgeon = paoding_pruner.surgeon
    surgeon.create_pruned_model = timed(surgeon.create_pruned_model, "FC surgery + SavedModel save")
    return phases


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    """Prune a copy of the handed-over model with paoding-dl; time only ``Pruner.prune``."""
    import tensorflow as tf
    from paoding.pruner import Pruner
    from paoding.utility.option import ModelType

    meta, weights = load_handover(Path(args.weights))
    work = Path.cwd()
    model_dir, pruned_dir = work / "model", work / "pruned"
    t = time.perf_counter()
    build_model(meta["kind"], meta["input_shape"], weights).save(str(model_dir))  # the reference's own copy
    handover_seconds = time.perf_counter() - t

    sampler = make_sampler(args.mode)
    pruner = Pruner(str(model_dir), test_set=None, target=args.target, step=args.step, sample_strategy=sampler,
                    input_interval=(0.0, 1.0), model_type=ModelType.MNIST, seed_val=args.seed, surgery_mode=True)
    t = time.perf_counter()
    pruner.load_model()
    load_seconds = time.perf_counter() - t
    params_before = int(pruner.model.count_params())
    layers_before = layer_summary(pruner.model)  # paoding edits this model in place: no reference kept
    random.seed(args.seed)  # stochastic mode draws from Python's `random`, which seed_val does not seed
    seen: dict[str, Any] = {}
    surgery_diff = None
    phases = time_phases(pruner, seen)

    t = time.perf_counter()
    pruner.prune(evaluator=None, save_file=True, pruned_model_path=str(pruned_dir), model_name=f"{meta['kind']}")
    seconds = time.perf_counter() - t
    phases["nominate (FC pruning decisions)"] = sum(sampler.seconds)

    pruned = pruner.model
    pruned_weights = model_weights(pruned)
    arrays = {"meta": json.dumps({"n_weights": len(pruned_weights), "kind": meta["kind"],
                                  "input_shape": meta["input_shape"]}),
              **{f"w{i}": w for i, w in enumerate(pruned_weights)}}
    if args.test:  # logits of the pruned model here, so the caller can check its Keras 3 rebuild against them
        with np.load(args.test, allow_pickle=False) as z:
            x = z["x"][:64]
        arrays.update(check_x=x, check_logits=np.asarray(pruned(x, training=False)))
        if "before_surgery" in seen:  # surgery must not change the function (it only drops zeroed units)
            zeroed = np.asarray(seen["before_surgery"](x, training=False))
            surgery_diff = float(np.max(np.abs(zeroed - arrays["check_logits"])))
    save_npz(Path(args.pruned_weights), arrays)
    return {"status": "ok", "mode": args.mode, "kind": meta["kind"], "seconds": seconds,
            "iterations": len(sampler.seconds), "nominate_seconds": sampler.seconds,
            "load_seconds": load_seconds, "handover_seconds": handover_seconds, "phases": phases,
            "max_logit_diff_surgery": surgery_diff,
            "params_before": params_before, "params_after": int(pruned.count_params()),
            "layers_before": layers_before, "layers_after": layer_summary(pruned),
            "own_fgsm": own_fgsm(args, tf.keras.models.load_model(str(model_dir)), pruned) if args.own_fgsm else None}


def own_fgsm(args: argparse.Namespace, original: Any, pruned: Any) -> dict[str, Any]:
    """paoding's own FGSM figures (MNIST evaluator) on the first N test digits -- best effort, for reference only.

    Not comparable with ours (docs/method.md): it takes a probability loss on logits and clips to [-1, 1].
    """
    from paoding.evaluator import Evaluator
    from paoding.utility.option import ModelType

    try:
        with np.load(args.test, allow_pickle=False) as z:
            x, y = z["x"][:args.own_fgsm], z["y"][:args.own_fgsm]
        ev = Evaluator(epsilons=list(args.epsilons), batch_size=len(x))
        t = time.perf_counter()
        before = ev.evaluate_robustness(original, (x, y), ModelType.MNIST)
        after = ev.evaluate_robustness(pruned, (x, y), ModelType.MNIST)
        return {"n": len(x), "before": {str(k): int(v) for k, v in before.items()},
                "after": {str(k): int(v) for k, v in after.items()}, "seconds": time.perf_counter() - t}
    except Exception as exc:  # its evaluator assumes particular input shapes; report, do not fail the run
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}


def save_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Atomic .npz write (temp file + os.replace)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--versions", action="store_true", help="print the reference side's versions as JSON and exit")
    p.add_argument("--weights", help="handover .npz (meta + w0..wN)")
    p.add_argument("--mode", choices=MODES, default="impact")
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--step", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="result JSON path")
    p.add_argument("--pruned-weights", help="where to write the pruned model's weights (.npz)")
    p.add_argument("--own-fgsm", type=int, default=0, help="also run paoding's own FGSM on this many test digits")
    p.add_argument("--test", help="test set .npz (x, y): logits check, and --own-fgsm")
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.01, 0.05, 0.1])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # Here, not at import: tf.keras must be tf-keras 2.x, set before TensorFlow loads (it loads lazily below).
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    if args.versions:
        print(json.dumps(versions()))
        return 0
    if not (args.weights and args.out and args.pruned_weights):
        print("--weights, --out and --pruned-weights are required", file=sys.stderr)
        return 2
    try:
        result = run_reference(args)
    except Exception as exc:
        result = {"status": "error", "mode": args.mode, "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()}
    result["versions"] = versions()
    write_json(Path(args.out), result)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
