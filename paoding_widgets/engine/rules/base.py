"""The per-kind rule interface and the registry that finds a layer's rule.

Why: pruning a unit touches several layers, and every part of the engine --
the graph (which array positions belong to which unit), the interval bounds,
the merge transfer, surgery, the views -- needs to know what a kind of layer
does.  That knowledge lives here, once per kind, as one small
:class:`LayerRule`; the engine modules dispatch through :func:`rule_for` and
never compare layer type names.

Rules are found through the class hierarchy, so a subclass of ``Dense`` is
read as a ``Dense`` unless a rule is registered for the subclass itself.  A
layer with no rule is opaque: left whole, with a readable reason, and the
units that feed it stay whole too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ConfigError
from ..activations import ActivationRule
from ..activations import rule_for as activation_rule

if TYPE_CHECKING:
    from ..bounds import Bounds, Propagator
    from ..graph import LayerNode, ModelGraph
    from ..weights import WeightStore

Interval = tuple[np.ndarray, np.ndarray]
_LINEAR = activation_rule("linear")


class NoIntervalRule(Exception):
    """This layer kind has no interval rule here (bounds stop at it; the rest goes on)."""


class LayerRule:
    """Everything the engine needs to know about one kind of layer.

    Subclass it (or one of the built-in rules) and register it with
    :func:`register_rule`.  The class attributes are flags; every method has a
    safe default, so a rule states only what its kind does:

    * :meth:`read` -- the structure: which tensors' channels the layer reads,
      which variables hold units along which axes, the layout of its output
      (see :class:`~paoding_widgets.engine.graph.ModelGraph`'s builder methods);
      the default makes the layer opaque with :attr:`reason`;
    * :meth:`values` / :meth:`deltas` -- interval rules for the value of the
      output over the input box and for the change of the output caused by a
      change of the inputs (raise :class:`NoIntervalRule` where there is none);
    * :meth:`activation` and :meth:`affine` -- the per-unit non-linearity or
      per-channel affine map the layer applies (merges fold through them);
    * :meth:`resized_config` -- the layer config of the physically smaller model
      (and :meth:`physical_arrays`, its weights, where a size enters the arithmetic);
    * :meth:`absorbs_constant` and :meth:`flops`.

    Keyword arguments to the constructor override the class attributes of the
    same name (``DenseRule(size_key="width")``).
    """

    #: Shown in the list of supported kinds.
    description: str = ""
    #: Why a layer of this kind is left whole (for rules that do not :meth:`read` it).
    reason: str = "this layer kind cannot be resized"
    #: "dense" or "conv" when the layer produces prunable units (a group), else None.
    unit_kind: str | None = None
    #: The config key that holds the number of units / channels (resized by surgery).
    size_key: str | None = None
    #: The variable whose last axis holds the layer's units (heatmaps are drawn from it).
    kernel_var: str | None = None
    #: Units of this kind may be merged into one another (else only removed).
    mergeable: bool = False
    #: Reads its input channels through a kernel whose last axis is its own output channels (Dense,
    #: convolutions), so a change of an input channel can be injected into its pre-activation and merges
    #: can fold rows: readers that are not (attention, recurrent layers) allow removal only.
    merge_reader: bool = False
    #: Per channel and keeps equal channels equal (pooling, padding, dropout): merges pass through.
    transparent: bool = False
    #: A weightless per-unit activation layer (ReLU, Activation): merges fold through it.
    activation_layer: bool = False
    #: Adds zero borders, so a constant channel would not stay constant after it.
    pads_zeros: bool = False
    #: A weightless activation that may close a residual block after its join (ResNet's ``..._out``).
    trails_join: bool = False
    #: A model nested as a layer (its rows are shown, it is kept whole).
    nested: bool = False
    #: Applies ``x * scale + shift`` per channel (see :meth:`affine`).
    channel_affine: bool = False
    #: Called with ``training=False`` when bounds call the layer itself.
    takes_training: bool = False

    def __init__(self, **overrides: Any) -> None:
        for key, value in overrides.items():
            attr = getattr(type(self), key, None)
            if key.startswith("_") or not hasattr(type(self), key) or callable(attr) or isinstance(attr, property):
                raise ConfigError(f"{type(self).__name__} has no setting {key!r}")
            setattr(self, key, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------ structure
    def read(self, graph: ModelGraph, node: LayerNode) -> None:
        """Record the layer's channels in the graph; the default leaves it whole."""
        graph.opaque(node, self.reason)

    @property
    def merge_chain_ok(self) -> bool:
        """Whether a merge stays exact (up to an affine map) through this layer."""
        return self.transparent or self.activation_layer or self.channel_affine

    # ------------------------------------------------------------ values
    def activation(self, config: dict[str, Any]) -> tuple[str, ActivationRule | None]:
        """The element-wise function applied last, by name, with its interval rule (None: no rule)."""
        return "linear", _LINEAR

    def affine(self, store: WeightStore, node: LayerNode) -> tuple[np.ndarray, np.ndarray] | None:
        """``(scale, shift)`` per channel if the layer is a per-channel affine map, else None."""
        return None

    def values(self, prop: Propagator, node: LayerNode, ins: list[Interval], bounds: Bounds) -> Interval:
        """Bounds of the output for inputs within ``ins`` (may record pre-activations in ``bounds.pre``)."""
        aff = self.affine(prop.store, node) if self.channel_affine else None
        if aff is not None:
            (lo, hi), = ins
            s, t = aff
            a, z = lo * s + t, hi * s + t
            if np.all(s >= 0):  # the usual BatchNorm: the order is kept (exactly, float rounding is monotone)
                return a, z
            return np.minimum(a, z), np.maximum(a, z)
        raise NoIntervalRule(f"no interval rule for {node.type}")

    def deltas(self, prop: Propagator, node: LayerNode, ins: list[Interval | None], inject: Interval | None,
               base: Bounds, batch: int, logits: dict[str, Interval]) -> Interval | None:
        """Bounds of the output change given input changes ``ins`` (None: unchanged) over a batch."""
        aff = self.affine(prop.store, node) if self.channel_affine and inject is None else None
        x = ins[0] if len(ins) == 1 else None
        if aff is not None and x is not None:
            a, z = x[0] * aff[0], x[1] * aff[0]
            return np.minimum(a, z), np.maximum(a, z)
        raise NoIntervalRule(f"no perturbation rule for {node.type}")

    # ------------------------------------------------------------ surgery, cost
    def resize(self, graph: ModelGraph, store: WeightStore, node: LayerNode) -> dict[str, Any] | None:
        """The config of the smaller layer (None: unchanged).

        By default the layer's size follows its output's surviving channels
        (:meth:`resized_config`); a rule whose units live inside the layer
        (attention heads) overrides this.
        """
        if not node.outputs or node.outputs[0] not in graph.layouts:
            return None
        layout = graph.layouts[node.outputs[0]]
        if all(g is None or store.alive[g].all() for segs, _ in layout for g, _n in segs):
            return None
        width = graph.alive_channels(store.alive, layout)
        return self.resized_config(node.config, width)

    def resized_config(self, config: dict[str, Any], width: int) -> dict[str, Any] | None:
        """The config of the smaller layer whose output keeps ``width`` channels (None: unchanged)."""
        return None

    def physical_arrays(self, graph: ModelGraph, store: WeightStore, node: LayerNode,
                        arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The layer's arrays in the smaller model, dead positions already deleted (by variable name).

        Unchanged by default; a layer whose arithmetic depends on a size it loses
        (attention's ``1/sqrt(key_dim)``) rescales here, so the smaller model computes
        what the edited one does.
        """
        return arrays

    def absorbs_constant(self, config: dict[str, Any]) -> bool:
        """Whether a constant input channel can be folded into this layer's bias exactly."""
        return False

    def flops(self, layer: Any, positions: int) -> int:
        """Multiply-adds of one inference (times 2 by the caller), given the output's spatial positions."""
        return 0


class OpaqueRule(LayerRule):
    """A kind that is left whole, with its reason (recurrent, attention, arbitrary code...)."""

    def __init__(self, reason: str, description: str = "") -> None:
        super().__init__()
        self.reason = reason
        self.description = description or f"left whole: {reason}"

    def __repr__(self) -> str:
        return f"OpaqueRule({self.reason!r})"


# Modules whose classes the built-in rules describe: a user's own class that happens to be
# called ``Dense`` is not a Keras Dense.
_KERAS_LAYER_MODULES = ("keras.src.layers.", "keras.layers.", "keras.src.applications.", "keras.src.models.",
                        "keras.models.", "keras.src.legacy.", "tf_keras.")


class RuleRegistry:
    """Layer class -> rule, looked up along the class hierarchy.

    Built-in rules are keyed by Keras class name (matched only on classes
    defined inside Keras); user rules by class object (or, for classes that
    cannot be imported, by class name).  The first class of the layer's MRO
    that has a rule wins, so a subclass inherits its base's rule until it gets
    one of its own.
    """

    def __init__(self) -> None:
        self._builtin: dict[str, LayerRule] = {}
        self._builtin_ops: dict[str, LayerRule] = {}  # Keras operations (``x + y`` in a functional model)
        self._by_class: dict[type, LayerRule] = {}
        self._by_name: dict[str, LayerRule] = {}

    def builtin(self, names: str | tuple[str, ...], rule: LayerRule, op: bool = False) -> LayerRule:
        """Register a built-in rule for Keras layer classes (``op``: Keras operations) of these names."""
        table = self._builtin_ops if op else self._builtin
        for name in (names,) if isinstance(names, str) else names:
            table[name] = rule
        return rule

    def register(self, layer_class: type | str, rule: LayerRule) -> None:
        """Use ``rule`` for ``layer_class`` and its subclasses (replacing any earlier rule)."""
        if not isinstance(rule, LayerRule):
            raise ConfigError(f"a rule must be a LayerRule instance, got {rule!r}")
        if isinstance(layer_class, str):
            if not layer_class:
                raise ConfigError("a layer class name must not be empty")
            self._by_name[layer_class] = rule
        elif isinstance(layer_class, type):
            self._by_class[layer_class] = rule
        else:
            raise ConfigError(f"register a layer class (or its name), got {layer_class!r}")

    def unregister(self, layer_class: type | str) -> None:
        """Forget a user rule (built-in rules stay)."""
        if isinstance(layer_class, str):
            self._by_name.pop(layer_class, None)
        else:
            self._by_class.pop(layer_class, None)

    def lookup(self, layer: Any) -> LayerRule | None:
        """The rule of ``layer`` (an instance or a class), or None if no class in its MRO has one."""
        cls = layer if isinstance(layer, type) else type(layer)
        for c in cls.__mro__:
            rule = self._by_class.get(c) or self._by_name.get(c.__name__)
            if rule is not None:
                return rule
            if c.__module__.startswith(_KERAS_LAYER_MODULES):
                rule = self._builtin.get(c.__name__)
            elif c.__module__.startswith("keras.src.ops."):
                rule = self._builtin_ops.get(c.__name__)
            if rule is not None:
                return rule
        return None

    def kinds(self) -> list[tuple[str, LayerRule]]:
        """Built-in kinds and their rules, by name (for the generated list of supported layers)."""
        return sorted([*self._builtin.items(), *((f"{k} (operation)", r) for k, r in self._builtin_ops.items())])


REGISTRY = RuleRegistry()


def register_rule(layer_class: type | str, rule: LayerRule) -> None:
    """Teach the engine a layer kind: ``register_rule(MyLayer, ChannelAffineRule(scale="s"))``.

    The rule applies to ``layer_class`` and to its subclasses.  Register before
    creating the session (a session reads the model once).
    """
    REGISTRY.register(layer_class, rule)


def unregister_rule(layer_class: type | str) -> None:
    REGISTRY.unregister(layer_class)


def rule_for(layer: Any) -> LayerRule | None:
    """The rule the engine uses for ``layer`` (None: no rule, the layer is opaque)."""
    return REGISTRY.lookup(layer)
