"""A multilayer-perceptron vector field with the time concatenated to every layer."""

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._misc import check_positive_int, check_scalar_time
from .._norm.base import AbstractNorm
from .._norm.factory import NormSpec, resolve_norm
from .field import AbstractVectorField


class TimeLinear(eqx.Module):
    """`concat([x, t]) @ W + b` on a batch `(batch, in)`: a linear layer with the time
    as an extra input feature. Initialised as PyTorch's `Linear` (fan-in in + 1)."""

    weight: Float[Array, "in_plus_1 out"]
    bias: Float[Array, " out"]
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)

    def __init__(self, in_features: int, out_features: int, *, key, dtype=None):
        check_positive_int("in_features", in_features, owner="TimeLinear")
        check_positive_int("out_features", out_features, owner="TimeLinear")
        dtype = jnp.float32 if dtype is None else dtype
        wkey, bkey = jax.random.split(key)
        lim = 1.0 / math.sqrt(in_features + 1)
        self.weight = jax.random.uniform(
            wkey, (in_features + 1, out_features), dtype, -lim, lim
        )
        self.bias = jax.random.uniform(bkey, (out_features,), dtype, -lim, lim)
        self.in_features = in_features
        self.out_features = out_features

    def __call__(
        self, t: ArrayLike, x: Float[Array, "batch in"]
    ) -> Float[Array, "batch out"]:
        check_scalar_time("TimeLinear", t)
        w = self.weight.astype(x.dtype)
        t = jnp.asarray(t, x.dtype)
        return x @ w[:-1] + t * w[-1] + self.bias.astype(x.dtype)


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
}


class MLPField(AbstractVectorField):
    """An MLP vector field on flat features: every layer is a
    [`tadiffeq.TimeLinear`][] (time concatenated to its input); hidden layers are
    followed by the normalisation and the activation; the last layer maps back to
    `features`.

    `lift` flattens everything after the batch axis, so images can be passed directly;
    the state is `(batch, features)`.

    **Arguments:**

    - `features`: D, the state dimension.
    - `out_features`: dimension of dy/dt (default D; a second-order field maps 2D to
      D).
    - `hidden`: widths of the hidden layers (default `(64, 64)`).
    - `activation`: `"relu"` (default), `"tanh"`, `"softplus"`, `"elu"`, `"gelu"`.
    - `norm`, `norm_kwargs`: as for [`tadiffeq.ConvField`][]; `norm_layers` limits
      the normalisation to the first so many hidden layers (default: all).
    - `key`: a `jax.random` key.
    - `dtype`: parameter dtype (default float32).
    """

    layers: list[TimeLinear]
    norms: list[AbstractNorm | None]
    features: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        features: int,
        hidden: Sequence[int] = (64, 64),
        *,
        out_features: int | None = None,
        activation: str = "relu",
        norm: NormSpec = "tabn",
        norm_kwargs: dict | None = None,
        norm_layers: int | None = None,
        key: PRNGKeyArray,
        dtype=None,
    ):
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"`activation` must be one of {sorted(_ACTIVATIONS)}, got "
                f"{activation!r}."
            )
        check_positive_int("features", features, owner="MLPField")
        if isinstance(hidden, int) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
        ):
            raise ValueError(
                "MLPField: `hidden` must be a sequence of positive ints (the hidden "
                f"layers' widths, e.g. (64,)), got {hidden!r}."
            )
        if out_features is not None:
            check_positive_int("out_features", out_features, owner="MLPField")
        widths = [features, *hidden, features if out_features is None else out_features]
        keys = jax.random.split(key, len(widths) - 1)
        self.layers = [
            TimeLinear(a, b, key=k, dtype=dtype)
            for a, b, k in zip(widths[:-1], widths[1:], keys)
        ]
        n_norm = len(hidden) if norm_layers is None else norm_layers
        if isinstance(n_norm, bool) or not isinstance(n_norm, int):
            raise TypeError(f"`norm_layers` must be an int, got {norm_layers!r}.")
        if not 0 <= n_norm <= len(hidden):
            raise ValueError(
                f"`norm_layers` must be in [0, {len(hidden)}] (the hidden layers), "
                f"got {norm_layers}."
            )
        self.norms = [
            resolve_norm(norm, width, norm_kwargs) if i < n_norm else None
            for i, width in enumerate(hidden)
        ]
        self.features = features
        self.activation = activation

    def lift(self, x: Float[Array, "batch *shape"]) -> Float[Array, "batch flat"]:
        """Flattens each sample (checked against `features` when called)."""
        if x.ndim < 1:
            raise ValueError(f"MLPField: `x` needs a batch axis, got shape {x.shape}.")
        return x.reshape(x.shape[0], -1)

    def __call__(
        self, t: ArrayLike, y: Float[Array, "batch features"], state: eqx.nn.State
    ) -> tuple[Float[Array, "batch out"], eqx.nn.State]:
        if y.ndim != 2 or y.shape[1] != self.features:
            raise ValueError(
                f"MLPField: the ODE state `y` (the NeuralODE's input `x`) must have "
                f"shape (batch, {self.features}) (inputs are flattened per sample), "
                f"got {y.shape}."
            )
        act = _ACTIVATIONS[self.activation]
        h = y
        for layer, norm in zip(self.layers[:-1], self.norms):
            h = layer(t, h)
            if norm is not None:
                h, state = norm(t, h, state)
            h = act(h)
        return self.layers[-1](t, h), state
