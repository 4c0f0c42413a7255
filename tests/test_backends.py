"""The same pruning on every Keras backend: same units, same outputs, same robustness counts.

Each backend runs in its own process (Keras picks its backend once, at import): the script
below builds the same models from NumPy-seeded weights, prunes them with the same settings,
and writes the surviving units, the pruned model's outputs on fixed inputs and the FGSM
counts; the test compares every backend with TensorFlow.  Backends that are not installed
are skipped (CI installs JAX and PyTorch's CPU build: ``pip install -e ".[dev,backends]"``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, sys
import numpy as np
import keras
from paoding_widgets import PruningSession

L = keras.layers


def seeded(model, seed):
    rng = np.random.default_rng(seed)
    model.set_weights([(rng.standard_normal(w.shape) * (0.5 if len(w.shape) > 1 else 0.1)).astype("float32")
                       for w in model.weights])
    return model


def mlp():
    return seeded(keras.Sequential([keras.Input((12,)), L.Dense(16, activation="relu"), L.Dense(12, activation="relu"),
                                    L.Dense(3)]), 1)


def cnn():
    return seeded(keras.Sequential([keras.Input((8, 8, 2)), L.Conv2D(6, 3, activation="relu"), L.MaxPooling2D(),
                                    L.Conv2D(8, 3, activation="relu"), L.Flatten(), L.Dense(10, activation="relu"),
                                    L.Dense(3)]), 2)


out = {}
for name, build in (("mlp", mlp), ("cnn", cnn)):
    for strategy in ("impact", "certified", "magnitude"):
        model = build()
        x = np.random.default_rng(3).random((64, *model.inputs[0].shape[1:]), dtype=np.float32)
        y = keras.ops.convert_to_numpy(model(x)).argmax(-1)
        s = PruningSession(model, strategy=strategy, step=0.25, target=0.5, eval_data=(x, y), n_probes=32)
        s.run()
        small = s.pruned_model()
        m = s.metrics()
        out[f"{name}/{strategy}"] = {
            "alive": {i.name: s.alive(i.name).astype(int).tolist() for i in s.layers if i.status != "not prunable"},
            "outputs": keras.ops.convert_to_numpy(small(x)).tolist(),
            "robust": {str(k): v for k, v in m.robust.items()},
            "params": m.size.params}
json.dump(out, open(sys.argv[1], "w"))
'''


def _run(backend: str, tmp_path: Path) -> dict:
    path = tmp_path / f"{backend}.json"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{backend}:\n{proc.stderr[-3000:]}"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _run("tensorflow", tmp_path_factory.mktemp("tf"))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_same_units_outputs_and_robustness_as_tensorflow(backend: str, reference: dict, tmp_path: Path) -> None:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[backends]')")
    got = _run(backend, tmp_path)
    assert got.keys() == reference.keys()
    for key, ref in reference.items():
        assert got[key]["alive"] == ref["alive"], f"{backend} {key}: different units survive"
        assert got[key]["params"] == ref["params"]
        np.testing.assert_allclose(np.asarray(got[key]["outputs"]), np.asarray(ref["outputs"]), rtol=1e-4, atol=1e-4,
                                   err_msg=f"{backend} {key}")
        for eps, n in ref["robust"].items():  # FGSM through each backend's own gradient
            assert abs(got[key]["robust"][eps] - n) <= 1, (backend, key, eps, got[key]["robust"][eps], n)
