"""No normalisation, with the same interface as the other layers."""

from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, ArrayLike, Float, Shaped

from .base import AbstractNorm, check_channel_axis, check_num_features


class NoNorm(AbstractNorm):
    """The identity, called like the other normalisation layers: returns `(x, state)`
    unchanged. Use it to build the "no normalisation" baseline of a vector field.

    **Arguments:**

    - `num_features`: number of channels C, checked against the input.
    - `channel_axis`: the channel axis of the batched input (default `-1`).
    """

    num_features: int = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True, default=-1)
    inference: bool = False

    batch_independent_at_inference: ClassVar[bool] = True

    def __check_init__(self):
        check_num_features("NoNorm", self.num_features)
        check_channel_axis("NoNorm", self.channel_axis)

    def __call__(
        self,
        t: ArrayLike,
        x: Shaped[Array, "batch *rest"],
        state: eqx.nn.State,
        *,
        inference: bool | None = None,
    ) -> tuple[Float[Array, "batch *rest"], eqx.nn.State]:
        del t, inference
        self._axis(x)
        return x, state
