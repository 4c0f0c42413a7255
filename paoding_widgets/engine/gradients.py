"""Gradients with respect to the inputs (FGSM, input synthesis), on whichever Keras backend runs.

Why: FGSM needs ``d loss / d x``.  Keras 3 runs on TensorFlow, JAX and PyTorch,
and each has its own autodiff; ``tf.GradientTape`` fails on the other two
(``'ArrayImpl' object has no attribute '_id'`` under JAX).  This module asks the
active backend (``keras.backend.backend()``) for the gradient, through the
model's stateless call where the backend is functional, and returns NumPy.
The loss is Keras' own (``keras.losses``), so it is the same on every backend.
:func:`invert_inputs` uses the same three routes to synthesise inputs for data-free compensation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError


def _loss(from_probs: bool, binary: bool) -> Any:
    import keras

    if binary:
        return keras.losses.BinaryCrossentropy(from_logits=not from_probs)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not from_probs)


def input_gradient(model: Any, x: np.ndarray, labels: np.ndarray, from_probs: bool, binary: bool) -> np.ndarray:
    """``d loss(model(x), labels) / d x`` for one batch, as a float32 NumPy array."""
    import keras

    backend = keras.backend.backend()
    loss_fn = _loss(from_probs, binary)
    x = np.asarray(x, np.float32)
    if backend == "tensorflow":
        import tensorflow as tf

        xb = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(xb)
            loss = loss_fn(labels, model(xb, training=False))
        return np.asarray(tape.gradient(loss, xb), np.float32)
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]

        def loss_of(xv: Any) -> Any:
            out, _ = model.stateless_call(trainable, frozen, xv, training=False)
            return loss_fn(labels, out)

        return np.asarray(jax.grad(loss_of)(jax.numpy.asarray(x)), np.float32)
    if backend == "torch":
        import torch

        xb = torch.tensor(x, requires_grad=True)
        loss = loss_fn(torch.as_tensor(labels), model(xb, training=False))
        loss.backward()
        assert xb.grad is not None
        return xb.grad.detach().cpu().numpy().astype(np.float32)
    raise ConfigError(f"FGSM needs input gradients, which the {backend!r} Keras backend does not give here; "
                      "use KERAS_BACKEND=tensorflow, jax or torch")


def invert_inputs(model: Any, bn_layers: list[Any], targets: list[tuple[np.ndarray, np.ndarray]], x0: np.ndarray,
                  lo: np.ndarray, hi: np.ndarray, steps: int, lr: float = 0.05, labels: np.ndarray | None = None,
                  ce: float = 0.0, tv: float = 0.0, from_logits: bool = True, l2: float | np.ndarray = 0.0,
                  rival: Any = None, disagree: float = 0.0) -> np.ndarray:
    """Inputs moved by projected Adam so the model's BatchNorms see their running statistics.

    Why: synthetic calibration data (ZeroQ / DeepInversion) for data-free compensation, on whichever
    backend runs.  The loss is ``sum_BN mean_c ((mu_c - m_c)^2 + (sd_c - s_c)^2) / (s_c + 1e-3)^2``
    over the batch's per-channel moments at each BN's input (``targets``: moving mean and std), plus
    ``ce`` times the cross-entropy towards ``labels``, ``tv`` times a total-variation prior on image
    inputs (rank 3 or 4) and ``l2`` times an L2 prior (one weight per sample when an array); with a
    ``rival`` model (same input and output shapes, e.g. the pruned model) minus ``disagree`` times
    the mean absolute difference of the two outputs, so the inputs go where the two models disagree
    (DFAD, Fang et al. 2019).  The inputs stay in the box ``[lo, hi]`` after every step.
    """
    import keras

    ops = keras.ops
    heads = [model.outputs[0]] + ([rival(model.inputs[0])] if rival is not None and disagree else [])
    feat = keras.Model(model.inputs, [layer.input for layer in bn_layers] + heads)
    tg = [(ops.convert_to_tensor(m), ops.convert_to_tensor(s)) for m, s in targets]
    lab = None if labels is None or not ce else ops.convert_to_tensor(np.asarray(labels, np.int32))
    l2w = ops.convert_to_tensor(np.broadcast_to(np.asarray(l2, np.float32), (len(x0),)))

    def loss_of(x: Any, out: Any) -> Any:
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        loss = ops.convert_to_tensor(0.0)
        if len(heads) > 1:
            loss = loss - disagree * ops.mean(ops.abs(outs[-1] - outs[-2]))
            outs = outs[:-1]
        for a, (m, sd) in zip(outs[:-1], tg):
            axes = tuple(range(len(a.shape) - 1))
            mu = ops.mean(a, axis=axes)
            s = ops.sqrt(ops.mean(ops.square(a - mu), axis=axes) + 1e-8)  # no NaN gradient at zero spread
            scale = sd + 1e-3
            loss = loss + ops.mean(ops.square((mu - m) / scale) + ops.square((s - sd) / scale))
        if lab is not None:
            loss = loss + ce * ops.mean(keras.losses.sparse_categorical_crossentropy(lab, outs[-1],
                                                                                   from_logits=from_logits))
        if tv and len(x.shape) >= 3:  # images: (batch, rows, cols[, channels])
            loss = loss + tv * (ops.mean(ops.square(x[:, 1:] - x[:, :-1]))
                                + ops.mean(ops.square(x[:, :, 1:] - x[:, :, :-1])))
        if np.any(l2):  # per sample when an array
            loss = loss + ops.mean(l2w * ops.mean(ops.reshape(ops.square(x), (x.shape[0], -1)), axis=1))
        return loss

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def grad(xv: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(xv)
                outs = feat(xv, training=False)
                loss = loss_of(xv, outs)
            return tape.gradient(loss, xv)

        def g(x: np.ndarray) -> np.ndarray:
            return np.asarray(grad(tf.constant(x)), np.float32)
    elif backend == "jax":
        import jax

        trainable = [v.value for v in feat.trainable_variables]
        frozen = [v.value for v in feat.non_trainable_variables]

        def jloss(xv: Any) -> Any:
            outs, _ = feat.stateless_call(trainable, frozen, xv, training=False)
            return loss_of(xv, outs)

        jgrad = jax.jit(jax.grad(jloss))

        def g(x: np.ndarray) -> np.ndarray:
            return np.asarray(jgrad(jax.numpy.asarray(x)), np.float32)
    elif backend == "torch":
        import torch

        def g(x: np.ndarray) -> np.ndarray:
            xb = torch.tensor(x, requires_grad=True)
            loss_of(xb, feat(xb, training=False)).backward()
            assert xb.grad is not None
            return xb.grad.detach().cpu().numpy().astype(np.float32)
    else:
        raise ConfigError(f"input synthesis needs gradients, which the {backend!r} Keras backend does not give here")
    x: np.ndarray = np.clip(np.asarray(x0, np.float32), lo, hi)
    m1: np.ndarray = np.zeros_like(x)
    m2: np.ndarray = np.zeros_like(x)
    b1, b2 = 0.9, 0.999
    for t in range(1, steps + 1):  # Adam, as keras.optimizers.Adam (epsilon 1e-7), then back into the box
        d = g(x)
        m1 = b1 * m1 + (1 - b1) * d
        m2 = b2 * m2 + (1 - b2) * d * d
        x = np.clip(x - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m1 / (np.sqrt(m2) + 1e-7), lo, hi).astype(np.float32)
    return x
