"""Benchmark of compact deployment: prune the MNIST demos, quantise, export, run every file, compare.

Usage (from the repository root)::

    python benchmarks/bench_deploy.py                 # both demos, every format, + the interaction study
    python benchmarks/bench_deploy.py --quick         # the MLP only, no study
    python benchmarks/bench_deploy.py --no-study      # the two deployment tables only

Writes ``benchmarks/results/deploy.md`` and ``deploy.json`` (``--out`` to change the stem).

**Deployment tables.**  ``load_demo("digits_mlp" | "digits_cnn")`` (trained on 8,000 MNIST digits), pruned
data-free by ``PruningSession(strategy=--strategy, step=0.05, target=--target).run()``, then
``engine.deploy.deploy`` writes every format of ``FORMATS`` into a temporary folder and runs each file
(Keras, ai-edge-litert, onnxruntime).  Accuracy on the 2,000 test digits; FGSM on the first 500; agreement
with the original on 1,000 samples of the input box.  ``tflite-full-int8`` is calibrated on 500 *training*
digits (the user's own data, not the test set).  Goal (issue 13): the pruned + int8 file at least 8x smaller
than the original float32 ``.keras``, at most 1 accuracy point below the pruned float model.

**Interaction study.**  Does a different pruning choice quantise better?  Per demo, strategy
(``baseline impact certified magnitude``) and target (0 = unpruned, 0.5, 0.6, 0.7): the accuracy of the float
pruned model and of its int8 files (Keras int8, TFLite dynamic-range int8, ONNX int8), the int8 files'
top-1 agreement with their float source on the test digits, and the int8 weight error of the float model
(per output channel, symmetric abs-max scale as Keras and TFLite use: ||W - deq(q(W))|| / ||W||, averaged
over the Dense and Conv kernels, weighted by size).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402

STUDY_STRATEGIES = ("baseline", "impact", "certified", "magnitude")
STUDY_TARGETS = (0.0, 0.5, 0.6, 0.7)
STUDY_FORMATS = ("keras", "keras-int8", "tflite-int8", "onnx-int8")


def prune(demo: Any, strategy: str, target: float) -> tuple[Any, float, str]:
    """The demo model pruned data-free by the session's loop; returns (model, seconds, summary)."""
    from paoding_widgets import PruningSession

    if target == 0:
        return demo.model, 0.0, "unpruned"
    t = time.perf_counter()
    s = PruningSession(demo.model, input_range=demo.input_range, strategy=strategy, step=0.05, target=target,
                       n_probes=16)
    result = s.run()
    pruned = s.pruned_model()
    summary = ", ".join(f"{g['name']} {g['total'] - g['pruned']}/{g['total']}" for g in s.pruner.summary()
                        if g["prunable"])
    return pruned, time.perf_counter() - t, f"{result.share_pruned:.0%} of hidden units pruned (units kept: {summary})"


def int8_weight_error(model: Any) -> float:
    """Size-weighted mean relative error of per-output-channel symmetric int8 weights (Dense and Conv kernels)."""
    num = den = 0.0
    for layer in model.layers:
        for w in layer.weights:
            if not str(w.path).endswith("kernel"):
                continue
            k = np.asarray(w, np.float64).reshape(-1, w.shape[-1])  # (fan_in, out)
            scale = np.abs(k).max(0) / 127.0
            scale[scale == 0] = 1.0
            err = np.linalg.norm(k - np.round(k / scale) * scale) / max(np.linalg.norm(k), 1e-12)
            num += err * k.size
            den += k.size
    return num / den if den else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strategy", default="impact")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true", help="the MLP only, no study")
    ap.add_argument("--no-study", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "deploy"),
                    help="results stem: writes <out>.md and <out>.json")
    args = ap.parse_args(argv)

    import keras

    from paoding_widgets import load_demo
    from paoding_widgets.engine.deploy import FORMATS, deploy

    kinds = ("mlp",) if args.quick else ("mlp", "cnn")
    study = not (args.quick or args.no_study)
    started = time.perf_counter()
    md = [f"# Compact deployment of the MNIST demos\n\nCommand: `python benchmarks/bench_deploy.py"
          f"{' --quick' if args.quick else ''}{' --no-study' if args.no_study else ''}` "
          f"(strategy {args.strategy}, target {args.target:g}, step 0.05, data-free; Keras {keras.__version__}, "
          f"backend {keras.backend.backend()}).\n"]
    out: dict[str, Any] = {"machine": machine_info(), "strategy": args.strategy, "target": args.target,
                           "tables": {}, "study": []}
    demos = {kind: load_demo(f"digits_{kind}") for kind in kinds}

    for kind, demo in demos.items():
        pruned, dt, summary = prune(demo, args.strategy, args.target)
        print(f"\n== digits_{kind}: {summary} in {dt:.1f}s", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            report = deploy(pruned, tmp, original=demo.model, eval_data=(demo.x_test, demo.y_test),
                            input_range=demo.input_range, formats=tuple(FORMATS),
                            calibration_data=demo.x_train[:500], robust_samples=500, strict=False,
                            progress=lambda m: print("  " + m, flush=True))
        table = report.table().replace(
            "calibrated on 500 inputs given as calibration_data", "calibrated on 500 training digits")
        print(table, flush=True)
        ok = _goal(report)
        print(ok)
        md += [f"## digits_{kind}\n", f"Pruned: {summary}.\n", table, "", ok, ""]
        out["tables"][kind] = {"pruned": summary, "prune_seconds": dt, "goal": ok, **report.as_dict()}

    if study:
        md += ["## How pruning and quantisation interact\n",
               "Accuracy on the 2,000 test digits of the float model and of its int8 files; `agree` is the "
               "int8 file's top-1 agreement with its float source on the same digits; `w err` the mean "
               "per-channel int8 weight error of the float model; size of the TFLite dynamic-range int8 file, and how "
               "many times smaller it is than the original float32 `.keras`.\n",
               "| model | strategy | target | float acc | keras-int8 | tflite-int8 | onnx-int8 | agree (tflite / onnx) "
               "| w err | tflite-int8 KiB | x smaller |",
               "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for kind, demo in demos.items():
            original_bytes = None
            for target in STUDY_TARGETS:
                for strategy in (STUDY_STRATEGIES if target else ("-",)):
                    pruned, dt, summary = prune(demo, strategy, target)
                    with tempfile.TemporaryDirectory() as tmp:
                        r = deploy(pruned, tmp, original=demo.model, eval_data=(demo.x_test, demo.y_test),
                                   input_range=demo.input_range, formats=STUDY_FORMATS, epsilons=(), strict=False)
                    original_bytes = r.original_bytes
                    acc = {row.name: row.accuracy for row in r.rows}
                    agree = {row.name: row.agreement_source for row in r.rows}
                    tfl = r.row("pruned + tflite-int8")
                    rec: dict[str, Any] = {"model": kind, "strategy": strategy, "target": target, "summary": summary,
                           "float_accuracy": acc["pruned"], "keras_int8": acc["pruned + keras-int8"],
                           "tflite_int8": acc["pruned + tflite-int8"], "onnx_int8": acc["pruned + onnx-int8"],
                           "agree_tflite": agree["pruned + tflite-int8"], "agree_onnx": agree["pruned + onnx-int8"],
                           "weight_error": int8_weight_error(pruned), "tflite_int8_bytes": tfl.bytes,
                           "times_smaller": tfl.times_smaller, "original_bytes": original_bytes}
                    out["study"].append(rec)
                    line = (f"| {kind} | {strategy} | {target:g} | {_p(rec['float_accuracy'])} | "
                            f"{_p(rec['keras_int8'])} | {_p(rec['tflite_int8'])} | {_p(rec['onnx_int8'])} | "
                            f"{_p(rec['agree_tflite'])} / {_p(rec['agree_onnx'])} | {rec['weight_error']:.4f} | "
                            f"{tfl.bytes / 1024:.1f} | {tfl.times_smaller:.1f}x |")
                    md.append(line)
                    print(line, flush=True)
        md.append("")
    total = time.perf_counter() - started
    md.append(f"Total {total:.0f} s on {out['machine']['cpus_usable']} CPUs ({out['machine']['processor'] or '?'}); "
              f"TensorFlow {out['machine']['tensorflow']}, numpy {out['machine']['numpy']}.")
    out["seconds"] = total
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.md").write_text("\n".join(md) + "\n")
    Path(f"{stem}.json").write_text(json.dumps(out, indent=1, default=_json) + "\n")
    print(f"\nwrote {stem}.md and {stem}.json ({total:.0f} s)")
    return 0


def _goal(report: Any) -> str:
    """The issue's goal, checked on every int8 file: >= 8x smaller than the original, <= 1 point below pruned."""
    parts = []
    for row in report.rows:
        if "int8" not in row.name or row.accuracy is None or row.times_smaller is None:
            continue
        ok = row.times_smaller >= 8 and (row.accuracy_drop or 0) <= 0.01
        parts.append(f"{row.name}: {row.times_smaller:.2f}x, {-100 * (row.accuracy_drop or 0) + 0:+.2f} pt "
                     f"{'PASS' if ok else 'MISS'}")
    return "Goal (>= 8x smaller, <= 1 pt below pruned): " + "; ".join(parts) + "."


def _p(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _json(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
