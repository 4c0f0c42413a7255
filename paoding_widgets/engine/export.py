"""Export pruned models: ``.keras`` and TFLite (float16, int8), written atomically.

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

import numpy as np

from ..errors import ConfigError, ExportError
from ..files import atomic_path, atomic_write, check_target  # one implementation for the package; re-exported here

__all__ = ["TFLITE_MODES", "atomic_path", "check_target", "save_keras", "save_tflite", "tflite_bytes"]


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


TFLITE_MODES = (None, "float16", "dynamic", "int8", "full-int8")


def tflite_bytes(model: Any, quantize: str | None = "float16", calibration: Any = None) -> bytes:
    """Convert to TFLite; ExportError if unsupported.

    ``quantize``: None (float32), ``"float16"`` (float16 weights, the default),
    ``"dynamic"`` or its alias ``"int8"`` (dynamic-range: int8 weights, float
    activations; data-free), or ``"full-int8"`` (int8 weights *and* activations,
    int8 input and output): this needs ``calibration``, an array of the user's
    own inputs whose activation ranges set the scales -- never invented data.
    """
    import keras

    if quantize not in TFLITE_MODES:
        raise ValueError(f"quantize must be one of {TFLITE_MODES}, got {quantize!r}")
    if keras.backend.backend() != "tensorflow":
        return _tflite_bytes_elsewhere(model, quantize, calibration)

    import tensorflow as tf

    if quantize == "full-int8":
        if calibration is None or len(calibration) == 0:
            raise ConfigError("full-integer TFLite needs calibration data: pass some of your own inputs "
                              "(e.g. your eval data); paoding_widgets never invents data")
        cal = np.asarray(calibration, np.float32)
    try:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if quantize is not None:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            conv.target_spec.supported_types = [tf.float16]
        if quantize == "full-int8":
            conv.representative_dataset = lambda: ([cal[i:i + 1]] for i in range(len(cal)))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        # Keras' export prints its SavedModel signature ("Saved artifact at ..."): not the user's business
        with contextlib.redirect_stdout(io.StringIO()):
            return conv.convert()
    except Exception as exc:  # the converter raises many types; keep its message
        raise ExportError(f"TFLite conversion of model {model.name!r} failed: {exc}") from exc


_CONVERT_SCRIPT = """
import sys, numpy as np, keras
from paoding_widgets.engine.export import tflite_bytes
model = keras.models.load_model(sys.argv[1], compile=False)
cal = np.load(sys.argv[4]) if sys.argv[4] != "-" else None
open(sys.argv[2], "wb").write(tflite_bytes(model, None if sys.argv[3] == "-" else sys.argv[3], cal))
"""


def _tflite_bytes_elsewhere(model: Any, quantize: str | None, calibration: Any) -> bytes:
    """TFLite conversion needs TensorFlow's Keras: under JAX or PyTorch the (backend-neutral) ``.keras``
    file is converted in a short-lived TensorFlow process."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, out, cal = Path(tmp) / "model.keras", Path(tmp) / "model.tflite", Path(tmp) / "cal.npy"
        model.save(src)
        if calibration is not None:
            np.save(cal, np.asarray(calibration, np.float32))
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run([sys.executable, "-c", _CONVERT_SCRIPT, str(src), str(out), quantize or "-",
                               str(cal) if calibration is not None else "-"],
                              env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise ExportError(f"TFLite conversion of model {model.name!r} (in a TensorFlow process, since this one "
                              f"runs Keras on {keras_backend()}) failed: {last}")
        return out.read_bytes()


def keras_backend() -> str:
    import keras

    return str(keras.backend.backend())


def save_tflite(model: Any, path: str | os.PathLike, quantize: str | None = "float16",
                overwrite: bool = False, protected: tuple[str | os.PathLike | None, ...] = (),
                calibration: Any = None) -> Path:
    """Write a ``.tflite`` file, atomically (``quantize`` and ``calibration`` as :func:`tflite_bytes`)."""
    target = check_target(path, overwrite, protected)
    data = tflite_bytes(model, quantize, calibration)
    atomic_write(target, data)
    return target
