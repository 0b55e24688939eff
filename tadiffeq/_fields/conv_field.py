"""The paper's stacked-convolution vector fields (4, 6, 8, 10 and 12 conv layers)."""

from collections.abc import Sequence

import equinox as eqx
import jax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._misc import check_positive_int
from .._norm.base import AbstractNorm
from .._norm.factory import NormSpec, resolve_norm
from .conv import TimeConv2d
from .field import AbstractVectorField


class TimeConvBlock(eqx.Module):
    """`TimeConv2d` -> normalisation (optional) -> ReLU (optional), on channels-last
    batched maps."""

    conv: TimeConv2d
    norm: AbstractNorm | None
    activation: bool = eqx.field(static=True)

    def __call__(
        self, t: ArrayLike, x: Float[Array, "batch h w cin"], state: eqx.nn.State
    ) -> tuple[Float[Array, "batch ho wo cout"], eqx.nn.State]:
        h = self.conv(t, x)
        if self.norm is not None:
            h, state = self.norm(t, h, state)
        if self.activation:
            h = jax.nn.relu(h)
        return h, state


def _make_blocks(
    spec: Sequence[tuple[int, int, str]],
    norm: NormSpec,
    norm_kwargs: dict | None,
    key: PRNGKeyArray,
    dtype,
    bare_last: bool,
) -> list[TimeConvBlock]:
    keys = jax.random.split(key, len(spec))
    blocks = []
    for i, ((cin, cout, mode), k) in enumerate(zip(spec, keys)):
        bare = bare_last and i == len(spec) - 1
        blocks.append(
            TimeConvBlock(
                TimeConv2d(cin, cout, mode, key=k, dtype=dtype),
                None if bare else resolve_norm(norm, cout, norm_kwargs),
                not bare,
            )
        )
    return blocks


def conv_field_spec(
    channels: int, depth: int, out_channels: int | None = None, width: int = 32
) -> list[tuple[int, int, str]]:
    """(in, out, mode) of each layer of the paper's `depth`-conv field on C channels
    (the last layer maps to `out_channels`, default C). With the paper's `width` 32
    (the first layer's channels; they double at every "down"):

    - 4: C->32 down, 32->64 down, 64->32 up, 32->C up
    - 6: C->32, 32->64 down, 64->128 down, 128->64 up, 64->32 up, 32->C
    - 8: C->32, 32->64 down, 64->128 down, 128->256 down, 256->128 up, 128->64 up,
      64->32 up, 32->C
    - 10, 12: the 8-conv field with 2 or 4 extra 256->256 convs at the bottom.
    """
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f"`width` must be a positive integer, got {width!r}.")
    check_positive_int("channels", channels, owner="ConvField")
    if out_channels is not None:
        check_positive_int("out_channels", out_channels, owner="ConvField")
    c = channels
    o = channels if out_channels is None else out_channels
    w1, w2, w4, w8 = width, 2 * width, 4 * width, 8 * width
    if depth == 4:
        return [(c, w1, "down"), (w1, w2, "down"), (w2, w1, "up"), (w1, o, "up")]
    if depth == 6:
        return [
            (c, w1, "same"), (w1, w2, "down"), (w2, w4, "down"),
            (w4, w2, "up"), (w2, w1, "up"), (w1, o, "same"),
        ]  # fmt: skip
    if depth in (8, 10, 12):
        bottom = [(w8, w8, "same")] * (depth - 8)
        return [
            (c, w1, "same"), (w1, w2, "down"), (w2, w4, "down"), (w4, w8, "down"),
            *bottom,
            (w8, w4, "up"), (w4, w2, "up"), (w2, w1, "up"), (w1, o, "same"),
        ]  # fmt: skip
    raise ValueError(f"`depth` must be one of 4, 6, 8, 10, 12, got {depth!r}.")


class ConvField(AbstractVectorField):
    """The paper's vector field of `depth` time-conditioned 3x3 convolutions on
    C-channel images (Zheng et al. 2024, Figs. 1 and 6): every layer, the last (back to
    C channels) included, is conv -> norm -> ReLU, as in the authors' code
    (`Conv2d4NODE` in their `net.py`; so dy/dt >= 0 elementwise). `bare_last=True`
    makes the last layer a bare conv (tadiffeq 0.1's field). See
    [`tadiffeq.conv_field_spec`][] for the layers of each depth.

    The state `y` is channels-last, `(batch, height, width, channels)`; height and
    width must be divisible by 2 to the number of down-sampling layers (4 for depth 4
    and 6, 8 for depths 8-12).

    **Arguments:**

    - `channels`: C, the number of image channels.
    - `depth`: 4, 6, 8, 10 or 12.
    - `out_channels`: channels of dy/dt (default C; a second-order field maps 2C to
      C).
    - `width`: channels of the first hidden layer (default 32, the paper's); the
      others scale with it (32/64/128/256 -> width x 1/2/4/8).
    - `norm`: a name for [`tadiffeq.make_norm`][] (default `"tabn"`) or a callable
      `num_features -> AbstractNorm`.
    - `norm_kwargs`: keywords for `make_norm` (e.g. `t0`, `t1`, `num_intervals`).
    - `bare_last`: the last layer without normalisation and ReLU (default `False`,
      the authors' field).
    - `key`: a `jax.random` key.
    - `dtype`: parameter dtype (default float32).
    """

    blocks: list[TimeConvBlock]
    channels: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)

    def __init__(
        self,
        channels: int,
        depth: int = 6,
        *,
        out_channels: int | None = None,
        norm: NormSpec = "tabn",
        norm_kwargs: dict | None = None,
        width: int = 32,
        bare_last: bool = False,
        key: PRNGKeyArray,
        dtype=None,
    ):
        spec = conv_field_spec(channels, depth, out_channels, width)
        self.blocks = _make_blocks(spec, norm, norm_kwargs, key, dtype, bare_last)
        self.channels = channels
        self.depth = depth

    @property
    def downsampling(self) -> int:
        """The factor height and width must be divisible by."""
        return 2 ** sum(b.conv.mode == "down" for b in self.blocks)

    def __call__(
        self, t: ArrayLike, y: Float[Array, "batch h w c"], state: eqx.nn.State
    ) -> tuple[Float[Array, "batch h w cout"], eqx.nn.State]:
        check_image_state(type(self).__name__, y, self.channels, self.downsampling)
        for block in self.blocks:
            y, state = block(t, y, state)
        return y, state


def check_image_state(name: str, y, channels: int, divisor: int) -> None:
    """A clear error for a state that is not `(batch, H, W, channels)` with H and W
    divisible by `divisor`."""
    if y.ndim != 4 or y.shape[-1] != channels:
        raise ValueError(
            f"{name}: the state must be channels-last (batch, height, width, "
            f"{channels}), got shape {y.shape}."
        )
    if y.shape[1] % divisor or y.shape[2] % divisor:
        raise ValueError(
            f"{name}: height and width must be divisible by {divisor}, got "
            f"{y.shape[1]}x{y.shape[2]}."
        )
