"""A small ViT and a small text transformer, built here with random weights: each opens, prunes what it can
in one iteration, shrinks exactly, undoes bit for bit, and reports what it leaves whole with its reason."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import L, randomize, run

from paoding_widgets.engine.pruner import Pruner


class PositionEmbedding(L.Layer):
    """Adds a learned vector per position (the usual ViT / BERT position embedding)."""

    def __init__(self, length: int, dim: int, **kw):
        super().__init__(**kw)
        self.length, self.dim = length, dim

    def build(self, shape):
        self.pos = self.add_weight(name="pos", shape=(self.length, self.dim), initializer="random_normal")

    def call(self, x):
        return x + self.pos

    def get_config(self):
        return {**super().get_config(), "length": self.length, "dim": self.dim}


def _block(x, dim: int, heads: int, ffn: int, name: str):
    a = L.MultiHeadAttention(num_heads=heads, key_dim=dim // heads, name=f"{name}_mha")(x, x)
    x = L.LayerNormalization(name=f"{name}_ln1")(L.Add(name=f"{name}_add1")([x, a]))
    f = L.Dense(ffn, activation="gelu", name=f"{name}_ffn_in")(x)
    f = L.Dense(dim, name=f"{name}_ffn_out")(f)
    return L.LayerNormalization(name=f"{name}_ln2")(L.Add(name=f"{name}_add2")([x, f]))


def vit(patch_embedding: str = "conv", seed: int = 0):
    keras.utils.set_random_seed(seed)
    img = keras.Input((16, 16, 3))
    if patch_embedding == "conv":  # 4x4 patches by a strided convolution
        p = L.Conv2D(24, 4, strides=4, name="patches")(img)
        p = L.Reshape((16, 24), name="tokens")(p)
    else:  # 4x4 patches cut out, flattened, then a Dense
        p = L.Reshape((4, 4, 4, 4, 3))(img)
        p = L.Permute((1, 3, 2, 4, 5))(p)
        p = L.Reshape((16, 48))(p)
        p = L.Dense(24, name="patches")(p)
    x = PositionEmbedding(16, 24, name="pos")(p)
    for i in range(2):
        x = _block(x, 24, 4, 48, f"b{i}")
    x = L.GlobalAveragePooling1D()(x)
    return randomize(keras.Model(img, L.Dense(5, name="head")(x)), seed)


def text_transformer(seed: int = 0):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((12,), dtype="int32")
    x = L.Embedding(50, 16, name="tok")(tokens)
    x = PositionEmbedding(12, 16, name="pos")(x)
    x = _block(x, 16, 2, 32, "b0")
    x = L.GlobalAveragePooling1D(name="pool")(x)
    x = L.Dense(8, activation="relu", name="hidden")(x)
    return randomize(keras.Model(tokens, L.Dense(3, name="out")(x)), seed)


MODELS = {"vit-conv": lambda: vit("conv"), "vit-dense": lambda: vit("dense", 1), "text": text_transformer}


def _inputs(name: str, model, n: int = 4):
    rng = np.random.default_rng(0)
    if name == "text":
        return rng.integers(0, 50, (n, 12)).astype("int32")
    return rng.uniform(0, 1, (n, *model.inputs[0].shape[1:])).astype(np.float32)


@pytest.mark.parametrize("strategy", ["compensated", "magnitude"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_transformer_prunes_one_iteration_exactly_and_reports_the_rest(name, strategy):
    model = MODELS[name]()
    pruner = Pruner(model, strategy=strategy, step=0.25, target=0.25,
                    input_range=(0.0, 49.0) if name == "text" else (0.0, 1.0))
    graph = pruner.graph
    names = {g.name for g in graph.prunable_groups}
    blocks = ["b0", "b1"] if name.startswith("vit") else ["b0"]
    for b in blocks:  # heads, key_dim and value_dim units, the feed-forward units
        assert {f"{b}_mha", f"{b}_mha/key_dim", f"{b}_mha/value_dim", f"{b}_ffn_in"} <= names
    # the residual stream (patch/token embedding, every ffn_out, under LayerNormalization) stays whole, saying why
    stream = graph.group("b0_ffn_out")
    assert not stream.prunable and "LayerNormalization" in stream.reason
    for g in graph.groups:
        assert g.prunable or g.reason
    assert not graph.node("pos").supported and "no pruning rule" in graph.node("pos").reason
    original = pruner.store.copy()
    patches = [pruner.apply(p) for p in pruner.propose().values()]
    assert len(patches) == len(graph.prunable_groups)
    small = pruner.pruned_model()
    assert small.count_params() < model.count_params()
    mha = small.get_layer("b0_mha").get_config()
    heads, dim = (4, 24) if name.startswith("vit") else (2, 16)
    assert mha["num_heads"] == heads - 1  # one step of 25 % (at least one unit)
    kd = dim // heads
    assert mha["key_dim"] == mha["value_dim"] == kd - max(1, int(0.25 * kd + 0.5))
    assert small.get_layer("b0_ffn_in").units == 3 * dim // 2
    x = _inputs(name, model)
    ref = run(pruner.edited_model(), x)
    np.testing.assert_allclose(run(small, x), ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    assert not np.allclose(run(model, x), ref)  # it did prune
    for p in reversed(patches):
        pruner.store.revert(p)
    assert pruner.store.equal(original)
