"""Neural ODE variants as vector-field wrappers: Aug-NODE, HBNODE and SONODE.

Each wraps a pluggable inner field and stacks its extra state on the channel (last)
axis, so the ODE state stays one array: convolutional and MLP inner fields both work,
and the step-size controller sees the whole state.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._misc import check_float, check_positive_int
from .field import AbstractVectorField


def _split(y: Array, channels: int) -> tuple[Array, Array]:
    if y.shape[-1] != 2 * channels:
        raise ValueError(
            f"expected a state with 2 * {channels} channels on the last axis, got "
            f"shape {y.shape}."
        )
    return y[..., :channels], y[..., channels:]


class AugmentedField(AbstractVectorField):
    """Aug-NODE (Dupont et al. 2019): `extra` zero channels are appended to the input
    and the inner field evolves all `channels + extra` of them.

    `lift` applies the inner field's `lift` (e.g. flattening for an MLP) and appends
    the zeros on the last axis; `readout` returns the whole augmented state.

    **Arguments:**

    - `field`: the inner field, acting on `channels + extra` channels.
    - `extra`: the number of zero channels to append.
    """

    field: AbstractVectorField
    extra: int = eqx.field(static=True)

    def __check_init__(self):
        check_positive_int("extra", self.extra, owner="AugmentedField")

    def lift(self, x: Float[Array, "batch *shape"]) -> Float[Array, "batch *aug"]:
        y = self.field.lift(x)
        return jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, self.extra)])

    def __call__(self, t: ArrayLike, y: Array, state: eqx.nn.State):
        return self.field(t, y, state)


class _PositionVelocityField(AbstractVectorField):
    """A state (position, velocity) stacked on the last axis: `lift` sets the
    position to the inner field's `lift` of the input and the velocity to zero;
    `readout` returns the position."""

    field: eqx.AbstractVar[AbstractVectorField]
    channels: eqx.AbstractVar[int]

    def lift(self, x: Array) -> Array:
        pos = self.field.lift(x)
        return jnp.concatenate([pos, jnp.zeros_like(pos)], axis=-1)

    def readout(self, y: Array) -> Array:
        return _split(y, self.channels)[0]


class HeavyBallField(_PositionVelocityField):
    """HBNODE (Xia et al. 2021), the heavy-ball Neural ODE: state (h, m),

        dh/dt = m,    dm/dt = f(t, h) - sigmoid(gamma) m

    with a learnable damping `gamma`. `lift` sets h = x, m = 0 (stacked on the last
    axis); `readout` returns h.

    **Arguments:**

    - `field`: the inner field f, on `channels` channels.
    - `channels`: the channels of h (the last axis of the lifted input).
    - `gamma`: initial value of the damping parameter (before the sigmoid; default 0).
    - `dtype`: dtype of `gamma` (default float32).
    """

    field: AbstractVectorField
    gamma: Float[Array, ""]
    channels: int = eqx.field(static=True)

    def __init__(
        self,
        field: AbstractVectorField,
        channels: int,
        *,
        gamma: float = 0.0,
        dtype=None,
    ):
        check_positive_int("channels", channels, owner="HeavyBallField")
        check_float("gamma", gamma, owner="HeavyBallField")
        self.field = field
        self.gamma = jnp.asarray(gamma, jnp.float32 if dtype is None else dtype)
        self.channels = channels

    def __call__(self, t: ArrayLike, y: Array, state: eqx.nn.State):
        h, m = _split(y, self.channels)
        f, state = self.field(t, h, state)
        if f.shape != m.shape:
            raise ValueError(
                f"HeavyBallField: the inner field must return {self.channels} "
                f"channels (shape {m.shape}), got shape {f.shape}."
            )
        damping = jax.nn.sigmoid(self.gamma).astype(m.dtype)
        return jnp.concatenate([m, f - damping * m], axis=-1), state


class SecondOrderField(_PositionVelocityField):
    """SONODE (Norcliffe et al. 2020), a second-order Neural ODE: state (y, v),

        dy/dt = v,    dv/dt = f(t, [y, v])

    where the inner field sees y and v stacked on the last axis (2C channels in) and
    returns C channels. `lift` sets y = x (through the inner field's `lift`, e.g.
    flattening for an MLP), v = 0; `readout` returns y.

    **Arguments:**

    - `field`: the inner field f, mapping `2 * channels` to `channels` channels.
    - `channels`: the channels of y.
    """

    field: AbstractVectorField
    channels: int = eqx.field(static=True)

    def __check_init__(self):
        check_positive_int("channels", self.channels, owner="SecondOrderField")

    def __call__(self, t: ArrayLike, y: Array, state: eqx.nn.State):
        pos, vel = _split(y, self.channels)
        acc, state = self.field(t, y, state)
        if acc.shape != pos.shape:
            raise ValueError(
                f"SecondOrderField: the inner field must return {self.channels} "
                f"channels (shape {pos.shape}), got shape {acc.shape}."
            )
        return jnp.concatenate([vel, acc], axis=-1), state
