"""Writing files safely, and where caches live: one place for the whole package.

Why: exports, saved sessions, the demo cache and the MNIST cache all need the
same two things, and each had grown its own copy:

* an **atomic write** -- the bytes go to a temporary name beside the target and
  are moved onto it in one ``os.replace``, so a crash or a full disk never
  leaves a half-written file that looks valid; the file gets the permissions
  of any normal file (``0666`` minus the umask, so usually ``0644``), not the
  ``0600`` of :func:`tempfile.mkstemp`;
* a **target check** -- no clobbering without ``overwrite``, never a protected
  path (the input model), never a directory, and the folder must exist;
* a **cache folder** per kind: ``$XDG_CACHE_HOME/paoding_widgets/<kind>``
  (default ``~/.cache/...``), or an environment variable that moves it.

Persistence (``session/persistence.py``) should use :func:`check_target` and
:func:`atomic_path` from here (``engine/export.py`` re-exports both names).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

PathLike = str | os.PathLike

__all__ = ["atomic_path", "atomic_write", "cache_dir", "check_target"]


def check_target(path: PathLike, overwrite: bool = False, protected: tuple[PathLike | None, ...] = ()) -> Path:
    """Validate an output path: parent exists, not a directory, no clobbering, not a protected file.

    Raises FileExistsError (protected or existing without ``overwrite``),
    IsADirectoryError, FileNotFoundError (no such folder).  Returns the resolved path.
    """
    p = Path(path).expanduser().resolve()
    for src in protected:
        if src is not None and Path(src).expanduser().resolve() == p:
            raise FileExistsError(f"refusing to write over the input model itself: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a directory, not a file path")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; pass overwrite=True (CLI: --force) to replace it")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"directory {p.parent} does not exist")
    return p


@contextlib.contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """A new, empty temporary file beside ``target``, moved onto it when the block succeeds.

    The temporary file is created like a normal file (``0666`` minus the umask) and
    removed if the block or the final move fails (a full disk, an interrupt).
    """
    target = Path(target)
    while True:
        # hidden, and ending like the target: Keras checks the suffix of the file it writes
        tmp = target.parent / f".{target.stem}.tmp-{secrets.token_hex(6)}{target.suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(target: PathLike, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``target`` atomically (no target check: call :func:`check_target` first if needed)."""
    target = Path(target)
    raw = data.encode(encoding) if isinstance(data, str) else data
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
    return target


def cache_dir(kind: str, env: str | None = None) -> Path:
    """The cache folder of one kind: ``$<env>`` if set, else ``$XDG_CACHE_HOME/paoding_widgets/<kind>``.

    Not created here: a caller that writes creates it (and copes when it cannot).
    """
    if env:
        override = os.environ.get(env)
        if override:
            return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "paoding_widgets" / kind
