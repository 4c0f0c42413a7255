"""Threads for the engine's NumPy work: BLAS capped for medium products, pairs run side by side.

Why: the engine's matrix products are medium-sized (an im2col convolution of one
image, a Gram matrix of a few hundred units).  A multi-threaded OpenBLAS splits
each one across its threads, which then spin-wait on each other; when another
process holds one of the cores (a second notebook, a training job) every
product waits for a descheduled thread and a run slows 2-8x.  Instead the
engine caps BLAS at one thread (:func:`blas_limit`, through ``threadpoolctl``
when it is installed) and runs the two independent products of an interval --
centre and radius -- side by side in two Python threads (:func:`pair`; NumPy
releases the GIL), which uses both cores on a quiet machine and degrades to one
core, not to a spin-lock, on a busy one.  Large products (a Gram matrix of
thousands of units) keep BLAS' own threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
U = TypeVar("U")

_lock = threading.Lock()
_controller: Any = None
_executor: ThreadPoolExecutor | None = None
_local = threading.local()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _blas_controller() -> Any:
    """threadpoolctl's controller restricted to BLAS libraries, or None (not installed / no BLAS found)."""
    global _controller
    with _lock:
        if _controller is None:
            try:
                from threadpoolctl import ThreadpoolController

                _controller = ThreadpoolController().select(user_api="blas")
            except Exception:  # not installed, or a platform it does not know: leave BLAS alone
                _controller = False
    return _controller or None


@contextmanager
def blas_limit(threads: int = 1) -> Iterator[None]:
    """Cap NumPy's BLAS at ``threads`` while the block runs (nested calls keep the outer cap).

    ``PAODING_BLAS_THREADS=0`` turns the cap off (BLAS keeps its own default).
    """
    depth: int = getattr(_local, "depth", 0)
    if depth or os.environ.get("PAODING_BLAS_THREADS", "") == "0":
        _local.depth = depth + 1
        try:
            yield
        finally:
            _local.depth -= 1
        return
    ctl = _blas_controller()
    _local.depth = 1
    libs = getattr(ctl, "lib_controllers", []) if ctl is not None else []
    try:
        # The libraries' own get/set calls (a few microseconds) rather than ``ctl.limit``, which
        # re-inspects every library on each entry (0.1 ms; the engine enters this hundreds of times a run).
        before = [lib.get_num_threads() for lib in libs]
        for lib, n in zip(libs, before):
            if n != threads:
                lib.set_num_threads(threads)
        try:
            yield
        finally:
            for lib, n in zip(libs, before):
                if n != threads:
                    lib.set_num_threads(n)
    finally:
        _local.depth = 0


#: Below this many FLOPs a pair runs in the calling thread: handing small work to a second thread costs a
#: wake-up, and on a busy machine a wait of up to a scheduler time slice for the helper to get a core.
PAIR_WORK = 3e7


def pair(f: Callable[[], T], g: Callable[[], U], work: float = float("inf")) -> tuple[T, U]:
    """``(f(), g())``, side by side in two threads when there are two cores and enough ``work`` (FLOPs)."""
    global _executor
    if work < PAIR_WORK or usable_cpus() < 2 or os.environ.get("PAODING_PAIR_THREADS", "") == "0":
        return f(), g()
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paoding-pair")
    err = np.geterr()  # np.errstate is per thread: the helper thread follows the caller's

    def run() -> U:
        with np.errstate(**err):
            return g()

    fut = _executor.submit(run)
    a = f()
    return a, fut.result()


#: Below this many FLOPs a product runs on one BLAS thread (splitting it costs more than it saves,
#: and on a busy machine the split waits for a descheduled thread).
SMALL_WORK = 1e9


def blas_for(work: float) -> Any:
    """One BLAS thread for a product of ``work`` FLOPs below :data:`SMALL_WORK`, else BLAS' own threads."""
    return blas_limit(1) if work < SMALL_WORK else nullcontext()
