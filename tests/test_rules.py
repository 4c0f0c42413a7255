"""The per-kind rule registry: lookup through the class hierarchy, user rules, opaque kinds, the fixed bugs."""

from __future__ import annotations

import pathlib

import keras
import numpy as np
import pytest
from conftest import L, box_inputs, randomize, run

from paoding_widgets.engine.graph import ModelGraph
from paoding_widgets.engine.pruner import Pruner
from paoding_widgets.engine.rules import (
    REGISTRY,
    ChannelAffineRule,
    ConvRule,
    DenseRule,
    LayerRule,
    OpaqueRule,
    register_rule,
    rule_for,
    supported_kinds_markdown,
    unregister_rule,
)
from paoding_widgets.errors import ConfigError, PaodingError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _prune(model, steps: int = 3, strategy: str = "impact", box=(0.0, 1.0)) -> Pruner:
    pruner = Pruner(model, input_range=box, strategy=strategy, step=0.2, target=0.6)
    for _ in range(steps):
        proposals = pruner.propose()
        for p in proposals.values():
            pruner.apply(p)
    return pruner


def _physical_equals_edited(pruner: Pruner, box=(0.0, 1.0), atol: float = 1e-4) -> float:
    x = box_inputs(pruner.model, 64, *box)
    small, edited = pruner.pruned_model(), pruner.edited_model()
    diff = float(np.abs(run(small, x) - run(edited, x)).max())
    assert diff <= atol, diff
    return diff


# ------------------------------------------------------------------ lookup
class MyDense(keras.layers.Dense):
    """A user subclass: nothing new but its name."""


class Dense:  # not a Keras layer, though it shares the name
    pass


def test_rules_are_found_through_the_class_hierarchy():
    assert isinstance(rule_for(keras.layers.Dense(3)), DenseRule)
    assert rule_for(MyDense(3)) is rule_for(keras.layers.Dense(3))
    assert isinstance(rule_for(keras.layers.Conv2D(3, 3)), ConvRule)
    assert rule_for(Dense()) is None  # a class named Dense outside Keras is not a Keras Dense
    assert rule_for(keras.layers.Masking()) is None  # no rule: such a layer is left whole
    assert rule_for(keras.layers.Conv2DTranspose(3, 3)) is not rule_for(keras.layers.Conv2D(3, 3))  # its own rule


def test_a_user_rule_overrides_the_inherited_one_and_can_be_removed():
    class Frozen(keras.layers.Dense):
        pass

    try:
        register_rule(Frozen, OpaqueRule("frozen by its author"))
        assert rule_for(Frozen(2)).reason == "frozen by its author"
        assert isinstance(rule_for(MyDense(2)), DenseRule)  # a sibling class keeps the built-in rule
    finally:
        unregister_rule(Frozen)
    assert isinstance(rule_for(Frozen(2)), DenseRule)


@pytest.mark.parametrize("bad", [(3, DenseRule()), (MyDense, "dense"), ("", DenseRule())])
def test_register_rule_rejects_bad_arguments(bad):
    with pytest.raises(ConfigError):
        register_rule(*bad)


def test_rule_settings_are_checked():
    with pytest.raises(ConfigError, match="no setting 'colour'"):
        DenseRule(colour="red")


def test_a_subclass_of_dense_prunes_and_surgery_matches():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    x = MyDense(12, activation="relu", name="mine")(inp)
    x = L.Dense(10, activation="relu", name="plain")(x)
    model = randomize(keras.Model(inp, L.Dense(3, name="out")(x)))
    graph = ModelGraph(model)
    assert graph.group("mine").prunable and graph.group("mine").merge_chain is not None
    pruner = _prune(model)
    assert not pruner.store.alive[graph.group("mine").id].all()
    small = pruner.pruned_model()
    assert type(small.get_layer("mine")) is MyDense
    _physical_equals_edited(pruner)


# ------------------------------------------------------------------ user rules for their own layers
class ChannelScale(keras.layers.Layer):
    """A custom per-channel scale (like ConvNeXt's LayerScale), resized through its ``channels`` config."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def build(self, input_shape):
        self.s = self.add_weight(name="s", shape=(self.channels,), initializer="ones")

    def call(self, x):
        return x * self.s

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


class Linear(keras.layers.Layer):
    """A custom dense layer with its own config key for the width."""

    def __init__(self, width: int, **kwargs):
        super().__init__(**kwargs)
        self.width = width

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.width))
        self.bias = self.add_weight(name="bias", shape=(self.width,), initializer="zeros")

    def call(self, x):
        return keras.ops.relu(x @ self.kernel + self.bias)

    def get_config(self):
        return {**super().get_config(), "width": self.width}


def _custom_model():
    keras.utils.set_random_seed(1)
    inp = keras.Input((8,))
    x = L.Dense(16, activation="relu", name="h1")(inp)
    x = ChannelScale(16, name="scale")(x)
    x = Linear(12, name="lin")(x)
    x = L.Dense(10, activation="relu", name="h2")(x)
    return randomize(keras.Model(inp, L.Dense(3, name="out")(x)))


def test_custom_layers_are_opaque_with_a_reason_until_a_rule_is_registered():
    model = _custom_model()
    graph = ModelGraph(model)
    assert not graph.group("h1").prunable
    assert "ChannelScale" in graph.group("h1").reason and "register_rule" in graph.group("h1").reason
    assert not graph.node("lin").supported and "no pruning rule" in graph.node("lin").reason
    assert graph.group("h2").prunable  # the rest of the model stays prunable


class LinearRule(DenseRule):
    """How a user states a custom Dense-like layer: its width key and its fixed activation."""

    size_key = "width"

    def activation(self, config):
        from paoding_widgets.engine.activations import rule_for as activation_rule

        return "relu", activation_rule("relu")

    def check_activation(self, graph, node):
        return ""


def test_a_registered_rule_makes_a_custom_layer_prunable_end_to_end():
    model = _custom_model()
    register_rule(ChannelScale, ChannelAffineRule(scale="s", size_key="channels"))
    register_rule(Linear, LinearRule())
    try:
        graph = ModelGraph(model)
        h1, lin = graph.group("h1"), graph.group("lin")
        assert h1.prunable and lin.prunable, graph.report()
        assert {s.layer for s in h1.passthrough} == {"scale"}  # the scale's vector goes with each unit
        assert h1.merge_chain == ["scale"]  # merges fold through a per-channel affine layer
        pruner = _prune(model, strategy="certified")
        assert not pruner.store.alive[h1.id].all() and not pruner.store.alive[lin.id].all()
        small = pruner.pruned_model()
        alive = int(pruner.store.alive[h1.id].sum())
        assert small.get_layer("scale").get_config()["channels"] == alive
        assert small.get_layer("lin").get_config()["width"] == int(pruner.store.alive[lin.id].sum())
        _physical_equals_edited(pruner)
    finally:
        unregister_rule(ChannelScale)
        unregister_rule(Linear)


class Broken(LayerRule):
    def read(self, graph, node):
        raise RuntimeError("boom")


def test_a_rule_that_fails_leaves_its_layer_whole_with_the_reason():
    model = _custom_model()
    register_rule(ChannelScale, Broken())
    try:
        graph = ModelGraph(model)
        node = graph.node("scale")
        assert not node.supported and "boom" in node.reason
        assert not graph.group("h1").prunable and graph.group("h2").prunable
    finally:
        unregister_rule(ChannelScale)


# ------------------------------------------------------------------ softmax inside the model
@pytest.mark.parametrize("act", ["softmax", "log_softmax"])
def test_hidden_dense_with_softmax_is_not_prunable_and_surgery_stays_exact(act):
    keras.utils.set_random_seed(2)
    inp = keras.Input((8,))
    x = L.Dense(12, activation=act, name="mix")(inp)
    x = L.Dense(10, activation="relu", name="h")(x)
    model = randomize(keras.Model(inp, L.Dense(3, name="out")(x)))
    graph = ModelGraph(model)
    assert not graph.group("mix").prunable and act in graph.group("mix").reason
    pruner = _prune(model)
    assert pruner.store.alive[graph.group("mix").id].all()
    assert not pruner.store.alive[graph.group("h").id].all()
    _physical_equals_edited(pruner)


def test_hidden_conv_with_softmax_is_not_prunable():
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, activation="softmax", name="mix")(inp)
    x = L.Conv2D(5, 3, activation="relu", name="c")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = randomize(keras.Model(inp, L.Dense(3, name="out")(x)))
    graph = ModelGraph(model)
    assert not graph.group("mix").prunable and "softmax" in graph.group("mix").reason
    pruner = _prune(model, strategy="magnitude")
    assert pruner.store.alive[graph.group("mix").id].all()
    x = box_inputs(model, 64)
    agree = (run(pruner.pruned_model(), x).argmax(1) == run(pruner.edited_model(), x).argmax(1)).mean()
    assert agree == 1.0
    _physical_equals_edited(pruner)


# ------------------------------------------------------------------ real architectures
def test_convnext_opens_prunes_and_shrinks_exactly():
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10)
    graph = ModelGraph(model)
    scale = [n for n in graph.nodes if n.type == "LayerScale"]
    assert scale and all(n.supported for n in scale)
    assert len(graph.prunable_groups) >= 18  # every block's expansion (pointwise_conv_1)
    adds = [n for n in graph.nodes if n.type == "Add"]  # ``x + y`` operations: the residual joins
    assert adds and all(n.supported for n in adds)
    stream = [g for g in graph.groups if any("pointwise_conv_2" in s.layer for s in g.producers)]
    assert stream and all(not g.prunable and "LayerNormalization" in g.reason for g in stream)
    pruner = Pruner(model, input_range=(0.0, 255.0), strategy="magnitude", step=0.1, target=0.3)
    for p in pruner.propose().values():
        pruner.apply(p)
    x = box_inputs(model, 4, 0.0, 255.0)
    small = pruner.pruned_model()
    assert small.count_params() < model.count_params()
    assert float(np.abs(run(small, x) - run(pruner.edited_model(), x)).max()) < 1e-4


def test_lambda_model_prunes_and_shrinks():
    keras.utils.set_random_seed(4)
    inp = keras.Input((8,))
    x = L.Dense(16, activation="relu", name="h1")(inp)
    x = L.Lambda(lambda t: t * 2.0, name="double")(x)
    x = L.Dense(12, activation="relu", name="h2")(x)
    model = randomize(keras.Model(inp, L.Dense(3, name="out")(x)))
    graph = ModelGraph(model)
    assert "Lambda" in graph.group("h1").reason and graph.group("h2").prunable
    pruner = _prune(model)
    small = pruner.pruned_model()
    assert small.get_layer("double") is model.get_layer("double")  # reused, not deserialised
    _physical_equals_edited(pruner)


# ------------------------------------------------------------------ errors, docs
def test_engine_errors_share_one_base():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((4,)), L.Dense(3)])
    with pytest.raises(PaodingError, match="no prunable layer"):
        Pruner(model)
    with pytest.raises(PaodingError, match="input_range"):
        Pruner(_custom_model(), input_range=(np.zeros(5), np.ones(5)))
    with pytest.raises(PaodingError, match="pool"):
        Pruner(_dense_model(), strategy="impact", pool=float("nan"))
    with pytest.raises(PaodingError, match="alpha"):
        Pruner(_dense_model(), strategy="impact", alpha="x")
    with pytest.raises(PaodingError, match="no option 'colour'"):
        Pruner(_dense_model(), strategy="impact", colour=1.0)
    with pytest.raises(PaodingError, match="alpha"):
        Pruner(_dense_model(), strategy="impact", alpha=np.ones(3))


def _dense_model():
    keras.utils.set_random_seed(6)
    return keras.Sequential([keras.Input((4,)), L.Dense(6, activation="relu"), L.Dense(3)])


def test_input_range_is_checked_against_the_input_shape():
    model = _dense_model()
    Pruner(model, input_range=(np.zeros(4), np.ones(4)))  # per feature: fine
    with pytest.raises(ConfigError, match="input_range low has shape"):
        Pruner(model, input_range=(np.zeros((2, 4)), 1.0))
    with pytest.raises(ConfigError, match="pair"):
        Pruner(model, input_range="0,1")


def test_supported_kinds_list_is_generated_from_the_registry():
    table = supported_kinds_markdown()
    for name, _rule in REGISTRY.kinds():
        assert f"`{name}`" in table
    for doc in ("docs/layers.md", "README.md"):
        assert table in (ROOT / doc).read_text(), f"{doc} is stale: python -m paoding_widgets.engine.rules"


# ------------------------------------------------------------------ the same models through a session
def _lambda_model():
    keras.utils.set_random_seed(4)
    inp = keras.Input((8,))
    x = L.Dense(16, activation="relu", name="h1")(inp)
    x = L.Lambda(lambda t: t * 2.0, name="double")(x)
    x = L.Dense(12, activation="relu", name="h2")(x)
    return randomize(keras.Model(inp, L.Dense(3, name="out")(x)))


def test_lambda_model_session_metrics_export_and_save_load(tmp_path):
    from paoding_widgets import PruningSession, SessionFileError

    s = PruningSession(_lambda_model(), step=0.25, target=0.5)
    s.run()
    assert s.layer("h2").units_alive < s.layer("h2").units_total
    m = s.metrics()
    assert m.agreement is not None and m.size.params < s.model.count_params()
    out = s.export(str(tmp_path / "small.keras"))
    assert pathlib.Path(out).stat().st_size > 0
    s.save(str(tmp_path / "s.paoding"))
    with pytest.raises(SessionFileError, match="safe_mode=False"):
        PruningSession.load(str(tmp_path / "s.paoding"))  # files from disk stay in safe mode
    back = PruningSession.load(str(tmp_path / "s.paoding"), safe_mode=False)  # the user trusts their file
    assert back.pruner.store.equal(s.pruner.store)
    back.goto(0)
    assert all(back.layer(n).units_alive == back.layer(n).units_total for n in ("h2",))


def test_convnext_session_prunes_exports_and_resumes(tmp_path):
    from paoding_widgets import PruningSession

    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10)
    s = PruningSession(model, input_range=(0.0, 255.0), strategy="magnitude", step=0.1, target=0.1, n_probes=8)
    s.step()
    assert 0.09 < s.share_pruned() < 0.11  # per-layer rounding of 10 %
    small = s.pruned_model()
    x = box_inputs(model, 2, 0.0, 255.0)
    assert float(np.abs(run(small, x) - run(s.pruner.edited_model(), x)).max()) < 1e-4
    s.export(str(tmp_path / "convnext_small.keras"))
    reloaded = keras.models.load_model(tmp_path / "convnext_small.keras", compile=False)
    assert reloaded.count_params() == small.count_params() < model.count_params()
    s.save(str(tmp_path / "convnext.paoding"))
    back = PruningSession.load(str(tmp_path / "convnext.paoding"))
    assert back.pruner.store.equal(s.pruner.store) and back.history.position == 1
