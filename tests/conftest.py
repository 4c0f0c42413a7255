"""Shared small model builders and helpers for the engine tests.

Models are tiny (tens of units) so the whole suite runs in a few minutes on
two CPU cores.  ``randomize`` gives every variable non-trivial values (non-zero
biases, non-trivial BatchNorm statistics) so that exactness tests cannot pass
by accident on freshly initialised zeros.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

L = keras.layers


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: tests that take more than a minute (real application models)")


# ---------------------------------------------------------------------- helpers
def randomize(model, seed: int = 0, scale: float = 1.0, bias_scale: float = 0.3):
    """Give every variable random, non-degenerate values (He-scaled kernels, BN variances > 0)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        depthwise = type(layer).__name__.startswith("Depthwise")
        for w in layer.weights:
            name = str(w.path).rsplit("/", 1)[-1]
            shape = tuple(w.shape)
            if name == "moving_variance":
                new.append(rng.uniform(0.5, 2.0, shape).astype(np.float32))
            elif name == "gamma":
                new.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
            elif name in ("moving_mean", "beta", "bias"):
                new.append((bias_scale * rng.standard_normal(shape)).astype(np.float32))
            else:
                # a depthwise kernel (kh, kw, C, 1) sees kh * kw inputs per output
                fan_in = int(np.prod(shape[:-2] if depthwise else shape[:-1])) if len(shape) > 1 else 1
                new.append((rng.standard_normal(shape) * scale * np.sqrt(2.0 / max(fan_in, 1)))
                           .astype(np.float32))
        if new:
            layer.set_weights(new)
    return model


def weights_copy(model) -> list[list[np.ndarray]]:
    return [[np.array(w, copy=True) for w in layer.get_weights()] for layer in model.layers]


def weights_equal(model, copy) -> bool:
    now = weights_copy(model)
    return len(now) == len(copy) and all(
        len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)) for a, b in zip(now, copy))


def box_inputs(model, n: int, lo: float = 0.0, hi: float = 1.0, seed: int = 0) -> np.ndarray:
    """``n`` uniform random inputs in the box for a single-input model."""
    rng = np.random.default_rng(seed)
    shape = tuple(model.inputs[0].shape[1:])
    return rng.uniform(lo, hi, (n, *shape)).astype(np.float32)


def run_to_target(pruner, target: float | None = None, callback=None, max_iterations: int = 1000) -> int:
    """Iterate an engine ``Pruner`` until nothing is left to prune (engine tests without a session)."""
    for i in range(max_iterations):
        if not pruner.iterate(target):
            return i
        if callback is not None:
            callback(i + 1, pruner.share_pruned())
    return max_iterations


def run(model, x) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))  # a NumPy array on every backend


# ---------------------------------------------------------------------- builders
def build_mlp(n_in: int = 8, hidden=(20, 16), n_out: int = 3, dropout: bool = True, bn: bool = False,
              activation: str = "relu", out_activation: str | None = None, seed: int = 0,
              names=None, randomize_weights: bool = True):
    """Input -> Dense (-> BN) (-> Dropout) -> Dense ... -> Dense(n_out)."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((n_in,))]
    for i, h in enumerate(hidden):
        name = names[i] if names else None
        layers.append(L.Dense(h, activation=activation, name=name))
        if bn:
            layers.append(L.BatchNormalization())
        if dropout and i == 0:
            layers.append(L.Dropout(0.2))
    layers.append(L.Dense(n_out, activation=out_activation, name=names[-1] if names else None))
    model = keras.Sequential(layers)
    return randomize(model, seed) if randomize_weights else model


def build_cnn_bn_flatten(seed: int = 0, input_shape=(10, 10, 3)):
    """Conv-BN-ReLU-MaxPool-Conv-Flatten-Dense-Dense."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape)
    x = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.MaxPooling2D(name="pool1")(x)
    x = L.Conv2D(6, 3, activation="relu", name="c2")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(12, activation="relu", name="fc")(x)
    out = L.Dense(4, name="logits")(x)
    return randomize(keras.Model(inp, out), seed)


def build_residual(seed: int = 0, input_shape=(8, 8, 3)):
    """Conv stem, a residual block whose two convs feed Add, GAP, Dense head."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape)
    x = L.Conv2D(8, 3, padding="same", name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    x = L.MaxPooling2D(name="pool")(x)
    a = L.Conv2D(8, 3, padding="same", name="res_a")(x)
    b = L.Conv2D(8, 1, name="res_b")(x)
    x = L.Add(name="add")([a, b])
    x = L.ReLU(name="add_relu")(x)
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="post")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(10, activation="relu", name="fc")(x)
    out = L.Dense(3, name="logits")(x)
    return randomize(keras.Model(inp, out), seed)


def build_concat(seed: int = 0, n_in: int = 8):
    """Two Dense branches concatenated, then Dense head."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((n_in,))
    a = L.Dense(10, activation="relu", name="branch_a")(inp)
    b = L.Dense(6, activation="tanh", name="branch_b")(inp)
    x = L.Concatenate(name="cat")([a, b])
    x = L.Dense(12, activation="relu", name="fc")(x)
    out = L.Dense(3, name="logits")(x)
    return randomize(keras.Model(inp, out), seed)


def build_gap(seed: int = 0, input_shape=(8, 8, 3)):
    """Conv-Conv-GlobalAveragePooling-Dense-Dense."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape)
    x = L.Conv2D(8, 3, activation="relu", name="c1")(inp)
    x = L.Conv2D(10, 3, activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(8, activation="relu", name="fc")(x)
    out = L.Dense(3, name="logits")(x)
    return randomize(keras.Model(inp, out), seed)


def build_squeeze_excite(seed: int = 0, input_shape=(8, 8, 3)):
    """Conv -> (GAP -> Dense -> Dense(C, sigmoid) -> Reshape((1, 1, C))) * conv -> GAP -> head."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    s = L.GlobalAveragePooling2D(name="se_gap")(x)
    s = L.Dense(6, activation="relu", name="se_fc")(s)
    s = L.Dense(8, activation="sigmoid", name="se_gate")(s)
    s = L.Reshape((1, 1, 8), name="se_reshape")(s)
    x = L.Multiply(name="se_mul")([x, s])
    x = L.Conv2D(6, 3, activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(8, activation="relu", name="fc")(x)
    out = L.Dense(3, name="logits")(x)
    return randomize(keras.Model(inp, out), seed)


@pytest.fixture
def mlp():
    return build_mlp()


def build_separable(seed: int = 0, input_shape=(10, 10, 3)):
    """PReLU, ZeroPadding, DepthwiseConv, SeparableConv, Cropping, UpSampling, pooling: per-channel layers."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape)
    x = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = L.PReLU(shared_axes=[1, 2], name="prelu")(x)
    x = L.ZeroPadding2D(1, name="pad")(x)
    x = L.DepthwiseConv2D(3, name="dw")(x)
    x = L.LeakyReLU(name="leaky")(x)
    x = L.SeparableConv2D(6, 3, name="sep")(x)
    x = L.Cropping2D(1, name="crop")(x)
    x = L.UpSampling2D(name="up")(x)
    x = L.AveragePooling2D(2, name="avg")(x)
    x = L.Conv2D(5, 1, name="c2")(x)
    x = L.GlobalMaxPooling2D(name="gmp")(x)
    return randomize(keras.Model(inp, L.Dense(3, name="logits")(x)), seed)


def build_conv_concat(seed: int = 0, input_shape=(8, 8, 3)):
    """Conv branches concatenated on channels, and a Flatten branch concatenated with a Dense branch."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape)
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="a")(inp)
    b = L.Conv2D(6, 1, activation="relu", name="b")(inp)
    x = L.Concatenate(name="cat_channels")([a, b])
    x = L.Conv2D(5, 3, activation="relu", name="c")(x)
    x = L.Flatten(name="flat")(x)
    d = L.Dense(7, activation="relu", name="d")(L.GlobalAveragePooling2D(name="gap")(a))
    x = L.Concatenate(name="cat_flat")([x, d])
    x = L.Dense(6, activation="relu", name="e")(x)
    return randomize(keras.Model(inp, L.Dense(2, name="logits")(x)), seed)


def build_joins(seed: int = 0, n_in: int = 8):
    """Subtract, Multiply and Maximum joins of Dense layers: one group for all joined producers."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((n_in,))
    a = L.Dense(6, name="a")(inp)
    b = L.Dense(6, name="b")(inp)
    x = L.Activation("relu", name="relu")(L.Subtract(name="sub")([a, b]))
    x = L.Multiply(name="mul")([x, L.Dense(6, name="c")(inp)])
    x = L.Maximum(name="max")([x, L.Dense(6, name="m")(inp)])
    x = L.Dense(5, activation="relu", name="f")(x)
    return randomize(keras.Model(inp, L.Dense(2, name="logits")(x)), seed)


def build_conv1d(seed: int = 0, input_shape=(12, 4)):
    """Conv1D, MaxPooling1D, BatchNormalization and a flattening Reshape((-1,))."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape)
    x = L.Conv1D(6, 3, activation="relu", name="c1")(inp)
    x = L.MaxPooling1D(name="pool")(x)
    x = L.Conv1D(5, 3, padding="same", name="c2")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Reshape((-1,), name="flatten_reshape")(x)
    x = L.Dense(6, activation="relu", name="d")(x)
    return randomize(keras.Model(inp, L.Dense(2, name="logits")(x)), seed)


@pytest.fixture(scope="module")
def pw():
    """One Playwright driver per module for the real-browser tests (a second sync driver cannot start in one)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver
