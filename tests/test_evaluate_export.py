"""Evaluation (accuracy, FGSM, size, FLOPs) and safe export (.keras, TFLite)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from conftest import L, box_inputs, build_cnn_bn_flatten, build_mlp, run, run_to_target

from paoding_widgets.datasets import load_breast_cancer, load_digits
from paoding_widgets.engine.evaluate import (
    accuracy,
    evaluate,
    fgsm,
    flops,
    outputs_are_probabilities,
    robust_instances,
    sample_box,
    size_report,
)
from paoding_widgets.engine.export import save_keras, save_tflite
from paoding_widgets.engine.pruner import Pruner


@pytest.fixture(scope="module")
def digits():
    (x_tr, y_tr), (x_te, y_te) = load_digits(seed=1)
    return (x_tr.reshape(len(x_tr), -1), y_tr), (x_te[:300].reshape(300, -1), y_te[:300])


def _train(digits, out_activation):
    (x_tr, y_tr), _ = digits
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((64,)),
        L.Dense(24, activation="relu"),
        L.Dense(10, activation=out_activation),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=out_activation is None))
    model.fit(x_tr, y_tr, epochs=15, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def softmax_model(digits):
    return _train(digits, "softmax")


@pytest.fixture(scope="module")
def logits_model(digits):
    return _train(digits, None)


def _loss(model, x, y):
    out = run(model, x)
    if not outputs_are_probabilities(model):
        out = np.exp(out - out.max(-1, keepdims=True))
        out /= out.sum(-1, keepdims=True)
    return -np.log(np.clip(out[np.arange(len(y)), y], 1e-12, 1.0))


# ------------------------------------------------------------------ accuracy and FGSM


@pytest.mark.parametrize("which", ["softmax_model", "logits_model"])
def test_fgsm_zero_eps_is_clean_accuracy(request, digits, which):
    model = request.getfixturevalue(which)
    _, (x, y) = digits
    clean = accuracy(model, x, y)
    assert clean > 0.85
    assert clean == pytest.approx(float((run(model, x).argmax(-1) == y).mean()))
    np.testing.assert_array_equal(fgsm(model, x, y, 0.0), x)
    robust = robust_instances(model, x, y, [0.0])
    assert robust == {0.0: int(round(clean * len(x)))}
    # one-hot labels are read the same way
    onehot = np.eye(10, dtype=np.float32)[y]
    assert accuracy(model, x, onehot) == clean


@pytest.mark.parametrize("which", ["softmax_model", "logits_model"])
def test_fgsm_reduces_robustness_with_eps(request, digits, which):
    model = request.getfixturevalue(which)
    _, (x, y) = digits
    robust = robust_instances(model, x, y, [0.01, 0.1, 0.3])
    assert set(robust) == {0.01, 0.1, 0.3}
    assert robust[0.1] <= robust[0.01]
    assert robust[0.3] < robust[0.01]
    # the step goes uphill: the loss grows on average
    adv = fgsm(model, x, y, 0.1)
    assert _loss(model, adv, y).mean() > _loss(model, x, y).mean()


def test_binary_sigmoid_classifier_accuracy_and_fgsm():
    """A one-unit sigmoid output is a binary classifier: class 1 when the probability exceeds 0.5."""
    (x_tr, y_tr), (x_te, y_te) = load_breast_cancer(seed=0)
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((30,)), L.Dense(8, activation="relu"), L.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    model.fit(x_tr, y_tr, epochs=10, batch_size=64, verbose=0)
    predicted = (run(model, x_te)[:, 0] > 0.5).astype(np.int64)
    clean = float((predicted == y_te).mean())
    assert clean > 0.85  # premise
    assert outputs_are_probabilities(model)
    assert accuracy(model, x_te, y_te) == pytest.approx(clean)
    robust = robust_instances(model, x_te, y_te, [0.0, 0.5], input_range=(-5.0, 5.0))
    assert robust[0.0] == int((predicted == y_te).sum())
    assert robust[0.5] <= robust[0.0]


@pytest.mark.parametrize("input_range", [(0.0, 1.0), (0.2, 0.7)])
def test_fgsm_stays_in_the_input_box(softmax_model, digits, input_range):
    _, (x, y) = digits
    lo, hi = input_range
    x = np.clip(x, lo, hi)
    eps = 0.25
    adv = fgsm(softmax_model, x, y, eps, input_range=input_range)
    assert adv.shape == x.shape and adv.dtype == np.float32
    assert adv.min() >= lo and adv.max() <= hi
    assert np.abs(adv - x).max() <= eps + 1e-6
    assert np.abs(adv - x).max() > 0  # it did move


def test_evaluate_reports_everything(softmax_model, digits):
    _, (x, y) = digits
    probes = sample_box((64,), (0.0, 1.0), 50, seed=3)
    assert probes.shape == (50, 64) and probes.min() >= 0 and probes.max() <= 1
    m = evaluate(softmax_model, original=softmax_model, data=(x, y), epsilons=(0.01, 0.1), probes=probes)
    assert m.accuracy == accuracy(softmax_model, x, y)
    assert m.robust == robust_instances(softmax_model, x, y, (0.01, 0.1))
    assert m.robust_preserved == {0.01: 1.0, 0.1: 1.0}
    assert m.agreement == 1.0
    assert m.size.params == softmax_model.count_params()
    d = m.as_dict()
    assert set(d["robust"]) == {"0.01", "0.1"}
    bare = evaluate(softmax_model)
    assert bare.accuracy is None and bare.robust == {} and bare.agreement is None


# ------------------------------------------------------------------ size and FLOPs


@pytest.mark.parametrize("builder", [build_mlp, build_cnn_bn_flatten])
def test_size_report_params_and_bytes(builder):
    model = builder()
    rep = size_report(model)
    assert rep.params == model.count_params()
    assert rep.bytes == 4 * model.count_params()  # float32 variables


def test_flops_dense_784_to_10():
    model = keras.Sequential([keras.Input((784,)), L.Dense(10)])
    assert flops(model) == 2 * 7840
    assert size_report(model).flops == 2 * 7840


def test_flops_conv_and_dense():
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        L.Conv2D(4, 3),  # 6x6 outputs, each 3*3*3 multiply-adds per filter
        L.DepthwiseConv2D(3, padding="same"),  # 6x6 outputs, 3*3 per channel
        L.Flatten(),
        L.Dense(5),
    ])
    expected = 2 * (36 * 3 * 3 * 3 * 4 + 36 * 3 * 3 * 4 + 6 * 6 * 4 * 5)
    assert flops(model) == expected


def test_pruned_model_has_fewer_flops():
    model = build_cnn_bn_flatten()
    pruner = Pruner(model, strategy="magnitude", step=0.5, target=0.5)
    run_to_target(pruner)
    small = pruner.pruned_model()
    assert size_report(small).flops < size_report(model).flops
    assert size_report(small).params == small.count_params() < model.count_params()


# ------------------------------------------------------------------ export


def test_save_keras_refuses_to_overwrite(tmp_path):
    model = build_mlp()
    target = tmp_path / "model.keras"
    target.write_bytes(b"precious user data")
    with pytest.raises(FileExistsError):
        save_keras(model, target)
    assert target.read_bytes() == b"precious user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]  # no temporary left behind


def test_save_keras_refuses_protected_path_even_with_overwrite(tmp_path):
    model = build_mlp()
    source = tmp_path / "source.keras"
    model.save(source)
    before = source.read_bytes()
    with pytest.raises(FileExistsError):
        save_keras(model, source, overwrite=True, protected=(str(source),))
    # the same file spelled differently is still protected
    with pytest.raises(FileExistsError):
        save_keras(model, tmp_path / "." / "source.keras", overwrite=True, protected=(source,))
    assert source.read_bytes() == before


def test_save_keras_writes_loadable_model(tmp_path):
    model = build_cnn_bn_flatten()
    pruner = Pruner(model, strategy="magnitude", step=0.25, target=0.25)
    run_to_target(pruner)
    small = pruner.pruned_model()
    target = save_keras(small, tmp_path / "small.keras")
    assert target.exists() and target.name == "small.keras"
    loaded = keras.models.load_model(target)
    x = box_inputs(model, 8, seed=5)
    np.testing.assert_allclose(run(loaded, x), run(small, x), rtol=1e-6, atol=1e-6)
    assert loaded.count_params() == small.count_params()
    # overwrite=True replaces it with the new model
    save_keras(model, target, overwrite=True)
    np.testing.assert_allclose(run(keras.models.load_model(target), x), run(model, x), rtol=1e-6, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.keras"]


def test_save_keras_rejects_bad_targets(tmp_path):
    model = build_mlp()
    with pytest.raises(ValueError, match="keras"):
        save_keras(model, tmp_path / "model.h5")
    with pytest.raises(FileNotFoundError):
        save_keras(model, tmp_path / "missing_dir" / "model.keras")
    assert list(tmp_path.iterdir()) == []


def test_save_tflite_float16(tmp_path, capsys):
    import tensorflow as tf

    model = build_mlp(out_activation="softmax")
    target = save_tflite(model, tmp_path / "model.tflite", quantize="float16")
    assert target.stat().st_size > 0
    assert "Saved artifact" not in capsys.readouterr().out, "the converter's chatter reached the user"
    with pytest.raises(FileExistsError):
        save_tflite(model, target)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interp = tf.lite.Interpreter(model_path=str(target))
    except (AttributeError, ImportError, ValueError, RuntimeError) as exc:  # pragma: no cover
        pytest.skip(f"TFLite interpreter unavailable: {exc}")
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    x = box_inputs(model, 4, seed=6)
    got = []
    for row in x:
        interp.set_tensor(inp["index"], row[None].astype(inp["dtype"]))
        interp.invoke()
        got.append(interp.get_tensor(out["index"])[0])
    np.testing.assert_allclose(np.stack(got), run(model, x), atol=1e-2)


def test_tflite_rejects_unknown_quantization(tmp_path):
    with pytest.raises(ValueError, match="quantize"):
        save_tflite(build_mlp(), tmp_path / "m.tflite", quantize="int3")


# ------------------------------------------------------------------ streamed evaluation data
def _streams(x, y, batch=64):
    import tensorflow as tf

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return -(-len(x) // batch)

        def __getitem__(self, i):
            return x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]

    def gen():
        for i in range(0, len(x), batch):
            yield x[i:i + batch], y[i:i + batch]

    return {"tf.data": tf.data.Dataset.from_tensor_slices((x, y)).batch(batch), "PyDataset": Batches(),
            "generator": gen(), "generator function": gen}


@pytest.mark.parametrize("kind", ["tf.data", "PyDataset", "generator", "generator function"])
def test_streamed_eval_data_gives_the_same_metrics_as_arrays(softmax_model, digits, kind):
    from paoding_widgets.engine.evaluate import batches

    _, (x, y) = digits
    stream = _streams(x, y)[kind]
    whole = evaluate(softmax_model, original=softmax_model, data=(x, y), epsilons=(0.01, 0.1))
    streamed = evaluate(softmax_model, original=softmax_model, data=stream, epsilons=(0.01, 0.1))
    assert streamed.accuracy == whole.accuracy
    assert streamed.robust == whole.robust and streamed.robust_preserved == whole.robust_preserved
    if kind != "generator":  # re-iterable: the batches are bounded
        assert max(len(b[0]) for b in batches(stream)) == 64


def test_bad_streams_are_refused_clearly(softmax_model):
    from paoding_widgets.errors import ConfigError

    with pytest.raises(ConfigError, match="not an \\(x, y\\) pair"):
        evaluate(softmax_model, data=iter([np.zeros((2, 64), np.float32)]), epsilons=())
    with pytest.raises(ConfigError, match="no samples"):
        evaluate(softmax_model, data=iter([]), epsilons=())
    with pytest.raises(ConfigError, match="2 inputs but 3 labels"):
        evaluate(softmax_model, data=[(np.zeros((2, 64), np.float32), np.zeros(3))], epsilons=())


@pytest.mark.parametrize("which", ["softmax_model", "logits_model"])
def test_one_gradient_for_every_epsilon_gives_the_per_epsilon_counts(request, digits, which):
    """Robustness computes the gradient once and steps it per epsilon: the counts of one attack per epsilon."""
    model = request.getfixturevalue(which)
    _, (x, y) = digits
    eps = (0.01, 0.05, 0.1)
    per_eps = {e: int((np.argmax(model.predict(fgsm(model, x, y, e), verbose=0), -1) == y).sum()) for e in eps}
    assert robust_instances(model, x, y, eps) == per_eps
    assert evaluate(model, data=(x, y), epsilons=eps).robust == per_eps
    assert robust_instances(model, x, y, ()) == {}


def test_session_takes_a_stream_and_measures_like_arrays(softmax_model, digits):
    """A session given a tf.data dataset measures what one given the arrays measures, after a change too;
    a bare generator is refused (the first evaluation would use it up)."""
    from paoding_widgets.errors import SessionError
    from paoding_widgets.session import PruningSession

    _, (x, y) = digits
    kw = dict(input_range=(0.0, 1.0), strategy="impact", step=0.1, target=0.5, seed=0, n_probes=20)
    arrays = PruningSession(softmax_model, eval_data=(x, y), **kw)
    stream = PruningSession(softmax_model, eval_data=_streams(x, y)["tf.data"], **kw)
    assert stream.eval_data is None and stream.eval_stream is not None
    for s in (arrays, stream):
        s.accept(next(iter(s.propose())))
    a, b = arrays.metrics(), stream.metrics()
    assert a.accuracy is not None and b.accuracy == a.accuracy
    assert b.robust == a.robust and b.robust_preserved == a.robust_preserved
    with pytest.raises(SessionError, match="generator"):
        PruningSession(softmax_model, eval_data=_streams(x, y)["generator"], **kw)
    result = PruningSession(softmax_model, eval_data=_streams(x, y)["generator function"], **kw).run(min_accuracy=0.99)
    assert result.reason == "min_accuracy"


def test_default_probe_count_is_bounded_by_input_size_and_by_cost():
    from paoding_widgets.engine.evaluate import PROBE_FLOPS_BUDGET, default_probe_count

    assert default_probe_count((784,)) == 1000  # small input, cost unknown
    assert default_probe_count((224, 224, 3)) == 26  # input-size bound alone (16 at least)
    assert default_probe_count((784,), flops_per_sample=2.4e5) == 1000  # cheap model: the size bound wins
    # ResNet50 at 224 px (7.7 GFLOP per image): one pass over the probes stays within the FLOPs budget
    n = default_probe_count((224, 224, 3), flops_per_sample=7.7e9)
    assert n == 12 and n * 7.7e9 <= PROBE_FLOPS_BUDGET
    assert default_probe_count((224, 224, 3), flops_per_sample=1e12) == 8  # never fewer than 8


def test_session_probe_count_follows_the_model_cost():
    from paoding_widgets import PruningSession
    from paoding_widgets.engine.evaluate import PROBE_FLOPS_BUDGET, flops

    inp = keras.Input((64, 64, 3))
    h = keras.layers.Conv2D(256, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(256, 3, padding="same", activation="relu")(h)
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    per = float(flops(model))
    s = PruningSession(model, strategy="magnitude")
    n = s.snapshot().n_probes
    assert n == int(PROBE_FLOPS_BUDGET // per) < 4e6 // (64 * 64 * 3)  # the cost bound, not the size bound
    assert PruningSession(model, strategy="magnitude", n_probes=40).snapshot().n_probes == 40  # asked for: kept
