"""Compact deployment: quantise a pruned model, export it, run every written file, report a table.

Why: a pruned model is half of deployment; people then quantise it and ship it
as LiteRT (TFLite) or ONNX.  :func:`deploy` does the whole step in one call --
write each format, load each file back in the runtime that will serve it, and
compare its outputs, accuracy, robustness and agreement with the Keras model --
so the table it returns is measured on the files, not promised.

Formats (``FORMATS``; the file name is ``<stem><suffix>``):

============================  ======================  ==============================================
format                        file                    how
============================  ======================  ==============================================
``keras``                     ``.keras``              the float32 model
``keras-int8``                ``.int8.keras``         Keras 3 ``model.quantize("int8")``: Dense /
                                                      EinsumDense / Embedding kernels int8 per output
                                                      channel, activations quantised on the fly;
                                                      other layers (convolutions) stay float32
``keras-int4``                ``.int4.keras``         ``model.quantize("int4")`` (same layers, packed)
``keras-float8``              ``.float8.keras``       ``model.quantize("float8")``: float8 *training*
                                                      (scales and amax history); not smaller on disk
``tflite``                    ``.tflite``             float32 LiteRT
``tflite-float16``            ``.float16.tflite``     float16 weights
``tflite-int8``               ``.int8.tflite``        dynamic-range: int8 weights, float activations
``tflite-full-int8``          ``.full-int8.tflite``   full integer (int8 in and out); calibrated on the
                                                      user's own inputs, never on invented data
``onnx``                      ``.onnx``               float32 ONNX (Keras' ``export(format="onnx")``,
                                                      tf2onnx on the TensorFlow backend)
``onnx-int8``                 ``.int8.onnx``          the ONNX file through onnxruntime's
                                                      ``quantize_dynamic`` (int8 weights of MatMul and
                                                      Conv, activations quantised on the fly)
``onnx-keras-int8``           ``.keras-int8.onnx``    the ``keras-int8`` model exported to ONNX
============================  ======================  ==============================================

Everything but the float formats is data-free except ``tflite-full-int8``.
Files are written atomically through :mod:`paoding_widgets.files`: never over an
existing file unless ``overwrite=True``, never over a protected path (the
user's source model); every target is checked before any work is done.

Verification runs each file in its serving runtime: ``.keras`` through Keras,
``.tflite`` through ``ai-edge-litert`` (falling back to TensorFlow's own
deprecated ``tf.lite.Interpreter`` when that package is missing; the row names
the runtime used), ``.onnx`` through ``onnxruntime``.  A missing optional
package is an :class:`~paoding_widgets.errors.ExportError` naming it and the
``pip install`` line.

Robustness: FGSM needs gradients, which a TFLite or ONNX file does not give.
The adversarial inputs are therefore crafted once, on the float Keras model the
files are made from (the pruned model; the original for its own row), and
every file is scored on them: white-box for the float rows, a transfer attack
from the float source for the quantised ones.  "Kept" is the share of the
original model's robust instances, as in :class:`~paoding_widgets.engine.evaluate.Metrics`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ExportError
from ..files import atomic_path, check_target
from .evaluate import (
    DEFAULT_EPSILONS,
    _labels,
    classes,
    fgsm_step,
    gradient_signs,
    outputs_are_probabilities,
    predict,
    probe_count_for,
    robust_instances,
    sample_box,
)
from .export import convert_in_tensorflow, save_keras, save_tflite

PathLike = str | os.PathLike

__all__ = [
    "CALIBRATED_FORMATS", "DEFAULT_FORMATS", "FORMATS", "DeployReport", "DeployRow", "Runner", "deploy",
    "load_runner", "quantize_model", "save_format", "save_onnx", "target_path",
]


@dataclass(frozen=True)
class Format:
    suffix: str
    description: str
    packages: tuple[tuple[str, str], ...] = ()  # (module to import, pip package) needed to write it
    data: bool = False  # needs the user's calibration data


_TF2ONNX = (("tf2onnx", "tf2onnx"), ("onnx", "onnx"))
_ORT = (("onnxruntime", "onnxruntime"),)

FORMATS: dict[str, Format] = {
    "keras": Format(".keras", "float32 .keras"),
    "keras-int8": Format(".int8.keras", "Keras quantize('int8')"),
    "keras-int4": Format(".int4.keras", "Keras quantize('int4')"),
    "keras-float8": Format(".float8.keras", "Keras quantize('float8')"),
    "tflite": Format(".tflite", "LiteRT float32"),
    "tflite-float16": Format(".float16.tflite", "LiteRT float16 weights"),
    "tflite-int8": Format(".int8.tflite", "LiteRT dynamic-range int8"),
    "tflite-full-int8": Format(".full-int8.tflite", "LiteRT full-integer int8 (calibrated)", data=True),
    "onnx": Format(".onnx", "ONNX float32", _TF2ONNX),
    "onnx-int8": Format(".int8.onnx", "ONNX + onnxruntime quantize_dynamic int8", _TF2ONNX + _ORT),
    "onnx-keras-int8": Format(".keras-int8.onnx", "Keras quantize('int8') exported to ONNX", _TF2ONNX),
}
# Written by default: every compact, data-free format.  float8 does not shrink a file and the float32 TFLite
# and Keras-int8-in-ONNX add little, so they are opt-in; the calibrated format joins when data is given.
DEFAULT_FORMATS = ("keras", "keras-int8", "keras-int4", "tflite-float16", "tflite-int8", "onnx", "onnx-int8")
CALIBRATED_FORMATS = ("tflite-full-int8",)
CALIBRATION_SAMPLES = 500  # the converter only needs ranges; more samples cost time, not accuracy

# What running a file needs, by suffix (checked before any work: a missing runtime fails fast)
_RUNTIME_PACKAGES = {".onnx": _ORT}


# ----------------------------------------------------------------------------------------- dependencies
def _require(module: str, pip_name: str, purpose: str) -> Any:
    """Import an optional package, or raise ExportError naming it and the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"{purpose} needs the optional package {pip_name!r}, which is not installed: "
                          f"pip install {pip_name}  (or: pip install 'paoding-widgets[deploy]')") from exc


def _check_packages(fmt: str, run: bool = False) -> None:
    """The packages writing ``fmt`` needs (and running it, with ``run``) are importable, else ExportError."""
    spec = FORMATS[fmt]
    packages = spec.packages
    if run:
        packages += _RUNTIME_PACKAGES.get("." + spec.suffix.rsplit(".", 1)[-1], ())
    for module, pip_name in dict.fromkeys(packages):
        _require(module, pip_name, f"the {fmt!r} format" + (" (writing and running it)" if run else ""))


# ----------------------------------------------------------------------------------------- quantise
def _copy(model: Any) -> Any:
    """A separate copy of ``model`` with the same weights and no optimizer (the input is never touched)."""
    import keras

    try:
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        return copy
    except Exception:  # a model clone_model cannot rebuild: round-trip through a .keras file instead
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "copy.keras"
            model.save(path)
            return keras.models.load_model(path, compile=False)


def quantize_model(model: Any, mode: str = "int8") -> Any:
    """A quantised copy of ``model`` by Keras 3's own ``quantize(mode)`` (data-free); ``model`` is unchanged.

    ``mode``: ``"int8"``, ``"int4"`` or ``"float8"``.  Keras quantises Dense, EinsumDense and
    Embedding layers; the others keep their float weights.
    """
    if mode not in ("int8", "int4", "float8"):
        raise ConfigError(f"Keras quantisation mode must be 'int8', 'int4' or 'float8', got {mode!r}")
    q = _copy(model)
    try:
        with warnings.catch_warnings():  # "Layer Flatten does not have a `quantize` method": expected
            warnings.simplefilter("ignore")
            q.quantize(mode)
    except Exception as exc:
        raise ExportError(f"Keras quantize({mode!r}) of model {model.name!r} failed: {exc}") from exc
    done = [layer.name for layer in _leaves(q) if getattr(layer, "quantization_mode", None) == mode]
    if not done:
        raise ExportError(f"Keras quantize({mode!r}) found no layer to quantise in model {model.name!r} "
                          "(Keras quantises Dense, EinsumDense and Embedding layers)")
    return q


def _leaves(model: Any) -> list[Any]:
    return [layer for layer in model._flatten_layers(include_self=False) if not list(layer._flatten_layers(
        include_self=False))]


# ----------------------------------------------------------------------------------------- write
def target_path(out_dir: PathLike, fmt: str, stem: str = "model") -> Path:
    """Where :func:`deploy` writes ``fmt``: ``<out_dir>/<stem><suffix>``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown deployment format {fmt!r}; choose from {', '.join(FORMATS)}")
    return Path(out_dir) / f"{stem}{FORMATS[fmt].suffix}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """tf2onnx and TensorFlow's converters talk on stdout, logging and warnings: keep the user's output clean."""
    # onnxruntime's quantiser warns through the root logger, whose first call would also install a stderr
    # handler for good (logging.basicConfig): give root a silent handler for the duration instead
    root = logging.getLogger()
    loggers = [logging.getLogger(n) for n in ("tf2onnx", "onnxruntime", "absl")] + [root]
    levels = [lg.level for lg in loggers]
    silent = logging.NullHandler() if not root.handlers else None
    if silent is not None:
        root.addHandler(silent)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if silent is not None:
            root.removeHandler(silent)


def _onnx_to(model: Any, path: Path, opset: int | None) -> None:
    import keras

    _require("tf2onnx", "tf2onnx", "ONNX export")
    _require("onnx", "onnx", "ONNX export")
    if keras.backend.backend() != "tensorflow":  # see export.convert_in_tensorflow for why
        convert_in_tensorflow(model, "onnx", path, None if opset is None else str(opset))
        return
    write_onnx(model, path, opset)


def write_onnx(model: Any, path: PathLike, opset: int | None = None) -> None:
    """Keras' own ONNX export (through tf2onnx), quiet; ExportError naming the model if it fails."""
    if not getattr(model, "_called", True):  # Keras' exporter wants a model that has run once
        model(np.zeros((1, *tuple(model.inputs[0].shape[1:])), np.float32))
    try:
        with _quiet():
            model.export(str(path), format="onnx", verbose=False, opset_version=opset)
    except Exception as exc:
        raise ExportError(f"ONNX export of model {model.name!r} failed: {exc}") from exc


def save_onnx(model: Any, path: PathLike, quantize: str | None = None, overwrite: bool = False,
              protected: tuple[PathLike | None, ...] = (), opset: int | None = None) -> Path:
    """Write ``model`` as ONNX, atomically; ``quantize="int8"`` adds onnxruntime's dynamic int8 quantisation."""
    if quantize not in (None, "int8"):
        raise ConfigError(f"ONNX quantize must be None or 'int8', got {quantize!r}")
    target = check_target(path, overwrite, protected)
    if target.suffix != ".onnx":
        raise ConfigError(f"an ONNX file must end in .onnx, got {target.name!r}")
    if quantize is None:
        with atomic_path(target) as tmp:
            _onnx_to(model, tmp, opset)
        return target
    _require("onnxruntime", "onnxruntime", "ONNX int8 quantisation")
    ortq = _require("onnxruntime.quantization", "onnxruntime", "ONNX int8 quantisation")  # imported by name: untyped

    with tempfile.TemporaryDirectory() as work, atomic_path(target) as tmp:
        fp32 = Path(work) / "float.onnx"
        _onnx_to(model, fp32, opset)
        try:
            with _quiet():
                ortq.quantize_dynamic(str(fp32), str(tmp), weight_type=ortq.QuantType.QInt8)
        except Exception as exc:
            raise ExportError(f"onnxruntime int8 quantisation of model {model.name!r} failed: {exc}") from exc
    return target


def save_format(model: Any, fmt: str, path: PathLike, overwrite: bool = False,
                protected: tuple[PathLike | None, ...] = (), calibration: Any = None,
                strip_names: bool = False) -> Path:
    """Write ``model`` in one of :data:`FORMATS` to ``path`` (atomic, checked); returns the path.

    ``strip_names`` drops the TFLite formats' debug names (see ``export.tflite_bytes``).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown deployment format {fmt!r}; choose from {', '.join(FORMATS)}")
    _check_packages(fmt)
    if fmt == "keras":
        return save_keras(model, path, overwrite, protected)
    if fmt.startswith("keras-"):
        return save_keras(quantize_model(model, fmt.split("-", 1)[1]), path, overwrite, protected)
    if fmt.startswith("tflite"):
        mode = {"tflite": None, "tflite-float16": "float16", "tflite-int8": "dynamic",
                "tflite-full-int8": "full-int8"}[fmt]
        with _quiet():
            return save_tflite(model, path, mode, overwrite, protected, calibration, strip_names)
    if fmt == "onnx-keras-int8":
        return save_onnx(quantize_model(model, "int8"), path, None, overwrite, protected)
    return save_onnx(model, path, "int8" if fmt == "onnx-int8" else None, overwrite, protected)


# ----------------------------------------------------------------------------------------- run
class Runner:
    """Runs one model file (or an in-memory Keras model) on float inputs: ``predict(x) -> outputs``."""

    runtime = "?"

    def predict(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class KerasRunner(Runner):
    def __init__(self, model: Any) -> None:
        import keras

        self.model = model
        self.runtime = f"keras {keras.__version__}"

    def predict(self, x: np.ndarray) -> np.ndarray:
        return predict(self.model, np.asarray(x, np.float32))


class LiteRTRunner(Runner):
    """A ``.tflite`` file through ``ai-edge-litert`` (else TensorFlow's deprecated ``tf.lite.Interpreter``)."""

    def __init__(self, path: PathLike, num_threads: int | None = None, batch_size: int = 512) -> None:
        try:
            import ai_edge_litert
            from ai_edge_litert.interpreter import Interpreter

            self.runtime = f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '')}".strip()
        except ImportError:
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter  # noqa: N806 - the class, by its own name
            self.runtime = f"tf.lite.Interpreter (TF {tf.__version__}; pip install ai-edge-litert)"
        threads = num_threads or int(os.environ.get("TF_NUM_INTRAOP_THREADS", 0) or 0) or None
        with _quiet():
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise ExportError(f"{path}: verification runs single-input, single-output models only "
                              f"({len(ins)} inputs, {len(outs)} outputs)")
        self.inp, self.out = ins[0], outs[0]
        self.batch_size = batch_size
        self._batch: int | None = None

    def _run(self, x: np.ndarray) -> np.ndarray:
        it, inp, out = self.interpreter, self.inp, self.out
        if self._batch != len(x):
            it.resize_tensor_input(inp["index"], [len(x), *x.shape[1:]])
            it.allocate_tensors()
            self._batch = len(x)
        if inp["dtype"] != np.float32:  # full integer: quantise the input with the file's own scale
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], x)
        it.invoke()
        y = np.array(it.get_tensor(out["index"]))
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return np.concatenate([self._run(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)])


class OnnxRunner(Runner):
    """An ``.onnx`` file through ``onnxruntime`` (CPU)."""

    def __init__(self, path: PathLike, num_threads: int | None = None, batch_size: int = 512) -> None:
        ort = _require("onnxruntime", "onnxruntime", "running an ONNX file")
        self.runtime = f"onnxruntime {ort.__version__}"
        opts = ort.SessionOptions()
        threads = num_threads or int(os.environ.get("OMP_NUM_THREADS", 0) or 0)
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(f"onnxruntime cannot load {path}: {exc}") from exc
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise ExportError(f"{path}: verification runs single-input, single-output models only "
                              f"({len(ins)} inputs, {len(outs)} outputs)")
        self.input_name = ins[0].name
        self.batch_size = batch_size

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return np.concatenate([self.session.run(None, {self.input_name: x[i:i + self.batch_size]})[0]
                               for i in range(0, len(x), self.batch_size)])


def load_runner(path: PathLike) -> Runner:
    """Load a written file in the runtime that serves it, by suffix (.keras, .tflite, .onnx)."""
    path = Path(path)
    if path.suffix == ".keras":
        import keras

        try:
            return KerasRunner(keras.models.load_model(path, compile=False))
        except Exception as exc:
            raise ExportError(f"Keras cannot load {path}: {exc}") from exc
    if path.suffix == ".tflite":
        try:
            return LiteRTRunner(path)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"LiteRT cannot load {path}: {exc}") from exc
    if path.suffix == ".onnx":
        return OnnxRunner(path)
    raise ConfigError(f"cannot run {path.name}: expected a .keras, .tflite or .onnx file")


# ----------------------------------------------------------------------------------------- report
@dataclass
class DeployRow:
    """One model file: its size, and what running it gave."""

    name: str  # "original", "pruned", or the format
    description: str
    path: str | None  # None for the original (measured in a temporary file, not kept)
    bytes: int
    times_smaller: float | None  # original .keras bytes / this file's bytes
    runtime: str
    accuracy: float | None = None
    accuracy_drop: float | None = None  # pruned float accuracy - this accuracy (points of 1.0)
    robust: dict[float, int] = field(default_factory=dict)
    robust_kept: dict[float, float] = field(default_factory=dict)  # share of the original's robust instances
    agreement: float | None = None  # top-1 agreement with the original on box samples (data-free)
    agreement_source: float | None = None  # top-1 agreement with its float Keras source on the eval inputs
    max_abs_diff: float | None = None  # largest output difference from its float Keras source
    seconds: float = 0.0  # writing + verifying
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["robust"] = {str(k): v for k, v in self.robust.items()}
        d["robust_kept"] = {str(k): v for k, v in self.robust_kept.items()}
        return d


@dataclass
class DeployReport:
    rows: list[DeployRow]
    original_bytes: int | None
    epsilons: tuple[float, ...]
    n_eval: int | None
    n_robust: int | None
    n_probes: int

    def row(self, name: str) -> DeployRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {"original_bytes": self.original_bytes, "epsilons": list(self.epsilons), "n_eval": self.n_eval,
                "n_robust": self.n_robust, "n_probes": self.n_probes, "rows": [r.as_dict() for r in self.rows]}

    def table(self) -> str:
        """A Markdown table: size on disk, accuracy, robustness kept, agreement, fidelity to the float model."""
        eps = self.epsilons if self.n_robust else ()
        head = (["model", "file", "KiB", "x smaller", "accuracy", "vs pruned"]
                + [f"FGSM {e:g} kept" for e in eps]
                + ["agreement", "agree w/ float", "max abs diff", "runtime"])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 3) + "---|"]
        for r in self.rows:
            cells = [r.name, Path(r.path).name if r.path else "(temporary copy)", f"{r.bytes / 1024:.1f}",
                     _fmt(r.times_smaller, "{:.1f}x"), _fmt(r.accuracy, "{:.2%}"),
                     _fmt(None if r.accuracy_drop is None else 0.0 - 100 * r.accuracy_drop + 0.0, "{:+.2f} pt")]
            cells += [(f"{r.robust[e]}" + (f" ({r.robust_kept[e]:.0%})" if e in r.robust_kept else "")
                       if e in r.robust else "-") for e in eps]
            cells += [_fmt(r.agreement, "{:.1%}"), _fmt(r.agreement_source, "{:.2%}"),
                      _fmt(r.max_abs_diff, "{:.2g}"), r.runtime]
            lines.append("| " + " | ".join(cells) + " |")
        notes = [f"* {r.name}: {r.note}" for r in self.rows if r.note]
        return "\n".join(lines + ([""] + notes if notes else []))

    def __str__(self) -> str:
        return self.table()

    def _repr_markdown_(self) -> str:
        return self.table()


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else spec.format(v)


# ----------------------------------------------------------------------------------------- deploy
def _keras_bytes(model: Any) -> int:
    """Size of ``model`` as a float32 ``.keras`` file, written to a temporary folder (no optimizer state)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        _copy(model).save(path)
        return path.stat().st_size


def deploy(model: Any, out_dir: PathLike, *, original: Any | None = None,
           eval_data: tuple[np.ndarray, np.ndarray] | None = None, input_range: tuple[Any, Any] = (0.0, 1.0),
           formats: Sequence[str] | None = None, calibration_data: np.ndarray | None = None,
           epsilons: Sequence[float] = DEFAULT_EPSILONS, robust_samples: int | None = 500,
           probes: np.ndarray | None = None, stem: str = "model", overwrite: bool = False,
           protected: tuple[PathLike | None, ...] = (), strict: bool = True, strip_names: bool = True,
           progress: Callable[[str], None] | None = None) -> DeployReport:
    """Quantise and export ``model`` (the pruned Keras model) in each format, run every file, compare.

    ``out_dir`` gets one file per format (``<stem><suffix>``; created if missing).  ``original`` (the
    unpruned model) adds the first row and the baseline of size, robustness and agreement.  With
    ``eval_data`` = ``(x, y)`` the rows get accuracy and FGSM robustness (on the first
    ``robust_samples`` inputs; ``epsilons=()`` skips it).  ``tflite-full-int8`` is calibrated on
    ``calibration_data``, else on the eval inputs (noted in its row); without either it is not
    written (an error if asked for).  Agreement with the original is data-free, on ``probes``
    (default: samples of ``input_range``).  ``strict=False`` records a failing format's error in
    its row instead of raising.  TFLite files are written without debug names (``strip_names``; their
    signature stays, so they run by signature): deployment is about bytes.  Returns a
    :class:`DeployReport` (``.table()`` is Markdown).
    """
    say = progress or (lambda _msg: None)
    if formats is None:
        formats = DEFAULT_FORMATS + (CALIBRATED_FORMATS if (calibration_data is not None or eval_data) else ())
    formats = list(dict.fromkeys(formats))
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown deployment format {fmt!r}; choose from {', '.join(FORMATS)}")
    cal_note = ""
    if any(FORMATS[f].data for f in formats):
        if calibration_data is None:
            if eval_data is None:
                raise ConfigError("tflite-full-int8 needs calibration data: pass calibration_data= (some of "
                                  "your own inputs) or eval_data=; paoding_widgets never invents data")
            calibration_data = np.asarray(eval_data[0])[:CALIBRATION_SAMPLES]
            cal_note = (f"calibrated on the first {len(calibration_data)} eval inputs, which it is also "
                        "scored on")
        else:
            calibration_data = np.asarray(calibration_data)[:CALIBRATION_SAMPLES]
            cal_note = f"calibrated on {len(calibration_data)} inputs given as calibration_data"
    # everything that can fail fast fails before any work: packages, folder, every target
    errors: dict[str, str] = {}
    for fmt in formats:
        try:
            _check_packages(fmt, run=True)
        except ExportError as exc:
            if strict:
                raise
            errors[fmt] = str(exc)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; deploy writes into a folder")
    out.mkdir(parents=True, exist_ok=True)
    targets = {fmt: check_target(target_path(out, fmt, stem), overwrite, protected) for fmt in formats}

    shape = tuple(model.inputs[0].shape[1:])
    probs = outputs_are_probabilities(model)
    if probes is None:
        probes = sample_box(shape, input_range, probe_count_for(model))
    reference = original if original is not None else model
    probe_classes = classes(predict(reference, probes), outputs_are_probabilities(reference))
    x = y = None
    if eval_data is not None:
        x, y = np.asarray(eval_data[0], np.float32), _labels(eval_data[1])
    n_robust = min(len(x), robust_samples or len(x)) if x is not None and epsilons else None
    epsilons = tuple(float(e) for e in epsilons) if n_robust else ()

    # The float source: its outputs on the eval inputs (or probes), its adversarial inputs
    check_x = x if x is not None else probes
    source_out = predict(model, check_x)
    adversarial: dict[float, np.ndarray] = {}
    if n_robust and x is not None and y is not None:
        say("crafting FGSM inputs on the pruned float model")
        signs = gradient_signs(model, x[:n_robust], y[:n_robust])  # one gradient serves every epsilon
        for e in epsilons:
            adversarial[e] = fgsm_step(x[:n_robust], signs, e, input_range)
    original_robust: dict[float, int] = {}
    rows: list[DeployRow] = []
    original_bytes = None
    if original is not None:
        say("measuring the original model")
        t0 = time.perf_counter()
        original_bytes = _keras_bytes(original)
        r = DeployRow("original", "float32 .keras (unpruned)", None, original_bytes, 1.0,
                      KerasRunner(original).runtime)
        if n_robust and x is not None and y is not None:
            original_robust = robust_instances(original, x[:n_robust], y[:n_robust], epsilons, input_range)
        _score(r, KerasRunner(original), x, y, probes, probe_classes, probs, None, None, {}, original_robust,
               original_robust)
        r.seconds = time.perf_counter() - t0
        rows.append(r)

    pruned_accuracy = None
    for fmt in formats:
        spec = FORMATS[fmt]
        name = "pruned" if fmt == "keras" else f"pruned + {fmt}"
        say(f"writing and verifying {name}")
        t0 = time.perf_counter()
        row = DeployRow(name, spec.description, str(targets[fmt]), 0, None, "-")
        if fmt in errors:
            row.note = errors[fmt]
            rows.append(row)
            continue
        try:
            path = save_format(model, fmt, targets[fmt], overwrite, protected,
                               calibration_data if spec.data else None, strip_names)
            runner = load_runner(path)
        except (ExportError, ConfigError) as exc:
            if strict:
                raise
            row.note = str(exc).splitlines()[0][:300]
            rows.append(row)
            continue
        row.bytes = path.stat().st_size
        row.times_smaller = original_bytes / row.bytes if original_bytes else None
        row.runtime = runner.runtime
        _score(row, runner, x, y, probes, probe_classes, probs, check_x, source_out, adversarial,
               {e: int(v) for e, v in original_robust.items()}, None)
        if fmt == "keras":
            pruned_accuracy = row.accuracy
        if spec.data:
            row.note = cal_note
        if fmt.startswith("keras-") or fmt == "onnx-keras-int8":
            kept = getattr(runner, "model", None)
            floats = [layer.name for layer in _leaves(kept)
                      if layer.weights and getattr(layer, "quantization_mode", None) is None] if kept else []
            if floats:
                row.note = "float32 kept in " + ", ".join(floats) + " (Keras quantises Dense-like layers only)"
        if fmt == "keras-float8":
            row.note = (row.note + "; " if row.note else "") + ("float8 in Keras is a training policy: "
                                                                "weights stay float32 on disk")
        row.seconds = time.perf_counter() - t0
        rows.append(row)
    if pruned_accuracy is None and x is not None and y is not None:
        pruned_accuracy = float((classes(source_out, probs) == y).mean())
    for r in rows:
        if r.accuracy is not None and pruned_accuracy is not None and r.name != "original":
            r.accuracy_drop = pruned_accuracy - r.accuracy
    return DeployReport(rows, original_bytes, epsilons, None if x is None else len(x), n_robust, len(probes))


def _score(row: DeployRow, runner: Runner, x: np.ndarray | None, y: np.ndarray | None, probes: np.ndarray,
           probe_classes: np.ndarray, probs: bool, check_x: np.ndarray | None, source_out: np.ndarray | None,
           adversarial: dict[float, np.ndarray], original_robust: dict[float, int],
           robust_given: dict[float, int] | None) -> None:
    """Fill a row from running ``runner``: accuracy, robustness, agreement, fidelity to the float source."""
    if x is not None and y is not None:
        out = runner.predict(x)
        row.accuracy = float((classes(out, probs) == y).mean())
        if source_out is not None and check_x is x:
            row.agreement_source = float((classes(out, probs) == classes(source_out, probs)).mean())
            row.max_abs_diff = float(np.max(np.abs(out.reshape(source_out.shape) - source_out)))
    if robust_given is not None:
        row.robust = dict(robust_given)
    else:
        n = len(next(iter(adversarial.values()))) if adversarial else 0
        for e, adv in adversarial.items():
            row.robust[e] = int((classes(runner.predict(adv), probs) == y[:n]).sum())  # type: ignore[index]
    row.robust_kept = {e: (v / original_robust[e] if original_robust.get(e) else 1.0)
                       for e, v in row.robust.items() if e in original_robust}
    probe_out = runner.predict(probes)
    row.agreement = float((classes(probe_out, probs) == probe_classes).mean())
    if x is None and source_out is not None:
        row.agreement_source = float((classes(probe_out, probs) == classes(source_out, probs)).mean())
        row.max_abs_diff = float(np.max(np.abs(probe_out.reshape(source_out.shape) - source_out)))
