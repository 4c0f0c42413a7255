"""Session files edited by hand, damaged or built to exhaust memory: each is refused with a
SessionFileError naming the problem, before anything large is allocated.

A good file is taken apart (manifest, arrays.npz, weights.npz), one thing is changed, and the
file is put back together; loading must refuse it.  The zip bomb (1 GiB of zeros) is written
streaming, so the test itself stays small, and the loader's peak Python/NumPy allocation
(tracemalloc) is checked to stay far below what the file declares.
"""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from collections.abc import Callable

import numpy as np
import pytest
from conftest import build_mlp

from paoding_widgets.session import PruningSession, SessionFileError

GiB = 2**30


@pytest.fixture(scope="module")
def model():
    return build_mlp(8, (12, 10), 3, seed=3, names=("dense", "dense_1", "dense_2"))


def worked_session(model) -> PruningSession:
    """Position 3 of 5 entries: a run, a propose, an accept (then two undone)."""
    s = PruningSession(model, (0, 1), "impact", step=0.1, target=0.5, seed=0, n_probes=64)
    s.run(target=0.3)
    s.propose()
    s.accept("dense")
    s.propose()
    s.accept_all()
    s.undo()
    s.undo()
    return s


@pytest.fixture(scope="module")
def good(model, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("good") / "good.pws"
    worked_session(model).save(str(path))
    return path.read_bytes()


# ---------------------------------------------------------------------- taking a file apart
def members(raw: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def npz_arrays(raw: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def npz_bytes(arrays: dict[str, np.ndarray], allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in arrays.items():
            with zf.open(f"{k}.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(v), allow_pickle=allow_pickle)
    return buf.getvalue()


def zip_bytes(parts: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in parts.items():
            zf.writestr(k, v)
    return buf.getvalue()


def edit(raw: bytes, manifest: Callable[[dict], None] | None = None,
         arrays: Callable[[dict, dict], None] | None = None,
         weights: Callable[[dict, dict], None] | None = None) -> bytes:
    """Rebuild the file after ``manifest(m)``, ``arrays(a, m)`` or ``weights(w, m)`` changed it in place."""
    parts = members(raw)
    m = json.loads(parts["manifest.json"])
    if manifest:
        manifest(m)
    if arrays:
        a = npz_arrays(parts["arrays.npz"])
        arrays(a, m)
        parts["arrays.npz"] = npz_bytes(a)
    if weights:
        w = npz_arrays(parts["weights.npz"])
        weights(w, m)
        parts["weights.npz"] = npz_bytes(w)
    parts["manifest.json"] = json.dumps(m).encode()
    return zip_bytes(parts)


def first_patch(m: dict) -> dict:
    return m["history"][0]["patch"]["arrays"][0]


def load_refused(tmp_path, raw: bytes, match: str) -> SessionFileError:
    path = tmp_path / "edited.pws"
    path.write_bytes(raw)
    with pytest.raises(SessionFileError, match=match) as info:
        PruningSession.load(str(path))
    assert "edited.pws" in str(info.value)
    return info.value


def test_the_helpers_keep_a_good_file_good(good, tmp_path):
    path = tmp_path / "same.pws"
    path.write_bytes(edit(good, manifest=lambda m: None, arrays=lambda a, m: None, weights=lambda w, m: None))
    s = PruningSession.load(str(path))
    assert s.history.position == 3 and len(s.history.entries) == 5


# ---------------------------------------------------------------------- hand-edited contents
def _set(path: tuple, value) -> Callable[[dict], None]:
    def change(m: dict) -> None:
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return change


def _array(ref_of: Callable[[dict], str], new: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict, dict], None]:
    def change(a: dict, m: dict) -> None:
        ref = ref_of(m)
        a[ref] = new(a[ref])
    return change


EDITS = {
    # the history position, moved within range: the state or the replay gives it away
    "position_2": (dict(manifest=_set(("position",), 2)), "position was changed|does not give"),
    "position_4": (dict(manifest=_set(("position",), 4)), "position was changed|does not give"),
    "position_0": (dict(manifest=_set(("position",), 0)), "position was changed|does not give"),
    "position_99": (dict(manifest=_set(("position",), 99)), "position.*99.*outside"),
    "position_text": (dict(manifest=_set(("position",), "3")), "position must be an integer"),
    # patches
    "patch_positions_out_of_range": (dict(arrays=_array(lambda m: first_patch(m)["pos"], lambda v: v + 1000)),
                                     "positions .* outside"),
    "patch_positions_float": (dict(arrays=_array(lambda m: first_patch(m)["pos"], lambda v: v.astype(float))),
                              "positions must be a 1-d integer array"),
    "patch_positions_longer": (dict(arrays=_array(lambda m: first_patch(m)["pos"], lambda v: np.r_[v, v[:1]])),
                               "values .* do not fit"),
    "patch_values_shape": (dict(arrays=_array(lambda m: first_patch(m)["val"], lambda v: v.reshape(-1))),
                           "values .* do not fit"),
    "patch_values_dtype": (dict(arrays=_array(lambda m: first_patch(m)["val"], lambda v: v.astype(np.float64))),
                           "values .* do not fit"),
    "patch_values_changed": (dict(arrays=_array(lambda m: first_patch(m)["val"], lambda v: v + 1)),
                             "does not give the model's own weights"),
    "patch_axis": (dict(manifest=lambda m: first_patch(m).__setitem__("axis", 7)), "axis 7 outside"),
    "patch_key": (dict(manifest=lambda m: first_patch(m).__setitem__("key", ["dense", "nope"])),
                  r"no array \('dense', 'nope'\)"),
    "patch_missing_array": (dict(manifest=lambda m: first_patch(m).__setitem__("val", "zz")), "array 'zz'"),
    "alive_patch_group": (dict(manifest=lambda m: m["history"][0]["patch"]["alive"][0].__setitem__("group", 42)),
                          "no group 42"),
    # alive masks and weights
    "alive_mask_length": (dict(arrays=_array(lambda m: m["alive"]["0"], lambda v: v[:-1])),
                          "alive mask of group 0 .* 12 units"),
    "alive_mask_dtype": (dict(arrays=_array(lambda m: m["alive"]["0"], lambda v: v.astype(np.uint8))),
                         "alive mask of group 0"),
    "alive_unknown_group": (dict(manifest=lambda m: m["alive"].__setitem__("42", m["alive"]["0"])),
                            "alive masks for groups"),
    "alive_group_name": (dict(manifest=lambda m: m["alive"].__setitem__("x", m["alive"]["0"])), "group id 'x'"),
    "weight_changed": (dict(weights=lambda w, m: w.__setitem__("w0", w["w0"] + 1e-3)),
                       "does not give the model's own weights"),
    "weight_shape": (dict(weights=lambda w, m: w.__setitem__("w0", w["w0"][:-1])), "does not match"),
    # statuses, proposals, random state, settings
    "status_unknown": (dict(manifest=_set(("state", "status", "dense"), "bogus")), "status.*'bogus'"),
    "status_unknown_layer": (dict(manifest=lambda m: m["state"]["status"].__setitem__("nope", "ready")),
                             "statuses for"),
    "proposal_drop": (dict(arrays=_array(lambda m: m["state"]["proposals"]["dense_1"]["cand"]["drop"],
                                         lambda v: v + 100)), "drop .* outside"),
    "proposal_group": (dict(manifest=_set(("state", "proposals", "dense_1", "group"), 0)), "names group 0"),
    "proposal_layer": (dict(manifest=lambda m: m["state"]["proposals"].__setitem__(
        "nope", m["state"]["proposals"]["dense_1"])), "nope"),
    "rng": (dict(manifest=_set(("state", "rng"), {"bit_generator": "PCG64", "state": "x"})), "random state"),
    "settings_step": (dict(manifest=_set(("state", "settings", "step"), 7)), "step"),
    "settings_option": (dict(manifest=_set(("state", "settings", "options"), {"pool": "x"})), "pool"),
    "entry_kind": (dict(manifest=_set(("history", 0, "kind"), "rm -rf")), "kind.*'rm -rf'"),
    "seed_text": (dict(manifest=_set(("seed",), "x")), "seed must be an integer"),
    "input_range": (dict(manifest=_set(("input_range",), [0])), "input_range"),
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_hand_edited_file_is_refused(good, tmp_path, name):
    changes, match = EDITS[name]
    load_refused(tmp_path, edit(good, **changes), match)


# ---------------------------------------------------------------------- bounded allocation
def test_n_probes_huge_is_refused(good, tmp_path):
    load_refused(tmp_path, edit(good, manifest=_set(("n_probes",), 10**12)), "n_probes 1,000,000,000,000")


def test_many_epsilons_are_refused(good, tmp_path):
    load_refused(tmp_path, edit(good, manifest=_set(("epsilons",), [0.01] * 100_000)), "epsilons has 100,000")


def test_huge_declared_array_is_refused_before_reading(good, tmp_path):
    """An .npy header declaring 8 TB with a few bytes of data: refused from the header alone."""
    parts = members(good)
    a = npz_arrays(parts["arrays.npz"])
    ref = first_patch(json.loads(parts["manifest.json"]))["val"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in a.items():
            with zf.open(f"{k}.npy", "w") as f:
                if k == ref:
                    header = {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
                    np.lib.format.write_array_header_1_0(f, header)
                    f.write(b"\0" * 64)
                else:
                    np.lib.format.write_array(f, v, allow_pickle=False)
    parts["arrays.npz"] = buf.getvalue()
    tracemalloc.start()
    try:
        err = load_refused(tmp_path, zip_bytes(parts), r"declares shape \(1000000, 1000000\) float64")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "8,000,000,000,000 bytes" in str(err)
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.1f} MiB while refusing"


def test_pickled_array_is_refused(good, tmp_path):
    parts = members(good)
    a = npz_arrays(parts["arrays.npz"])
    a["a0"] = np.array([{"x": 1}], dtype=object)
    parts["arrays.npz"] = npz_bytes(a, allow_pickle=True)
    load_refused(tmp_path, zip_bytes(parts), "pickle")


def test_zip_bomb_is_refused_with_bounded_memory(good, tmp_path):
    """arrays.npz replaced by 1 GiB of zeros (about 1 MB compressed), written streaming."""
    path = tmp_path / "edited.pws"
    parts = members(good)
    chunk = bytes(2**20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for k, v in parts.items():
            if k == "arrays.npz":
                with zf.open(k, "w", force_zip64=True) as f:
                    for _ in range(GiB // len(chunk)):
                        f.write(chunk)
            else:
                zf.writestr(k, v)
    assert path.stat().st_size < 16 * 2**20
    tracemalloc.start()
    try:
        with pytest.raises(SessionFileError, match="arrays.npz inflates from .* to 1,073,741,824 bytes"):
            PruningSession.load(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.1f} MiB while refusing a 1 GiB member"


def test_bomb_inside_an_npz_is_refused(good, tmp_path):
    """The outer member is small and honest; an array inside the .npz inflates 1,000-fold."""
    parts = members(good)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("a0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                     "shape": (64 * 2**20,)})
            chunk = bytes(2**20)
            for _ in range(64):
                f.write(chunk)
    parts["arrays.npz"] = buf.getvalue()
    load_refused(tmp_path, zip_bytes(parts), "arrays.npz/a0.npy inflates")


def test_unexpected_member_is_refused(good, tmp_path):
    load_refused(tmp_path, zip_bytes({**members(good), "run.py": b"print('hi')"}), "unexpected .*run.py")


def test_manifest_too_large_is_refused(good, tmp_path, monkeypatch):
    from paoding_widgets.session import persistence

    monkeypatch.setattr(persistence, "MAX_MANIFEST_BYTES", 1000)
    load_refused(tmp_path, good, "manifest.json is .* bytes; at most 1,000")


def test_too_many_entries_are_refused(good, tmp_path, monkeypatch):
    from paoding_widgets.session import persistence

    monkeypatch.setattr(persistence, "MAX_ENTRIES", 4)
    load_refused(tmp_path, good, "history has 5 entries; at most 4")


def test_a_refused_file_is_never_half_loaded(good, tmp_path):
    """Loading is all or nothing: the error leaves no session, and a good file still loads after it."""
    load_refused(tmp_path, edit(good, manifest=_set(("position",), 2)), "position|does not give")
    path = tmp_path / "good.pws"
    path.write_bytes(good)
    s = PruningSession.load(str(path))
    s.goto(0)
    assert s.pruner.store.equal(PruningSession(s.model, (0, 1)).pruner.store)
