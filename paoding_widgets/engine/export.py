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
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..files import atomic_path, check_target  # one implementation for the package; re-exported here

__all__ = ["atomic_path", "check_target", "save_keras", "save_tflite", "tflite_bytes"]



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
