"""Channels-last, time-conditioned 3x3 convolutions that stay fast inside a solve.

Facts measured on XLA:CPU (see docs/benchmarks.md and the project's perf notes) shape
this module:

1. Convolutions inside a loop (every diffrax solve is one) are ~17x slower in the
   NCHW/OIHW layout than at top level; channels-last (NHWC/HWIO) is not affected. So
   every conv here works on batched `(batch, height, width, channels)` arrays.
2. Even channels-last, the *gradients* of a conv inside a loop are slow on XLA:CPU:
   the weight gradient is a grouped convolution, and the stride-2 transposed conv
   ("up") convolves an input that is 3/4 zeros forward, backward and for its weight
   gradient. Dots, slices and pads are fast in loops. So on CPU `conv2d` is written
   as data movement plus one matrix product (`impl="im2col"`): an im2col from
   k*k static (strided) slices of the padded input times the reshaped kernel (or,
   when the output has fewer channels than the input, the product first and the sum
   of k*k shifted slices of it after: "col2im", less data to move); and the
   "up" conv by its sub-pixel decomposition (each of the four output phases reads
   the undilated input at shifts 0 and 1: one dot with a (4 C_in, 4 C_out) block
   kernel, then depth-to-space; 2.25x fewer flops than the dilated conv). Its
   derivatives (forward and reverse mode, `jax.experimental.jet`) are those of
   slices, pads and dots: no custom rules. A 6-conv field's training step went from
   14.9 s to 5.9 s at batch 32 with this change.
3. On GPU and TPU the vendor convolutions are the fast path (`impl="xla"`:
   `lax.conv_general_dilated`, channels-last). `impl="auto"` (the default) takes
   im2col when JAX's default backend is the CPU, xla otherwise, chosen at trace time.

The time channel: the paper's layers concatenate a constant channel equal to t to the
input. Its contribution to a (zero-padded) convolution is t times a fixed map
(interior pixels see the whole kernel, border pixels part of it), computed here
exactly as a small einsum instead of widening every conv input by one channel.
"""

import math
import os
from typing import cast, Literal

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._misc import check_positive_int, check_scalar_time


_DN = ("NHWC", "HWIO", "NHWC")

Mode = Literal["same", "down", "up"]
_IMPLS = ("auto", "xla", "im2col")

# (window strides, padding, input dilation) of each mode for a 3x3 kernel:
#   same: stride 1, pad 1                       -> H
#   down: stride 2, pad 1                       -> ceil(H / 2)
#   up:   a stride-2 transposed conv: dilate the input by 2, pad (1, 2) -> 2H
_GEOMETRY: dict[str, tuple[int, tuple[int, int], int]] = {
    "same": (1, (1, 1), 1),
    "down": (2, (1, 1), 1),
    "up": (1, (1, 2), 2),
}


def conv_geometry(mode: str) -> tuple[int, tuple[int, int], int]:
    """`(stride, (pad_low, pad_high), input_dilation)` of a [`tadiffeq.TimeConv2d`][]
    mode for its 3x3 kernel, the arguments [`tadiffeq.conv2d`][] takes: `"same"`
    keeps H x W, `"down"` halves it (ceil), `"up"` doubles it (a stride-2 transposed
    conv as an input-dilated one)."""
    if mode not in _GEOMETRY:
        raise ValueError(f"`mode` must be one of {list(_GEOMETRY)}, got {mode!r}.")
    return _GEOMETRY[mode]


# Per axis, output phase r of the "up" conv: its (kernel tap, input shift) pairs.
# Output row 2p + r reads dilated-input rows 2p + r - 1 + a; the even ones are real
# input rows p + (r - 1 + a) / 2.
_UP_TAPS = {0: ((1, 0),), 1: ((0, 0), (2, 1))}


def _xla_conv(x, w, stride, padding, dilation):
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=(stride, stride),
        padding=(padding, padding),
        lhs_dilation=(dilation, dilation),
        dimension_numbers=_DN,
    )


def _im2col_conv(x, w, stride, padding):
    """conv(x, w) with no input dilation as `patches @ w.reshape(kh kw cin, cout)`,
    the patches gathered by kh * kw static strided slices of the padded input."""
    kh, kw, cin, cout = w.shape
    lo, hi = padding
    xp = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"conv2d: the padded input {xp.shape[1:3]} is smaller than the kernel "
            f"{(kh, kw)}."
        )
    cols = [
        lax.slice(
            xp,
            (0, i, j, 0),
            (xp.shape[0], i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, cin),
            (1, stride, stride, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(cols, axis=-1)  # feature (i * kw + j) * cin + c
    return patches @ w.reshape(kh * kw * cin, cout)


def _col2im_conv(x, w, stride, padding):
    """The same conv with the product taken first: `x @ w` to all `kh * kw * cout`
    tap outputs at every input pixel, then the sum of the `kh * kw` static (strided)
    slices of its padding that each output pixel reads. Less data movement than the
    im2col when the output side is the thin one (`conv_strategy`)."""
    kh, kw, cin, cout = w.shape
    lo, hi = padding
    b, h, wd, _ = x.shape
    ho = (h + lo + hi - kh) // stride + 1
    wo = (wd + lo + hi - kw) // stride + 1
    z = x @ w.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)  # tap (i, j, o)
    # Split the taps first (its transpose is a concatenation), so that the shifts'
    # transposes pad `cout`-channel arrays only.
    taps = jnp.split(z, kh * kw, axis=-1)
    out = None
    for i in range(kh):
        for j in range(kw):
            zp = jnp.pad(taps[i * kw + j], ((0, 0), (lo, hi), (lo, hi), (0, 0)))
            part = lax.slice(
                zp,
                (0, i, j, 0),
                (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, cout),
                (1, stride, stride, 1),
            )
            out = part if out is None else out + part
    return cast(Array, out)  # set by the kernel's first tap


def _up_kernel(w):
    """The (4 cin, 4 cout) block kernel of the sub-pixel decomposition: rows are the
    input shifts (dp, dq), columns the output phases (r, s)."""
    _, _, cin, cout = w.shape
    zero = jnp.zeros((cin, cout), w.dtype)
    rows = []
    for dp in (0, 1):
        for dq in (0, 1):
            row = []
            for r in (0, 1):
                for s in (0, 1):
                    block = zero
                    for a, sa in _UP_TAPS[r]:
                        for b, sb in _UP_TAPS[s]:
                            if (sa, sb) == (dp, dq):
                                block = block + w[a, b]
                    row.append(block)
            rows.append(jnp.concatenate(row, axis=1))
    return jnp.concatenate(rows, axis=0)


def _subpixel_up_conv(x, w):
    """The stride-2 transposed 3x3 conv (`conv_geometry("up")`) without the dilation's
    zeros: one dot of the four shifted inputs, then depth-to-space."""
    b, h, wd, _ = x.shape
    cout = w.shape[-1]
    xp = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    shifted = jnp.concatenate(
        [xp[:, dp : dp + h, dq : dq + wd] for dp in (0, 1) for dq in (0, 1)], axis=-1
    )
    out = shifted @ _up_kernel(w)  # (B, H, W, 4 cout), phases (r, s)
    out = out.reshape(b, h, wd, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(b, 2 * h, 2 * wd, cout)


def conv_impl(impl: str = "auto") -> str:
    """What [`tadiffeq.conv2d`][]'s `impl` resolves to here: `"xla"` or `"im2col"`
    (`"auto"`: im2col on the CPU backend, else xla, unless the environment variable
    `TADIFFEQ_CONV_IMPL=xla|im2col` says otherwise; read at trace time)."""
    if impl not in _IMPLS:
        raise ValueError(f"`impl` must be one of {list(_IMPLS)}, got {impl!r}.")
    if impl == "auto":
        forced = os.environ.get("TADIFFEQ_CONV_IMPL", "")
        if forced:
            if forced not in ("xla", "im2col"):
                raise ValueError(
                    "The environment variable TADIFFEQ_CONV_IMPL must be xla or "
                    f"im2col, got {forced!r}."
                )
            return forced
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    return impl


def conv_strategy(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: int,
    padding: tuple[int, int],
    dilation: int,
    *,
    impl: str = "auto",
) -> str:
    """The kernel [`tadiffeq.conv2d`][] runs for these shapes and geometry:
    `"xla"` (`lax.conv_general_dilated`), `"im2col"` (patches of the input, one
    dot), `"col2im"` (one dot, then the taps summed into the output: chosen when its
    intermediate, input pixels x kh kw cout, is smaller than im2col's patches,
    output pixels x kh kw cin, e.g. a last layer mapping 32 channels back to 3,
    measured 3-4x faster inside a loop) or `"subpixel"` (the 3x3 "up" geometry by
    its sub-pixel decomposition). Other dilated convs run on xla."""
    if conv_impl(impl) == "xla":
        return "xla"
    if dilation == 1:
        _, h, wd, cin = x_shape
        kh, kw, _, cout = w_shape
        lo, hi = padding
        ho = (h + lo + hi - kh) // stride + 1
        wo = (wd + lo + hi - kw) // stride + 1
        return "col2im" if h * wd * cout < ho * wo * cin else "im2col"
    if (stride, tuple(padding), dilation, tuple(w_shape[:2])) == (1, (1, 2), 2, (3, 3)):
        return "subpixel"
    return "xla"


def conv2d(
    x: Float[Array, "batch height width cin"],
    w: Float[Array, "kh kw cin cout"],
    stride: int,
    padding: tuple[int, int],
    dilation: int,
    *,
    impl: str = "auto",
) -> Float[Array, "batch ho wo cout"]:
    """A channels-last 2-D convolution (NHWC input, HWIO kernel) with the same
    `padding = (low, high)` on both spatial axes and input `dilation` (2 for the
    stride-2 transposed conv), fast inside loops and their gradients on every
    backend.

    `impl`: `"xla"` (`lax.conv_general_dilated`), `"im2col"` (slices + one dot,
    whichever of im2col and col2im moves less data;
    the "up" geometry `stride=1, padding=(1, 2), dilation=2` with a 3x3 kernel by its
    sub-pixel decomposition; other dilated convs fall back to xla) or `"auto"` (im2col
    when JAX's default backend is the CPU, else xla; the environment variable
    `TADIFFEQ_CONV_IMPL=xla|im2col` overrides auto at trace time). All give the same
    values.
    """
    conv_impl(impl)  # checks `impl` first
    if x.ndim != 4 or w.ndim != 4 or x.shape[-1] != w.shape[2]:
        raise ValueError(
            "conv2d: expected `x` of shape (batch, height, width, cin) and `w` of "
            f"shape (kh, kw, cin, cout), got {x.shape} and {w.shape}."
        )
    pad = tuple(padding)
    for name, value in (("stride", stride), ("dilation", dilation)):
        check_positive_int(name, value, owner="conv2d")
    if len(pad) != 2 or any(not isinstance(p, int) or p < 0 for p in pad):
        raise ValueError(
            f"conv2d: `padding` must be (low, high) non-negative ints, got {pad}."
        )
    padding = pad
    if x.dtype != w.dtype:
        raise TypeError(
            f"conv2d: `x` and `w` must have the same dtype, got {x.dtype} and "
            f"{w.dtype}."
        )
    for axis, name in ((1, "height"), (2, "width")):
        padded = (x.shape[axis] - 1) * dilation + 1 + sum(padding)
        if padded < w.shape[axis - 1]:
            raise ValueError(
                f"conv2d: the padded input {name} {padded} is smaller than the "
                f"kernel's {w.shape[axis - 1]} (x {x.shape}, w {w.shape})."
            )
    strategy = conv_strategy(x.shape, w.shape, stride, padding, dilation, impl=impl)
    if strategy == "col2im":
        return _col2im_conv(x, w, stride, padding)
    if strategy == "im2col":
        return _im2col_conv(x, w, stride, padding)
    if strategy == "subpixel":
        return _subpixel_up_conv(x, w)
    return _xla_conv(x, w, stride, padding, dilation)


def tap_mask(
    size: int,
    kernel: int,
    stride: int,
    pad_lo: int,
    dilation: int,
    out_size: int,
    kernel_dilation: int = 1,
) -> np.ndarray:
    """Along one spatial axis of a convolution, mask[i, a] = 1 where output index i,
    kernel tap a reads a real input element (not zero padding, nor a hole of the
    input `dilation`). Shape `(out_size, kernel)`."""
    mask = np.zeros((out_size, kernel), np.float32)
    for i in range(out_size):
        for a in range(kernel):
            p = i * stride + a * kernel_dilation - pad_lo  # in the dilated input
            if 0 <= p <= (size - 1) * dilation and p % dilation == 0:
                mask[i, a] = 1.0
    return mask


def _border_mask(size: int, mode: str, kernel: int = 3) -> np.ndarray:
    """`tap_mask` of a `TimeConv2d` of `mode` on an axis of `size` pixels."""
    stride, (lo, _), dilation = conv_geometry(mode)
    return tap_mask(size, kernel, stride, lo, dilation, _output_size(size, mode))


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
        conv_geometry(mode)  # checks `mode`
        check_positive_int("in_channels", in_channels, owner="TimeConv2d")
        check_positive_int("out_channels", out_channels, owner="TimeConv2d")
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
        check_scalar_time("TimeConv2d", t)
        stride, padding, dilation = conv_geometry(self.mode)
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
