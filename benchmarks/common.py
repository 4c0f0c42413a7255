"""Shared pieces of the benchmark scripts: the reference MLP and the machine description.

The scripts run as ``python benchmarks/<script>.py``, so this module is importable as ``common``.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np


def mlp(width: int) -> Any:
    """The benchmark MLP 784-W-W-10 (random init, seed 0)."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ], name=f"mlp_{width}")


def machine_info() -> dict[str, Any]:
    """Platform, CPUs, memory and library versions, for the JSON results."""
    import keras
    import tensorflow as tf

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    return {
        "platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "cpus_usable": usable, "memory_bytes": mem,
        "python": platform.python_version(), "numpy": np.__version__, "tensorflow": tf.__version__,
        "keras": keras.__version__, "keras_backend": keras.backend.backend(),
    }
