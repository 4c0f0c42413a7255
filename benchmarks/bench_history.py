"""Benchmark of the undo/redo history: memory held per entry, step time, goto time, exactness.

Usage (from the repository root)::

    python benchmarks/bench_history.py                      # the promised figure (about 2 minutes on 2 cores)
    python benchmarks/bench_history.py --steps 20 --width 512   # smaller, quicker
    python benchmarks/bench_history.py --json hist.json     # also write the figures + machine info
    python benchmarks/bench_history.py --tracemalloc        # + Python/NumPy allocation tracing (slows the steps)

The promise checked: "Entries store only what changed (the rows/columns
touched), not model copies: 100 iterations on a 784-2048-2048-10 MLP must use
less extra memory than two copies of the model."

What is run: a random-init MLP 784-W-W-10 (ReLU, softmax output; W = 2048 by
default; ``keras.utils.set_random_seed(0)``), a
``PruningSession(model, strategy="baseline", step=0.0025, target=0.9)`` -- the
step is chosen so the run does not reach the target (about 5 units per layer
per iteration at W = 2048, ~370 iterations to the target) -- and
``session.step()`` called ``--steps`` times (100); each call is one history entry.

What is printed, per strategy:

* **model bytes** -- the Keras model's own weight bytes, and the session's
  private weight store (``pruner.store.nbytes()``, which adds the small
  running-impact arrays).
* **patch bytes** -- ``session.history.nbytes()``: what the history's weight
  patches hold (one swap buffer of the touched positions plus their indices),
  its ratio to the model bytes, and PASS / MISS against "less than 2x model
  bytes".  Broken down by (layer, variable) key, positions vs values, plus the
  alive masks, so one sees which arrays dominate.  The entries' small session
  state snapshots (statuses, settings, RNG state) are not in ``nbytes()``; their
  pickled size is printed beside it.
* **RSS** -- the process's resident set (``VmRSS`` from ``/proc/self/status``;
  ``resource.getrusage`` peak elsewhere) before the session, after building it
  (the store is one private model copy), after the first step (one-time caches:
  value bounds etc.) and after all steps.  RSS includes allocator slack, so it is
  the honest but noisy counterpart of the exact patch bytes.
* **tracemalloc** (``--tracemalloc``) -- Python/NumPy allocations retained by the
  steps and their peak; tracing slows the steps, so the times are then marked.
* **time per step** -- first step (includes warm-up) and median / mean / max of the rest.
* **goto** -- time of ``goto(0)`` (undo everything) and of ``goto(N)`` (redo
  everything), and whether the weights after ``goto(0)`` equal a copy taken
  before the first step (``WeightStore.equal``, plus a byte-level comparison,
  which also tells -0.0 from 0.0) and after ``goto(N)`` equal a copy taken
  after the last step.  OK / FAIL.

Then the same for strategy "impact" for 20 steps (``--impact-steps``), reported
as bytes per step and the projection to ``--steps`` entries.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before keras / tensorflow load
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402
from common import machine_info, mlp  # noqa: E402

STEP, TARGET = 0.0025, 0.9
LIMIT_COPIES = 2.0  # the promise: history < 2 model copies
MIB = 1024.0 * 1024.0


# ------------------------------------------------------------------ measuring



def model_weight_bytes(model: Any) -> int:
    return int(sum(np.asarray(w.numpy()).nbytes for w in model.weights))


def rss_bytes() -> tuple[int | None, int | None]:
    """(current RSS, peak RSS) in bytes; current is None where /proc is missing."""
    cur = hwm = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    if hwm is None:
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        hwm = int(ru if sys.platform == "darwin" else ru * 1024)
    return cur, hwm


def settled_rss() -> tuple[int | None, int | None]:
    gc.collect()
    return rss_bytes()


def bitwise_equal(a: Any, b: Any) -> bool:
    """Byte-for-byte equality of two weight stores (arrays and alive masks)."""
    if a.arrays.keys() != b.arrays.keys() or a.alive.keys() != b.alive.keys():
        return False
    for k in a.arrays:
        x, y = a.arrays[k], b.arrays[k]
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return all(np.array_equal(a.alive[g], b.alive[g]) for g in a.alive)


def patch_breakdown(history: Any) -> dict[str, dict[str, int]]:
    """Patch bytes per (layer, variable) key: positions, values, writes; plus the alive masks."""
    out: dict[str, dict[str, int]] = {}
    for e in history.entries:
        for p in e.patch.arrays:
            d = out.setdefault(f"{p.key[0]}/{p.key[1]}", {"positions": 0, "values": 0, "writes": 0, "rows": 0})
            d["positions"] += int(p.positions.nbytes)
            d["values"] += int(p.values.nbytes)
            d["writes"] += 1
            d["rows"] += int(p.positions.size)
        for _, units, _ in e.patch.alive:
            d = out.setdefault("(alive masks)", {"positions": 0, "values": 0, "writes": 0, "rows": 0})
            d["positions"] += int(units.nbytes)
            d["writes"] += 1
            d["rows"] += int(units.size)
    return out


def state_bytes(history: Any) -> int:
    """Pickled size of the entries' session-state snapshots (not counted in History.nbytes())."""
    return sum(len(pickle.dumps((e.before, e.after, e.info))) for e in history.entries)


def mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / MIB:8.2f} MiB"


def ms(t: float) -> str:
    return f"{t * 1e3:8.1f} ms" if t < 10 else f"{t:8.2f} s "


# ------------------------------------------------------------------ one session
def bench_session(model: Any, strategy: str, steps: int, trace: bool) -> dict[str, Any]:
    from paoding_widgets.session.core import PruningSession, SessionError

    model_bytes = model_weight_bytes(model)
    rss0, _ = settled_rss()
    session = PruningSession(model, strategy=strategy, step=STEP, target=TARGET)
    store = session.pruner.store
    original = store.copy()  # taken before the first step; not part of the measured growth
    rss1, _ = settled_rss()
    per_iter = {g.name: session.pruner.next_k(g) for g in session.graph.prunable_groups}

    if trace:
        tracemalloc.start()
        traced0 = tracemalloc.get_traced_memory()[0]
    times: list[float] = []
    rss_after_first = None
    stop_reason = ""
    for i in range(steps):
        t0 = time.perf_counter()
        try:
            session.step()
        except SessionError as exc:  # reached the target: fewer entries than asked
            stop_reason = str(exc)
            break
        times.append(time.perf_counter() - t0)
        if i == 0:
            rss_after_first, _ = settled_rss()
    traced = None
    if trace:
        gc.collect()
        cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        traced = {"retained": cur - traced0, "peak": peak - traced0}
    rss2, hwm2 = settled_rss()
    done = len(times)
    after = store.copy()  # for the redo check; taken after the RSS reading

    patch_bytes = session.history.nbytes()
    breakdown = patch_breakdown(session.history)
    snapshots = state_bytes(session.history)

    t0 = time.perf_counter()
    session.goto(0)
    t_goto0 = time.perf_counter() - t0
    undo_equal, undo_bits = store.equal(original), bitwise_equal(store, original)
    t0 = time.perf_counter()
    session.goto(done)
    t_goto_n = time.perf_counter() - t0
    redo_equal, redo_bits = store.equal(after), bitwise_equal(store, after)

    rest = times[1:] or times
    result = {
        "strategy": strategy, "steps_asked": steps, "steps_done": done, "stop_reason": stop_reason,
        "units_per_iteration": per_iter, "share_pruned": session.share_pruned(),
        "model_bytes": model_bytes, "store_bytes": store.nbytes(),
        "patch_bytes": patch_bytes, "patch_bytes_per_step": patch_bytes / done if done else None,
        "patch_to_model": patch_bytes / model_bytes, "state_snapshot_bytes_pickled": snapshots,
        "breakdown": breakdown,
        "rss_before_session": rss0, "rss_after_session": rss1, "rss_after_first_step": rss_after_first,
        "rss_after_steps": rss2, "rss_peak": hwm2,
        "rss_growth_steps": None if rss1 is None or rss2 is None else rss2 - rss1,
        "rss_growth_steps_2_to_n": None if rss_after_first is None or rss2 is None else rss2 - rss_after_first,
        "tracemalloc": traced,
        "step_first_s": times[0] if times else None,
        "step_median_s": statistics.median(rest) if rest else None,
        "step_mean_s": statistics.fmean(rest) if rest else None,
        "step_max_s": max(rest) if rest else None,
        "goto0_s": t_goto0, "goto_n_s": t_goto_n,
        "undo_equal": undo_equal, "undo_bitwise": undo_bits, "redo_equal": redo_equal, "redo_bitwise": redo_bits,
    }
    del session, original, after, store
    gc.collect()
    return result


def print_session(r: dict[str, Any], main_steps: int, trace: bool) -> None:
    mb = r["model_bytes"]
    done = r["steps_done"]
    print(f"  units per iteration: {r['units_per_iteration']}  (step {STEP}, target {TARGET}); "
          f"{done} steps -> {r['share_pruned']:.1%} of units pruned")
    if r["stop_reason"]:
        print(f"  stopped early after {done} steps: {r['stop_reason']}")
    print(f"  model weight bytes      {mib(mb)}   ({mb:,} B; session store {r['store_bytes']:,} B)")
    print(f"  history patch bytes     {mib(r['patch_bytes'])}   ({r['patch_bytes']:,} B, "
          f"{r['patch_bytes_per_step'] or 0:,.0f} B/step)")
    print(f"  patch / model           {r['patch_to_model']:8.3f} x")
    if done != main_steps:
        proj = (r["patch_bytes_per_step"] or 0) * main_steps
        print(f"  projected to {main_steps} steps  {mib(proj)}   = {proj / mb:.3f} x model")
    print(f"  state snapshots         {mib(r['state_snapshot_bytes_pickled'])}   (pickled; not in nbytes())")

    print("  patch bytes by key:")
    total = r["patch_bytes"] or 1
    rows = sorted(r["breakdown"].items(), key=lambda kv: -(kv[1]["positions"] + kv[1]["values"]))
    print(f"    {'key':28s} {'values':>12s} {'positions':>12s} {'share':>7s} {'writes':>7s} {'rows/cols':>9s}")
    for key, d in rows:
        share = (d["positions"] + d["values"]) / total
        print(f"    {key:28s} {d['values']:12,d} {d['positions']:12,d} {share:7.1%} {d['writes']:7d} {d['rows']:9d}")

    def growth(a: int | None, b: int | None) -> str:
        return "n/a" if a is None or b is None else f"{(b - a) / MIB:+8.2f} MiB"

    print(f"  RSS before session      {mib(r['rss_before_session'])}")
    print(f"  RSS after session init  {mib(r['rss_after_session'])}   "
          f"({growth(r['rss_before_session'], r['rss_after_session'])}: store + original copy + caches)")
    print(f"  RSS after first step    {mib(r['rss_after_first_step'])}   "
          f"({growth(r['rss_after_session'], r['rss_after_first_step'])})")
    print(f"  {f'RSS after {done} steps':24s}{mib(r['rss_after_steps'])}   "
          f"({growth(r['rss_after_session'], r['rss_after_steps'])} over the steps, "
          f"{growth(r['rss_after_first_step'], r['rss_after_steps'])} over steps 2..{done}); "
          f"peak {mib(r['rss_peak']).strip()}")
    if r["rss_growth_steps"] is not None:
        print(f"  RSS growth / model      {r['rss_growth_steps'] / mb:8.3f} x")
    if r["tracemalloc"]:
        t = r["tracemalloc"]
        print(f"  tracemalloc retained    {mib(t['retained'])}   peak {mib(t['peak']).strip()} (during the steps)")
    note = "  (with tracemalloc on)" if trace else ""
    print(f"  time per step           first {ms(r['step_first_s']).strip()}, then median "
          f"{ms(r['step_median_s']).strip()}, mean {ms(r['step_mean_s']).strip()}, "
          f"max {ms(r['step_max_s']).strip()}{note}")
    print(f"  goto(0)                 {ms(r['goto0_s'])}   weights == original: "
          f"{'OK' if r['undo_equal'] else 'FAIL'} (store.equal), {'OK' if r['undo_bitwise'] else 'FAIL'} (bytes)")
    print(f"  {f'goto({done})':24s}{ms(r['goto_n_s'])}   weights == after steps: "
          f"{'OK' if r['redo_equal'] else 'FAIL'} (store.equal), {'OK' if r['redo_bitwise'] else 'FAIL'} (bytes)")


# ------------------------------------------------------------------ machine



# ------------------------------------------------------------------ ResNet50
def resnet50_history() -> int:
    """History bytes of a full impact run of ResNet50 to 50 %, against the model's weight bytes (goal < 1x)."""
    import keras

    from paoding_widgets.session import PruningSession

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    wbytes = model_weight_bytes(model)
    s = PruningSession(model, input_range=(0.0, 1.0), strategy="impact", step=0.05, target=0.5, seed=0, n_probes=16)
    t0 = time.perf_counter()
    res = s.run()
    took = time.perf_counter() - t0
    hist = s.history.nbytes()
    ok = hist < wbytes
    print(f"ResNet50 (weights=None): {model.count_params():,} parameters, {wbytes / MIB:.1f} MiB of weights")
    print(f"impact run to 50 %: {res.iterations} iterations, {len(s.history.entries)} history entries, {took:.2f} s")
    print(f"history: {hist / MIB:.1f} MiB = {hist / wbytes:.3f} x the weights (goal < 1 x) -> "
          f"{'PASS' if ok else 'MISS'}")
    t0 = time.perf_counter()
    s.goto(0)
    print(f"goto(0): {time.perf_counter() - t0:.2f} s")
    return 0 if ok else 1


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100, metavar="N", help="baseline steps (history entries; 100)")
    ap.add_argument("--impact-steps", type=int, default=20, metavar="N", help="impact steps (20; 0 to skip)")
    ap.add_argument("--width", type=int, default=2048, metavar="W", help="hidden width of 784-W-W-10 (2048)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures and machine info as JSON")
    ap.add_argument("--tracemalloc", action="store_true", help="trace allocations during the steps (slower)")
    ap.add_argument("--resnet50", action="store_true",
                    help="instead: a full impact run of ResNet50 (weights=None) to 50 %%; history vs weights")
    args = ap.parse_args(argv)
    if args.resnet50:
        return resnet50_history()
    if args.steps < 1 or args.width < 2 or args.impact_steps < 0:
        ap.error("--steps must be >= 1, --width >= 2, --impact-steps >= 0")

    import keras  # noqa: F401  (after TF_CPP_MIN_LOG_LEVEL)

    info = machine_info()
    label = f"784-{args.width}-{args.width}-10"
    print(f"{info['platform']}  |  {info['cpu_count']} cpus ({info['cpus_usable']} usable)  |  "
          f"{(info['memory_bytes'] or 0) / 2**30:.1f} GiB  |  python {info['python']}, numpy {info['numpy']}, "
          f"tensorflow {info['tensorflow']}, keras {info['keras']}")
    model = mlp(args.width)
    model_bytes = model_weight_bytes(model)
    print(f"model {label}: {model.count_params():,} parameters, {model_bytes / MIB:.2f} MiB of weights")
    print()

    results: dict[str, Any] = {}
    print(f"== baseline: {args.steps} x session.step()")
    results["baseline"] = r = bench_session(model, "baseline", args.steps, args.tracemalloc)
    print_session(r, args.steps, args.tracemalloc)
    if args.impact_steps:
        print()
        print(f"== impact: {args.impact_steps} x session.step()")
        results["impact"] = bench_session(model, "impact", args.impact_steps, args.tracemalloc)
        print_session(results["impact"], args.steps, args.tracemalloc)

    print()
    ok = r["patch_bytes"] < LIMIT_COPIES * model_bytes
    exact = all(x[k] for x in results.values() for k in ("undo_equal", "undo_bitwise", "redo_equal", "redo_bitwise"))
    is_promise = args.width == 2048 and r["steps_done"] == 100
    scope = "" if is_promise else f"  (promise is stated for 100 steps on 784-2048-2048-10; this ran " \
                                  f"{r['steps_done']} on {label})"
    print(f"promise: {r['steps_done']} iterations on {label} use less than {LIMIT_COPIES:g}x model bytes: "
          f"{r['patch_bytes'] / MIB:.2f} MiB vs {LIMIT_COPIES * model_bytes / MIB:.2f} MiB "
          f"({r['patch_to_model']:.3f} x) -> {'PASS' if ok else 'MISS'}{scope}")
    if r["rss_growth_steps"] is not None:
        rss_ok = r["rss_growth_steps"] < LIMIT_COPIES * model_bytes
        print(f"         RSS growth over the steps {r['rss_growth_steps'] / MIB:+.2f} MiB "
              f"({r['rss_growth_steps'] / model_bytes:.3f} x) -> {'PASS' if rss_ok else 'MISS'} (secondary, noisy)")
    print(f"exact undo/redo (goto(0) / goto(N), every strategy run): {'OK' if exact else 'FAIL'}")

    if args.json:
        doc = {"machine": info, "model": label, "model_bytes": model_bytes, "step": STEP, "target": TARGET,
               "limit_model_copies": LIMIT_COPIES, "promise_pass": ok, "exact_undo_redo": exact,
               "results": results}
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0 if ok and exact else 1


if __name__ == "__main__":
    sys.exit(main())
