"""Every ``paoding-widgets prune`` failure is one line ``paoding-widgets: error: ...`` and status 2.

In-process (``cli.main``) so that a full disk can be simulated; one subprocess
check shows the same holds for the installed entry point.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402

from paoding_widgets import cli  # noqa: E402
from paoding_widgets.errors import PaodingError  # noqa: E402

PREFIX = "paoding-widgets: error: "


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("cli_errors")
    keras.utils.set_random_seed(0)
    L = keras.layers
    m = keras.Sequential([keras.Input((12,)), L.Dense(16, activation="relu", name="h1"),
                          L.Dense(10, activation="relu", name="h2"), L.Dense(3, name="logits")])
    x = np.random.default_rng(0).random((40, 12), dtype=np.float32)
    path = d / "model.keras"
    m.save(path)
    np.savez(d / "eval.npz", x=x, y=np.asarray(m(x)).argmax(-1))
    return path, d / "eval.npz"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the CLI; it must fail with status 2 and exactly one stderr line, no traceback. Returns the line."""
    rc = cli.main([*args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    return lines[0][len(PREFIX):]


def no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], list(folder.iterdir())


def test_cli_error_is_a_paoding_error() -> None:
    assert issubclass(cli.CliError, PaodingError)


def test_out_is_a_directory(saved, tmp_path, capsys) -> None:
    model, _ = saved
    (tmp_path / "d.keras").mkdir()
    for force in ([], ["--force"]):
        msg = run(capsys, "prune", str(model), "--out", str(tmp_path / "d.keras"), "--quiet", *force)
        assert "directory" in msg and "d.keras" in msg


def test_existing_out_needs_force(saved, tmp_path, capsys) -> None:
    model, _ = saved
    out = tmp_path / "o.keras"
    out.write_bytes(b"precious")
    assert "--force" in run(capsys, "prune", str(model), "--out", str(out), "--quiet")
    assert out.read_bytes() == b"precious"


def test_labels_out_of_range(saved, tmp_path, capsys) -> None:
    model, ev = saved
    bad = tmp_path / "bad.npz"
    with np.load(ev) as z:
        np.savez(bad, x=z["x"], y=np.full(len(z["y"]), 7))
    msg = run(capsys, "prune", str(model), "--out", str(tmp_path / "o.keras"), "--eval", str(bad), "--quiet")
    assert "labels must be in 0..2" in msg and "7" in msg
    assert not (tmp_path / "o.keras").exists()


@pytest.mark.parametrize("name, content", [("eval.csv", b"1,2,3\n"), ("eval.npz", b"not a zip"),
                                           ("eval.npz", None)], ids=["csv", "garbage", "single-array"])
def test_eval_not_an_npz_says_what_is_expected(saved, tmp_path, capsys, name, content) -> None:
    model, _ = saved
    path = tmp_path / name
    if content is None:  # an .npy saved under an .npz name: one array, not an archive
        with open(path, "wb") as fh:
            np.save(fh, np.zeros((3, 12)))
    else:
        path.write_bytes(content)
    msg = run(capsys, "prune", str(model), "--out", str(tmp_path / "o.keras"), "--eval", str(path), "--quiet")
    assert ".npz" in msg and "x" in msg and "y" in msg


def test_empty_eval_data(saved, tmp_path, capsys) -> None:
    model, _ = saved
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 12), np.float32), y=np.zeros((0,), np.int64))
    assert "empty" in run(capsys, "prune", str(model), "--out", str(tmp_path / "o.keras"), "--eval", str(empty))


def test_eval_label_count_mismatch(saved, tmp_path, capsys) -> None:
    model, _ = saved
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((5, 12), np.float32), y=np.zeros((4,), np.int64))
    assert "5 inputs but 4 labels" in run(capsys, "prune", str(model), "--out", str(tmp_path / "o.keras"),
                                          "--eval", str(bad))


def test_full_disk(saved, tmp_path, capsys, monkeypatch) -> None:
    model, _ = saved
    real_replace = os.replace

    def full(src, dst, *a, **k):  # the final move of every atomic write fails as on a full disk
        if str(dst).startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "o.keras"
    msg = run(capsys, "prune", str(model), "--out", str(out), "--quiet")
    assert "no space left" in msg and "o.keras" in msg
    assert not out.exists()
    no_temporaries(tmp_path)


@pytest.mark.parametrize("which", ["model", "eval"])
def test_session_pointing_at_an_input(saved, tmp_path, capsys, which) -> None:
    model, ev = saved
    target = model if which == "model" else ev
    before = target.read_bytes()
    msg = run(capsys, "prune", str(model), "--out", str(tmp_path / "o.keras"), "--eval", str(ev),
              "--session", str(target), "--force", "--quiet")
    assert "--session" in msg and ("input model" if which == "model" else "--eval data") in msg
    assert target.read_bytes() == before


def test_input_suffix_is_checked(saved, tmp_path, capsys) -> None:
    model, _ = saved
    odd = tmp_path / "model.bin"
    shutil.copy(model, odd)
    assert ".keras" in run(capsys, "prune", str(odd), "--out", str(tmp_path / "o.keras"))


def test_usage_errors_are_one_line(capsys) -> None:
    assert "--help" in run(capsys, "prune")
    assert "--help" in run(capsys, "frobnicate")
    assert "--help" in run(capsys, "prune", "m.keras", "--out", "o.keras", "--target", "lots")


def test_unexpected_failure_is_one_line(saved, tmp_path, capsys, monkeypatch) -> None:
    from paoding_widgets.session import PruningSession

    def broken(self, *a, **k):
        raise RuntimeError("something inside broke\nwith a second line")

    monkeypatch.setattr(PruningSession, "run", broken)
    model, _ = saved
    msg = run(capsys, "prune", str(model), "--out", str(tmp_path / "o.keras"), "--quiet")
    assert "RuntimeError" in msg and "something inside broke" in msg and "second line" not in msg


def test_entry_point_prints_one_error_line(saved, tmp_path) -> None:
    model, _ = saved
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "paoding_widgets", "prune", str(model), "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    ours = [ln for ln in proc.stderr.splitlines() if "error:" in ln and ln.startswith("paoding-widgets")]
    assert proc.returncode == 2 and len(ours) == 1 and "directory" in ours[0], proc.stderr
    assert "Traceback" not in proc.stderr
