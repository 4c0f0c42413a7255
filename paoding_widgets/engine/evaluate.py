"""Evaluation: accuracy, standard FGSM robustness, data-free fidelity, size.

Why: PAODING promises fidelity -- accuracy *and* robustness kept.  All data is
optional: without a test set we still report data-free fidelity (top-1
agreement with the original on inputs sampled from the input box, and the
width of the certified output bounds) and the physical size.

The FGSM here is the standard attack (the reference's is not, see
docs/method.md): the loss is taken on the model's real output -- logits or
probabilities, detected from the final activation -- the step is the sign of
its gradient, the result is clipped to the input range, and it runs batched.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError

DEFAULT_EPSILONS = (0.01, 0.05, 0.1)


@dataclass
class SizeReport:
    params: int
    bytes: int
    flops: int


@dataclass
class Metrics:
    """One evaluation of a model; fields are None where no data was given."""

    size: SizeReport
    accuracy: float | None = None
    robust: dict[float, int] = field(default_factory=dict)  # eps -> robust instances
    robust_preserved: dict[float, float] = field(default_factory=dict)  # eps -> share of original's
    agreement: float | None = None  # top-1 agreement with the original on box samples
    output_bound_width: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: string keys, and None for a non-finite number (e.g. bounds that overflowed)."""
        d = asdict(self)
        d["robust"] = {str(k): v for k, v in self.robust.items()}
        d["robust_preserved"] = {str(k): v for k, v in self.robust_preserved.items()}
        return _finite(d)


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1).astype(np.int64)


_BATCH_BUDGET = 16 * 2**20  # bytes of the largest activation of one batch (a few live at once)
#: The compiled TensorFlow forward pass frees each activation as soon as its readers ran, so it affords
#: larger batches than Keras' ``predict`` (ResNet50 at 224 x 224: 10 images, +0.1 GiB peak); a batch of 5
#: leaves oneDNN's convolutions far from the machine's rate.
_COMPILED_BATCH_BUDGET = 32 * 2**20


def auto_batch_size(model: Any, limit: int = 1024, budget: int = _BATCH_BUDGET) -> int:
    """A batch size that keeps evaluation memory bounded: the largest layer output of one batch
    within about ``budget`` bytes (16 MiB: ResNet50 at 224 x 224: 5 images; an MNIST MLP: ``limit``)."""
    largest = 1
    for layer in getattr(model, "layers", []):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if isinstance(shape, (list, tuple)) and all(isinstance(d, (int, type(None))) for d in shape):
            largest = max(largest, int(np.prod([d for d in shape[1:] if d is not None])))
    return int(np.clip(budget // (4 * largest), 1, limit))


_compiled: dict[int, tuple[weakref.ref, Any]] = {}
_compiled_lock = threading.Lock()


def compiled_forward(model: Any) -> Callable[[np.ndarray], Any] | None:
    """``x -> model(x, training=False)`` as one ``tf.function`` per model, or None where it does not apply.

    Why: the session re-measures after every click on the same kept model
    (``surgery.EditedModel``) whose weights are assigned in place.  The traced
    function reads the variables, so a new weight version reuses it without a
    retrace; the batch axis is left unknown, so a last short batch does not
    retrace either.  Keras' ``predict`` builds a data pipeline per call and
    steps it batch by batch (on ResNet50 it cost 2-3x the forward pass itself).
    Only for single-input models on the TensorFlow backend (the others keep
    ``model.predict``, which JAX compiles itself).
    """
    try:
        import keras

        if keras.backend.backend() != "tensorflow" or len(model.inputs) != 1 or len(model.outputs) != 1:
            return None
        shape, dtype = tuple(model.inputs[0].shape), model.inputs[0].dtype
        np.dtype(dtype)  # predict() casts the batches to it
    except (AttributeError, ValueError, TypeError):
        return None
    key = id(model)
    with _compiled_lock:
        hit = _compiled.get(key)
        if hit is not None and hit[0]() is model:
            return hit[1]
        import tensorflow as tf

        ref = weakref.ref(model, lambda _: _compiled.pop(key, None))

        def forward(x: Any) -> Any:
            m = ref()
            assert m is not None  # the entry is dropped with its model
            return m(x, training=False)

        fn = tf.function(forward, input_signature=[tf.TensorSpec((None, *shape[1:]), dtype)])
        _compiled[key] = (ref, fn)
        return fn


def predict(model: Any, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Model outputs in bounded batches (:func:`auto_batch_size`), through one compiled forward pass
    per model (:func:`compiled_forward`, traced once and reused across weight versions), or Keras'
    ``predict`` where that does not apply, without progress output."""
    if len(x) == 0:
        return np.zeros((0,))
    fn = compiled_forward(model)
    if fn is not None:
        bs = auto_batch_size(model, budget=_COMPILED_BATCH_BUDGET) if batch_size is None else batch_size
        dtype = np.dtype(model.inputs[0].dtype)
        return np.concatenate([np.asarray(fn(np.asarray(x[i:i + bs], dtype))) for i in range(0, len(x), bs)])
    bs = auto_batch_size(model) if batch_size is None else batch_size
    if hasattr(model, "predict"):
        return np.asarray(model.predict(x, batch_size=bs, verbose=0))
    import keras

    outs = [keras.ops.convert_to_numpy(model(x[i:i + bs], training=False)) for i in range(0, len(x), bs)]
    return np.concatenate(outs)


def classes(outputs: np.ndarray, probabilities: bool = True) -> np.ndarray:
    """Predicted classes: argmax, or for one output unit a threshold (0.5 on
    probabilities, 0 on logits) -- a binary classifier."""
    outputs = outputs.reshape(len(outputs), -1)
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > (0.5 if probabilities else 0.0)).astype(np.int64)
    return outputs.argmax(-1)


def predict_classes(model: Any, x: np.ndarray) -> np.ndarray:
    return classes(predict(model, x), outputs_are_probabilities(model))


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict_classes(model, x) == _labels(y)).mean())


def outputs_are_probabilities(model: Any) -> bool:
    """True when the last layer ends in softmax (or sigmoid): then the loss takes probabilities."""
    from .graph import _config
    from .rules import rule_for

    layer = model.layers[-1]
    rule = rule_for(layer)
    return rule is not None and rule.activation(_config(layer))[0] in ("softmax", "sigmoid")


def gradient_signs(model: Any, x: np.ndarray, y: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """The sign of the loss gradient with respect to each input: FGSM's direction, the same for every
    step size (computed once, then :func:`fgsm_step` per epsilon)."""
    from .gradients import input_gradient  # the active Keras backend's own autodiff

    labels = _labels(y)
    from_probs = outputs_are_probabilities(model)
    binary = int(np.prod(model.outputs[0].shape[1:])) == 1
    if binary:
        labels = labels.astype(np.float32).reshape(-1, 1)
    if batch_size is None:
        batch_size = auto_batch_size(model, 512)
    out = []
    for i in range(0, len(x), batch_size):
        xb = np.asarray(x[i:i + batch_size], np.float32)
        out.append(np.sign(input_gradient(model, xb, labels[i:i + batch_size], from_probs, binary)))
    return np.concatenate(out) if out else np.zeros(np.shape(x), np.float32)


def fgsm_step(x: np.ndarray, signs: np.ndarray, eps: float, input_range: tuple[Any, Any] = (0.0, 1.0)) -> np.ndarray:
    lo, hi = (np.asarray(v, np.float32) for v in input_range)
    return np.clip(np.asarray(x, np.float32) + eps * signs, lo, hi)


def fgsm(model: Any, x: np.ndarray, y: np.ndarray, eps: float, input_range: tuple[Any, Any] = (0.0, 1.0),
         batch_size: int | None = None) -> np.ndarray:
    """Adversarial examples by one signed-gradient step of size ``eps``."""
    return fgsm_step(x, gradient_signs(model, x, y, batch_size), eps, input_range)


def robust_instances(model: Any, x: np.ndarray, y: np.ndarray, epsilons: Sequence[float],
                     input_range: tuple[Any, Any] = (0.0, 1.0)) -> dict[float, int]:
    """Per epsilon, how many instances stay correctly classified under FGSM (one gradient for all)."""
    if not len(epsilons):
        return {}
    labels = _labels(y)
    signs = gradient_signs(model, x, y)
    return {float(e): int((predict_classes(model, fgsm_step(x, signs, e, input_range)) == labels).sum())
            for e in epsilons}


def sample_box(shape: tuple, input_range: tuple[Any, Any], n: int, seed: int = 0) -> np.ndarray:
    """``n`` inputs drawn uniformly from the input box (data-free probes)."""
    lo, hi = (np.asarray(v, np.float32) for v in input_range)
    rng = np.random.default_rng(seed)
    u = rng.random((n, *shape), dtype=np.float32)
    return lo + u * (hi - lo)


def agreement(original: Any, pruned: Any, probes: np.ndarray, original_classes: np.ndarray | None = None) -> float:
    """Top-1 agreement on probes; pass ``original_classes`` to skip re-running the original."""
    if original_classes is None:
        original_classes = predict_classes(original, probes)
    return float((original_classes == predict_classes(pruned, probes)).mean())


# FLOPs of one pass over the default probes: about 0.5 s at a 2-core machine's float32 matmul rate
PROBE_FLOPS_BUDGET = 1e11


def default_probe_count(input_shape: tuple, budget: float = 4e6, flops_per_sample: float | None = None,
                        flops_budget: float = PROBE_FLOPS_BUDGET) -> int:
    """Box samples for agreement: 1,000 for small inputs, fewer for images (16 at least) and costly models.

    Why a FLOPs bound too: agreement is measured again after every click, so one pass over the probes
    must stay well under a second whatever the model; ``flops_per_sample`` (see :func:`flops`) caps the
    count at ``flops_budget / flops_per_sample`` (8 at least): ResNet50 at 224 px gets 12, not 26.
    """
    size = int(np.prod([d for d in input_shape if d is not None])) or 1
    n = int(np.clip(budget // size, 16, 1000))
    if flops_per_sample is not None and flops_per_sample > 0:
        n = min(n, max(8, int(flops_budget // flops_per_sample)))
    return n


def probe_count_for(model: Any) -> int:
    """:func:`default_probe_count` for a model: its input shape and, where its layers can be counted, its FLOPs."""
    try:
        cost: float | None = float(flops(model))
    except Exception:  # a layer whose rule cannot count its FLOPs: the input-size bound alone
        cost = None
    return default_probe_count(tuple(model.inputs[0].shape[1:]), flops_per_sample=cost)


def size_report(model: Any) -> SizeReport:
    """Parameters, bytes of weights, and FLOPs (2 x multiply-adds) of one inference."""
    params = int(sum(np.prod(w.shape) for w in model.weights))
    nbytes = int(sum(np.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights))
    return SizeReport(params, nbytes, flops(model))


def flops(model: Any, shaped: Callable[[Any], Any] | None = None) -> int:
    """Multiply-add count x 2 of Dense and convolution layers for one input.

    ``shaped(layer)``: what the layer's rule measures instead of the layer
    (a stand-in with the pruned variable shapes, see ``surgery.pruned_size``).
    """
    from .rules import rule_for

    total = 0
    for layer in model.layers:
        rule = rule_for(layer)
        if rule is None:
            continue
        try:
            out_shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        positions = int(np.prod([d for d in out_shape[1:-1] if d is not None])) if len(out_shape) > 2 else 1
        total += rule.flops(layer if shaped is None else shaped(layer), positions)
    return 2 * total


def is_stream(data: Any) -> bool:
    """True when ``data`` is not an ``(x, y)`` pair of arrays: a ``tf.data.Dataset``, a
    ``keras.utils.PyDataset``, a generator, or a function returning one -- batches ``(x, y)``."""
    if isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        return False  # one array: neither a pair nor a stream (the caller says what is wrong)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        if all(isinstance(a, tuple) and len(a) == 2 for a in data):
            return True  # two (x, y) batches
        return not all(isinstance(a, np.ndarray) or hasattr(a, "__array__") or isinstance(a, (list, tuple))
                       for a in data)
    return data is not None


def _numpy(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "numpy"):  # a TensorFlow / PyTorch tensor
        try:
            return np.asarray(a.numpy())
        except Exception:  # a PyTorch tensor that carries gradients
            pass
    import keras

    return np.asarray(keras.ops.convert_to_numpy(a))


def batches(data: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The ``(x, y)`` batches of evaluation data, as NumPy, one at a time (bounded memory).

    ``data``: an ``(x, y)`` pair of arrays (one batch), a ``keras.utils.PyDataset`` (indexed
    batch by batch), a ``tf.data.Dataset`` or any iterable of ``(x, y)`` batches (a
    sample weight, if any, is ignored), or a function returning such an iterable.
    """
    if not is_stream(data):
        yield np.asarray(data[0]), np.asarray(data[1])
        return
    source = data() if callable(data) and not hasattr(data, "__getitem__") and not hasattr(data, "__iter__") else data
    from keras.utils import PyDataset

    if isinstance(source, PyDataset):
        n = source.num_batches
        if n is None:
            raise ConfigError("eval_data is an infinite PyDataset (num_batches is None); evaluation needs an end")
        items: Any = (source[i] for i in range(n))
    else:
        try:
            items = iter(source)
        except TypeError:
            raise ConfigError(f"eval_data must be (x, y) arrays, a tf.data.Dataset, a keras.utils.PyDataset or an "
                            f"iterable of (x, y) batches, got {type(data).__name__}") from None
    for k, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ConfigError(f"eval_data batch {k} is not an (x, y) pair: {type(item).__name__}")
        x, y = _numpy(item[0]), _numpy(item[1])
        if len(x) != len(y):
            raise ConfigError(f"eval_data batch {k} has {len(x)} inputs but {len(y)} labels")
        yield x, y


@dataclass
class DataScores:
    """What one pass over the evaluation data gives: correct answers and FGSM survivors."""

    n: int = 0
    correct: int = 0
    robust: dict[float, int] = field(default_factory=dict)
    original_robust: dict[float, int] = field(default_factory=dict)


def score_data(model: Any, data: Any, epsilons: Sequence[float] = (), input_range: tuple[Any, Any] = (0.0, 1.0),
               original: Any | None = None) -> DataScores:
    """Accuracy counts and robust instances of ``model`` (and of ``original`` when given) in one
    pass over ``data`` (arrays or a stream, see :func:`batches`): a generator is read only once."""
    out = DataScores(robust={float(e): 0 for e in epsilons},
                     original_robust={float(e): 0 for e in epsilons} if original is not None else {})
    for x, y in batches(data):
        x = np.asarray(x, np.float32)
        labels = _labels(y)
        out.n += len(x)
        out.correct += int((predict_classes(model, x) == labels).sum())
        for m, counts in ((model, out.robust), (original, out.original_robust)):
            if m is None or not len(epsilons):
                continue
            signs = gradient_signs(m, x, y)  # one gradient for every epsilon
            for e in epsilons:
                counts[float(e)] += int((predict_classes(m, fgsm_step(x, signs, e, input_range)) == labels).sum())
    if out.n == 0:
        raise ConfigError("eval_data gave no samples")
    return out


def evaluate(model: Any, original: Any | None = None, data: Any = None,
             epsilons: Sequence[float] = DEFAULT_EPSILONS, input_range: tuple[Any, Any] = (0.0, 1.0),
             original_robust: dict[float, int] | None = None, probes: np.ndarray | None = None,
             output_bound_width: float | None = None, probe_classes: np.ndarray | None = None,
             size: SizeReport | None = None, probe_outputs: np.ndarray | None = None) -> Metrics:
    """Evaluate ``model``; robustness is compared with ``original`` when given.

    ``data``: ``(x, y)`` arrays, or a stream of ``(x, y)`` batches (a ``tf.data.Dataset``, a
    ``keras.utils.PyDataset``, a generator; see :func:`batches`), read once, batch by batch.
    ``size``: the size to report when ``model`` is not the physically pruned
    model itself (the session evaluates a full-size model carrying the edits).
    ``probe_outputs``: ``model``'s outputs on ``probes`` when the caller has them (the session
    restarts the probes' pass at the first edited layer, ``surgery.EditedModel.probe_outputs``).
    """
    m = Metrics(size=size_report(model) if size is None else size, output_bound_width=output_bound_width)
    if data is not None:
        eps = list(epsilons)
        scores = score_data(model, data, eps, input_range, original if original_robust is None and eps else None)
        m.accuracy = scores.correct / scores.n
        if eps:
            m.robust = scores.robust
            if original_robust is None and original is not None:
                original_robust = scores.original_robust
            if original_robust:
                m.robust_preserved = {e: (m.robust[e] / original_robust[e] if original_robust[e] else 1.0)
                                      for e in m.robust}
    if original is not None and probes is not None:
        if probe_outputs is None:
            m.agreement = agreement(original, model, probes, probe_classes)
        else:
            if probe_classes is None:
                probe_classes = predict_classes(original, probes)
            mine = classes(np.asarray(probe_outputs), outputs_are_probabilities(model))
            m.agreement = float((probe_classes == mine).mean())
    return m
