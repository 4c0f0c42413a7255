"""Pure parts of benchmarks/compare_reference.py: arguments, ratio maths, pairing, tables, files.

Never creates the reference venv nor runs either tool; no TensorFlow import.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return mod


cr = _load("compare_reference")
worker = _load("reference_worker")
EPS = ["0.01", "0.05", "0.1"]


def run(tool: str, seconds: float, acc: float, kept: tuple[float, float, float], iterations: int = 10,
        model: str = "mlp", mode: str = "impact", **extra) -> dict:
    return {"tool": tool, "model": model, "mode": mode, "status": "ok", "seconds": seconds,
            "iterations": iterations, "seconds_per_iteration": cr.per_iteration(seconds, iterations),
            "params_before": 1000, "params_after": 500, "widths_before": "128-128", "widths_after": "64-64",
            "accuracy_before": 0.95, "accuracy_after": acc, "robust_preserved": dict(zip(EPS, kept)), **extra}


# ------------------------------------------------------------------ arguments
def test_defaults_cover_both_models_all_modes(monkeypatch):
    monkeypatch.delenv("PAODING_REFERENCE_VENV", raising=False)
    a = cr.parse_args([])
    assert a.models == ["mlp", "cnn"] and a.modes == ["baseline", "impact", "stochastic"]
    assert a.timeout_per_run == 2400 and a.out == BENCH / "results"
    assert a.venv.parts[-2:] == ("paoding_widgets", "reference-venv")
    assert not a.skip_reference and a.repeats >= 1


def test_lists_keep_order_drop_duplicates_and_ignore_case():
    a = cr.parse_args(["--models", "CNN, mlp,cnn", "--modes", "stochastic,baseline", "--timeout-per-run", "60"])
    assert a.models == ["cnn", "mlp"] and a.modes == ["stochastic", "baseline"] and a.timeout_per_run == 60


@pytest.mark.parametrize("argv", [["--models", "resnet"], ["--modes", "certified"], ["--modes", ","],
                                  ["--timeout-per-run", "0"], ["--repeats", "0"], ["--reference-own-fgsm", "-1"]])
def test_bad_arguments_exit(argv, capsys):
    with pytest.raises(SystemExit):
        cr.parse_args(argv)


def test_blas_threads_read_early():
    assert cr.early_blas_threads(["--models", "mlp", "--blas-threads", "1"]) == "1"
    assert cr.early_blas_threads(["--blas-threads=2"]) == "2" and cr.early_blas_threads(["--models", "mlp"]) is None
    assert cr.parse_args(["--blas-threads", "1"]).blas_threads == 1
    with pytest.raises(SystemExit):
        cr.parse_args(["--blas-threads", "0"])


def test_venv_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv("PAODING_REFERENCE_VENV", str(tmp_path / "v"))
    assert cr.parse_args([]).venv == tmp_path / "v"


def test_worker_arguments():
    a = worker.parse_args(["--weights", "m.npz", "--mode", "stochastic", "--out", "r.json", "--pruned-weights", "p"])
    assert (a.mode, a.target, a.step, a.seed, a.own_fgsm) == ("stochastic", 0.5, 0.05, 0, 0)
    with pytest.raises(SystemExit):
        worker.parse_args(["--mode", "certified"])


# ------------------------------------------------------------------ ratio maths
def test_ratio():
    assert cr.ratio(1.0, 4.0) == 0.25
    assert cr.ratio(None, 1.0) is None and cr.ratio(1.0, None) is None and cr.ratio(1.0, 0) is None
    assert cr.ratio(math.inf, 1.0) is None


def test_preserved_and_per_iteration():
    assert cr.preserved({"0.1": 5, "0.01": 9}, {"0.1": 10, "0.01": 0}) == {"0.1": 0.5, "0.01": 1.0}
    assert cr.per_iteration(2.0, 4) == 0.5
    assert cr.per_iteration(2.0, 0) is None and cr.per_iteration(None, 3) is None


def test_compare_goals_met():
    c = cr.compare(run("ours", 0.05, 0.90, (0.9, 0.8, 0.5)), run("ref", 10.0, 0.85, (0.8, 0.8, 0.4)), EPS)
    assert c["speedup"] == pytest.approx(200) and c["ratios"]["seconds"] == pytest.approx(0.005)
    assert c["ratios"]["accuracy_after"] == pytest.approx(0.90 / 0.85)
    assert c["ratios"]["robust_preserved"]["0.05"] == pytest.approx(1.0)
    assert c["goals"] == {"speedup_100x": True, "accuracy": True, "robustness": True} and c["shortfalls"] == []


def test_compare_says_by_how_much_ours_is_worse():
    c = cr.compare(run("ours", 1.0, 0.80, (0.9, 0.7, 0.5)), run("ref", 20.0, 0.85, (0.8, 0.8, 0.5)), EPS)
    assert c["goals"] == {"speedup_100x": False, "accuracy": False, "robustness": False}
    assert c["shortfalls"] == ["only 20x faster (goal 100x)", "accuracy 5.00 pp lower",
                               "robustness kept at eps 0.05 10.0 pp lower"]


def test_compare_without_reference_has_no_ratios():
    c = cr.compare(run("ours", 1.0, 0.8, (1, 1, 1)), {"status": "timeout", "timeout": 60}, EPS)
    assert c["speedup"] is None and c["goals"] == {} and c["ratios"]["seconds"] is None
    assert c["ratios"]["robust_preserved"] == {e: None for e in EPS}


def test_pair_runs_pairs_variants_with_the_same_reference():
    ref = run(cr.REFERENCE, 2.0, 0.8, (1, 1, 1))
    runs = [run("ours", 0.1, 0.8, (1, 1, 1)), run("ours", 0.05, 0.8, (1, 1, 1), variant=cr.MATCHED), ref,
            run("ours", 0.1, 0.8, (1, 1, 1), mode="baseline")]
    pairs = cr.pair_runs(runs, EPS)
    assert [(p["mode"], p["variant"]) for p in pairs] == [("impact", None), ("impact", cr.MATCHED),
                                                          ("baseline", None)]
    assert pairs[0]["reference"] is ref and pairs[1]["reference"] is ref
    assert pairs[1]["speedup"] == pytest.approx(40) and pairs[2]["reference"]["status"] == "not run"


def test_matched_shares_are_what_the_reference_removed():
    assert cr.matched_shares("128-128", "51-51") == [77 / 128, 77 / 128]
    assert cr.matched_shares("32-64-128", "16-32-128") == [0.5, 0.5, 0.0]
    assert cr.matched_shares("128-128", "64") is None  # layers do not line up
    assert cr.matched_shares("128", "130") is None and cr.matched_shares("128", "0") is None
    assert cr.matched_shares("128", "") is None


# ------------------------------------------------------------------ tables
def test_table_rows_three_per_pair():
    pairs = cr.pair_runs([run("ours", 0.05, 0.9, (0.9, 0.8, 0.5)), run(cr.REFERENCE, 10.0, 0.85, (0.8, 0.8, 0.4))],
                         EPS)
    rows = cr.table_rows(pairs, EPS)
    assert len(rows) == 3 and all(len(r) == len(cr.HEADER) for r in rows)
    ours, ref, ratio = rows
    assert ours[2] == "ours" and ref[2] == cr.REFERENCE and "ours / ref" in ratio[2]
    assert "200x faster" in ratio[3] and "+5.00 pp" in ratio[8]
    assert ours[6] == "1,000 → 500" and ours[9] == "90.0% / 80.0% / 50.0%" and ours[3] == "0.05"
    pairs[0]["ours"]["seconds_all"] = [0.04, 0.05, 0.4]
    assert cr.table_rows(pairs, EPS)[0][3] == "0.05 (0.04–0.4)"


def test_failed_reference_row_says_why():
    pairs = cr.pair_runs([run("ours", 0.05, 0.9, (1, 1, 1)),
                          {"tool": cr.REFERENCE, "model": "mlp", "mode": "impact", "status": "timeout",
                           "timeout": 2400.0}], EPS)
    rows = cr.table_rows(pairs, EPS)
    assert rows[1][3] == "timeout (> 2400 s)" and len(rows[1]) == len(cr.HEADER)
    assert rows[2][3] == "–"


def test_markdown_table_escapes_pipes():
    md = cr.markdown_table(["a", "b"], [["x|y", "1"]])
    assert md.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]


def test_render_markdown_whole_report():
    runs = [run("ours", 0.5, 0.8, (0.9, 0.7, 0.5), phases={"run": 0.4}),
            run(cr.REFERENCE, 20.0, 0.85, (0.8, 0.8, 0.5), widths_after="51-51",
                own_fgsm={"error": "ValueError: cannot reshape"}),
            run("ours", 0.1, 0.8, (1, 1, 1), variant=cr.MATCHED)]
    pairs = cr.pair_runs(runs, EPS)
    result = {"date": "2026-01-01T00:00:00", "command": "python3 benchmarks/compare_reference.py",
              "settings": {"target": 0.5, "step": 0.05, "seed": 0, "input_range": [0.0, 1.0], "epsilons": EPS,
                           "n_robust": 500, "repeats": 3},
              "machine": {"cpu_model": "Test CPU", "cpus_usable": 2}, "versions": {"reference": {"pip": "24.0"}},
              "pairs": pairs, "notes": cr.static_notes(["mlp"]) + cr.auto_notes(pairs)}
    md = cr.render_markdown(result)
    assert "Test CPU" in md and "**missed**" in md and "only 40x faster" in md
    assert "Like for like" in md and f"ours ({cr.MATCHED})" in md
    assert "hidden widths after pruning differ -- ours 64-64, paoding-dl 51-51" in md
    assert "own FGSM failed: ValueError" in md and "pip 24.0" in md
    assert "run 0.4, other 0.1" in md
    assert "Insufficient number" not in md  # the CNN note only when the CNN ran


# ------------------------------------------------------------------ files
def test_write_atomic_and_json(tmp_path):
    path = tmp_path / "sub" / "r.json"
    cr.write_atomic(path, cr.to_json({"a": math.inf, "b": np.float32(1.5), "c": (np.int64(2),), 3: None}))
    assert json.loads(path.read_text()) == {"a": None, "b": 1.5, "c": [2], "3": None}
    cr.write_atomic(path, "x")
    assert path.read_text() == "x" and sorted(p.name for p in path.parent.iterdir()) == ["r.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_handover_round_trip_readable_by_the_worker(tmp_path):
    ws = [np.ones((3, 2), np.float32), np.zeros(2, np.float32), np.arange(4, dtype=np.float64).reshape(2, 2)]
    path = tmp_path / "m.npz"
    cr.save_handover(path, "mlp", [28, 28], ws)
    for loader in (cr.load_handover, worker.load_handover):
        meta, back = loader(path)
        assert meta == {"kind": "mlp", "input_shape": [28, 28], "n_weights": 3}
        assert all(np.array_equal(a, b) and b.dtype == np.float32 for a, b in zip(ws, back))
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_status_and_formatting():
    assert cr.status_text({"status": "error", "error": "boom"}) == "error: boom"
    assert cr.fmt(None) == "–" and cr.fmt(1234.5, ",.0f") == "1,234"
    assert cr.fmt_ratio(0.5) == "0.5" and cr.fmt_ratio(0.001) == "1.00e-03" and cr.fmt_ratio(None) == "–"
    assert cr.phase_text({"seconds": 1.0, "phases": {"a": 0.25}}) == "a 0.25, other 0.75"


def test_ensure_venv_leaves_a_foreign_directory_alone(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(RuntimeError, match="not made by this script"):
        cr.ensure_venv(tmp_path, log=lambda s: None)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
