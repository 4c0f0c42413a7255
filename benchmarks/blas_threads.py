"""``--blas-threads N`` for the benchmarks, applied before NumPy loads its BLAS.

Why: BLAS reads its thread count once, when NumPy is first imported, so the flag
must be read from ``sys.argv`` and put in the environment before that; this
module imports nothing heavy so that a script can call it first.  Child
processes (the reference's worker) inherit the setting.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def early_blas_threads(argv: Sequence[str]) -> str | None:
    """The value of ``--blas-threads`` in ``argv`` (``--blas-threads N`` or ``=N``), else None."""
    for i, a in enumerate(argv):
        if a == "--blas-threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--blas-threads="):
            return a.split("=", 1)[1]
    return None


def apply_blas_threads(argv: Sequence[str]) -> str | None:
    """Set the BLAS/OpenMP thread variables from ``--blas-threads`` (a positive integer); returns it."""
    value = early_blas_threads(argv)
    if value is not None and value.isdigit() and int(value) > 0:
        for var in VARIABLES:
            os.environ[var] = value
        return value
    return None


# ------------------------------------------------------------------ a busy machine, on purpose
_SPIN = "import os, signal\nsignal.signal(signal.SIGTERM, lambda *a: os._exit(0))\nwhile True:\n    pass\n"


class BusyCore:
    """A second process spinning on one core while the block runs (``with BusyCore(): ...``).

    Why: figures measured on an idle machine do not hold when another job holds
    a core (a training run, a second kernel); the benchmarks' "busy" variants
    measure that on purpose.  Only the process started here is stopped, by its id.
    """

    def __init__(self, processes: int = 1) -> None:
        self.processes = processes
        self._procs: list = []

    def __enter__(self) -> BusyCore:
        import subprocess
        import sys
        import time

        self._procs = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(self.processes)]
        time.sleep(0.3)  # let them start spinning
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self._procs:
            p.terminate()
        for p in self._procs:
            try:
                p.wait(timeout=5)
            except Exception:
                p.kill()
                p.wait()
        self._procs = []
