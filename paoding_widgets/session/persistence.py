"""Save and resume a whole session: one zip of JSON + .npz + .keras, no pickle.

Why: a pruning session is work; it must survive a kernel restart exactly,
undo history included, and nothing a user loads may execute code, allocate
without bound or load silently wrong.  Layout of the file (a zip):

* ``manifest.json`` -- format, version, settings, input range, session state,
  history entries (kinds, labels, state snapshots, patch layout);
* ``model.keras`` -- the original model;
* ``weights.npz`` -- the current weights;
* ``arrays.npz`` -- alive masks, patch values/positions and proposal arrays, by reference;
* ``eval.npz`` -- the evaluation data, when the session has some.

Saving goes through :meth:`PruningSession.snapshot` and writes to a temporary
file moved into place; it refuses to overwrite unless asked.  Loading bounds
what the file may make us allocate *before* reading it (member sizes and
compression ratios from the zip directory, array sizes from the ``.npy``
headers, the number of probes, epsilons and entries), checks the manifest's
schema, and hands the decoded snapshot to :meth:`PruningSession.from_snapshot`,
which cross-checks everything against the model.  Every refusal is a
:class:`~paoding_widgets.errors.SessionFileError` naming the file, the field and the value.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ..engine.pruner import Proposal
from ..engine.units import Candidates
from ..engine.weights import ArrayPatch, Patch
from ..errors import SessionError, SessionFileError
from ..files import atomic_path, check_target
from .base import STATUSES
from .history import Entry, SessionState
from .snapshot import SessionSnapshot
from .validate import MAX_EPSILONS, MAX_PROBES

FORMAT = "paoding-widgets-session"
VERSION = 1
MEMBERS = ("manifest.json", "model.keras", "weights.npz", "arrays.npz", "eval.npz")
ENTRY_KINDS = ("propose", "accept", "skip", "lock", "unlock", "accept_all", "step", "run", "settings")

# What a file may make us allocate (checked before reading anything).
MAX_TOTAL_BYTES = 4 * 2**30  # all members, uncompressed
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_RATIO = 200  # uncompressed / compressed, for members above RATIO_FROM bytes
RATIO_FROM = 16 * 2**20
MAX_ENTRIES = 100_000  # history entries
MAX_ARRAYS = 2_000_000  # arrays in one .npz


# ------------------------------------------------------------------ arrays by reference
class _Arrays:
    """Collects arrays under generated names for one .npz."""

    def __init__(self, source: dict[str, np.ndarray] | None = None, where: str = "") -> None:
        self.data: dict[str, np.ndarray] = {} if source is None else source
        self.where = where

    def put(self, arr: np.ndarray) -> str:
        name = f"a{len(self.data)}"
        self.data[name] = np.asarray(arr)
        return name

    def get(self, ref: Any, field: str) -> np.ndarray:
        if not isinstance(ref, str) or ref not in self.data:
            raise SessionFileError(f"{self.where} is damaged: {field} refers to array {ref!r}, which is missing")
        return self.data[ref]


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    named: dict[str, Any] = dict(arrays)  # (typed Any: numpy's stub reads ** as if it could hold allow_pickle)
    np.savez(buf, **named)
    return buf.getvalue()


# ------------------------------------------------------------------ save
def save_session(snap: SessionSnapshot, model: Any, path: str, overwrite: bool = False) -> Path:
    """Write ``snap`` (from :meth:`PruningSession.snapshot`) and ``model`` to one file, atomically."""
    target = check_target(path, overwrite, protected=(snap.source_path,))
    arr = _Arrays()
    manifest = {
        "format": FORMAT, "version": VERSION,
        "input_range": [np.asarray(v).tolist() for v in snap.input_range],
        "seed": snap.seed, "epsilons": list(snap.epsilons), "n_probes": snap.n_probes,
        "state": _state_out(snap.state, arr),
        "position": snap.position,
        "history": [{"kind": e.kind, "label": e.label, "info": _jsonable(e.info), "patch": _patch_out(e.patch, arr),
                     "before": _state_out(e.before, arr), "after": _state_out(e.after, arr)}
                    for e in snap.entries],
        "has_eval": snap.eval_data is not None,
        "weights": [[list(k), f"w{i}"] for i, k in enumerate(snap.arrays)],
        "alive": {str(g): arr.put(m) for g, m in snap.alive.items()},
    }
    weights = {f"w{i}": a for i, a in enumerate(snap.arrays.values())}
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "model.keras"
        model.save(model_file)
        with atomic_path(target) as out, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest))
            zf.write(model_file, "model.keras")
            zf.writestr("weights.npz", _npz_bytes(weights))
            zf.writestr("arrays.npz", _npz_bytes(arr.data))
            if snap.eval_data is not None:
                zf.writestr("eval.npz", _npz_bytes({"x": snap.eval_data[0], "y": snap.eval_data[1]}))
    return target


def _proposal_out(p: Proposal, arr: _Arrays) -> dict[str, Any]:
    c = p.candidates
    return {"group": p.group, "name": p.name, "action": p.action, "strategy": p.strategy,
            "params_saved": p.params_saved,
            "cand": {k: arr.put(getattr(c, k)) for k in ("keep", "drop", "scale", "shift", "cost")},
            "impact": [[list(k), arr.put(v)] for k, v in p.extra.get("impact", {}).items()]}


def _state_out(st: SessionState, arr: _Arrays) -> dict[str, Any]:
    return {"status": st.status, "settings": st.settings, "rng": _jsonable(st.rng), "iteration": st.iteration,
            "proposals": {k: _proposal_out(p, arr) for k, p in st.proposals.items()}}


def _patch_out(p: Patch, arr: _Arrays) -> dict[str, Any]:
    return {"arrays": [{"key": list(a.key), "axis": a.axis, "pos": arr.put(a.positions), "val": arr.put(a.values)}
                       for a in p.arrays],
            "alive": [{"group": int(g), "units": arr.put(u), "value": bool(v)} for g, u, v in p.alive]}


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


# ------------------------------------------------------------------ load
def load_session(path: str, cls: Any = None, safe_mode: bool = True,
                 custom_objects: dict[str, Any] | None = None) -> Any:
    """Read, check and resume a session file (``cls``: the session class, default PruningSession).

    The model inside is loaded in Keras' safe mode unless the caller trusts the
    file (``safe_mode=False``, needed for a model with a Python ``Lambda``).
    """
    import keras

    if cls is None:
        from .core import PruningSession as cls
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no session file at {p}")
    r = _Reader(p)
    try:
        with zipfile.ZipFile(p) as zf:
            r.check_members(zf)
            manifest = r.manifest(zf)
            with tempfile.TemporaryDirectory() as tmp:
                zf.extract("model.keras", tmp)
                try:
                    model = keras.models.load_model(Path(tmp) / "model.keras", compile=False, safe_mode=safe_mode,
                                                    custom_objects=custom_objects)
                except Exception as exc:  # keras raises many types for a bad file
                    if safe_mode and "safe_mode" in str(exc):
                        raise SessionFileError(
                            f"{p}: its model holds code (a Python Lambda), which safe mode does not load; if you "
                            "trust this file, load it with PruningSession.load(path, safe_mode=False)") from exc
                    raise SessionFileError(f"{p} is damaged: its model.keras does not load ({exc})") from exc
            weights = r.npz(zf, "weights.npz")
            arrays = _Arrays(r.npz(zf, "arrays.npz"), str(p))
            eval_data = None
            if manifest["has_eval"]:
                ev = r.npz(zf, "eval.npz")
                if set(ev) != {"x", "y"}:
                    r.fail("eval.npz", f"holds {sorted(ev)}, not x and y")
                eval_data = (ev["x"], ev["y"])
    except zipfile.BadZipFile as exc:
        raise SessionFileError(f"{p} is damaged or not a session file: {exc}") from exc
    except SessionFileError:
        raise
    except (KeyError, TypeError, ValueError, OSError, zlib.error, EOFError, RecursionError) as exc:
        raise SessionFileError(f"{p} is damaged: {exc}") from exc
    snap = r.snapshot(manifest, weights, arrays, eval_data)
    try:
        return cls.from_snapshot(model, snap, source_path=None)
    except SessionFileError:
        raise
    except SessionError as exc:
        if "does not match" in str(exc):
            raise SessionFileError(f"{p} does not match its model: {exc}") from exc
        raise SessionFileError(f"{p} is damaged or was edited: {exc}") from exc


class _Reader:
    """Schema and size checks for one file; every refusal names the file, the field and the value."""

    def __init__(self, path: Path) -> None:
        self.p = path

    def fail(self, field: str, problem: str) -> NoReturn:
        raise SessionFileError(f"{self.p} is damaged: {field} {problem}")

    # ---------------------------------------------------------------- sizes, before reading
    def check_members(self, zf: zipfile.ZipFile) -> None:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        unknown = sorted(set(names) - set(MEMBERS))
        if unknown or len(names) != len(set(names)):
            self.fail("zip", f"has unexpected or repeated members {unknown or names}; a session has {MEMBERS}")
        _check_sizes(self.p, "", infos)

    def manifest(self, zf: zipfile.ZipFile) -> dict[str, Any]:
        try:
            info = zf.getinfo("manifest.json")
        except KeyError:
            raise SessionFileError(f"{self.p} is not a paoding_widgets session (no manifest.json)") from None
        if info.file_size > MAX_MANIFEST_BYTES:
            raise SessionFileError(f"{self.p} is refused: manifest.json is {info.file_size:,} bytes; "
                                   f"at most {MAX_MANIFEST_BYTES:,}")
        try:
            manifest = json.loads(zf.read(info))
        except (ValueError, RecursionError) as exc:
            raise SessionFileError(f"{self.p} is damaged: manifest.json is not JSON ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise SessionFileError(f"{self.p} is not a paoding_widgets session file")
        if manifest.get("version") != VERSION:
            raise SessionFileError(f"{self.p} has session format version {manifest.get('version')!r}; "
                                   f"this version reads {VERSION}")
        self.schema(manifest)
        return manifest

    def npz(self, zf: zipfile.ZipFile, name: str) -> dict[str, np.ndarray]:
        """Arrays of one .npz member; each header is checked before its data is read, never pickle."""
        try:
            raw = zf.read(name)  # bounded by check_members
        except KeyError:
            raise SessionFileError(f"{self.p} is damaged: {name} is missing") from None
        try:
            inner = zipfile.ZipFile(io.BytesIO(raw))
        except zipfile.BadZipFile as exc:
            raise SessionFileError(f"{self.p} is damaged: {name} is not an .npz ({exc})") from exc
        with inner:
            infos = inner.infolist()
            if len(infos) > MAX_ARRAYS:
                self.fail(name, f"holds {len(infos):,} arrays; at most {MAX_ARRAYS:,}")
            _check_sizes(self.p, f"{name}/", infos)
            out: dict[str, np.ndarray] = {}
            for info in infos:
                if not info.filename.endswith(".npy"):
                    self.fail(name, f"has a member {info.filename!r} that is not an array")
                key = info.filename[:-4]
                with inner.open(info) as f:
                    shape, dtype, offset = self._header(f, f"{name}/{key}")
                    nbytes = math.prod(shape) * dtype.itemsize
                    if nbytes != info.file_size - offset:
                        self.fail(f"{name}/{key}", f"declares shape {shape} {dtype} = {nbytes:,} bytes but holds "
                                                  f"{info.file_size - offset:,}")
                with inner.open(info) as f:
                    out[key] = np.lib.format.read_array(f, allow_pickle=False)
            return out

    def _header(self, f: Any, field: str) -> tuple[tuple[int, ...], np.dtype, int]:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                self.fail(field, f"has .npy format version {version}")
        except ValueError as exc:
            self.fail(field, f"has a broken .npy header ({exc})")
        if dtype.hasobject:
            self.fail(field, f"has dtype {dtype} (objects would need pickle)")
        return tuple(int(d) for d in shape), dtype, int(f.tell())

    # ---------------------------------------------------------------- schema
    def schema(self, m: dict[str, Any]) -> None:
        """Types and bounds of the manifest's top level (the parts are checked as they are decoded)."""
        for key, types in (("input_range", list), ("seed", int), ("epsilons", list), ("n_probes", int),
                           ("state", dict), ("position", int), ("history", list), ("has_eval", bool),
                           ("weights", list), ("alive", dict)):
            if key not in m:
                self.fail("manifest", f"has no field {key!r}")
            _want(self, key, m[key], types)
        if len(m["input_range"]) != 2:
            self.fail("input_range", f"must be [low, high], got {str(m['input_range'])[:80]}")
        if not 1 <= m["n_probes"] <= MAX_PROBES:
            raise SessionFileError(f"{self.p} is refused: n_probes {m['n_probes']:,} is outside 1..{MAX_PROBES:,}")
        if len(m["epsilons"]) > MAX_EPSILONS:
            raise SessionFileError(f"{self.p} is refused: epsilons has {len(m['epsilons']):,} values; "
                                   f"at most {MAX_EPSILONS}")
        if len(m["history"]) > MAX_ENTRIES:
            raise SessionFileError(f"{self.p} is refused: history has {len(m['history']):,} entries; "
                                   f"at most {MAX_ENTRIES:,}")
        if not 0 <= m["position"] <= len(m["history"]):
            self.fail("position", f"{m['position']} is outside 0..{len(m['history'])}")

    # ---------------------------------------------------------------- decoding
    def snapshot(self, m: dict[str, Any], weights: dict[str, np.ndarray], arr: _Arrays,
                 eval_data: tuple[np.ndarray, np.ndarray] | None) -> SessionSnapshot:
        try:
            lo, hi = (np.asarray(v, np.float32) for v in m["input_range"])
        except (TypeError, ValueError) as exc:
            raise SessionFileError(f"{self.p} is damaged: input_range is not numeric ({exc})") from exc
        arrays = {}
        for i, item in enumerate(m["weights"]):
            field = f"weights[{i}]"
            if not (isinstance(item, list) and len(item) == 2):
                self.fail(field, f"must be [[layer, variable], ref], got {str(item)[:80]}")
            key = self.key(field, item[0])
            if not isinstance(item[1], str) or item[1] not in weights:
                self.fail(field, f"refers to array {item[1]!r}, which weights.npz does not hold")
            arrays[key] = weights[item[1]]
        alive = {}
        for g, ref in m["alive"].items():
            if not g.isdigit():
                self.fail("alive", f"has group id {g!r}; group ids are integers")
            alive[int(g)] = arr.get(ref, f"alive[{g}]")
        state = self.state("state", m["state"], arr)
        entries = [self.entry(f"history[{i}]", e, arr) for i, e in enumerate(m["history"])]
        return SessionSnapshot(settings=state.settings, input_range=(lo, hi), seed=m["seed"],
                               epsilons=tuple(m["epsilons"]), n_probes=m["n_probes"], state=state,
                               entries=entries, position=m["position"], arrays=arrays, alive=alive,
                               eval_data=eval_data)

    def key(self, field: str, k: Any) -> tuple[str, str]:
        if not (isinstance(k, list) and len(k) == 2 and all(isinstance(x, str) for x in k)):
            self.fail(field, f"key must be [layer, variable], got {str(k)[:80]}")
        return (k[0], k[1])

    def entry(self, field: str, e: Any, arr: _Arrays) -> Entry:
        _want(self, field, e, dict)
        for key, types in (("kind", str), ("label", str), ("info", dict), ("patch", dict), ("before", dict),
                           ("after", dict)):
            _want(self, f"{field}.{key}", e.get(key), types)
        if e["kind"] not in ENTRY_KINDS:
            self.fail(f"{field}.kind", f"{e['kind']!r} is not one of {', '.join(ENTRY_KINDS)}")
        share = e["info"].get("share_pruned")
        if share is not None and (not isinstance(share, (int, float)) or not 0 <= share <= 1):
            self.fail(f"{field}.info.share_pruned", f"{share!r} is not a share")
        return Entry(e["kind"], e["label"], self.patch(f"{field}.patch", e["patch"], arr),
                     self.state(f"{field}.before", e["before"], arr), self.state(f"{field}.after", e["after"], arr),
                     e["info"])

    def patch(self, field: str, d: dict[str, Any], arr: _Arrays) -> Patch:
        _want(self, f"{field}.arrays", d.get("arrays"), list)
        _want(self, f"{field}.alive", d.get("alive"), list)
        parts = []
        for j, a in enumerate(d["arrays"]):
            f = f"{field}.arrays[{j}]"
            _want(self, f, a, dict)
            _want(self, f"{f}.axis", a.get("axis"), int)
            parts.append(ArrayPatch(self.key(f, a.get("key")), a["axis"], arr.get(a.get("pos"), f"{f}.pos"),
                                    arr.get(a.get("val"), f"{f}.val")))
        alive = []
        for j, a in enumerate(d["alive"]):
            f = f"{field}.alive[{j}]"
            _want(self, f, a, dict)
            _want(self, f"{f}.group", a.get("group"), int)
            _want(self, f"{f}.value", a.get("value"), bool)
            alive.append((a["group"], arr.get(a.get("units"), f"{f}.units"), a["value"]))
        return Patch(parts, alive)

    def state(self, field: str, d: Any, arr: _Arrays) -> SessionState:
        _want(self, field, d, dict)
        for key, types in (("status", dict), ("settings", dict), ("rng", dict), ("iteration", int),
                           ("proposals", dict)):
            _want(self, f"{field}.{key}", d.get(key), types)
        for name, status in d["status"].items():
            if status not in STATUSES:
                self.fail(f"{field}.status[{name!r}]", f"is {status!r}; known: {', '.join(STATUSES)}")
        props = {name: self.proposal(f"{field}.proposals[{name!r}]", p, arr) for name, p in d["proposals"].items()}
        return SessionState(dict(d["status"]), props, d["settings"], d["rng"], d["iteration"])

    def proposal(self, field: str, d: Any, arr: _Arrays) -> Proposal:
        _want(self, field, d, dict)
        for key, types in (("group", int), ("name", str), ("action", str), ("strategy", str),
                           ("params_saved", int), ("cand", dict), ("impact", list)):
            _want(self, f"{field}.{key}", d.get(key), types)
        if d["action"] not in ("merge", "remove"):
            self.fail(f"{field}.action", f"is {d['action']!r}, not merge or remove")
        c = d["cand"]
        cand = Candidates(*(arr.get(c.get(k), f"{field}.cand.{k}") for k in ("keep", "drop", "scale", "shift", "cost")))
        impact = {}
        for j, item in enumerate(d["impact"]):
            if not (isinstance(item, list) and len(item) == 2):
                self.fail(f"{field}.impact[{j}]", f"must be [key, ref], got {str(item)[:80]}")
            impact[self.key(f"{field}.impact[{j}]", item[0])] = arr.get(item[1], f"{field}.impact[{j}]")
        return Proposal(d["group"], d["name"], d["action"], cand, d["strategy"], d["params_saved"], {"impact": impact})


def _want(r: _Reader, field: str, value: Any, types: type) -> None:
    ok = isinstance(value, types) and not (types is int and isinstance(value, bool))
    if not ok:
        r.fail(field, f"must be {'an' if types is int else 'a'} {_TYPE_NAMES[types]}, got {str(value)[:80]!r}")


_TYPE_NAMES = {int: "integer", str: "string", dict: "object", list: "list", bool: "boolean"}


def _check_sizes(p: Path, prefix: str, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse members that would inflate beyond the limits, from the zip directory alone.

    ``zipfile`` never inflates past a member's declared ``file_size`` (it
    raises instead), so checking the declared sizes bounds what reading costs.
    """
    total = 0
    for info in infos:
        size, packed = info.file_size, max(info.compress_size, 1)
        total += size
        if size > RATIO_FROM and size / packed > MAX_RATIO:
            raise SessionFileError(f"{p} is refused: {prefix}{info.filename} inflates from {packed:,} to "
                                   f"{size:,} bytes (ratio {size / packed:,.0f} > {MAX_RATIO}); a zip bomb?")
        if total > MAX_TOTAL_BYTES:
            raise SessionFileError(f"{p} is refused: its {prefix or 'members'} inflate to more than "
                                   f"{MAX_TOTAL_BYTES:,} bytes (at {prefix}{info.filename})")
