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

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

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


def auto_batch_size(model: Any, limit: int = 1024) -> int:
    """A batch size that keeps evaluation memory bounded: the largest layer output of one batch
    within about 16 MiB (ResNet50 at 224 x 224: 5 images; an MNIST MLP: ``limit``)."""
    largest = 1
    for layer in getattr(model, "layers", []):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if isinstance(shape, (list, tuple)) and all(isinstance(d, (int, type(None))) for d in shape):
            largest = max(largest, int(np.prod([d for d in shape[1:] if d is not None])))
    return int(np.clip(_BATCH_BUDGET // (4 * largest), 1, limit))


def predict(model: Any, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Model outputs in bounded batches (:func:`auto_batch_size`), through Keras' compiled
    ``predict`` (traced once per model and reused), without progress output."""
    if len(x) == 0:
        return np.zeros((0,))
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


def fgsm(model: Any, x: np.ndarray, y: np.ndarray, eps: float, input_range: tuple[Any, Any] = (0.0, 1.0),
         batch_size: int | None = None) -> np.ndarray:
    """Adversarial examples by one signed-gradient step of size ``eps``."""
    from .gradients import input_gradient  # the active Keras backend's own autodiff

    labels = _labels(y)
    from_probs = outputs_are_probabilities(model)
    binary = int(np.prod(model.outputs[0].shape[1:])) == 1
    if binary:
        labels = labels.astype(np.float32).reshape(-1, 1)
    lo, hi = (np.asarray(v, np.float32) for v in input_range)
    if batch_size is None:
        batch_size = auto_batch_size(model, 512)
    out = []
    for i in range(0, len(x), batch_size):
        xb = np.asarray(x[i:i + batch_size], np.float32)
        grad = input_gradient(model, xb, labels[i:i + batch_size], from_probs, binary)
        out.append(np.clip(xb + eps * np.sign(grad), lo, hi))
    return np.concatenate(out)


def robust_instances(model: Any, x: np.ndarray, y: np.ndarray, epsilons: Sequence[float],
                     input_range: tuple[Any, Any] = (0.0, 1.0)) -> dict[float, int]:
    """Per epsilon, how many instances stay correctly classified under FGSM."""
    labels = _labels(y)
    return {float(e): int((predict_classes(model, fgsm(model, x, y, e, input_range)) == labels).sum())
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


def default_probe_count(input_shape: tuple, budget: float = 4e6) -> int:
    """Box samples for agreement: 1,000 for small inputs, fewer for images (16 at least)."""
    size = int(np.prod([d for d in input_shape if d is not None])) or 1
    return int(np.clip(budget // size, 16, 1000))


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


def evaluate(model: Any, original: Any | None = None, data: tuple[np.ndarray, np.ndarray] | None = None,
             epsilons: Sequence[float] = DEFAULT_EPSILONS, input_range: tuple[Any, Any] = (0.0, 1.0),
             original_robust: dict[float, int] | None = None, probes: np.ndarray | None = None,
             output_bound_width: float | None = None, probe_classes: np.ndarray | None = None,
             size: SizeReport | None = None) -> Metrics:
    """Evaluate ``model``; robustness is compared with ``original`` when given.

    ``size``: the size to report when ``model`` is not the physically pruned
    model itself (the session evaluates a full-size model carrying the edits).
    """
    m = Metrics(size=size_report(model) if size is None else size, output_bound_width=output_bound_width)
    if data is not None:
        x, y = data
        m.accuracy = accuracy(model, x, y)
        if epsilons:
            m.robust = robust_instances(model, x, y, epsilons, input_range)
            if original_robust is None and original is not None:
                original_robust = robust_instances(original, x, y, epsilons, input_range)
            if original_robust:
                m.robust_preserved = {e: (m.robust[e] / original_robust[e] if original_robust[e] else 1.0)
                                      for e in m.robust}
    if original is not None and probes is not None:
        m.agreement = agreement(original, model, probes, probe_classes)
    return m
