"""The gradient of a classification loss with respect to the inputs, on whichever Keras backend runs.

Why: FGSM needs ``d loss / d x``.  Keras 3 runs on TensorFlow, JAX and PyTorch,
and each has its own autodiff; ``tf.GradientTape`` fails on the other two
(``'ArrayImpl' object has no attribute '_id'`` under JAX).  This module asks the
active backend (``keras.backend.backend()``) for the gradient, through the
model's stateless call where the backend is functional, and returns NumPy.
The loss is Keras' own (``keras.losses``), so it is the same on every backend.
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
