"""Results of a session: metrics of the current weights, the pruned model, exports.

Why here: evaluation is slow (seconds on a ResNet50) and must never block an
action, so the model is snapshotted under the session lock and evaluated
outside it; results are cached per weights version.  The model evaluated is
one full-size clone carrying the edits, kept for the session and updated
layer by layer (``engine.surgery.EditedModel``): it computes what the
physically pruned model computes, its compiled forward pass is traced once,
and it runs in bounded batches; the size reported is the pruned model's,
computed from shapes (``engine.surgery.pruned_size``).
"""

from __future__ import annotations

from typing import Any

from ..engine.evaluate import Metrics, robust_instances, score_data, size_report
from ..engine.export import save_keras, save_tflite
from ..engine.surgery import EditedModel, pruned_size
from .base import SessionBase


class MetricsMixin(SessionBase):
    """``metrics``, ``cached_metrics``, ``pruned_model``, ``export``, ``export_tflite``."""

    def metrics(self) -> Metrics:
        """Size of the physically pruned model, accuracy / robustness with eval data, fidelity.

        The model is snapshotted under the session lock, then evaluated outside
        it, so a slow evaluation never blocks an action.  Without eval data the
        accuracy and robustness fields are None / empty.
        """
        with self._eval_lock:  # one evaluation at a time: two views asking at once build and measure once
            with self._lock:
                version = self._pruner.store.version
                cached = self.cached_metrics()
                if cached is not None:
                    return cached
                pruner = self._pruner
                edited: EditedModel | None = getattr(self, "_edited_model", None)
                if edited is None or edited.graph is not pruner.graph:
                    edited = self._edited_model = EditedModel(pruner.graph)
                try:
                    size = pruned_size(pruner.graph, pruner.store)
                except Exception:  # a rule whose flops need more than shapes: measure the real thing
                    size = size_report(pruner.pruned_model())
                model = edited.sync(pruner.store)  # the weights are copied into its variables: safe to leave the lock
                width = pruner.output_bound_width()
            box = self._pruner.input_range
            data = self.eval_data if self.eval_data is not None else self.eval_stream
            if data is not None and self._original_robust is None and self.epsilons:
                self._original_robust = score_data(self.model, data, self.epsilons, box).robust \
                    if self.eval_data is None else robust_instances(self.model, data[0], data[1], self.epsilons, box)
            outs = edited.probe_outputs(self._probes) if self._probes is not None and len(self._probes) else None
            m = _evaluate(model, self.model, data, self.epsilons, box, self._original_robust,
                         self._probes, width, self._original_probe_classes(), size, outs)
            with self._lock:
                if self._metrics_cache is None or self._metrics_cache[0] < version:
                    self._metrics_cache = (version, m)
        return m

    def cached_metrics(self) -> Metrics | None:
        """The metrics of the current weights if already computed, else None (never computes)."""
        hit = self._metrics_cache
        return hit[1] if hit is not None and hit[0] == self._pruner.store.version else None

    def pruned_model(self) -> Any:
        """A physically smaller ``keras.Model`` with the current edits."""
        with self._lock:
            return self._pruner.pruned_model()

    def export(self, path: str, overwrite: bool = False) -> str:
        """Save the pruned model as ``.keras`` (atomic; never over the source model)."""
        return str(save_keras(self.pruned_model(), path, overwrite, protected=(self.source_path,)))

    def export_tflite(self, path: str, quantize: str | None = "float16", overwrite: bool = False) -> str:
        return str(save_tflite(self.pruned_model(), path, quantize, overwrite, protected=(self.source_path,)))


def _evaluate(*args: Any) -> Metrics:
    """``engine.evaluate.evaluate``, looked up on :mod:`.core` at call time.

    tests/test_widget.py slows evaluation down by patching ``session.core.evaluate``
    (from before the split); once it patches ``session.metrics._evaluate`` this can call
    the engine directly.
    """
    from . import core

    result: Metrics = core.evaluate(*args)
    return result
