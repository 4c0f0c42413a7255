"""Saving and resuming a PruningSession: exact round trips, no clobbering,
clear errors on damaged files, and a file layout without pickle."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from conftest import box_inputs, build_gap, build_mlp, run

from paoding_widgets.session import PruningSession, SessionError, SessionFileError

MEMBERS = ["manifest.json", "model.keras", "weights.npz", "arrays.npz"]


@pytest.fixture(scope="module")
def model():
    """Input(8) -> Dense(12 relu) -> Dropout -> Dense(10 relu) -> Dense(3)."""
    return build_mlp(8, (12, 10), 3, seed=3, names=("dense", "dense_1", "dense_2"))


@pytest.fixture(scope="module")
def eval_data(model):
    x = box_inputs(model, 100, seed=2)
    return x, run(model, x).argmax(1).astype(np.int32)


def make(model, **kw) -> PruningSession:
    opts = dict(input_range=(0, 1), strategy="impact", step=0.1, target=0.5, seed=0)
    opts.update(kw)
    return PruningSession(model, **opts)


def statuses(s):
    return {li.name: li.status for li in s.layers}


def assert_same_proposals(a: PruningSession, b: PruningSession) -> None:
    pa, pb = a.proposals, b.proposals
    assert set(pa) == set(pb)
    for name in pa:
        x, y = pa[name], pb[name]
        assert (x.group, x.name, x.action, x.strategy, x.params_saved) == \
            (y.group, y.name, y.action, y.strategy, y.params_saved)
        for field in ("keep", "drop", "scale", "shift", "cost"):
            u, v = getattr(x.candidates, field), getattr(y.candidates, field)
            assert np.array_equal(u, v) and u.dtype == v.dtype, field
        ia, ib = x.extra.get("impact", {}), y.extra.get("impact", {})
        assert set(ia) == set(ib) and all(np.array_equal(ia[k], ib[k]) for k in ia)


def assert_same_session(a: PruningSession, b: PruningSession) -> None:
    assert b.pruner.store.equal(a.pruner.store)
    assert statuses(b) == statuses(a)
    assert_same_proposals(a, b)
    assert b.settings == a.settings
    assert b.history.position == a.history.position
    assert b.history_items == a.history_items
    assert b.pruner.rng.bit_generator.state == a.pruner.rng.bit_generator.state


def worked_session(model, eval_data=None) -> PruningSession:
    """Position 3 of 5 entries: dense accepted, dense_1's proposal still pending."""
    s = make(model, eval_data=eval_data)
    s.run(target=0.3)
    s.propose()
    s.accept("dense")
    s.propose()
    s.accept_all()
    s.undo()
    s.undo()
    assert s.history.position == 3 and len(s.history.entries) == 5
    assert statuses(s)["dense"] == "accepted" and statuses(s)["dense_1"] == "pending"
    return s


# ---------------------------------------------------------------------- round trip
def test_round_trip_resumes_exactly(model, eval_data, tmp_path):
    s = worked_session(model, eval_data)
    path = tmp_path / "work.pws"
    assert s.save(str(path)) == str(path)
    loaded = PruningSession.load(str(path))
    assert_same_session(s, loaded)
    # eval data, settings of the box and metrics survive
    assert np.array_equal(loaded.eval_data[0], s.eval_data[0]) and loaded.eval_data[0].dtype == np.float32
    assert np.array_equal(loaded.eval_data[1], eval_data[1]) and loaded.eval_data[1].dtype == eval_data[1].dtype
    assert loaded.epsilons == s.epsilons and loaded.seed == s.seed
    for a, b in zip(loaded.pruner.input_range, s.pruner.input_range):
        assert np.array_equal(a, b)
    ma, mb = s.metrics(), loaded.metrics()
    assert (mb.size, mb.accuracy, mb.agreement, mb.robust) == (ma.size, ma.accuracy, ma.agreement, ma.robust)
    # the loaded model is the original one
    x = box_inputs(model, 32, seed=9)
    np.testing.assert_array_equal(run(loaded.model, x), run(model, x))
    # the pending proposal is still acceptable, with the same result
    s.accept("dense_1")
    loaded.accept("dense_1")
    assert_same_session(s, loaded)
    # undo after load goes back to the original model
    original = make(model).pruner.store
    for _ in range(loaded.history.position):
        loaded.undo()
    assert loaded.pruner.store.equal(original)
    assert not loaded.history.can_undo


def test_round_trip_keeps_the_redo_branch(model, tmp_path):
    s = worked_session(model)
    path = tmp_path / "work.pws"
    s.save(str(path))
    loaded = PruningSession.load(str(path))
    assert loaded.eval_data is None
    assert loaded.history.can_redo
    loaded.redo()
    s.redo()
    assert_same_session(s, loaded)
    loaded.redo()
    s.redo()
    assert_same_session(s, loaded)
    loaded.goto(0)
    assert loaded.pruner.store.equal(make(model).pruner.store)
    loaded.goto(5)
    assert loaded.pruner.store.equal(s.pruner.store)


def test_round_trip_of_locks_settings_and_fresh_session(model, tmp_path):
    s = make(model, strategy="baseline", step=0.2, target=0.6, bias_aware=False)
    path = tmp_path / "fresh.pws"
    s.save(str(path))
    fresh = PruningSession.load(str(path))
    assert_same_session(s, fresh)
    assert fresh.history.entries == [] and fresh.settings["options"] == {"bias_aware": False}
    s.lock("dense")
    s.configure(step=0.3)
    s.propose()
    s.save(str(path), overwrite=True)
    loaded = PruningSession.load(str(path))
    assert_same_session(s, loaded)
    assert statuses(loaded)["dense"] == "locked"
    with pytest.raises(SessionError):
        loaded.accept("dense")
    r1, r2 = s.run(target=0.9), loaded.run(target=0.9)
    assert r1 == r2
    assert_same_session(s, loaded)


def test_round_trip_of_a_cnn_session(tmp_path):
    m = build_gap()
    s = PruningSession(m, (0, 1), step=0.25, target=0.5)
    s.step()
    s.propose()
    path = tmp_path / "cnn.pws"
    s.save(str(path))
    loaded = PruningSession.load(str(path))
    assert_same_session(s, loaded)
    s.accept_all()
    loaded.accept_all()
    assert_same_session(s, loaded)
    loaded.goto(0)
    assert loaded.pruner.store.equal(PruningSession(m, (0, 1)).pruner.store)


# ---------------------------------------------------------------------- refusing to overwrite
def test_save_refuses_to_overwrite(model, tmp_path):
    s = make(model)
    s.propose()
    path = tmp_path / "s.pws"
    s.save(str(path))
    first = path.read_bytes()
    s.accept_all()
    with pytest.raises(FileExistsError, match="overwrite"):
        s.save(str(path))
    assert path.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.pws"]  # no temporary file left
    assert PruningSession.load(str(path)).history.position == 1
    s.save(str(path), overwrite=True)
    assert PruningSession.load(str(path)).history.position == 2


def test_save_never_writes_the_source_model(model, tmp_path):
    src = tmp_path / "model.keras"
    model.save(src)
    before = src.read_bytes()
    s = make(model, source_path=str(src))
    with pytest.raises(FileExistsError, match="input model"):
        s.save(str(src), overwrite=True)
    assert src.read_bytes() == before


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        PruningSession.load(str(tmp_path / "nothing.pws"))


# ---------------------------------------------------------------------- damaged files
@pytest.fixture(scope="module")
def good_file(model, eval_data, tmp_path_factory):
    s = worked_session(model, eval_data)
    path = tmp_path_factory.mktemp("good") / "good.pws"
    s.save(str(path))
    return path.read_bytes()


def _members(raw: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    return buf.getvalue()


def _with_manifest(raw: bytes, **changes) -> bytes:
    members = _members(raw)
    manifest = json.loads(members["manifest.json"])
    for k, v in changes.items():
        if v is _DROP:
            manifest.pop(k)
        else:
            manifest[k] = v
    members["manifest.json"] = json.dumps(manifest).encode()
    return _zip(members)


_DROP = object()

DAMAGED = {
    "empty": (lambda raw: b"", "not a session file"),
    "truncated_10": (lambda raw: raw[:10], "not a session file"),
    "truncated_half": (lambda raw: raw[: len(raw) // 2], "not a session file"),
    "truncated_end": (lambda raw: raw[:-5], "not a session file"),
    "random_bytes": (lambda raw: np.random.default_rng(0).bytes(4000), "not a session file"),
    "no_manifest": (lambda raw: _zip({k: v for k, v in _members(raw).items() if k != "manifest.json"}),
                    "no manifest.json"),
    "other_format": (lambda raw: _with_manifest(raw, format="something-else"), "not a paoding_widgets session"),
    "other_version": (lambda raw: _with_manifest(raw, version=2), "version 2"),
    "no_version": (lambda raw: _with_manifest(raw, version=_DROP), "version None"),
    "manifest_not_json": (lambda raw: _zip({**_members(raw), "manifest.json": b"{nope"}), "damaged"),
    "manifest_a_list": (lambda raw: _zip({**_members(raw), "manifest.json": b"[1, 2]"}),
                        "not a paoding_widgets session"),
    "no_history": (lambda raw: _with_manifest(raw, history=_DROP), "damaged"),
    "no_model": (lambda raw: _zip({k: v for k, v in _members(raw).items() if k != "model.keras"}), "damaged"),
    "no_weights": (lambda raw: _zip({k: v for k, v in _members(raw).items() if k != "weights.npz"}), "damaged"),
    "no_arrays": (lambda raw: _zip({k: v for k, v in _members(raw).items() if k != "arrays.npz"}), "damaged"),
    "no_eval": (lambda raw: _zip({k: v for k, v in _members(raw).items() if k != "eval.npz"}), "damaged"),
    "bad_state": (lambda raw: _with_manifest(raw, state="x"), "damaged"),
    "bad_weights_shape": (lambda raw: _with_manifest(raw, weights=[[["dense", "kernel"], "w3"]]), "does not match"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_damaged_file_raises_session_file_error(good_file, tmp_path, damage):
    make_bytes, match = DAMAGED[damage]
    path = tmp_path / "damaged.pws"
    path.write_bytes(make_bytes(good_file))
    with pytest.raises(SessionFileError, match=match) as info:
        PruningSession.load(str(path))
    assert "damaged.pws" in str(info.value)


def _corrupt_deflate(raw: bytes, member: str) -> bytes:
    """Overwrite the start of a member's deflate stream with an invalid block type."""
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        info = zf.getinfo(member)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    b = bytearray(raw)
    name_len = int.from_bytes(b[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(b[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    b[start:start + 4] = b"\xff\xff\xff\xff"  # BTYPE 11: "invalid block type"
    return bytes(b)


LOAD_BUGS = [
    pytest.param(lambda raw: _corrupt_deflate(raw, "manifest.json"), id="corrupt_deflate_manifest"),
    pytest.param(lambda raw: _corrupt_deflate(raw, "arrays.npz"), id="corrupt_deflate_arrays"),
    pytest.param(lambda raw: _zip({**_members(raw), "model.keras": b"junk"}), id="junk_model"),
    pytest.param(lambda raw: _zip({**_members(raw), "weights.npz": b"junk"}), id="junk_weights"),
    pytest.param(lambda raw: _zip({**_members(raw), "arrays.npz": b"junk"}), id="junk_arrays"),
    pytest.param(lambda raw: _with_manifest(raw, position=99), id="position_out_of_range"),
    pytest.param(lambda raw: _with_manifest(raw, position=-1), id="negative_position"),
]


@pytest.mark.parametrize("damage", LOAD_BUGS)
def test_damaged_member_raises_session_file_error(good_file, tmp_path, damage):
    path = tmp_path / "damaged.pws"
    path.write_bytes(damage(good_file))
    with pytest.raises(SessionFileError, match="damaged.pws"):
        PruningSession.load(str(path))


def test_damage_helper_really_breaks_the_stream(good_file):
    """The corrupted-deflate fixture really is damaged: zipfile cannot inflate it."""
    with zipfile.ZipFile(io.BytesIO(_corrupt_deflate(good_file, "arrays.npz"))) as zf:
        with pytest.raises(Exception, match="invalid block type"):
            zf.read("arrays.npz")
        assert zf.read("model.keras")  # the other members are intact


def test_undamaged_rezip_still_loads(good_file, model, tmp_path):
    """The damage helpers themselves keep a good file good (so the failures above are real)."""
    path = tmp_path / "rezipped.pws"
    path.write_bytes(_with_manifest(good_file))
    loaded = PruningSession.load(str(path))
    assert loaded.history.position == 3 and statuses(loaded)["dense_1"] == "pending"


# ---------------------------------------------------------------------- layout, no pickle
@pytest.mark.parametrize("with_eval", [False, True])
def test_file_layout_has_no_pickle(model, eval_data, tmp_path, with_eval):
    s = worked_session(model, eval_data if with_eval else None)
    path = tmp_path / "s.pws"
    s.save(str(path))
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names == MEMBERS + (["eval.npz"] if with_eval else [])
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["format"] == "paoding-widgets-session" and manifest["version"] == 1
        assert manifest["position"] == 3 and len(manifest["history"]) == 5
        for name in names:
            if not name.endswith(".npz"):
                continue
            with np.load(io.BytesIO(zf.read(name)), allow_pickle=False) as npz:
                assert npz.files
                for key in npz.files:
                    assert npz[key].dtype != object
        with zipfile.ZipFile(io.BytesIO(zf.read("model.keras"))) as inner:
            assert "config.json" in inner.namelist()
        if with_eval:
            with np.load(io.BytesIO(zf.read("eval.npz")), allow_pickle=False) as ev:
                assert sorted(ev.files) == ["x", "y"]
                assert np.array_equal(ev["x"], eval_data[0]) and np.array_equal(ev["y"], eval_data[1])


# ---------------------------------------------------------------------- values the session accepts must save
def test_numpy_scalar_strategy_option_saves(model, tmp_path):
    s = make(model)
    s.configure(alpha=np.float32(0.5))
    path = tmp_path / "s.pws"
    try:
        s.save(str(path))
    finally:
        assert [p.name for p in tmp_path.iterdir()] in ([], ["s.pws"])  # no temporary file left either way
    loaded = PruningSession.load(str(path))
    assert loaded.pruner.strategy.alpha == 0.5


def test_object_labels_are_refused_or_saved_without_pickle(model, eval_data, tmp_path):
    x, y = eval_data
    try:
        s = make(model, eval_data=(x, y.astype(object)))
    except SessionError:
        return  # refusing them up front is fine
    path = tmp_path / "s.pws"
    s.save(str(path))
    with zipfile.ZipFile(path) as zf:
        with np.load(io.BytesIO(zf.read("eval.npz")), allow_pickle=False) as ev:
            assert np.array_equal(ev["y"].astype(np.int64), y)
    loaded = PruningSession.load(str(path))
    assert loaded.metrics().accuracy == s.metrics().accuracy
