"""`paoding-widgets prune` through a real subprocess on a small saved model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paoding_widgets", *args], capture_output=True, text=True,
                          env=ENV, timeout=300)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    L = keras.layers
    m = keras.Sequential([keras.Input((12,)), L.Dense(16, activation="relu", name="h1"),
                          L.Dense(10, activation="relu", name="h2"), L.Dense(3, name="logits")])
    x = np.random.default_rng(0).random((60, 12), dtype=np.float32)
    y = np.asarray(m(x)).argmax(-1)  # labels the model gets right: accuracy 100 % before
    path = d / "model.keras"
    m.save(path)
    np.savez(d / "eval.npz", x=x, y=y)
    return path, d / "eval.npz"


def test_prune_writes_smaller_model_table_session_and_tflite(saved, tmp_path):
    model, ev = saved
    before = model.read_bytes()
    out, tfl, sess = tmp_path / "small.keras", tmp_path / "small.tflite", tmp_path / "run.paoding"
    proc = cli("prune", str(model), "--out", str(out), "--target", "0.5", "--step", "0.25", "--lock", "h2",
               "--eval", str(ev), "--tflite", str(tfl), "--session", str(sess))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pruned" in proc.stdout and "accuracy" in proc.stdout and "iteration" in proc.stderr
    small = keras.models.load_model(out)
    assert small.get_layer("h1").units == 8 and small.get_layer("h2").units == 10  # h2 locked
    assert tfl.stat().st_size > 0 and sess.stat().st_size > 0
    modes = {f.suffix: f.stat().st_mode & 0o777 for f in (out, tfl, sess)}
    assert len(set(modes.values())) == 1 and modes[".keras"] & 0o044, modes  # all like an ordinary file
    assert model.read_bytes() == before  # the input is untouched
    from paoding_widgets import PruningSession

    resumed = PruningSession.load(str(sess))
    assert resumed.status("h2") == "locked"
    assert resumed.layer("h1").units_alive == 8


@pytest.mark.parametrize("make_args, message", [
    (lambda m, t: ["--out", str(m)], "input model"),
    (lambda m, t: ["--out", str(t / "x.keras"), "--target", "1.5"], "target"),
    (lambda m, t: ["--out", str(t / "x.keras"), "--lock", "nope"], "nope"),
    (lambda m, t: ["--out", str(t / "x.keras"), "--lock", "logits"], "not prunable"),
    (lambda m, t: ["--out", str(t / "x.txt")], ".keras"),
    (lambda m, t: ["--out", str(t / "x.keras"), "--input-range", "1", "0"], "input-range"),
    (lambda m, t: ["--out", str(t / "x.keras"), "--eval", str(t / "missing.npz")], "--eval"),
])
def test_bad_input_one_line_reason_nonzero_exit(saved, tmp_path, make_args, message):
    model, _ = saved
    proc = cli("prune", str(model), *make_args(model, tmp_path))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("paoding-widgets: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-1500:]
    assert not (tmp_path / "x.keras").exists()


def test_never_overwrites_existing_output_without_force(saved, tmp_path):
    model, _ = saved
    out = tmp_path / "out.keras"
    out.write_bytes(b"precious")
    proc = cli("prune", str(model), "--out", str(out), "--quiet")
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert out.read_bytes() == b"precious"
    proc = cli("prune", str(model), "--out", str(out), "--quiet", "--force")
    assert proc.returncode == 0, proc.stderr[-1500:]
    small = keras.models.load_model(out)  # compensated shares the 13 units (8 + 5) among the layers
    assert small.get_layer("h1").units + small.get_layer("h2").units == 13


def test_missing_model_file(tmp_path):
    proc = cli("prune", str(tmp_path / "none.keras"), "--out", str(tmp_path / "o.keras"))
    assert proc.returncode == 2 and "no model file" in proc.stderr


def test_prune_with_locks_reports_shares_and_fills_its_bar(saved, tmp_path):
    model, _ = saved
    out = tmp_path / "locked.keras"
    proc = cli("prune", str(model), "--out", str(out), "--target", "0.5", "--step", "0.25", "--lock", "h2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # h1 (16 units) loses 8: all of the unlocked share, 8 of 26 prunable units overall
    assert "pruned 50.0% of the unlocked layers' units (30.8% of all prunable units; 1 locked layer(s)" in proc.stdout
    assert "every unlocked layer reached the target" in proc.stdout
    last_bar = [line for line in proc.stderr.splitlines() if line.startswith("[")][-1]
    assert "." not in last_bar.split("]")[0]  # the bar ends full, not half way


def test_prune_with_every_layer_locked_says_nothing_can_be_pruned(saved, tmp_path):
    model, _ = saved
    out = tmp_path / "none.keras"
    proc = cli("prune", str(model), "--out", str(out), "--lock", "h1", "h2")
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.count("\n") == 1 and "nothing can be pruned" in proc.stderr


def test_version_and_help_say_what_they_should():
    from paoding_widgets import __version__

    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"paoding-widgets {__version__}"
    proc = cli("demo", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())  # argparse wraps lines to the terminal width
    for words in ("default: impact compensated", "(default 0.5)", "certified merges ranked", "stochastic", "cached"):
        assert words in text


def test_cli_start_is_quiet(saved, tmp_path):
    """No TensorFlow start-up chatter (oneDNN notices, cuInit errors) on a command's stderr."""
    model, _ = saved
    proc = cli("prune", str(model), "--out", str(tmp_path / "q.keras"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cuInit" not in proc.stderr and "oneDNN" not in proc.stderr and "absl" not in proc.stderr


def test_prune_deploy_writes_runs_and_tabulates_every_format(saved, tmp_path):
    pytest.importorskip("onnxruntime")
    model, ev = saved
    out, ddir = tmp_path / "small.keras", tmp_path / "deploy"
    proc = cli("prune", str(model), "--out", str(out), "--step", "0.25", "--eval", str(ev), "--deploy", str(ddir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(p.name for p in ddir.iterdir())
    assert any(n.endswith(".onnx") for n in written) and any(n.endswith(".tflite") for n in written), written
    assert "pruned + tflite-int8" in proc.stdout and "original" in proc.stdout
