"""Compact deployment: every format is written, loaded in its runtime, run, and compared with Keras."""

from __future__ import annotations

import json
import sys

import keras
import numpy as np
import pytest
from conftest import L, build_cnn_bn_flatten

from paoding_widgets.datasets import load_digits
from paoding_widgets.engine import deploy as dp
from paoding_widgets.engine.deploy import (
    DEFAULT_FORMATS,
    FORMATS,
    deploy,
    load_runner,
    quantize_model,
    save_format,
    target_path,
)
from paoding_widgets.engine.evaluate import predict
from paoding_widgets.engine.export import save_tflite
from paoding_widgets.errors import ConfigError, ExportError

ONNX_DEPS = all(__import__("importlib").util.find_spec(m) for m in ("onnxruntime", "onnx", "tf2onnx"))
needs_onnx = pytest.mark.skipif(not ONNX_DEPS, reason="pip install 'paoding-widgets[deploy]' for ONNX")

# What each format may change: float formats reproduce the outputs, int8 ones keep the top-1 class
FLOAT_ATOL = {"keras": 1e-6, "tflite": 1e-4, "onnx": 1e-4, "tflite-float16": 2e-2}


@pytest.fixture(scope="module")
def digits():
    (x_tr, y_tr), (x_te, y_te) = load_digits(seed=1)
    return (x_tr[..., None], y_tr), (x_te[:200, ..., None], y_te[:200])


@pytest.fixture(scope="module")
def cnn(digits):
    """A small trained CNN on the 8x8 digits: conv, pool, flatten, dense, softmax."""
    (x_tr, y_tr), _ = digits
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(6, 3, activation="relu"), L.MaxPooling2D(),
                              L.Flatten(), L.Dense(24, activation="relu"), L.Dense(10, activation="softmax")],
                             name="tiny_cnn")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x_tr, y_tr, epochs=10, batch_size=64, verbose=0)
    return model


def _formats():
    return [pytest.param(f, marks=needs_onnx) if f.endswith("onnx") or "onnx" in f else f for f in FORMATS]


@pytest.mark.parametrize("fmt", _formats())
def test_each_format_is_written_loaded_run_and_matches_keras(fmt, cnn, digits, tmp_path):
    (x_tr, _), (x, y) = digits
    path = save_format(cnn, fmt, target_path(tmp_path, fmt), calibration=x_tr[:100])
    assert path.is_file() and path.stat().st_size > 0
    assert path.name == f"model{FORMATS[fmt].suffix}"
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # a normal file, not mkstemp's private one
    runner = load_runner(path)
    out, ref = runner.predict(x), predict(cnn, x)
    assert out.shape == ref.shape and np.all(np.isfinite(out))
    if fmt in FLOAT_ATOL:
        np.testing.assert_allclose(out, ref, atol=FLOAT_ATOL[fmt])
    else:  # quantised: the same class almost everywhere, outputs near
        assert (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
        assert np.abs(out - ref).max() < 0.5
    assert not list(tmp_path.glob(".*tmp-*"))  # no temporary file left behind


@needs_onnx
def test_deploy_report_on_a_pruned_like_model(cnn, digits, tmp_path):
    (x_tr, _), (x, y) = digits
    report = deploy(cnn, tmp_path / "out", original=cnn, eval_data=(x, y), epsilons=(0.05,), robust_samples=50,
                    calibration_data=x_tr[:100])
    names = [r.name for r in report.rows]
    assert names == ["original", "pruned"] + [f"pruned + {f}" for f in DEFAULT_FORMATS[1:] + ("tflite-full-int8",)]
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(f"model{FORMATS[f].suffix}" for f in DEFAULT_FORMATS + ("tflite-full-int8",))
    orig, pruned = report.row("original"), report.row("pruned")
    assert orig.path is None and orig.times_smaller == 1.0 and orig.agreement == 1.0
    assert pruned.accuracy == orig.accuracy and pruned.max_abs_diff == 0.0 and pruned.agreement_source == 1.0
    assert pruned.robust == orig.robust and pruned.robust_kept == {0.05: 1.0}
    for r in report.rows[2:]:
        assert r.bytes == (tmp_path / "out" / r.path.split("/")[-1]).stat().st_size
        assert r.times_smaller == pytest.approx(report.original_bytes / r.bytes)
        assert abs(r.accuracy_drop) <= 0.05 and r.agreement_source >= 0.9
        assert 0.05 in r.robust_kept
    assert report.row("pruned + tflite-int8").runtime.startswith(("ai-edge-litert", "tf.lite.Interpreter"))
    assert report.row("pruned + onnx-int8").runtime.startswith("onnxruntime")
    assert report.row("pruned + tflite-int8").bytes < report.row("pruned + tflite-float16").bytes
    assert "conv2d" in report.row("pruned + keras-int8").note  # Keras leaves convolutions float
    assert "calibration_data" in report.row("pruned + tflite-full-int8").note
    table = report.table()
    assert table.count("\n|") >= len(report.rows) + 1 and "FGSM 0.05 kept" in table
    json.dumps(report.as_dict())


def test_deploy_data_free_without_eval_data(cnn, tmp_path):
    report = deploy(cnn, tmp_path, formats=("keras", "tflite-int8"), probes=np.random.default_rng(0).random(
        (64, 8, 8, 1), dtype=np.float32))
    assert [r.name for r in report.rows] == ["pruned", "pruned + tflite-int8"]  # no original: no first row
    r = report.row("pruned + tflite-int8")
    assert r.accuracy is None and r.robust == {} and r.times_smaller is None
    assert r.agreement is not None and r.agreement_source is not None and r.max_abs_diff is not None
    assert "tflite-full-int8" not in (r.name for r in report.rows)  # never calibrated on invented data
    with pytest.raises(ConfigError, match="never invents data"):
        deploy(cnn, tmp_path / "b", formats=("tflite-full-int8",))
    with pytest.raises(ConfigError, match="calibration"):
        save_tflite(cnn, tmp_path / "c.tflite", quantize="full-int8")


def test_deploy_calibrates_on_eval_data_and_says_so(cnn, digits, tmp_path):
    _, (x, y) = digits
    report = deploy(cnn, tmp_path, eval_data=(x, y), formats=("tflite-full-int8",), epsilons=())
    assert "eval inputs" in report.rows[0].note and report.rows[0].accuracy > 0.5


def test_never_overwrites_and_checks_every_target_first(cnn, digits, tmp_path):
    precious = tmp_path / "model.int8.tflite"
    precious.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        deploy(cnn, tmp_path, formats=("keras", "tflite-int8"))
    assert precious.read_bytes() == b"precious" and not (tmp_path / "model.keras").exists()  # nothing written
    deploy(cnn, tmp_path, formats=("keras", "tflite-int8"), overwrite=True)
    assert precious.read_bytes()[4:8] == b"TFL3"
    src = tmp_path / "mine.keras"
    src.write_bytes(b"the user's model")
    with pytest.raises(FileExistsError, match="input model"):
        deploy(cnn, tmp_path, formats=("keras",), stem="mine", overwrite=True, protected=(src,))
    assert src.read_bytes() == b"the user's model"
    with pytest.raises(ConfigError, match="unknown deployment format"):
        deploy(cnn, tmp_path, formats=("tflite-int3",))
    with pytest.raises(ConfigError, match="is a file"):
        deploy(cnn, src, formats=("keras",))


def test_quantize_model_leaves_the_input_alone(cnn):
    before = [w.copy() for w in cnn.get_weights()]
    q = quantize_model(cnn, "int8")
    assert all(np.array_equal(a, b) for a, b in zip(before, cnn.get_weights()))
    assert [layer.quantization_mode for layer in q.layers if isinstance(layer, L.Dense)] == ["int8", "int8"]
    assert all(getattr(layer, "quantization_mode", None) is None for layer in cnn.layers)
    with pytest.raises(ConfigError):
        quantize_model(cnn, "int2")
    conv_only = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(2, 3), L.GlobalAveragePooling2D()])
    with pytest.raises(ExportError, match="no layer to quantise"):
        quantize_model(conv_only, "int8")


def test_functional_model_with_batchnorm(tmp_path):
    model = build_cnn_bn_flatten()
    x = np.random.default_rng(0).random((32, 10, 10, 3), dtype=np.float32)
    for fmt in ("tflite-int8", "keras-int8"):
        runner = load_runner(save_format(model, fmt, target_path(tmp_path, fmt)))
        ref = predict(model, x)
        assert np.abs(runner.predict(x) - ref).max() < 0.1 * max(1.0, np.abs(ref).max())


# ------------------------------------------------------------------ missing optional packages
@needs_onnx  # the others present, one simulated missing
@pytest.mark.parametrize("module, fmt", [("tf2onnx", "onnx"), ("onnx", "onnx"), ("onnxruntime", "onnx-int8"),
                                         ("onnxruntime", "onnx")])
def test_missing_package_is_a_clear_export_error(module, fmt, cnn, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    if (module, fmt) != ("onnxruntime", "onnx"):  # writing float ONNX needs no onnxruntime; running it does
        with pytest.raises(ExportError, match=rf"'{module}'.*pip install {module}"):
            save_format(cnn, fmt, target_path(tmp_path, fmt))
    with pytest.raises(ExportError, match=rf"pip install {module}"):
        deploy(cnn, tmp_path / "d", formats=("keras", fmt))
    assert not (tmp_path / "d" / "model.keras").exists()  # failed before any work
    report = deploy(cnn, tmp_path / "e", formats=("keras", fmt), strict=False)
    assert f"pip install {module}" in report.rows[1].note and report.rows[1].bytes == 0
    assert report.row("pruned").accuracy is None and report.row("pruned").bytes > 0


def test_running_onnx_without_onnxruntime_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ExportError, match="pip install onnxruntime"):
        load_runner(tmp_path / "m.onnx")


def test_litert_falls_back_to_tf_lite_and_says_so(cnn, digits, tmp_path, monkeypatch):
    _, (x, _) = digits
    path = save_format(cnn, "tflite", tmp_path / "m.tflite")
    ref = load_runner(path)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    fallback = load_runner(path)
    assert fallback.runtime.startswith("tf.lite.Interpreter") and "ai-edge-litert" in fallback.runtime
    np.testing.assert_allclose(fallback.predict(x), ref.predict(x), atol=1e-6)


def test_load_runner_refuses_unknown_files(tmp_path):
    with pytest.raises(ConfigError, match=r"\.keras, \.tflite or \.onnx"):
        load_runner(tmp_path / "m.pt")
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="cannot load"):
        load_runner(tmp_path / "bad.keras")


# ------------------------------------------------------------------ the goal on the demo MLP
@needs_onnx
def test_demo_mlp_pruned_int8_is_8x_smaller_within_a_point(tmp_path):
    from paoding_widgets import load_demo

    demo = load_demo("digits_mlp")
    if not demo.data_source.startswith("mnist"):
        pytest.skip("the goal is stated for MNIST; this machine fell back to scikit-learn's digits")
    s = demo.session(target=0.5, n_probes=16)
    s.run()
    report = deploy(s.pruned_model(), tmp_path, original=demo.model, eval_data=(demo.x_test, demo.y_test),
                    formats=("keras", "tflite-int8", "onnx-int8"), epsilons=())
    for name in ("pruned + tflite-int8", "pruned + onnx-int8"):
        r = report.row(name)
        assert r.times_smaller >= 8 and r.accuracy_drop <= 0.01, report.table()


def test_stripped_tflite_is_smaller_and_runs_by_signature_with_the_same_outputs(cnn, digits, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    _, (x, _) = digits
    plain = save_tflite(cnn, tmp_path / "plain.tflite", "dynamic")
    stripped = save_tflite(cnn, tmp_path / "stripped.tflite", "dynamic", strip_names=True)
    assert stripped.stat().st_size < plain.stat().st_size
    assert b"tiny_cnn" in plain.read_bytes() and b"tiny_cnn" not in stripped.read_bytes()  # the names went
    np.testing.assert_array_equal(load_runner(stripped).predict(x), load_runner(plain).predict(x))
    runner = Interpreter(model_path=str(stripped)).get_signature_runner()  # the signature stayed
    (out,) = runner(**{next(iter(runner.get_input_details())): x[:3]}).values()
    np.testing.assert_allclose(out, load_runner(plain).predict(x[:3]), atol=1e-6)


def test_deploy_strips_tflite_names_unless_asked(cnn, tmp_path):
    kept = deploy(cnn, tmp_path / "kept", formats=("tflite-int8",), strip_names=False, epsilons=())
    stripped = deploy(cnn, tmp_path / "stripped", formats=("tflite-int8",), epsilons=())
    assert stripped.rows[0].bytes < kept.rows[0].bytes


def test_module_imports_no_optional_package():
    assert "onnxruntime" not in dp.__dict__ and "tf2onnx" not in dp.__dict__
