"""Validation of front-end messages before they touch the session.

Why: anything can arrive over the comm (a stale view, a hand-crafted message).
Every message is checked here -- known action, known layer, sane numbers --
and turned into a clean dict, or refused with a message the widget shows.
"""

from __future__ import annotations

import math
from typing import Any

from ..engine.strategies import STRATEGIES
from ..errors import PaodingError
from ..session.readonly import SessionView

ACTIONS = {
    "hello": (), "propose": (), "accept_all": (), "step": (), "undo": (), "redo": (), "cancel": (),
    "accept": ("layer",), "skip": ("layer",), "lock": ("layer",), "unlock": ("layer",),
    "detail": ("layer",), "goto": ("n",), "configure": ("settings",), "run": (), "export": (),
    "sensitivity": (), "cancel_sensitivity": (), "plan": ("goal",), "plan_set": ("layer", "share"),
    "plan_clear": (), "run_plan": (), "compare": ("a", "b"), "compare_clear": (), "deploy": ("formats", "dir"),
}
MAX_PATH = 4096
EXPORT_FORMATS = {"keras": ".keras", "tflite16": ".tflite"}  # TFLite with float16 weights


class WireError(PaodingError, ValueError):
    """A front-end message was refused."""


def validate(content: Any, session: Any) -> dict[str, Any]:
    """A checked copy of an action message, or WireError saying what is wrong.

    ``session`` is the widget's :class:`~paoding_widgets.session.readonly.SessionView` (or a session).
    """
    view = SessionView.of(session)
    if not isinstance(content, dict) or content.get("type") != "action":
        raise WireError(f"unknown message {str(content)[:80]!r}")
    action = content.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise WireError(f"unknown action {str(action)[:40]!r}")
    out: dict[str, Any] = {"action": action}
    for field in ACTIONS[action]:
        if field not in content:
            raise WireError(f"action {action!r} needs {field!r}")
    if "layer" in ACTIONS[action]:
        layer = content["layer"]
        if not isinstance(layer, str) or layer not in view.names:
            raise WireError(f"unknown layer {str(layer)[:60]!r}")
        out["layer"] = layer
    for field in ("n", "a", "b"):
        if field in ACTIONS[action]:
            n = content[field]
            length = view.history_length
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= length:
                raise WireError(f"history position must be an integer in 0..{length}, got {n!r}")
            out[field] = n
    if action == "plan":
        out["goal"] = _fraction("goal", content["goal"])
        metric = content.get("metric", "params")
        if metric not in ("params", "flops"):
            raise WireError(f"plan metric must be 'params' or 'flops', got {str(metric)[:40]!r}")
        out["metric"] = metric
    if action == "plan_set":
        share = content["share"]
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) \
                or not 0 <= share < 1:
            raise WireError(f"a layer's share must be a number in [0, 1), got {share!r}")
        out["share"] = float(share)
    if action == "configure":
        out["settings"] = _settings(content["settings"])
    if action == "run" and content.get("target") is not None:
        out["target"] = _fraction("target", content["target"])
    if action == "export":
        path = content.get("path")
        fmt = content.get("format", "keras")
        if fmt not in EXPORT_FORMATS:
            raise WireError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {str(fmt)[:40]!r}")
        if path is not None and (not isinstance(path, str) or not path.strip() or "\x00" in path
                                 or not path.endswith((".keras", ".tflite"))):
            raise WireError(f"export path must be a .keras or .tflite file name, got {str(path)[:80]!r}")
        out["path"] = path
        out["format"] = fmt
        out["overwrite"] = content.get("overwrite") is True
    if action == "deploy":
        from ..engine.deploy import FORMATS

        fmts = content["formats"]
        if not isinstance(fmts, list) or not fmts or len(fmts) > len(FORMATS) \
                or not all(isinstance(f, str) and f in FORMATS for f in fmts):
            raise WireError(f"deploy formats must be a non-empty list from {', '.join(FORMATS)}, "
                            f"got {str(fmts)[:80]!r}")
        folder = content["dir"]
        if not isinstance(folder, str) or not folder.strip() or "\x00" in folder or len(folder) > MAX_PATH:
            raise WireError(f"deploy folder must be a folder name, got {str(folder)[:80]!r}")
        out["formats"] = list(dict.fromkeys(fmts))
        out["dir"] = folder.strip()
        out["overwrite"] = content.get("overwrite") is True
    if action == "detail":
        kind = content.get("kind", "weights")
        if kind not in ("weights", "saliency"):
            raise WireError(f"detail kind must be 'weights' or 'saliency', got {str(kind)[:40]!r}")
        out["kind"] = kind
    return out


def _fraction(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v < 1:
        raise WireError(f"{name} must be a number strictly between 0 and 1, got {v!r}")
    return float(v)


def _settings(s: Any) -> dict[str, Any]:
    if not isinstance(s, dict):
        raise WireError("settings must be an object")
    unknown = set(s) - {"strategy", "step", "target"}
    if unknown:
        raise WireError(f"unknown settings {sorted(unknown)}")
    out: dict[str, Any] = {}
    if "strategy" in s:
        if not isinstance(s["strategy"], str) or s["strategy"] not in STRATEGIES:
            raise WireError(f"unknown strategy {str(s['strategy'])[:40]!r}")
        out["strategy"] = s["strategy"]
    for key in ("step", "target"):
        if key in s:
            out[key] = _fraction(key, s[key])
    return out
