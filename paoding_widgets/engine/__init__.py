"""The pruning engine: PAODING on Keras 3, vectorised.  Imports nothing of Jupyter.

Data flows ``model -> ModelGraph (unit groups) -> Pruner.propose (strategies
over UnitView scores) -> apply_edit (Patch on the WeightStore) ->
physical_model``; see docs/architecture.md.
"""

from .evaluate import Metrics, evaluate
from .export import ExportError, save_keras, save_tflite
from .graph import ModelGraph, UnitGroup
from .pruner import Proposal, Pruner
from .rules import LayerRule, register_rule, rule_for
from .strategies import STRATEGIES, Strategy, make_strategy
from .weights import Patch, WeightStore

__all__ = [
    "ExportError", "LayerRule", "Metrics", "ModelGraph", "Patch", "Proposal", "Pruner", "STRATEGIES", "Strategy",
    "UnitGroup", "WeightStore", "evaluate", "make_strategy", "register_rule", "rule_for", "save_keras", "save_tflite",
]
