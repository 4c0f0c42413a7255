"""paoding_widgets: interactive, data-free pruning of pre-trained Keras models.

The engine (:mod:`paoding_widgets.engine`) re-implements PAODING -- progressive,
data-free merging of near-duplicate Dense units and removal of low-L1 filters,
scored by interval arithmetic -- vectorised, on Keras 3.  This facade exposes
the public names; TensorFlow is only imported when a model is touched.
"""

from __future__ import annotations

from .demos import list_demos, load_demo
from .engine import (
    STRATEGIES,
    LayerRule,
    Metrics,
    ModelGraph,
    Proposal,
    Pruner,
    Strategy,
    evaluate,
    make_strategy,
    register_rule,
    save_keras,
    save_tflite,
)
from .errors import PaodingError
from .session import LayerInfo, PruningSession, SessionError, SessionFileError

__version__ = "0.1.0"

__all__ = [
    "STRATEGIES", "LayerRule", "Metrics", "ModelGraph", "PaodingError", "register_rule", "Proposal", "Pruner",
    "Strategy", "evaluate",
    "make_strategy", "save_keras", "save_tflite", "__version__",
    "LayerInfo", "PruningSession", "SessionError", "SessionFileError", "list_demos", "load_demo",
]
