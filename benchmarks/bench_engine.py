"""Benchmark of the pruning engine: time per proposal iteration, full runs, scaling, memory.

Usage (from the repository root)::

    python benchmarks/bench_engine.py                      # full run (a few minutes on 2 cores)
    python benchmarks/bench_engine.py --quick              # smoke run: W in 128, 512; one repeat
    python benchmarks/bench_engine.py --json bench.json    # also write the figures + machine info
    python benchmarks/bench_engine.py --profile impact     # + cProfile of one proposal per model
    python benchmarks/bench_engine.py --blas-threads 1     # pin NumPy's BLAS to one thread
    python benchmarks/bench_engine.py --busy               # the same with a second process spinning on one core
    python benchmarks/bench_engine.py --apps               # + ResNet50 / MobileNetV2 (weights=None) impact runs
    python benchmarks/bench_engine.py --metrics            # only: ResNet50 session metrics(), peak memory, clicks
    python benchmarks/bench_engine.py --slowdown           # only: short runs quiet vs busy, side by side
    python benchmarks/bench_engine.py --surgery            # only: pruned_model() against the old surgery path

What is measured, per model and per strategy in ``STRATEGIES``:

* **propose** -- one proposal iteration, ``Pruner(...).propose()``, on a fresh
  ``Pruner`` each repeat (nothing cached: the value bounds are computed inside);
  median of ``--repeats`` (3; 1 with ``--quick``).  Constructing the ``Pruner``
  is timed apart ("init").  One untimed proposal per model warms TensorFlow up
  first (eager conv kernels, lazy imports), so the figures are steady-state.
* **peak MiB** -- peak of Python/NumPy allocations during one more proposal
  (``tracemalloc``; an untimed extra call).
* **run** -- ``PruningSession(..., step=0.05, target=0.5).run()`` once, on a fresh
  headless session (the package's one pruning loop; the session's construction is
  not timed).  For the widest MLP only "baseline", "impact" and "certified" are
  always run; the others are run when their estimate (iterations x propose time
  x 1.5) fits ``--run-budget`` seconds, else printed as "skipped" with the reason.
* **scaling** -- the exponent ``p`` of ``time ~ W^p`` of one proposal over the MLP
  widths (least-squares on log-log; hidden-hidden weights grow as ``W^2``).
* **memory** -- ``pruner.store.nbytes()`` vs the model's own weight bytes, and the
  process's peak RSS (``resource.getrusage``; includes TensorFlow itself).

Models: MLPs 784-W-W-10 (ReLU, softmax output) for W in 128, 512, 2048 and a small
CNN 28x28x1 -> Conv2D 32 3x3 relu -> MaxPool -> Conv2D 64 3x3 relu -> MaxPool ->
Flatten -> Dense 128 relu -> Dense 10 (softmax); random-init weights
(``keras.utils.set_random_seed(0)``), input range [0, 1].

BLAS threads: by default NumPy's BLAS uses its own default thread count (shown in
the header).  On small 2-vCPU VMs a multi-threaded OpenBLAS can add a fixed
wake-up latency to every matrix product; ``--blas-threads N`` (set through
``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` before NumPy loads) measures that.

* **matmul limit** -- the float32 matrix-product rate of this machine, measured in
  the same run (2048^3 products, best of 5, the BLAS threads the run uses), and
  the share of it one impact iteration at width 2048 reaches: its pairing costs
  ``sum 2 n^2 d`` FLOPs (one Gram matrix per layer, ``n`` units of fan-in ``d``),
  so ``limit = FLOPs / rate`` and the fraction is ``limit / measured``.
* **apps** (``--apps``) -- ``PruningSession(...).run()`` to 50 % in impact mode on
  ``keras.applications.ResNet50(weights=None)`` and ``MobileNetV2(weights=None)``
  (median of ``--repeats``, after one warm-up run).

``--busy`` starts a second process spinning on one core for the whole benchmark
(``blas_threads.BusyCore``): the figures of a machine where another job runs.

Targets: one impact-mode iteration on 784-512-512-10 under 0.5 s, on
784-2048-2048-10 under 5 s; at least 60 % of the matmul limit at width 2048;
ResNet50 run under 2 s, MobileNetV2 under 0.7 s (PASS / MISS printed).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import pstats
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


sys.path.insert(0, str(Path(__file__).resolve().parent))
from blas_threads import BusyCore, apply_blas_threads  # noqa: E402

_BLAS_THREADS = apply_blas_threads(sys.argv[1:])  # before NumPy loads its BLAS
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import common  # noqa: E402  (after NumPy: --blas-threads must act first)
import numpy as np  # noqa: E402
from common import mlp  # noqa: E402

STEP, TARGET = 0.05, 0.5
FULL_WIDTHS = (128, 512, 2048)
QUICK_WIDTHS = (128, 512)
ALWAYS_RUN_WIDE = ("baseline", "impact", "certified")
TARGETS = (  # (model label, strategy, limit in seconds)
    ("784-512-512-10", "impact", 0.5),
    ("784-2048-2048-10", "impact", 5.0),
)
MIB = 1024.0 * 1024.0


# ------------------------------------------------------------------ models



def cnn() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ], name="cnn")


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matrix-product rate (FLOP/s) of an n^3 product, best of ``repeats``."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def pairing_flops(model: Any) -> float:
    """``sum 2 n^2 d`` over the hidden Dense layers (the Gram matrices of one impact iteration)."""
    total = 0.0
    for layer in model.layers[:-1]:
        d, n = layer.kernel.shape
        total += 2.0 * n * n * d
    return total


def matmul_fraction(model: Any, repeats: int = 5) -> dict[str, Any]:
    """Share of the matmul limit one impact iteration reaches, measured interleaved.

    Each round times a 2048^3 float32 product (the rate) and then one impact
    proposal on a fresh pruner, back to back, so both see the same load; the
    fraction of a round is ``(pairing FLOPs / rate) / iteration time``; the
    median over rounds is reported.
    """
    rng = np.random.default_rng(0)
    n = 2048
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    make_pruner(model, "impact").propose()
    flops = pairing_flops(model)
    fracs, rates, times = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        rate = 2.0 * n ** 3 / (time.perf_counter() - t0)
        pruner = make_pruner(model, "impact")
        t0 = time.perf_counter()
        pruner.propose()
        t = time.perf_counter() - t0
        fracs.append(flops / rate / t)
        rates.append(rate)
        times.append(t)
    return {"pairing_flops": flops, "fraction": statistics.median(fracs), "fractions": fracs,
            "rate_flops": statistics.median(rates), "time_s": statistics.median(times)}


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _rss() -> tuple[float, float]:
    """(current, peak) resident set in GiB, from /proc/self/status."""
    cur = hwm = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 2**20
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 2**20
    return cur, hwm


def metrics_memory(clicks: int = 4, n_probes: int | None = None) -> dict[str, Any]:
    """``metrics()`` on a ResNet50 session: first call, then after each of ``clicks`` accepted proposals.

    ``n_probes``: None for the session's default (bounded by cost: 12 on ResNet50), or a count to compare
    with (26, the default by input size alone before the cost bound).
    """
    from paoding_widgets.session import PruningSession

    model = app_model("resnet50")
    s = PruningSession(model, input_range=(0.0, 1.0), strategy="impact", step=0.05, target=0.5, seed=0,
                       n_probes=n_probes)
    print(f"ResNet50 session built ({'default probes' if n_probes is None else f'n_probes={n_probes}'}): "
          f"RSS {_rss()[0]:.2f} GiB, load average {os.getloadavg()[0]:.2f}")
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    m = s.metrics()
    first = time.perf_counter() - t0
    print(f"first metrics(): {first:.2f} s, {len(s._probes)} probes, params {m.size.params:,}, "
          f"peak RSS {_rss()[1]:.2f} GiB")
    times, where, restarts = [], [], []
    for i in range(clicks):
        # alternate a click early in the network (the first proposal) and one late (the last): the probes'
        # pass restarts at the last cached cut before the first edited layer (surgery.EditedModel)
        names = list(s.propose())
        late = i % 2 == 1
        name = names[-1] if late else names[0]
        s.accept(name)
        t0 = time.perf_counter()
        m = s.metrics()
        times.append(time.perf_counter() - t0)
        where.append("late" if late else "early")
        restarts.append(s._edited_model.last_restart)
        print(f"after click {i + 1} ({where[-1]}, {name}): metrics() {times[-1]:.2f} s, probes' pass from "
              f"{restarts[-1]}, params {m.size.params:,}, peak RSS {_rss()[1]:.2f} GiB")
    peak = _rss()[1]
    print(f"peak RSS {peak:.2f} GiB (goal < 2 GiB: {'PASS' if peak < 2 else 'MISS'}); re-evaluation median "
          f"{statistics.median(times):.2f} s (goal < 1 s: {'PASS' if statistics.median(times) < 1 else 'MISS'}); "
          f"load average {os.getloadavg()[0]:.2f}")
    # The floor of a re-evaluation: the forward pass over the probes, at this machine's matmul rate now.
    from paoding_widgets.engine.evaluate import flops

    work = len(s._probes) * flops(model)
    rate = matmul_rate(1024, 3)
    print(f"floor: {len(s._probes)} probes x {flops(model) / 1e9:.1f} GFLOP = {work / 1e9:.0f} GFLOP = "
          f"{work / rate:.2f} s at the float32 matmul rate measured now ({rate / 1e9:.0f} GFLOP/s)")
    early = [t for t, w in zip(times, where) if w == "early"]
    late = [t for t, w in zip(times, where) if w == "late"]
    print(f"re-evaluation: early clicks {', '.join(f'{t:.2f}' for t in early)} s; late clicks "
          f"{', '.join(f'{t:.2f}' for t in late)} s (goal < 1 s)")
    return {"first_s": first, "click_s": times, "click_where": where, "click_restart": restarts,
            "click_early_s": early, "click_late_s": late,
            "click_median_s": statistics.median(times), "peak_rss_gib": peak,
            "probes": len(s._probes), "forward_floor_s": work / rate, "matmul_rate_flops": rate,
            "load_average_start": load_start, "load_average_end": os.getloadavg()[0]}


def busy_slowdown(rounds: int = 3, per_round: int = 5) -> dict[str, Any]:
    """Slowdown of short runs when another process spins on one core, measured side by side.

    Per model and strategy: ``PruningSession(...).run()`` + ``pruned_model()`` (what
    ``compare_reference.py`` times), ``per_round`` times quiet then ``per_round`` times with
    :class:`BusyCore`, for ``rounds`` alternating rounds in this one process; the slowdown is
    the median busy time over the median quiet time.  Other load on the machine applies to both.
    """
    from paoding_widgets.session import PruningSession

    def once(model: Any, strategy: str) -> float:
        t0 = time.perf_counter()
        s = PruningSession(model, input_range=(0.0, 1.0), strategy=strategy, step=STEP, target=TARGET, seed=0,
                           n_probes=16)
        s.run()
        s.pruned_model()
        return time.perf_counter() - t0

    out: dict[str, Any] = {"load_average_start": os.getloadavg()[0]}
    print(f"busy slowdown: run + pruned_model(), {rounds} rounds x {per_round} quiet / busy, "
          f"load average {os.getloadavg()[0]:.2f}")
    for label, build in (("784-128-128-10", lambda: mlp(128)), ("cnn", cnn)):
        model = build()
        for strategy in ("baseline", "impact", "stochastic"):
            once(model, strategy)  # warm-up
            quiet: list[float] = []
            busy: list[float] = []
            for _ in range(rounds):
                quiet += [once(model, strategy) for _ in range(per_round)]
                with BusyCore():
                    busy += [once(model, strategy) for _ in range(per_round)]
            q, b = statistics.median(quiet), statistics.median(busy)
            out[f"{label}/{strategy}"] = {"quiet_s": q, "busy_s": b, "slowdown": b / q}
            print(f"  {label:<16}{strategy:<11} quiet {fmt_s(q):>9}  busy {fmt_s(b):>9}  slowdown {b / q:.2f}x "
                  f"(goal 1.5x: {'PASS' if b / q <= 1.5 else 'MISS'})")
    out["load_average_end"] = os.getloadavg()[0]
    print(f"load average at the end {out['load_average_end']:.2f}")
    return out


def surgery_speed(names: tuple[str, ...] = ("mlp", "cnn", "mobilenetv2")) -> dict[str, Any]:
    """``pruned_model()`` against the old surgery path (configured initializers, then ``set_weights``),
    interleaved on the same pruner after 3 baseline iterations; medians."""
    import numpy as np

    from paoding_widgets.engine import Pruner, surgery

    out: dict[str, Any] = {"load_average_start": os.getloadavg()[0]}
    for name in names:
        model = mlp(128) if name == "mlp" else cnn() if name == "cnn" else app_model(name)
        p = Pruner(model, input_range=(0.0, 1.0), strategy="baseline", step=STEP, target=TARGET, seed=0)
        for _ in range(3):
            for q in p.propose().values():
                p.apply(q)

        def old(p: Any = p) -> Any:
            new = surgery.clone(p.graph.model, surgery.new_configs(p.graph, p.store))
            dead = surgery.dead_positions(p.graph, p.store)
            for layer in new.layers:
                arrays = []
                for var in surgery.layer_variable_names(layer):
                    a = p.store[(layer.name, var)]
                    for axis, pos in sorted(dead.get((layer.name, var), {}).items()):
                        a = np.delete(a, pos, axis=axis)
                    arrays.append(a)
                if arrays:
                    layer.set_weights(arrays)
            return new

        old()
        p.pruned_model()
        t_old, t_new = [], []
        for _ in range(3 if name in APP_TARGETS else 15):
            t0 = time.perf_counter()
            old()
            t1 = time.perf_counter()
            p.pruned_model()
            t_old.append(t1 - t0)
            t_new.append(time.perf_counter() - t1)
        o, n = statistics.median(t_old), statistics.median(t_new)
        out[name] = {"old_s": o, "new_s": n, "speedup": o / n}
        print(f"  pruned_model() {name:<12} old {fmt_s(o):>9}  new {fmt_s(n):>9}  {o / n:.2f}x  "
              f"(load {os.getloadavg()[0]:.1f})")
    return out


def fgsm_speed(n: int = 2000, epsilons: tuple[float, ...] = (0.01, 0.05, 0.1)) -> dict[str, Any]:
    """Robust instances at 3 epsilons on the CNN: one attack per epsilon (before) against one
    gradient stepped per epsilon (``robust_instances`` now), interleaved; the counts must agree."""
    import importlib

    import numpy as np

    ev = importlib.import_module("paoding_widgets.engine.evaluate")  # the module (the package exports a function)
    model = cnn()
    rng = np.random.default_rng(0)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, n)

    def per_epsilon() -> dict[float, int]:
        labels = ev._labels(y)
        return {e: int((ev.predict_classes(model, ev.fgsm(model, x, y, e)) == labels).sum()) for e in epsilons}

    assert per_epsilon() == ev.robust_instances(model, x, y, epsilons)
    t_old, t_new = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        per_epsilon()
        t1 = time.perf_counter()
        ev.robust_instances(model, x, y, epsilons)
        t_old.append(t1 - t0)
        t_new.append(time.perf_counter() - t1)
    o, nw = statistics.median(t_old), statistics.median(t_new)
    print(f"  robust_instances, CNN, {n} inputs, {len(epsilons)} epsilons: per-epsilon attacks {fmt_s(o)}, "
          f"one gradient {fmt_s(nw)} ({o / nw:.2f}x), load {os.getloadavg()[0]:.1f}")
    return {"per_epsilon_s": o, "one_gradient_s": nw, "speedup": o / nw, "load_average": os.getloadavg()[0]}


def app_model(name: str) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return {"resnet50": keras.applications.ResNet50, "mobilenetv2": keras.applications.MobileNetV2}[name](weights=None)


APP_TARGETS = {"resnet50": 2.0, "mobilenetv2": 0.7}


def model_weight_bytes(model: Any) -> int:
    return int(sum(np.asarray(w.numpy()).nbytes for w in model.weights))


# ------------------------------------------------------------------ measuring
def peak_rss_bytes() -> int:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru if sys.platform == "darwin" else ru * 1024)  # bytes on macOS, KiB on Linux


def make_pruner(model: Any, strategy: str) -> Any:
    from paoding_widgets.engine import Pruner

    return Pruner(model, input_range=(0.0, 1.0), strategy=strategy, step=STEP, target=TARGET, seed=0)


def time_propose(model: Any, strategy: str, repeats: int) -> dict[str, Any]:
    """Median time of ``propose()`` on fresh pruners, the init time, the transient peak."""
    inits, times = [], []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        pruner = make_pruner(model, strategy)
        t1 = time.perf_counter()
        proposals = pruner.propose()
        t2 = time.perf_counter()
        inits.append(t1 - t0)
        times.append(t2 - t1)
    units = int(sum(len(p.candidates) for p in proposals.values()))
    # transient allocations of one more proposal (untimed: tracemalloc slows Python code down)
    pruner = make_pruner(model, strategy)
    gc.collect()
    tracemalloc.start()
    pruner.propose()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"times_s": times, "median_s": statistics.median(times), "init_median_s": statistics.median(inits),
            "units_proposed": units, "groups_proposed": len(proposals), "peak_alloc_bytes": int(peak),
            "store_bytes": int(pruner.store.nbytes())}


def time_run(model: Any, strategy: str) -> dict[str, Any]:
    """One full ``run()`` to the target on a fresh headless session, with per-iteration times."""
    from paoding_widgets.session import PruningSession

    gc.collect()
    session = PruningSession(model, input_range=(0.0, 1.0), strategy=strategy, step=STEP, target=TARGET, seed=0,
                             n_probes=16)  # probes are for metrics only; the run never evaluates
    marks: list[float] = []
    t0 = time.perf_counter()
    result = session.run(progress=lambda info: marks.append(time.perf_counter()))
    total = time.perf_counter() - t0
    per_iter = np.diff([t0, *marks]).tolist()
    return {"time_s": total, "iterations": int(result.iterations), "share_pruned": float(result.share_pruned),
            "iteration_s": per_iter}


def fit_exponent(widths: list[int], times: list[float]) -> float | None:
    """Least-squares slope of log(time) on log(width)."""
    pts = [(w, t) for w, t in zip(widths, times) if t is not None and t > 0]
    if len(pts) < 2:
        return None
    x = np.log([w for w, _ in pts])
    y = np.log([t for _, t in pts])
    return float(np.polyfit(x, y, 1)[0])


def profile_propose(model: Any, strategy: str, top: int = 14) -> str:
    pruner = make_pruner(model, strategy)
    prof = cProfile.Profile()
    prof.enable()
    pruner.propose()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return "\n".join(lines[max(0, start - 2):])


# ------------------------------------------------------------------ formatting
def fmt_s(t: float | None) -> str:
    if t is None:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.0f}us"
    if t < 1.0:
        return f"{t * 1e3:.1f}ms"
    return f"{t:.2f}s"


def blas_info() -> list[dict[str, Any]]:
    """NumPy's BLAS libraries and their thread counts (via threadpoolctl when installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer", "architecture")}
            for d in threadpool_info() if d.get("user_api") == "blas"]


def machine_info() -> dict[str, Any]:
    return {
        **common.machine_info(), "blas": blas_info(),
        "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                        if k in os.environ},
    }


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="W in 128, 512 only; one repeat")
    ap.add_argument("--json", metavar="PATH", help="also write the figures and machine info as JSON")
    ap.add_argument("--repeats", type=int, default=None, help="proposal repeats (default 3; 1 with --quick)")
    ap.add_argument("--strategies", default=None, help="comma-separated subset of the strategies")
    ap.add_argument("--no-cnn", action="store_true", help="skip the CNN")
    ap.add_argument("--run-budget", type=float, default=120.0,
                    help="seconds an optional full run may take at the widest MLP (default 120)")
    ap.add_argument("--profile", metavar="STRATEGY", help="cProfile one proposal of this strategy per model")
    ap.add_argument("--blas-threads", type=int, default=None, metavar="N",
                    help="threads for NumPy's BLAS (default: the library's own default)")
    ap.add_argument("--busy", action="store_true", help="a second process spins on one core throughout")
    ap.add_argument("--apps", action="store_true", help="also run ResNet50 and MobileNetV2 (weights=None)")
    ap.add_argument("--no-mlp", action="store_true", help="skip the MLPs (with --apps: only the applications)")
    ap.add_argument("--metrics", action="store_true",
                    help="only: session.metrics() on ResNet50 (weights=None), peak RSS and re-evaluation after clicks")
    ap.add_argument("--metrics-probes", type=int, default=None, metavar="N",
                    help="with --metrics: measure again with n_probes=N (e.g. 26, the size-only default) to compare")
    ap.add_argument("--slowdown", action="store_true",
                    help="only: slowdown of short runs (MLP-128, CNN) with a process spinning on one core, "
                         "quiet and busy alternating in one run")
    ap.add_argument("--surgery", action="store_true",
                    help="only: pruned_model() against the old surgery path, interleaved (MLP-128, CNN, MobileNetV2), "
                         "and robustness with one gradient for every epsilon against one attack per epsilon")
    args = ap.parse_args(argv)
    if args.surgery:
        result = surgery_speed()
        result["fgsm"] = fgsm_speed()
        if args.json:
            Path(args.json).write_text(json.dumps({"surgery": result, "machine": machine_info()}, indent=2))
        return 0
    if args.slowdown:
        result = busy_slowdown()
        if args.json:
            Path(args.json).write_text(json.dumps({"busy_slowdown": result, "machine": machine_info()}, indent=2))
        return 0
    if args.metrics:
        with BusyCore() if args.busy else _Nothing():
            result = metrics_memory()
            if args.metrics_probes:  # side by side: the same clicks with an explicit probe count
                result["with_n_probes"] = metrics_memory(n_probes=args.metrics_probes)
        if args.json:
            result["busy"] = bool(args.busy)
            Path(args.json).write_text(json.dumps({"metrics_resnet50": result, "machine": machine_info()}, indent=2))
        return 0
    if args.busy:
        with BusyCore():
            return _main(args, ap)
    return _main(args, ap)


def _main(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:

    import keras  # noqa: F401  (after TF_CPP_MIN_LOG_LEVEL)

    from paoding_widgets.engine import STRATEGIES

    names = list(STRATEGIES) if args.strategies is None else [s.strip() for s in args.strategies.split(",")]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        ap.error(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    widths = list(QUICK_WIDTHS if args.quick else FULL_WIDTHS)
    repeats = args.repeats or (1 if args.quick else 3)
    rss_start = peak_rss_bytes()
    load_start = os.getloadavg()[0]
    info = machine_info()

    models: list[tuple[str, Any, int | None]] = [] if args.no_mlp else [
        (f"784-{w}-{w}-10", (lambda w=w: mlp(w)), w) for w in widths]
    if not args.no_cnn:
        models.append(("cnn 28x28x1-c32-c64-d128-10", cnn, None))

    w = 100
    print("=" * w)
    print(f"paoding_widgets engine benchmark  |  step {STEP}, target {TARGET}, input range [0, 1], "
          f"propose: median of {repeats}")
    print(f"{info['platform']}  |  {info['cpu_count']} cpus ({info['cpus_usable']} usable)  |  python "
          f"{info['python']}  numpy {info['numpy']}  tensorflow {info['tensorflow']}  keras {info['keras']}")
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads)" for b in info["blas"])
    print(f"BLAS: {blas or 'unknown (threadpoolctl not installed)'}"
          + ("" if args.blas_threads is None else f"  [--blas-threads {args.blas_threads}]")
          + f"  |  load average {load_start:.2f}" + ("  |  BUSY: a second process spins on one core"
                                                                 if args.busy else ""))
    rate = matmul_rate()
    print(f"float32 matmul rate (2048^3, best of 5): {rate / 1e9:.1f} GFLOP/s")
    print("=" * w)

    results: dict[str, Any] = {}
    profiles: dict[str, str] = {}
    widest = max(widths)
    for label, build, width in models:
        model = build()
        params = int(model.count_params())
        wbytes = model_weight_bytes(model)
        warm = make_pruner(model, "impact")  # warm-up (untimed): TF eager kernels, lazy imports
        warm.propose()
        groups = [f"{g.name}({g.size}, {g.kind})" for g in warm.graph.prunable_groups]
        del warm
        entry: dict[str, Any] = {"width": width, "params": params, "weight_bytes": wbytes, "groups": groups,
                                 "strategies": {}}
        print(f"\n{label}   params {params:,}   weights {wbytes / MIB:.2f} MiB   groups: {', '.join(groups)}")
        print(f"  {'strategy':<11}{'propose':>10}{'min':>10}{'max':>10}{'init':>10}{'units':>7}"
              f"{'peak MiB':>10}{'run':>10}{'iters':>7}{'s/iter':>10}{'pruned':>8}")
        for name in names:
            prop = time_propose(model, name, repeats)
            entry["store_bytes"] = prop["store_bytes"]
            rec: dict[str, Any] = {"propose": prop}
            est = math.ceil(TARGET / STEP) * prop["median_s"] * 1.5
            if width == widest and width is not None and len(widths) > 1 and name not in ALWAYS_RUN_WIDE \
                    and est > args.run_budget:
                rec["run"] = {"skipped": f"estimated {est:.0f} s > --run-budget {args.run_budget:.0f} s"}
            else:
                rec["run"] = time_run(model, name)
            entry["strategies"][name] = rec
            run = rec["run"]
            if "skipped" in run:
                tail = f"{'skipped':>10}  ({run['skipped']})"
            else:
                per = run["time_s"] / max(run["iterations"], 1)
                tail = (f"{fmt_s(run['time_s']):>10}{run['iterations']:>7}{fmt_s(per):>10}"
                        f"{run['share_pruned']:>8.3f}")
            print(f"  {name:<11}{fmt_s(prop['median_s']):>10}{fmt_s(min(prop['times_s'])):>10}"
                  f"{fmt_s(max(prop['times_s'])):>10}{fmt_s(prop['init_median_s']):>10}"
                  f"{prop['units_proposed']:>7}{prop['peak_alloc_bytes'] / MIB:>10.1f}{tail}", flush=True)
        sb = entry.get("store_bytes", 0)
        print(f"  memory: store {sb / MIB:.2f} MiB vs model weights {wbytes / MIB:.2f} MiB "
              f"(x{sb / max(wbytes, 1):.3f}); peak RSS so far {peak_rss_bytes() / MIB:.0f} MiB")
        entry["peak_rss_after_bytes"] = peak_rss_bytes()
        if args.profile:
            profiles[label] = profile_propose(model, args.profile)
        results[label] = entry
        del model
        keras.backend.clear_session()
        gc.collect()

    # ---------------------------------------------------------------- applications
    apps: dict[str, Any] = {}
    if args.apps:
        print(f"\napplications (weights=None), impact run to {TARGET:.0%}, median of {repeats} after a warm-up:")
        for app in APP_TARGETS:
            model = app_model(app)
            time_run(model, "impact")  # warm-up
            runs = [time_run(model, "impact") for _ in range(repeats)]
            t = statistics.median(r["time_s"] for r in runs)
            verdict = "PASS" if t < APP_TARGETS[app] else "MISS"
            apps[app] = {"times_s": [r["time_s"] for r in runs], "median_s": t, "iterations": runs[0]["iterations"],
                         "limit_s": APP_TARGETS[app], "verdict": verdict}
            print(f"  {app:<12} {fmt_s(t):>9}  ({', '.join(fmt_s(r['time_s']) for r in runs)}; "
                  f"{runs[0]['iterations']} iterations)  target < {APP_TARGETS[app]} s  {verdict}", flush=True)
            del model
            keras.backend.clear_session()
            gc.collect()

    # ---------------------------------------------------------------- matmul limit
    limit_rows = []
    for lbl, _, wd in models:
        if wd is None or wd < 2048 or "impact" not in names:
            continue
        mf = matmul_fraction(mlp(wd), max(repeats, 5))
        flops, r, t, frac = mf["pairing_flops"], mf["rate_flops"], mf["time_s"], mf["fraction"]
        limit_rows.append({"model": lbl, **mf, "limit_s": flops / r, "verdict": "PASS" if frac >= 0.6 else "MISS"})
        print(f"\nmatmul limit: one impact iteration on {lbl}: {flops / 1e9:.1f} GFLOP of Gram matrices = "
              f"{fmt_s(flops / r)} at {r / 1e9:.0f} GFLOP/s (2048^3 product timed just before each iteration); "
              f"measured {fmt_s(t)}: {frac:.0%} of the limit, median of {len(mf['fractions'])} interleaved rounds "
              f"(goal >= 60 %)  {limit_rows[-1]['verdict']}")

    # ---------------------------------------------------------------- scaling
    mlp_labels = [lbl for lbl, _, wd in models if wd is not None]
    lo_w, hi_w = widths[0], widths[-1]
    scaling: dict[str, Any] = {}
    print(f"\nscaling of one proposal with width: time ~ W^p, least-squares over W = "
          f"{', '.join(map(str, widths))} (weights grow as W^2)")
    print(f"  {'strategy':<11}" + "".join(f"{'W=' + str(wd):>10}" for wd in widths)
          + f"{'p fit':>8}{f'p {lo_w}->{hi_w}':>12}  note")
    for name in names if len(mlp_labels) > 1 else []:
        ts = [results[lbl]["strategies"][name]["propose"]["median_s"] for lbl in mlp_labels]
        p = fit_exponent(widths, ts)
        p_end = math.log(ts[-1] / ts[0]) / math.log(hi_w / lo_w) if ts[0] > 0 and ts[-1] > 0 else None
        note = "times < 1 ms: overhead-dominated, p not meaningful" if max(ts) < 1e-3 else ""
        scaling[name] = {"widths": widths, "median_s": ts, "p_fit": p, "p_endpoints": p_end, "note": note}
        print(f"  {name:<11}" + "".join(f"{fmt_s(t):>10}" for t in ts)
              + f"{(f'{p:.2f}' if p is not None else '-'):>8}{(f'{p_end:.2f}' if p_end is not None else '-'):>12}"
              + f"  {note}")

    # ---------------------------------------------------------------- targets
    print("\ntargets (one impact-mode proposal iteration, fresh pruner, median):")
    target_rows = []
    for lbl, strat, limit in TARGETS:
        rec = results.get(lbl, {}).get("strategies", {}).get(strat)
        if rec is None:
            verdict, t = "not measured", None
        else:
            t = rec["propose"]["median_s"]
            verdict = "PASS" if t < limit else "MISS"
        target_rows.append({"model": lbl, "strategy": strat, "limit_s": limit, "time_s": t, "verdict": verdict})
        print(f"  {strat} on {lbl:<18} under {limit:>4.1f} s : {fmt_s(t):>9}   {verdict}")

    rss_end = peak_rss_bytes()
    print(f"\npeak RSS: {rss_end / MIB:.0f} MiB (after imports: {rss_start / MIB:.0f} MiB; "
          f"includes TensorFlow)")
    for lbl, text in profiles.items():
        print(f"\ncProfile of one '{args.profile}' proposal on {lbl} (by own time):\n{text}")
    print("=" * w)

    if args.json:
        doc = {"machine": info,
               "config": {"step": STEP, "target": TARGET, "input_range": [0.0, 1.0], "repeats": repeats,
                          "quick": bool(args.quick), "widths": widths, "strategies": names,
                          "run_budget_s": args.run_budget, "seed": 0, "blas_threads": args.blas_threads,
                          "busy": bool(args.busy), "load_average_start": load_start,
                          "load_average_end": os.getloadavg()[0]},
               "matmul_rate_flops": rate, "matmul_limit": limit_rows, "apps": apps,
               "models": results, "scaling": scaling, "targets": target_rows,
               "peak_rss_bytes": rss_end, "peak_rss_after_imports_bytes": rss_start}
        Path(args.json).write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
