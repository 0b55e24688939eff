"""The interface shared by every normalisation layer of a vector field."""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Shaped

from .._misc import check_float, check_positive_int


class AbstractNorm(eqx.Module):
    """Base class of the normalisation layers used inside vector fields.

    Every layer is called as `y, state = norm(t, x, state)`, the way `eqx.nn.BatchNorm`
    is called with an `eqx.nn.State`, with the time `t` in front:

    - `t`: the scalar time at which the vector field is evaluated.
    - `x`: a *batched* array, `(batch, channels)` for vectors or
      `(batch, height, width, channels)` for feature maps (any number of axes between
      batch and channels). The channel axis is `channel_axis` (default last, the
      library's internal layout; pass `channel_axis=1` for `(batch, channels, ...)`).
      Batch statistics are taken over every axis but the channel axis.
    - `state`: an `eqx.nn.State` holding the running statistics.

    In training mode (`inference=False`) layers with running statistics return the
    state updated with this evaluation; in inference mode the state comes back
    unchanged. Toggle the mode with `eqx.nn.inference_mode(model)`, or per call with
    the `inference=` keyword.
    """

    num_features: eqx.AbstractVar[int]
    channel_axis: eqx.AbstractVar[int]
    inference: eqx.AbstractVar[bool]

    #: Whether a sample's output is independent of the rest of the batch in inference
    #: mode. `NeuralODE` then solves each sample on its own at inference time.
    batch_independent_at_inference: ClassVar[bool]

    @abc.abstractmethod
    def __call__(
        self,
        t: ArrayLike,
        x: Shaped[Array, "batch *rest"],
        state: eqx.nn.State,
        *,
        inference: bool | None = None,
    ) -> tuple[Float[Array, "batch *rest"], eqx.nn.State]:
        """Normalises `x` at time `t`; returns `(output, state)`."""

    # Helpers shared by subclasses.

    def _axis(self, x: Array) -> int:
        """The channel axis of `x` as a non-negative index, checking the input."""
        cls = type(self).__name__
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise TypeError(f"{cls}: `x` must be an array, got {type(x).__name__}.")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"{cls}: `x` must be a floating-point array, got dtype {x.dtype}."
            )
        if x.ndim < 2:
            raise ValueError(
                f"{cls}: `x` must be batched, of shape (batch, ..., channels); got "
                f"shape {x.shape}. tadiffeq keeps the batch inside the ODE state, so "
                "batch statistics are taken at one time t."
            )
        if not -x.ndim <= self.channel_axis < x.ndim:
            raise ValueError(
                f"{cls}: `channel_axis={self.channel_axis}` is out of range for `x` "
                f"of shape {x.shape} ({x.ndim} axes)."
            )
        axis = self.channel_axis % x.ndim
        if axis == 0:
            raise ValueError(
                f"{cls}: `channel_axis={self.channel_axis}` points at the batch axis "
                f"of `x` (shape {x.shape})."
            )
        if x.shape[axis] != self.num_features:
            raise ValueError(
                f"{cls}: `x` has {x.shape[axis]} channels on axis {self.channel_axis} "
                f"(shape {x.shape}), expected num_features={self.num_features}."
            )
        return axis

    def _is_inference(self, inference: bool | None) -> bool:
        return self.inference if inference is None else inference


def norm_layers(tree) -> list[AbstractNorm]:
    """Every normalisation layer in `tree` (a model), in pytree order."""
    is_norm = lambda x: isinstance(x, AbstractNorm)
    return [x for x in jax.tree_util.tree_leaves(tree, is_leaf=is_norm) if is_norm(x)]


def check_num_features(cls_name: str, num_features: int, dtype=None) -> None:
    """`num_features` a positive int and `dtype` (if given) a floating dtype."""
    check_positive_int("num_features", num_features, owner=cls_name)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{cls_name}: `dtype` must be a floating-point dtype, got {dtype}."
        )


def check_momentum_eps(cls_name: str, momentum: float, eps: float) -> None:
    """`momentum` a float in [0, 1] and `eps` a positive finite float."""
    check_float("momentum", momentum, owner=cls_name, low=0.0, high=1.0)
    check_float("eps", eps, owner=cls_name, low=0.0, low_open=True)


def check_channel_axis(cls_name: str, channel_axis: int) -> None:
    """`channel_axis` an int other than 0 (axis 0 is always the batch)."""
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, int):
        raise ValueError(
            f"{cls_name}: `channel_axis` must be an int, got {channel_axis!r}."
        )
    if channel_axis == 0:
        raise ValueError(
            f"{cls_name}: `channel_axis=0` is the batch axis; the channels are on "
            "another axis (default -1, the last)."
        )
