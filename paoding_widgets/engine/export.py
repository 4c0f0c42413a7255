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

__all__ = ["TFLITE_MODES", "atomic_path", "check_target", "convert_in_tensorflow", "save_keras", "save_tflite",
           "strip_tflite_names", "tflite_bytes"]


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


def tflite_bytes(model: Any, quantize: str | None = "float16", calibration: Any = None,
                 strip_names: bool = False) -> bytes:
    """Convert to TFLite; ExportError if unsupported.

    ``quantize``: None (float32), ``"float16"`` (float16 weights, the default),
    ``"dynamic"`` or its alias ``"int8"`` (dynamic-range: int8 weights, float
    activations; data-free), or ``"full-int8"`` (int8 weights *and* activations,
    int8 input and output): this needs ``calibration``, an array of the user's
    own inputs whose activation ranges set the scales -- never invented data.
    ``strip_names`` drops debug strings (tensor and subgraph names, the converter's
    metadata) as TFLite's own ``flatbuffer_utils.strip_strings`` does, but keeps the
    signature, so the file still runs by signature: a few KiB that matter on a
    100 KiB model (see docs/deployment.md).
    """
    import keras

    if quantize not in TFLITE_MODES:
        raise ValueError(f"quantize must be one of {TFLITE_MODES}, got {quantize!r}")
    if quantize == "full-int8" and (calibration is None or len(calibration) == 0):
        raise ConfigError("full-integer TFLite needs calibration data: pass some of your own inputs "
                          "(e.g. your eval data); paoding_widgets never invents data")
    if keras.backend.backend() != "tensorflow":
        return _tflite_bytes_elsewhere(model, quantize, calibration, strip_names)

    import tensorflow as tf

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
        conv.exclude_conversion_metadata = strip_names
        # Keras' export prints its SavedModel signature ("Saved artifact at ..."): not the user's business
        with contextlib.redirect_stdout(io.StringIO()):
            data = conv.convert()
    except Exception as exc:  # the converter raises many types; keep its message
        raise ExportError(f"TFLite conversion of model {model.name!r} failed: {exc}") from exc
    return strip_tflite_names(data) if strip_names else bytes(data)


def strip_tflite_names(data: bytes) -> bytes:
    """``data`` (a TFLite flatbuffer) without its description, subgraph and tensor names.

    Unlike ``tensorflow.lite.tools.flatbuffer_utils.strip_strings`` the signature
    definitions stay: they name inputs and outputs themselves and point at tensors
    by index, so ``get_signature_runner()`` still works.
    """
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(data), 0))
    model.description = None
    for subgraph in model.subgraphs or []:
        subgraph.name = None
        for tensor in subgraph.tensors or []:
            tensor.name = None
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


_CONVERT_SCRIPT = """
import sys, numpy as np, keras
from paoding_widgets.engine.export import tflite_bytes
from paoding_widgets.engine.deploy import write_onnx
kind, src, out, quantize, cal, strip = sys.argv[1:7]
model = keras.models.load_model(src, compile=False)
if kind == "tflite":
    cal = np.load(cal) if cal != "-" else None
    open(out, "wb").write(tflite_bytes(model, None if quantize == "-" else quantize, cal, strip == "strip"))
else:
    write_onnx(model, out, None if quantize == "-" else int(quantize))
"""


def convert_in_tensorflow(model: Any, kind: str, out: Path, quantize: str | None = None,
                          calibration: Any = None, strip_names: bool = False) -> None:
    """Write ``model`` as ``kind`` ("tflite" or "onnx") to ``out`` in a short-lived TensorFlow process.

    Why: the TFLite converter needs TensorFlow's Keras, and Keras' JAX and PyTorch ONNX exporters fail on
    ordinary layers (JAX: a MaxPool onnxruntime rejects; PyTorch: quantised layers' custom gradients).
    The ``.keras`` file is backend-neutral, so the file written is the one TensorFlow would write.
    For ONNX, ``quantize`` is the opset (or None).
    """
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, cal = Path(tmp) / "model.keras", Path(tmp) / "cal.npy"
        model.save(src)
        if calibration is not None:
            np.save(cal, np.asarray(calibration, np.float32))
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run([sys.executable, "-c", _CONVERT_SCRIPT, kind, str(src), str(out), quantize or "-",
                               str(cal) if calibration is not None else "-", "strip" if strip_names else "-"],
                              env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise ExportError(f"{'TFLite' if kind == 'tflite' else 'ONNX'} conversion of model {model.name!r} "
                              f"(in a TensorFlow process, since this one runs Keras on {keras_backend()}) "
                              f"failed: {last}")


def _tflite_bytes_elsewhere(model: Any, quantize: str | None, calibration: Any, strip_names: bool) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.tflite"
        convert_in_tensorflow(model, "tflite", out, quantize, calibration, strip_names)
        return out.read_bytes()


def keras_backend() -> str:
    import keras

    return str(keras.backend.backend())


def save_tflite(model: Any, path: str | os.PathLike, quantize: str | None = "float16",
                overwrite: bool = False, protected: tuple[str | os.PathLike | None, ...] = (),
                calibration: Any = None, strip_names: bool = False) -> Path:
    """Write a ``.tflite`` file, atomically (the options as :func:`tflite_bytes`)."""
    target = check_target(path, overwrite, protected)
    data = tflite_bytes(model, quantize, calibration, strip_names)
    atomic_write(target, data)
    return target
