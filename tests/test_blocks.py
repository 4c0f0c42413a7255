"""Blocks for the layer tree: found from the graph's forks and joins, titled by name.

The structural part must not depend on names (a renamed ResNet keeps its
blocks), nesting must follow containment, and plain chains must stay flat.
"""

from __future__ import annotations

import keras
import pytest
from conftest import build_concat, build_mlp, build_residual

from paoding_widgets.engine.blocks import find_blocks, innermost
from paoding_widgets.engine.graph import ModelGraph

L = keras.layers


def test_a_residual_block_spans_fork_to_join_and_its_activation() -> None:
    blocks = find_blocks(ModelGraph(build_residual()))
    assert len(blocks) == 1
    (b,) = blocks
    assert b.fork == "pool" and b.join == "add"
    assert b.members == ["res_a", "res_b", "add", "add_relu"]  # model order; the trailing ReLU belongs
    assert b.parent is None and b.name == "block add"  # members share no name prefix


def test_a_plain_chain_has_no_blocks() -> None:
    assert find_blocks(ModelGraph(build_mlp(hidden=(20, 16, 12)))) == []


def test_branches_from_the_input_join_into_a_block() -> None:
    (b,) = find_blocks(ModelGraph(build_concat()))
    assert b.fork is not None and set(b.members) == {"branch_a", "branch_b", "cat"}


def _nested(prefix: str = "") -> keras.Model:
    """An outer residual whose branch holds an inner residual (names optional)."""
    n = (lambda s: f"{prefix}{s}") if prefix else (lambda s: None)
    inp = keras.Input((8,))
    x = L.Dense(8, name=n("stem"))(inp)
    a = L.Dense(8, name=n("outer_a"))(x)
    i1 = L.Dense(8, name=n("inner_a"))(a)
    i2 = L.Dense(8, name=n("inner_b"))(a)
    a = L.Add(name=n("inner_add"))([i1, i2])
    a = L.Dense(8, name=n("outer_c"))(a)
    x = L.Add(name=n("outer_add"))([x, a])
    return keras.Model(inp, L.Dense(2, name=n("head"))(x))


def test_blocks_nest_by_containment() -> None:
    blocks = find_blocks(ModelGraph(_nested("m_")))
    by_join = {b.join: b for b in blocks}
    outer, inner = by_join["m_outer_add"], by_join["m_inner_add"]
    assert outer.parent is None and inner.parent == outer.name
    assert set(inner.members) == {"m_inner_a", "m_inner_b", "m_inner_add"}
    assert set(inner.members) < set(outer.members)
    assert innermost(blocks)["m_inner_a"] == inner.name and innermost(blocks)["m_outer_a"] == outer.name
    assert blocks.index(outer) < blocks.index(inner), "outermost first"


def test_structure_does_not_depend_on_names() -> None:
    named, anonymous = find_blocks(ModelGraph(_nested("m_"))), find_blocks(ModelGraph(_nested()))
    assert [len(b.members) for b in named] == [len(b.members) for b in anonymous]
    assert [b.parent is None for b in named] == [b.parent is None for b in anonymous]


def test_block_titles_never_collide_with_layer_names() -> None:
    inp = keras.Input((4,))
    x = L.Dense(4, name="blk")(inp)
    a = L.Dense(4, name="blk_a")(x)
    b = L.Dense(4, name="blk_b")(x)
    out = L.Add(name="blk_add")([a, b])
    g = ModelGraph(keras.Model(inp, out))
    (blk,) = find_blocks(g)
    assert blk.name != "blk" and blk.name.startswith("blk")
    assert blk.name not in {n.name for n in g.nodes}


def test_runs_of_a_shared_name_prefix_group_chains_without_joins() -> None:
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="block_1_expand")(inp)
    x = L.BatchNormalization(name="block_1_expand_BN")(x)
    x = L.ReLU(name="block_1_expand_relu")(x)
    x = L.Conv2D(4, 1, name="block_1_project")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(4, name="my_dense_1")(x)
    x = L.Dense(4, name="my_dense_2")(x)
    x = L.Dense(4, name="my_dense_3")(x)
    (b,) = find_blocks(ModelGraph(keras.Model(inp, x)))
    assert b.name == "block_1" and b.members == ["block_1_expand", "block_1_expand_BN", "block_1_expand_relu",
                                                 "block_1_project"]


@pytest.mark.slow
def test_resnet50_has_its_sixteen_bottleneck_blocks() -> None:
    g = ModelGraph(keras.applications.ResNet50(weights=None))
    blocks = find_blocks(g)
    assert sorted(b.name for b in blocks) == sorted(f"conv{s}_block{i}" for s, n in [(2, 3), (3, 4), (4, 6), (5, 3)]
                                                    for i in range(1, n + 1))
    b = next(b for b in blocks if b.name == "conv3_block1")
    assert b.fork == "conv2_block3_out" and b.join == "conv3_block1_add" and b.members[-1] == "conv3_block1_out"
    assert len(b.members) == 12  # shortcut conv+bn, three conv+bn(+relu) steps, add, out
