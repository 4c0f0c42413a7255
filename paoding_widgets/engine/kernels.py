"""NumPy kernels for interval propagation: convolutions, pooling, padding, upsampling.

Why: value bounds are propagated every iteration through every layer.  Through
eager Keras calls each convolution paid a NumPy-to-tensor conversion of its
(mostly unchanged) kernel and TensorFlow's dispatch; here a convolution is one
``im2col`` copy (``sliding_window_view``) and one float32 matrix product on the
kernel's *live* channels (input channels whose kernel rows are all zero and
filters whose kernel columns are all zero contribute exactly nothing, so a
pruned network costs less to bound).  Everything is channels-last; a layer
these kernels do not cover returns ``None`` and the caller falls back to Keras.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .threads import PAIR_WORK, pair

_MIN_SAVING = 0.9  # slice a kernel only when at most this share of its channels live


# ------------------------------------------------------------------ geometry
def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        t = tuple(int(x) for x in v)
        return t * n if len(t) == 1 else t
    return (int(v),) * n


def out_size(size: int, k: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """(output size, pad before, pad after) along one axis, as TensorFlow pads."""
    eff = (k - 1) * dilation + 1
    if padding == "valid":
        return max(0, (size - eff) // stride + 1), 0, 0
    if padding == "causal":
        return max(0, (size + eff - 1 - eff) // stride + 1), eff - 1, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return out, total // 2, total - total // 2


@dataclass(frozen=True)
class ConvSpec:
    """Strides, dilation and padding of an N-D convolution or pooling (channels last)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: str

    @classmethod
    def of(cls, cfg: dict[str, Any], kernel: tuple[int, ...]) -> ConvSpec | None:
        n = len(kernel)
        if cfg.get("data_format", "channels_last") not in (None, "channels_last"):
            return None
        pad = str(cfg.get("padding", "valid")).lower()
        if pad not in ("valid", "same", "causal"):
            return None
        return cls(tuple(kernel), _tuple(cfg.get("strides", 1), n), _tuple(cfg.get("dilation_rate", 1), n), pad)

    def pad(self, x: np.ndarray, value: float = 0.0) -> tuple[np.ndarray, tuple[int, ...]]:
        """x padded as the layer pads; and the output spatial shape."""
        widths, outs = [(0, 0)], []
        for ax, (k, s, d) in enumerate(zip(self.kernel, self.strides, self.dilation)):
            o, before, after = out_size(x.shape[1 + ax], k, s, d, self.padding)
            widths.append((before, after))
            outs.append(o)
        widths.append((0, 0))
        if any(w != (0, 0) for w in widths):
            x = np.pad(x, widths, constant_values=value)
        return x, tuple(outs)

    def windows(self, x: np.ndarray, outs: tuple[int, ...]) -> np.ndarray:
        """A view (B, *out, C, *kernel) of the (padded) input's windows."""
        n = len(self.kernel)
        axes = tuple(range(1, n + 1))
        span = tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilation))
        w = sliding_window_view(x, span, axis=axes)
        sl = (slice(None),) + tuple(slice(0, o * s, s) for o, s in zip(outs, self.strides)) + (slice(None),)
        sl += tuple(slice(None, None, d) for d in self.dilation)
        return w[sl]


# ------------------------------------------------------------------ convolution
@dataclass
class PreparedConv:
    """A convolution kernel ready for im2col products: live channels, 2-D kernel and its absolute value."""

    spec: ConvSpec
    in_idx: np.ndarray | None  # live input channels (None: all)
    out_idx: np.ndarray | None  # live filters (None: all)
    k2: np.ndarray  # (taps * live in, live out), rows ordered (tap, channel)
    k2_abs: np.ndarray
    n_out: int

    @classmethod
    def build(cls, kernel: np.ndarray, spec: ConvSpec) -> PreparedConv:
        k = np.asarray(kernel, np.float32)
        cin, cout = k.shape[-2], k.shape[-1]
        k2 = k.reshape(-1, cout)
        k2_abs = np.abs(k2)
        # a channel lives unless all its weights are 0 (sums of |k| by two BLAS products; NaN counts as live)
        in_live = ~((k2_abs @ np.ones(cout, np.float32)).reshape(-1, cin).sum(0) == 0)
        out_live = ~(np.ones(k2.shape[0], np.float32) @ k2_abs == 0)
        in_idx = out_idx = None
        if in_live.sum() <= _MIN_SAVING * cin and in_live.any():
            in_idx = np.flatnonzero(in_live)
        if out_live.sum() <= _MIN_SAVING * cout and out_live.any():
            out_idx = np.flatnonzero(out_live)
        if in_idx is not None or out_idx is not None:
            rows = slice(None) if in_idx is None else (np.arange(k2.shape[0] // cin)[:, None] * cin + in_idx).ravel()
            cols = slice(None) if out_idx is None else out_idx
            k2, k2_abs = k2[rows][:, cols], k2_abs[rows][:, cols]
        return cls(spec, in_idx, out_idx, np.ascontiguousarray(k2), np.ascontiguousarray(k2_abs), cout)

    def both(self, c: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(conv(c, k), conv(r, |k|))``: centre and radius, side by side (:func:`..threads.pair`)."""
        work = 2.0 * c.size * self.k2.shape[1] * int(np.prod(self.spec.kernel))
        if work < PAIR_WORK and c.shape == r.shape:
            # small: one im2col of centre and radius stacked on the batch axis, then a product of each half
            # (the same rows in the same layout as two separate calls, so the same numbers); the copy and
            # the NumPy calls around it were most of a small convolution's time
            b = c.shape[0]
            cols, outs = self._columns(np.concatenate([c, r]))
            half = cols.shape[0] // 2
            return self._finish(cols[:half] @ self.k2, b, outs), self._finish(cols[half:] @ self.k2_abs, b, outs)
        return pair(lambda: self(c), lambda: self(r, absolute=True), work)

    def __call__(self, x: np.ndarray, absolute: bool = False) -> np.ndarray:
        """The convolution (no bias) of a batch ``x`` (B, *spatial, C) with the kernel (or its |.|)."""
        cols, outs = self._columns(x)
        return self._finish(cols @ (self.k2_abs if absolute else self.k2), x.shape[0], outs)

    def _columns(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """im2col of a batch on the live input channels: rows (B, *out), columns (taps, channel)."""
        if self.in_idx is not None:
            x = x[..., self.in_idx]
        x = np.asarray(x, np.float32)
        spec = self.spec
        if all(k == 1 for k in spec.kernel):  # pointwise: strided slice, no copy of windows
            sl = (slice(None),) + tuple(slice(None, None, s) for s in spec.strides) + (slice(None),)
            cols = x[sl]
            outs = cols.shape[1:-1]
            return cols.reshape(-1, cols.shape[-1]), tuple(outs)
        xp, outs = spec.pad(x)
        w = spec.windows(xp, outs)  # (B, *out, C, *kernel)
        n = len(spec.kernel)
        # rows of k2 are ordered (kernel taps..., channel): move channels after the taps
        w = np.moveaxis(w, 1 + n, -1)
        return w.reshape(-1, int(np.prod(w.shape[1 + n:]))), outs

    def _finish(self, y: np.ndarray, b: int, outs: tuple[int, ...]) -> np.ndarray:
        """The product's rows back to (B, *out, filters), dead filters as zeros."""
        y = y.reshape(b, *outs, y.shape[-1])
        if self.out_idx is None:
            return y
        full = np.zeros((*y.shape[:-1], self.n_out), np.float32)
        full[..., self.out_idx] = y
        return full


@dataclass
class PreparedDepthwise:
    """A depthwise kernel (one filter per channel, multiplier 1): taps x channels and its |.|."""

    spec: ConvSpec
    k: np.ndarray  # (taps, C * multiplier)
    k_abs: np.ndarray
    mult: int = 1  # depth multiplier: output channel c * mult + j reads input channel c

    @classmethod
    def build(cls, kernel: np.ndarray, spec: ConvSpec, mult: int = 1) -> PreparedDepthwise:
        k = np.asarray(kernel, np.float32)
        k = k.reshape(-1, k.shape[-2] * k.shape[-1])
        return cls(spec, np.ascontiguousarray(k), np.abs(k), mult)

    def both(self, c: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        work = 2.0 * c.size * self.mult * self.k.shape[0]
        return pair(lambda: self(c), lambda: self(r, absolute=True), work)

    def __call__(self, x: np.ndarray, absolute: bool = False) -> np.ndarray:
        spec = self.spec
        x = np.asarray(x, np.float32)
        if self.mult != 1:
            x = np.repeat(x, self.mult, axis=-1)
        xp, outs = spec.pad(x)
        k = self.k_abs if absolute else self.k
        y = np.zeros((x.shape[0], *outs, x.shape[-1]), np.float32)
        tmp = np.empty_like(y)
        for t, offs in enumerate(np.ndindex(*spec.kernel)):
            sl = (slice(None),) + tuple(slice(o * d, o * d + (n - 1) * s + 1, s)
                                        for o, d, n, s in zip(offs, spec.dilation, outs, spec.strides)) + (slice(None),)
            np.multiply(xp[sl], k[t], out=tmp)
            y += tmp
        return y


def conv_spec(cfg: dict[str, Any], kernel_shape: tuple[int, ...]) -> ConvSpec | None:
    """The spec of a Conv/DepthwiseConv/SeparableConv kernel (spatial dims first), or None (unsupported)."""
    return ConvSpec.of(cfg, tuple(int(k) for k in kernel_shape[:-2]))


# ------------------------------------------------------------------ weight-free layers
def _is_plain(layer: Any, base: type) -> bool:
    """``layer`` is a ``base`` whose ``call`` is Keras' own (a subclass could compute something else)."""
    return isinstance(layer, base) and getattr(type(layer), "call", None) is getattr(base, "call", None)


def passthrough_forward(layer: Any, cfg: dict[str, Any], x: np.ndarray) -> np.ndarray | None:
    """A weight-free, per-channel Keras layer on an array in NumPy; None where not covered here.

    Covers pooling (max/average, local and global), zero padding, cropping,
    nearest upsampling and inference-time identities (dropout, noise), each
    only as Keras itself defines them (channels last).
    """
    from keras import layers as L
    from keras.src.layers.pooling.base_global_pooling import BaseGlobalPooling
    from keras.src.layers.pooling.base_pooling import BasePooling

    if cfg.get("data_format", "channels_last") not in (None, "channels_last"):
        return None
    if _is_plain(layer, BasePooling):
        return _pool(layer, cfg, x)
    if _is_plain(layer, BaseGlobalPooling):
        axes = tuple(range(1, x.ndim - 1))
        keep = bool(cfg.get("keepdims", False))
        if isinstance(layer, (L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D)):
            return x.max(axis=axes, keepdims=keep)
        if isinstance(layer, (L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D)):
            return x.mean(axis=axes, keepdims=keep, dtype=np.float32)
        return None
    for cls in (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D):
        if _is_plain(layer, cls):
            return np.pad(x, [(0, 0), *_pairs(cfg["padding"], x.ndim - 2), (0, 0)])
    for cls in (L.Cropping1D, L.Cropping2D, L.Cropping3D):
        if _is_plain(layer, cls):
            crop = _pairs(cfg["cropping"], x.ndim - 2)
            sl = (slice(None),) + tuple(slice(a, x.shape[1 + i] - b) for i, (a, b) in enumerate(crop)) + (slice(None),)
            return x[sl]
    for cls in (L.UpSampling1D, L.UpSampling2D, L.UpSampling3D):
        if _is_plain(layer, cls):
            if cfg.get("interpolation", "nearest") != "nearest":
                return None
            n = x.ndim - 2
            size = _tuple(cfg.get("size", cfg.get("length", 2)), n)
            for i, s in enumerate(size):
                x = np.repeat(x, s, axis=1 + i)
            return x
    for cls in (L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianNoise,
                L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization, L.Identity):
        if _is_plain(layer, cls):
            return x  # identity at inference
    return None


def _pairs(v: Any, n: int) -> list[tuple[int, int]]:
    """Keras' normalised ((before, after), ...) per spatial axis (1-D layers give one pair)."""
    if n == 1 and isinstance(v, (list, tuple)) and len(v) == 2 and not isinstance(v[0], (list, tuple)):
        return [(int(v[0]), int(v[1]))]
    if isinstance(v, int):
        return [(v, v)] * n
    return [(int(p[0]), int(p[1])) if isinstance(p, (list, tuple)) else (int(p), int(p)) for p in v]


def _pool(layer: Any, cfg: dict[str, Any], x: np.ndarray) -> np.ndarray | None:
    from keras import layers as L

    n = x.ndim - 2
    size = _tuple(cfg["pool_size"], n)
    strides = _tuple(cfg.get("strides") or size, n)
    spec = ConvSpec.of({**cfg, "strides": strides, "dilation_rate": 1}, size)
    if spec is None or spec.padding == "causal":
        return None
    is_max = isinstance(layer, (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D))
    is_avg = isinstance(layer, (L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D))
    if not (is_max or is_avg):
        return None
    axes = tuple(range(-n, 0))
    if is_max:
        xp, outs = spec.pad(x, -np.inf)
        # one elementwise maximum per window offset over strided slices: the same maxima (NaN included) as a
        # reduction over the windows view, about 3x faster on small bounds (a reduction over two short axes)
        out = None
        for off in itertools.product(*(range(k) for k in spec.kernel)):
            sl = (slice(None),) + tuple(slice(o, o + m * st, st) for o, m, st in zip(off, outs, spec.strides))
            out = xp[sl].copy() if out is None else np.maximum(out, xp[sl], out=out)
        return np.zeros((x.shape[0], *outs, x.shape[-1]), x.dtype) if out is None else out
    xp, outs = spec.pad(x, 0.0)
    total = spec.windows(xp, outs).sum(axis=axes, dtype=np.float32)
    if spec.padding == "valid":
        return (total / np.float32(math.prod(size))).astype(np.float32)
    ones = np.ones((1, *x.shape[1:-1], 1), np.float32)
    op, _ = spec.pad(ones, 0.0)
    count = spec.windows(op, outs).sum(axis=axes, dtype=np.float32)
    return (total / count).astype(np.float32)
