"""Channels-last, time-conditioned 3x3 convolutions that stay fast inside a solve.

Two facts measured on XLA:CPU (see the project's perf notes) shape this module:

1. Convolutions inside a loop (every diffrax solve is one) are ~17x slower in the
   NCHW/OIHW layout than at top level; channels-last (NHWC/HWIO) is not affected. So
   every conv here works on batched `(batch, height, width, channels)` arrays.
2. The weight gradient of a conv inside a loop is slow even channels-last. `conv2d`
   therefore has a custom JVP whose weight tangent is an im2col product (patches of
   the input times the kernel tangent, a plain dot). Its transpose, the weight
   gradient, is then a dot as well. The patches are recomputed in the backward pass
   rather than stored. A custom *JVP* (not VJP) keeps forward mode, `jax.jvp`,
   `jax.jacfwd` and `jax.experimental.jet` working.

The time channel: the paper's layers concatenate a constant channel equal to t to the
input. Its contribution to a (zero-padded) convolution is t times a fixed map
(interior pixels see the whole kernel, border pixels part of it), computed here
exactly as a small einsum instead of widening every conv input by one channel.
"""

import functools
import math
from typing import Literal

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


_DN = ("NHWC", "HWIO", "NHWC")

Mode = Literal["same", "down", "up"]

# (window strides, padding, input dilation) of each mode for a 3x3 kernel:
#   same: stride 1, pad 1                       -> H
#   down: stride 2, pad 1                       -> ceil(H / 2)
#   up:   a stride-2 transposed conv: dilate the input by 2, pad (1, 2) -> 2H
_GEOMETRY: dict[str, tuple[int, tuple[int, int], int]] = {
    "same": (1, (1, 1), 1),
    "down": (2, (1, 1), 1),
    "up": (1, (1, 2), 2),
}


def _conv(x, w, stride: int, padding: tuple[int, int], dilation: int):
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=(stride, stride),
        padding=(padding, padding),
        lhs_dilation=(dilation, dilation),
        dimension_numbers=_DN,
    )


@functools.partial(jax.checkpoint, static_argnums=(2, 3, 4))
def _weight_tangent(x, dw, stride, padding, dilation):
    """conv(x, dw) written as patches(x) @ dw: a dot, and so is its transpose."""
    kh, kw, cin, cout = dw.shape
    patches = lax.conv_general_dilated_patches(
        x,
        (kh, kw),
        (stride, stride),
        (padding, padding),
        lhs_dilation=(dilation, dilation),
        dimension_numbers=_DN,
    )  # (B, Ho, Wo, cin * kh * kw), feature index = c * kh * kw + i * kw + j
    dw_flat = jnp.transpose(dw, (2, 0, 1, 3)).reshape(cin * kh * kw, cout)
    return jnp.einsum("bhwk,ko->bhwo", patches, dw_flat.astype(patches.dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def conv2d(
    x: Float[Array, "batch height width cin"],
    w: Float[Array, "kh kw cin cout"],
    stride: int,
    padding: tuple[int, int],
    dilation: int,
) -> Float[Array, "batch ho wo cout"]:
    """A channels-last 2-D convolution (NHWC input, HWIO kernel) with the same
    symmetric `padding` on both spatial axes and input `dilation` (for transposed
    convolutions), differentiable fast inside loops."""
    return _conv(x, w, stride, padding, dilation)


def _conv2d_jvp(stride, padding, dilation, primals, tangents):
    x, w = primals
    dx, dw = tangents
    out = _conv(x, w, stride, padding, dilation)
    parts = []
    if not isinstance(dx, SymbolicZero):
        parts.append(_conv(dx, w, stride, padding, dilation))
    if not isinstance(dw, SymbolicZero):
        parts.append(_weight_tangent(x, dw, stride, padding, dilation))
    tangent = functools.reduce(jnp.add, parts) if parts else jnp.zeros_like(out)
    return out, tangent


conv2d.defjvp(_conv2d_jvp, symbolic_zeros=True)


def _border_mask(size: int, mode: str, kernel: int = 3) -> np.ndarray:
    """mask[i, a] = 1 where output row i, kernel row a reads a real input pixel (not
    zero padding, nor a hole of the input dilation)."""
    stride, (lo, _), dilation = _GEOMETRY[mode]
    out_size = _output_size(size, mode)
    mask = np.zeros((out_size, kernel), np.float32)
    for i in range(out_size):
        for a in range(kernel):
            p = i * stride + a - lo  # position in the dilated input
            if 0 <= p <= (size - 1) * dilation and p % dilation == 0:
                mask[i, a] = 1.0
    return mask


def _output_size(size: int, mode: str) -> int:
    if mode == "same":
        return size
    if mode == "down":
        return (size + 1) // 2
    return 2 * size


def _kaiming_uniform(key, shape, fan_in, dtype):
    """PyTorch's default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    lim = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -lim, lim)


class TimeConv2d(eqx.Module):
    """A 3x3 convolution of `concat([x, t], channels)`: the time t as an extra constant
    input channel, zero padding 1 (Zheng et al. 2024; Chen et al. 2018).

    `mode` is `"same"` (stride 1), `"down"` (stride 2, halves height and width) or
    `"up"` (stride-2 transposed convolution, doubles them). Input and output are
    channels-last, `(batch, height, width, channels)`.

    **Arguments:**

    - `in_channels`, `out_channels`: C_in (without the time channel) and C_out.
    - `mode`: `"same"`, `"down"` or `"up"`.
    - `key`: a `jax.random` key.
    - `dtype`: parameter dtype (default float32).

    The kernel has shape `(3, 3, in_channels + 1, out_channels)`; its last input
    channel is the time channel. Initialised as PyTorch's `Conv2d`.
    """

    weight: Float[Array, "3 3 cin_plus_1 cout"]
    bias: Float[Array, " cout"]
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    mode: str = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mode: str = "same",
        *,
        key: PRNGKeyArray,
        dtype=None,
    ):
        if mode not in _GEOMETRY:
            raise ValueError(f"`mode` must be one of {list(_GEOMETRY)}, got {mode!r}.")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        dtype = jnp.float32 if dtype is None else dtype
        wkey, bkey = jax.random.split(key)
        fan_in = 9 * (in_channels + 1)
        self.weight = _kaiming_uniform(
            wkey, (3, 3, in_channels + 1, out_channels), fan_in, dtype
        )
        self.bias = _kaiming_uniform(bkey, (out_channels,), fan_in, dtype)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.mode = mode

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        return _output_size(height, self.mode), _output_size(width, self.mode)

    def __call__(
        self, t: ArrayLike, x: Float[Array, "batch height width cin"]
    ) -> Float[Array, "batch ho wo cout"]:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"TimeConv2d: `x` must have shape (batch, height, width, "
                f"{self.in_channels}), got {x.shape}."
            )
        stride, padding, dilation = _GEOMETRY[self.mode]
        w = self.weight.astype(x.dtype)
        out = conv2d(x, w[:, :, :-1, :], stride, padding, dilation)
        # The constant time channel: t * sum over the kernel taps that read real
        # pixels, exactly what the zero-padded concatenated channel would give.
        _, h, wd, _ = x.shape
        rows = jnp.asarray(_border_mask(h, self.mode), x.dtype)
        cols = jnp.asarray(_border_mask(wd, self.mode), x.dtype)
        time_map = jnp.einsum("ia,jb,abo->ijo", rows, cols, w[:, :, -1, :])
        t = jnp.asarray(t, x.dtype)
        return out + t * time_map + self.bias.astype(x.dtype)
