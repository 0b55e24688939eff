"""The paper's 18-convolution U-Net vector field."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._misc import check_positive_int
from .._norm.factory import NormSpec, resolve_norm
from .conv import TimeConv2d
from .conv_field import check_image_state, TimeConvBlock
from .field import AbstractVectorField


def max_pool_2x2(x: Float[Array, "batch h w c"]) -> Float[Array, "batch h/2 w/2 c"]:
    """2x2 max-pooling with stride 2, as a reshape and a max (its gradient is a
    cheap select, also inside loops)."""
    b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class UNetField(AbstractVectorField):
    """The 18-conv U-Net vector field of Zheng et al. (2024) on C-channel images.

    Encoder: two time-conditioned conv -> norm -> ReLU layers per level at
    `widths = (32, 64, 128, 256)` channels, 2x2 max-pooling between levels. Decoder,
    per level going up: a stride-2 transposed conv (-> norm -> ReLU) halving the
    channels, concatenation with the encoder's skip connection, two conv layers. A
    final conv -> norm (no ReLU, as the authors' `UNetFinal`) maps 32 -> C;
    `bare_last=True` drops its normalisation (tadiffeq 0.1's field).
    2 * 4 + 3 * 3 + 1 = 18 convolutions.

    The state is channels-last `(batch, height, width, C)`, height and width divisible
    by 8.

    **Arguments:**

    - `channels`: C.
    - `widths`: channels per level (default `(32, 64, 128, 256)`).
    - `out_channels`: channels of dy/dt (default C).
    - `norm`, `norm_kwargs`: as for [`tadiffeq.ConvField`][].
    - `bare_last`: the final conv without normalisation (default `False`).
    - `key`: a `jax.random` key.
    - `dtype`: parameter dtype (default float32).
    """

    down: list[tuple[TimeConvBlock, TimeConvBlock]]
    up: list[tuple[TimeConvBlock, TimeConvBlock, TimeConvBlock]]
    final: TimeConvBlock
    channels: int = eqx.field(static=True)

    def __init__(
        self,
        channels: int,
        widths: Sequence[int] = (32, 64, 128, 256),
        *,
        out_channels: int | None = None,
        norm: NormSpec = "tabn",
        norm_kwargs: dict | None = None,
        bare_last: bool = False,
        key: PRNGKeyArray,
        dtype=None,
    ):
        check_positive_int("channels", channels, owner="UNetField")
        if out_channels is not None:
            check_positive_int("out_channels", out_channels, owner="UNetField")
        widths = tuple(widths)
        for width in widths:
            check_positive_int("widths", width, owner="UNetField")
        if len(widths) < 2:
            raise ValueError(f"`widths` needs at least two levels, got {widths}.")
        keys = iter(jax.random.split(key, 3 * len(widths) * 2))

        def block(cin, cout, mode="same"):
            return TimeConvBlock(
                TimeConv2d(cin, cout, mode, key=next(keys), dtype=dtype),
                resolve_norm(norm, cout, norm_kwargs),
                True,
            )

        down, cin = [], channels
        for width in widths:
            down.append((block(cin, width), block(width, width)))
            cin = width
        up = []
        for deep, shallow in zip(widths[::-1][:-1], widths[::-1][1:]):
            up.append(
                (block(deep, shallow, "up"), block(2 * shallow, shallow),
                 block(shallow, shallow))
            )  # fmt: skip
        self.down = down
        self.up = up
        out = channels if out_channels is None else out_channels
        self.final = TimeConvBlock(
            TimeConv2d(widths[0], out, "same", key=next(keys), dtype=dtype),
            None if bare_last else resolve_norm(norm, out, norm_kwargs),
            False,
        )
        self.channels = channels

    def __call__(
        self, t: ArrayLike, y: Float[Array, "batch h w c"], state: eqx.nn.State
    ) -> tuple[Float[Array, "batch h w cout"], eqx.nn.State]:
        check_image_state("UNetField", y, self.channels, 2 ** (len(self.down) - 1))
        skips = []
        h = y
        for i, (first, second) in enumerate(self.down):
            if i > 0:
                h = max_pool_2x2(h)
            h, state = first(t, h, state)
            h, state = second(t, h, state)
            skips.append(h)
        skips.pop()  # The bottom level feeds the decoder directly.
        for (upconv, first, second), skip in zip(self.up, reversed(skips)):
            h, state = upconv(t, h, state)
            h = jnp.concatenate([h, skip], axis=-1)
            h, state = first(t, h, state)
            h, state = second(t, h, state)
        return self.final(t, h, state)
