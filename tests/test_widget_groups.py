"""The widget shows every unit group of a layer with several (attention heads, key_dim, value_dim; the two
directions of a concat Bidirectional) as a row of its own that can be seen, decided and locked (issue #12/#14)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from conftest import randomize

from paoding_widgets.session import PruningSession
from paoding_widgets.widget import PruningWidget, payload

L = keras.layers


def build_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 8))
    # value_dim = key_dim: with a value_dim of its own the engine's merge bound fails on the value_dim group
    # (engine/units.py x_bounds; reported, not the widget's to fix)
    x = L.MultiHeadAttention(num_heads=3, key_dim=4, name="mha")(inp, inp)
    x = L.Bidirectional(L.LSTM(6, return_sequences=True), name="bi")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    x = L.Dense(10, activation="relu", name="d1")(x)
    out = L.Dense(3, name="out")(x)
    m = keras.Model(inp, out)
    randomize(m)
    return m


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return build_model()


@pytest.fixture
def session(model: keras.Model) -> PruningSession:
    return PruningSession(model, input_range=(-1, 1), n_probes=32)


@pytest.fixture
def widget(session: PruningSession, tmp_path: Path) -> Any:
    w = session.widget(export_path=str(tmp_path / "pruned.keras")).settle()
    yield w
    w.close()


def rows_by_group(w: PruningWidget) -> dict[str, dict[str, Any]]:
    return {r["group"]: r for r in w.rows() if r.get("group")}


def act(w: PruningWidget, action: str, **fields: Any) -> None:
    w._on_msg(w, {"type": "action", "action": action, **fields}, [])
    w.settle()


def test_every_group_has_a_row_with_unique_names(session: PruningSession, widget: PruningWidget) -> None:
    rows = widget.rows()
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)), Counter(names).most_common(3)
    by_group = rows_by_group(widget)
    assert set(by_group) == {info.name for info in session.layers}  # prunable and not prunable alike
    labels = [r.get("label") for r in rows if r.get("layer") in ("mha", "bi")]
    assert labels == ["mha · heads", "mha · key_dim", "mha · value_dim", "bi · forward", "bi · backward"]
    for info in session.layers:
        r = by_group[info.name]
        assert (r["status"], r["units_alive"], r["units_total"]) == (info.status, info.units_alive, info.units_total)
    # single-group layers keep today's rows (no group fields), the output layer its reason
    assert "part" not in by_group["d1"] and by_group["d1"]["name"] == "d1"
    assert by_group["out"]["status"] == "not prunable" and by_group["out"]["reason"]
    # the multi-group rows have their own heatmap (one column per unit) and parameters
    _header, buffers = payload.heatmaps(widget._view, None, widget.layers)
    header = _header
    assert {"mha", "mha/key_dim", "mha/value_dim", "bi", "bi/backward"} <= set(header["names"])
    shapes = dict(zip(header["names"], header["shapes"]))
    assert shapes["mha"][1] == 3 and shapes["mha/key_dim"][1] == 4 and shapes["bi/backward"][1] == 6
    costs = widget._view.unit_costs()
    assert by_group["mha/key_dim"]["params"] == costs["mha/key_dim"][0] * 4
    assert by_group["mha/key_dim"]["layer_params"] == session.graph.node("mha").layer.count_params()


def test_unit_matrix_puts_each_unit_in_its_column(session: PruningSession, widget: PruningWidget) -> None:
    view = widget._view
    q = session.pruner.store.arrays[("mha", "0:kernel")]  # (features, heads, key_dim)
    m = view.unit_matrix("mha/key_dim")
    assert m.shape == (8 * 3, 4)
    np.testing.assert_array_equal(m[:, 2], q[:, :, 2].reshape(-1))
    k = session.pruner.store.arrays[("bi", "3:kernel")]  # backward LSTM kernel: (features, 4 gates x 6 units)
    b = view.unit_matrix("bi/backward")
    assert b.shape == (k.shape[0] * 4, 6)
    np.testing.assert_array_equal(np.sort(b[:, 1]), np.sort(k[:, [1, 7, 13, 19]].reshape(-1)))


def test_locking_the_key_dim_row_locks_only_that_group(session: PruningSession, widget: PruningWidget) -> None:
    act(widget, "lock", layer="mha/key_dim")
    status = {r["group"]: r["status"] for r in widget.rows() if r.get("group")}
    assert status["mha/key_dim"] == "locked"
    assert [g for g, st in status.items() if st == "locked"] == ["mha/key_dim"]
    assert {i.name: i.status for i in session.layers}["mha"] != "locked"
    act(widget, "unlock", layer="mha/key_dim")
    assert rows_by_group(widget)["mha/key_dim"]["status"] != "locked"


def test_group_rows_are_proposed_accepted_and_shown(session: PruningSession, widget: PruningWidget) -> None:
    session.configure(step=0.34)
    act(widget, "propose")
    by_group = rows_by_group(widget)
    pending = [g for g, r in by_group.items() if r["status"] == "pending"]
    assert {"mha", "mha/key_dim", "bi/backward"} <= set(pending)
    assert set(widget.previews) >= {"mha/key_dim", "bi/backward"}  # keyed by group, as the rows read them
    before = widget.live_params["mha/key_dim"]
    drawn = dict(widget._drawn)
    act(widget, "accept", layer="mha/key_dim")
    by_group = rows_by_group(widget)
    assert by_group["mha/key_dim"]["status"] == "accepted"
    assert by_group["mha"]["status"] == "pending"  # the heads' own proposal is still open
    assert by_group["mha/key_dim"]["units_alive"] < 4
    assert widget.live_params["mha/key_dim"] < before
    assert widget._drawn["mha/key_dim"] != drawn["mha/key_dim"]  # its heatmap was redrawn
    for name, label in (("mha/key_dim", "mha · key_dim"), ("bi/backward", "bi · backward")):
        try:  # a saliency matrix where the engine scores the group's units pairwise, else a clear refusal
            header, bufs = payload.detail(widget._view, name, "saliency", widget.layers)
            n = by_group[name]["units_total"]
            assert header["source_shape"] == [n, n] and len(bufs) == 1
        except ValueError as exc:
            assert label in str(exc)
    header, _ = payload.detail(widget._view, "bi/backward", "weights", widget.layers)
    assert header["source_shape"][1] == 6


def test_sensitivity_and_plan_name_every_group(widget: PruningWidget) -> None:
    act(widget, "lock", layer="bi/backward")
    act(widget, "sensitivity")
    sens = widget.wait_sensitivity()
    assert sens["status"] == "done"
    assert {"mha", "mha/key_dim", "mha/value_dim", "bi", "bi/backward"} <= set(sens["curves"])
    act(widget, "plan", goal=0.2, metric="params")
    assert "bi/backward" not in widget.plan["targets"]
    assert set(widget.plan["targets"]) <= {r["group"] for r in widget.rows() if r.get("group")}


def test_plan_message_agrees_with_its_number_of_layers() -> None:
    from paoding_widgets.session.plan import make_plan
    from paoding_widgets.session.sensitivity import Curve, Sensitivity

    def curve(name: str) -> Curve:
        return Curve(name, [0.0, 0.5], [0.0, 0.1], [1.0, 0.9], [None, None], [0, 50], [0, 50])

    one = make_plan(Sensitivity((0, 0), {"a": curve("a")}, 0.0, 100, 100), 0.2)
    assert one.message.startswith("1 layer pruned to its own share removes ~50.0 %"), one.message
    two = make_plan(Sensitivity((0, 0), {"a": curve("a"), "b": curve("b")}, 0.0, 100, 100), 0.9)
    assert two.message.startswith("2 layers pruned to their own shares remove ~100.0 %"), two.message
