"""Per-layer-kind rules: everything the engine knows about a kind of Keras layer, in one place.

Look a layer's rule up with :func:`rule_for` (through the class hierarchy);
teach the engine your own layer with :func:`register_rule`.  See
``docs/layers.md`` for the generated list of built-in kinds and an example.
"""

from . import attention, extra, recurrent
from .base import (
    REGISTRY,
    LayerRule,
    NoIntervalRule,
    OpaqueRule,
    RuleRegistry,
    register_rule,
    rule_for,
    unregister_rule,
)
from .builtin import (
    ActivationLayerRule,
    BatchNormRule,
    ChannelAffineRule,
    ConcatenateRule,
    ConvRule,
    DenseRule,
    DepthwiseRule,
    FlattenRule,
    JoinRule,
    LayerNormRule,
    LinearRule,
    PassThroughRule,
    ReshapeRule,
    SeparableRule,
    bn_affine,
    layer_norm_range,
)

# kinds kept in modules of their own register after the built-in table
attention.register()
extra.register()
recurrent.register()

__all__ = [
    "REGISTRY", "ActivationLayerRule", "BatchNormRule", "ChannelAffineRule", "ConcatenateRule", "ConvRule",
    "DenseRule", "DepthwiseRule", "FlattenRule", "JoinRule", "LayerNormRule", "LayerRule", "LinearRule",
    "NoIntervalRule", "OpaqueRule", "PassThroughRule", "ReshapeRule", "RuleRegistry", "SeparableRule",
    "bn_affine", "layer_norm_range", "register_rule", "rule_for", "supported_kinds_markdown", "unregister_rule",
]


def supported_kinds_markdown() -> str:
    """The table of built-in layer kinds and what the engine does with each (docs/layers.md)."""
    rows: dict[str, list[str]] = {}
    for name, rule in REGISTRY.kinds():
        rows.setdefault(rule.description or rule.reason, []).append(name)
    lines = ["| layer kinds | what pruning does with them |", "|---|---|"]
    for desc, names in sorted(rows.items(), key=lambda kv: kv[1][0]):
        lines.append(f"| {', '.join(f'`{n}`' for n in names)} | {desc.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n"
