"""Save and resume a whole session: one zip of JSON + .npz + .keras, no pickle.

Why: a pruning session is work; it must survive a kernel restart exactly,
undo history included, and nothing a user loads may execute code.  Layout of
the file (a zip):

* ``manifest.json`` -- format, version, settings, input range, session state,
  history entries (kinds, labels, state snapshots, patch layout);
* ``model.keras`` -- the original model;
* ``weights.npz`` -- the current weights and alive masks;
* ``arrays.npz`` -- patch values/positions and proposal arrays, by reference;
* ``eval.npz`` -- the evaluation data, when the session has some.

Written to a temporary file and moved into place; refuses to overwrite unless asked.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.export import atomic_path, check_target
from ..engine.pruner import Proposal
from ..engine.units import Candidates
from ..engine.weights import ArrayPatch, Patch
from ..errors import SessionFileError
from .history import Entry, SessionState

FORMAT = "paoding-widgets-session"
VERSION = 1


class _Arrays:
    """Collects arrays under generated names for one .npz."""

    def __init__(self, source: dict[str, np.ndarray] | None = None) -> None:
        self.data: dict[str, np.ndarray] = {} if source is None else source

    def put(self, arr: np.ndarray) -> str:
        name = f"a{len(self.data)}"
        self.data[name] = np.asarray(arr)
        return name

    def get(self, name: str) -> np.ndarray:
        try:
            return self.data[name]
        except KeyError:
            raise SessionFileError(f"session file is damaged: array {name!r} is missing") from None


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _load_npz(zf: zipfile.ZipFile, name: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(zf.read(name)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ------------------------------------------------------------------ encode
def _proposal_out(p: Proposal, arr: _Arrays) -> dict[str, Any]:
    c = p.candidates
    return {"group": p.group, "name": p.name, "action": p.action, "strategy": p.strategy,
            "params_saved": p.params_saved,
            "cand": {k: arr.put(getattr(c, k)) for k in ("keep", "drop", "scale", "shift", "cost")},
            "impact": [[list(k), arr.put(v)] for k, v in p.extra.get("impact", {}).items()]}


def _proposal_in(d: dict[str, Any], arr: _Arrays) -> Proposal:
    c = d["cand"]
    cand = Candidates(*(arr.get(c[k]) for k in ("keep", "drop", "scale", "shift", "cost")))
    impact = {tuple(k): arr.get(ref) for k, ref in d["impact"]}
    return Proposal(d["group"], d["name"], d["action"], cand, d["strategy"], d["params_saved"], {"impact": impact})


def _state_out(st: SessionState, arr: _Arrays) -> dict[str, Any]:
    return {"status": st.status, "settings": st.settings, "rng": _jsonable(st.rng), "iteration": st.iteration,
            "proposals": {k: _proposal_out(p, arr) for k, p in st.proposals.items()}}


def _state_in(d: dict[str, Any], arr: _Arrays) -> SessionState:
    return SessionState(dict(d["status"]), {k: _proposal_in(p, arr) for k, p in d["proposals"].items()},
                        d["settings"], d["rng"], int(d["iteration"]))


def _patch_out(p: Patch, arr: _Arrays) -> dict[str, Any]:
    return {"arrays": [{"key": list(a.key), "axis": a.axis, "pos": arr.put(a.positions), "val": arr.put(a.values)}
                       for a in p.arrays],
            "alive": [{"group": int(g), "units": arr.put(u), "value": bool(v)} for g, u, v in p.alive]}


def _patch_in(d: dict[str, Any], arr: _Arrays) -> Patch:
    return Patch([ArrayPatch(tuple(a["key"]), int(a["axis"]), arr.get(a["pos"]), arr.get(a["val"]))
                  for a in d["arrays"]],
                 [(int(a["group"]), arr.get(a["units"]), bool(a["value"])) for a in d["alive"]])


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


# ------------------------------------------------------------------ save / load
def save_session(session: Any, path: str, overwrite: bool = False) -> Path:
    target = check_target(path, overwrite, protected=(session.source_path,))
    arr = _Arrays()
    pr = session.pruner
    manifest = {
        "format": FORMAT, "version": VERSION,
        "input_range": [np.asarray(v).tolist() for v in pr.input_range],
        "seed": session.seed, "epsilons": list(session.epsilons), "n_probes": int(len(session._probes)),
        "state": _state_out(session._state, arr),
        "position": session.history.position,
        "history": [{"kind": e.kind, "label": e.label, "info": _jsonable(e.info), "patch": _patch_out(e.patch, arr),
                     "before": _state_out(e.before, arr), "after": _state_out(e.after, arr)}
                    for e in session.history.entries],
        "has_eval": session.eval_data is not None,
    }
    weights = {f"w{i}": a for i, a in enumerate(pr.store.arrays.values())}
    manifest["weights"] = [[list(k), f"w{i}"] for i, k in enumerate(pr.store.arrays)]
    manifest["alive"] = {str(g): arr.put(m) for g, m in pr.store.alive.items()}
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "model.keras"
        session.model.save(model_file)
        with atomic_path(target) as out, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest))
            zf.write(model_file, "model.keras")
            zf.writestr("weights.npz", _npz_bytes(weights))
            zf.writestr("arrays.npz", _npz_bytes(arr.data))
            if session.eval_data is not None:
                zf.writestr("eval.npz", _npz_bytes({"x": session.eval_data[0], "y": session.eval_data[1]}))
    return target


def load_session(path: str) -> Any:
    import keras

    from .core import PruningSession

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no session file at {p}")
    try:
        with zipfile.ZipFile(p) as zf:
            try:
                manifest = json.loads(zf.read("manifest.json"))
            except KeyError:
                raise SessionFileError(f"{p} is not a paoding_widgets session (no manifest.json)") from None
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise SessionFileError(f"{p} is not a paoding_widgets session file")
            if manifest.get("version") != VERSION:
                raise SessionFileError(f"{p} has session format version {manifest.get('version')!r}; "
                                       f"this version reads {VERSION}")
            with tempfile.TemporaryDirectory() as tmp:
                zf.extract("model.keras", tmp)
                try:
                    model = keras.models.load_model(Path(tmp) / "model.keras", compile=False)
                except Exception as exc:  # keras raises many types for a bad file
                    raise SessionFileError(f"{p} is damaged: its model.keras does not load ({exc})") from exc
            weights = _load_npz(zf, "weights.npz")
            arr = _Arrays(_load_npz(zf, "arrays.npz"))
            eval_data = None
            if manifest["has_eval"]:
                ev = _load_npz(zf, "eval.npz")
                eval_data = (ev["x"], ev["y"])
    except zipfile.BadZipFile as exc:
        raise SessionFileError(f"{p} is damaged or not a session file: {exc}") from exc
    except SessionFileError:
        raise
    except (KeyError, TypeError, ValueError, OSError, zlib.error, EOFError) as exc:
        raise SessionFileError(f"{p} is damaged: {exc}") from exc
    try:
        state = _state_in(manifest["state"], arr)
        s = state.settings
        lo, hi = manifest["input_range"]
        session = PruningSession(model, (np.asarray(lo, np.float32), np.asarray(hi, np.float32)), s["strategy"],
                                 s["step"], s["target"], manifest["seed"], eval_data, manifest["epsilons"],
                                 manifest["n_probes"], **s["options"])
        store = session.pruner.store
        for key, ref in manifest["weights"]:
            k = tuple(key)
            if k not in store.arrays or store.arrays[k].shape != weights[ref].shape:
                raise SessionFileError(f"{p} does not match its model: array {k} differs")
            store.arrays[k] = weights[ref].copy()
        for g, ref in manifest["alive"].items():
            store.alive[int(g)] = arr.get(ref).astype(bool).copy()
        store.version += 1
        store.changed.update({tuple(key): store.version for key, _ in manifest["weights"]})
        for e in manifest["history"]:
            session.history.entries.append(Entry(e["kind"], e["label"], _patch_in(e["patch"], arr),
                                                 _state_in(e["before"], arr), _state_in(e["after"], arr), e["info"]))
        position = int(manifest["position"])
        if not 0 <= position <= len(session.history.entries):
            n = len(session.history.entries)
            raise SessionFileError(f"{p} is damaged: history position {position} outside 0..{n}")
        session.history.position = position
        session._restore(state)
    except SessionFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SessionFileError(f"{p} is damaged: {exc!r}") from exc
    return session
