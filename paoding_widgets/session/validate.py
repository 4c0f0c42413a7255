"""Argument checks at the session boundary, and the limits a session (or a file) may ask for.

Why: a notebook passes anything -- ``"0.5"``, ``True``, ``nan``, a NumPy
array -- and the engine would accept some of it silently (``float("0.5")``
works).  Every public session method checks its arguments here first and
refuses with a :class:`~paoding_widgets.errors.SessionError` naming the
argument and the value.  The same limits bound what a saved session may make
us allocate, so every session we save can be loaded again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import SessionError

MAX_EPSILONS = 64  # FGSM step sizes per session
MAX_PROBES = 100_000  # box samples for the data-free agreement
MAX_PROBE_BYTES = 256 * 2**20  # the probes' float32 array
MAX_ITERATIONS = 1_000_000  # a run's max_iterations

# Strategy options are saved as JSON: plain scalars only.
_PLAIN = (bool, int, float, str, type(None))


def is_number(value: Any) -> bool:
    """A real number that is not a bool (``True`` is an int in Python, never a share)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def fraction(name: str, value: Any) -> float:
    """``value`` as a float strictly between 0 and 1, else a SessionError naming ``name``."""
    if not is_number(value) or not 0.0 < float(value) < 1.0:
        raise SessionError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def unit_interval(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1] (a minimum accuracy or fidelity)."""
    if not is_number(value) or not 0.0 <= float(value) <= 1.0:
        raise SessionError(f"{name} must be a number between 0 and 1, got {value!r}")
    return float(value)


def positive_int(name: str, value: Any, limit: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) \
            or not 1 <= int(value) <= limit:
        raise SessionError(f"{name} must be an integer in 1..{limit:,}, got {value!r}")
    return int(value)


def seed(value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or int(value) < 0:
        raise SessionError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


def plain_option(name: str, value: Any) -> Any:
    """A strategy option as a JSON-safe plain value (NumPy scalars become Python ones)."""
    if not isinstance(name, str):
        raise SessionError(f"strategy option names are strings, got {name!r}")
    if isinstance(value, np.generic) and value.ndim == 0 and not isinstance(value, (np.str_, np.bytes_)):
        value = value.item()
    if not isinstance(value, _PLAIN):
        raise SessionError(f"strategy option {name}={value!r} must be a plain number, bool or string "
                           f"(got {type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise SessionError(f"strategy option {name} must be finite, got {value!r}")
    return value


def plain_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: plain_option(k, v) for k, v in options.items()}


def strategy_options(strategy: str, options: dict[str, Any]) -> dict[str, Any]:
    """Plain options whose types match the strategy's defaults (a bool for a bool, a number for a number).

    Unknown names are left to the engine's own error (it lists the known ones).
    """
    import inspect

    from ..engine.strategies import STRATEGIES

    out = plain_options(options)
    cls = STRATEGIES.get(strategy)
    if cls is None:
        return out
    params = inspect.signature(cls.__init__).parameters
    for name, value in out.items():
        if name not in params or params[name].default is inspect.Parameter.empty:
            continue
        default = params[name].default
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "True or False"
        elif isinstance(default, (int, float)):
            ok, want = is_number(value), "a number"
        else:
            ok, want = isinstance(value, type(default)), type(default).__name__
        if not ok:
            raise SessionError(f"strategy {strategy!r} option {name} must be {want}, got {value!r}")
    return out


def epsilons(values: Any) -> tuple[float, ...]:
    """FGSM step sizes: at most :data:`MAX_EPSILONS` finite, non-negative numbers."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise SessionError(f"epsilons must be a sequence of numbers, got {values!r}")
    if len(values) > MAX_EPSILONS:
        raise SessionError(f"epsilons: {len(values):,} values; at most {MAX_EPSILONS} are allowed")
    out = []
    for e in values:
        if not is_number(e) or not math.isfinite(float(e)) or float(e) < 0:
            raise SessionError(f"epsilons must be finite numbers >= 0, got {e!r}")
        out.append(float(e))
    return tuple(out)


def n_probes(value: Any, input_shape: tuple) -> int:
    """Box samples: at most :data:`MAX_PROBES`, and their array within :data:`MAX_PROBE_BYTES`."""
    n = positive_int("n_probes", value, MAX_PROBES)
    size = int(np.prod([d for d in input_shape if d is not None], dtype=np.int64)) or 1
    if n * size * 4 > MAX_PROBE_BYTES:
        raise SessionError(f"n_probes={n:,} samples of {size:,} inputs need {n * size * 4 / 2**20:,.0f} MiB; "
                           f"at most {MAX_PROBE_BYTES // 2**20} MiB (n_probes <= {MAX_PROBE_BYTES // (4 * size):,})")
    return n


def check_eval_stream(data: Any) -> Any:
    """A stream of ``(x, y)`` batches the session can read after every click: re-iterable (a
    ``tf.data.Dataset``, a ``keras.utils.PyDataset``, a function returning a generator), never a
    generator itself (the first evaluation would use it up)."""
    if callable(data) or hasattr(data, "__getitem__"):
        return data
    try:
        it = iter(data)
    except TypeError:
        raise SessionError(f"eval_data must be (x, y) arrays, a tf.data.Dataset, a keras.utils.PyDataset or a "
                           f"function returning a generator of (x, y) batches, got {type(data).__name__}") from None
    if it is data:
        raise SessionError("eval_data is a generator, which the first evaluation would use up; pass the function "
                           "that makes it (eval_data=make_batches), a tf.data.Dataset or a keras.utils.PyDataset")
    return data


def check_eval_data(model: Any, data: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if data is None:
        return None
    try:
        x, y = data
    except (TypeError, ValueError):
        raise SessionError("eval_data must be a pair (x, y)") from None
    x, y = np.asarray(x), np.asarray(y)
    want = tuple(model.inputs[0].shape[1:])
    if x.ndim != len(want) + 1 or any(w is not None and w != s for w, s in zip(want, x.shape[1:])):
        raise SessionError(f"eval_data x has shape {x.shape}; the model expects (N, {', '.join(map(str, want))})")
    if y.ndim == 0 or len(y) != len(x):
        raise SessionError(f"eval_data has {len(x)} inputs but {y.size if y.ndim == 0 else len(y)} labels")
    if not np.issubdtype(x.dtype, np.number):
        raise SessionError(f"eval_data x must be numeric, got dtype {x.dtype}")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise SessionError(f"eval_data y must be numeric labels, got dtype {y.dtype}")
    return x.astype(np.float32), y
