"""Export pruned models: ``.keras`` and float16 TFLite, written atomically.

Why: the reference deleted its output path first and by default wrote over the
user's own model.  Here a file is written to a temporary name beside the target
and moved into place in one step; an existing file is kept unless the caller
says ``overwrite=True``, and the model's own source file is never a target.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ExportError


def check_target(path: str | os.PathLike, overwrite: bool = False,
                 protected: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Validate an output path: parent exists, no clobbering, not a protected file."""
    p = Path(path).expanduser().resolve()
    for src in protected:
        if src is not None and Path(src).expanduser().resolve() == p:
            raise FileExistsError(f"refusing to write over the input model itself: {p}")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; pass overwrite=True (CLI: --force) to replace it")
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a directory, not a file path")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"directory {p.parent} does not exist")
    return p


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path in the target's directory, renamed onto it on success."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_keras(model: Any, path: str | os.PathLike, overwrite: bool = False,
               protected: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Save ``model`` as a ``.keras`` file, atomically."""
    target = check_target(path, overwrite, protected)
    if target.suffix != ".keras":
        raise ValueError(f"a Keras model file must end in .keras, got {target.name!r}")
    with atomic_path(target) as tmp:
        tmp.unlink()  # keras refuses to save onto an existing file
        model.save(tmp)
    return target


def tflite_bytes(model: Any, quantize: str | None = "float16") -> bytes:
    """Convert to TFLite (float16 weights by default); ExportError if unsupported."""
    import tensorflow as tf

    if quantize not in (None, "float16", "dynamic"):
        raise ValueError(f"quantize must be None, 'float16' or 'dynamic', got {quantize!r}")
    try:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if quantize is not None:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            conv.target_spec.supported_types = [tf.float16]
        # Keras' export prints its SavedModel signature ("Saved artifact at ..."): not the user's business
        with contextlib.redirect_stdout(io.StringIO()):
            return conv.convert()
    except Exception as exc:  # the converter raises many types; keep its message
        raise ExportError(f"TFLite conversion of model {model.name!r} failed: {exc}") from exc


def save_tflite(model: Any, path: str | os.PathLike, quantize: str | None = "float16",
                overwrite: bool = False, protected: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Write a ``.tflite`` file, atomically."""
    target = check_target(path, overwrite, protected)
    data = tflite_bytes(model, quantize)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target
