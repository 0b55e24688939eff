"""BatchNorm inside a vector field: the one body of mini-batch BN, Pop-TI BN and TA-BN.

The three differ only in what their parameters and statistics are indexed by:

| layer | time grid | running statistics | inference normalises with |
|---|---|---|---|
| `MiniBatchNorm` | none (one affine pair) | none | the batch's statistics |
| `PopTIBatchNorm` | none (one pair for all t) | one pair | the running pair |
| `TABatchNorm` | M + 1 points on [t0, t1] | one pair per point | the read at t |

Pop-TI BN is TA-BN on a one-point grid (every time weighs the one point fully), and
mini-batch BN is Pop-TI BN without running statistics.
"""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Shaped

from .base import AbstractNorm
from .time_grid import AbstractTimeGrid


# Statistics and affine parameters: `(channels,)` without a grid, `(points, channels)`
# on a grid.
_Buffer = Float[Array, "*points channels"]


class AbstractBatchNorm(AbstractNorm):
    r"""Base class of the BatchNorm layers: batch statistics in training, and
    affine parameters and (optionally) running statistics that depend on time
    through an optional time grid.

    With a `grid` (TA-BN), a time t spreads over the grid points with the weights
    w(t) = `grid.weights(t)`: the affine parameters read `w(t) @ weight`, and a
    training evaluation updates every point's running statistics with momentum
    `momentum * w_k(t)`. Without one, the layer has a single affine pair and a single
    pair of running statistics for all times (Pop-TI BN), or no running statistics
    (`state_index is None`: mini-batch BN, which normalises with the batch's
    statistics at inference too).

    - Training: normalise with the batch mean and biased variance, then the affine
      read at t; update the running statistics with the *unbiased* batch variance
      (PyTorch's convention), `running <- running + rate (batch - running)`,
      leaving entries of rate 0 as they are. Statistics never carry gradients; the
      affine parameters do.
    - Inference: normalise with the running statistics read at t
      ([`tadiffeq.AbstractBatchNorm.statistics_at`][]) and the affine read with the
      same weights. With `coverage_index` (TA-BN's `coverage_aware=True`) the read
      uses only covered grid points, bias-corrected (see [`tadiffeq.TABatchNorm`][]).

    Subclasses are dataclasses that set the fields; every method is here.
    """

    weight: eqx.AbstractVar[_Buffer | None]
    bias: eqx.AbstractVar[_Buffer | None]
    grid: eqx.AbstractVar[AbstractTimeGrid | None]
    state_index: eqx.AbstractVar[eqx.nn.StateIndex | None]
    coverage_index: eqx.AbstractVar[eqx.nn.StateIndex | None]
    momentum: eqx.AbstractVar[float]
    eps: eqx.AbstractVar[float]
    min_coverage: eqx.AbstractVar[float]

    batch_independent_at_inference: ClassVar[bool] = True

    @property
    def coverage_aware(self) -> bool:
        """Whether the layer tracks coverage and reads only covered points."""
        return self.coverage_index is not None

    def coverage(self, state: eqx.nn.State) -> Float[Array, " points"]:
        """Per grid point, the share of its running statistics that comes from data,
        `c_k = 1 - u_k` in [0, 1] (0: never updated)."""
        if self.coverage_index is None:
            raise ValueError(
                f"{type(self).__name__}.coverage: this layer does not track coverage "
                "(built with `coverage_aware=False`, or it has no time grid)."
            )
        return 1.0 - state.get(self.coverage_index)

    def state_shapes(self) -> list[tuple[eqx.nn.StateIndex, list[tuple[int, ...]]]]:
        """Each state index of the layer with the shapes of the arrays it holds:
        the running mean and variance, `(points, C)` on a grid and `(C,)` without,
        and the coverage, `(points,)`."""
        stats = (self.num_features,)
        if self.grid is not None:
            stats = (self.grid.num_points,) + stats
        out = []
        if self.state_index is not None:
            out.append((self.state_index, [stats, stats]))
        if self.coverage_index is not None:
            out.append((self.coverage_index, [stats[:1]]))
        return out

    def read_weights(
        self, t: ArrayLike, state: eqx.nn.State
    ) -> Float[Array, " points"] | None:
        """The grid weights of the inference read at time `t`: `grid.weights(t)`, or
        with coverage, the weights over the covered points only; `None` without a
        grid."""
        return self._read(t, state)[0]

    def affine_at(
        self, t: ArrayLike, state: eqx.nn.State | None = None
    ) -> tuple[Float[Array, " channels"] | None, Float[Array, " channels"] | None]:
        """The affine weight and bias at time `t` (`(None, None)` without affine
        parameters): as training reads them, or with `state`, as the inference read
        takes them (covered points only, with coverage)."""
        w = self._weights(t) if state is None else self.read_weights(t, state)
        return _at(w, self.weight), _at(w, self.bias)

    def statistics_at(
        self, t: ArrayLike, state: eqx.nn.State
    ) -> tuple[Float[Array, " channels"], Float[Array, " channels"]]:
        """The running mean and variance that the inference read uses at time `t`
        (bias-corrected and over covered points only, with coverage). They carry no
        gradient."""
        if self.state_index is None:
            raise ValueError(
                f"{type(self).__name__}.statistics_at: this layer keeps no running "
                "statistics (it normalises with the batch's)."
            )
        return self._read(t, state)[1:]

    def __call__(
        self,
        t: ArrayLike,
        x: Shaped[Array, "batch *rest"],
        state: eqx.nn.State,
        *,
        inference: bool | None = None,
    ) -> tuple[Float[Array, "batch *rest"], eqx.nn.State]:
        axis = self._axis(x)
        inference = self._is_inference(inference)
        if inference and self.state_index is not None:
            w, mean, var = self._read(t, state)
            gamma, beta = _at(w, self.weight), _at(w, self.bias)
            return normalise(x, axis, mean, var, self.eps, gamma, beta), state
        w = self._weights(t)
        mean, var, count = batch_moments(x, axis)
        if count < 2:
            raise ValueError(
                f"{type(self).__name__}: needs more than one value per channel to "
                f"take batch statistics, got `x` of shape {x.shape}. Use a batch of "
                "at least 2"
                + (
                    ", or a layer with running statistics (TABatchNorm, "
                    "PopTIBatchNorm) for single samples."
                    if self.state_index is None
                    else ", or inference mode."
                )
            )
        out = normalise(
            x, axis, mean, var, self.eps, _at(w, self.weight), _at(w, self.bias)
        )
        if inference or self.state_index is None:
            return out, state
        return out, self._update(w, state, mean, var * (count / (count - 1)))

    def _weights(self, t: ArrayLike) -> Float[Array, " points"] | None:
        """The training weights of time `t` over the grid; `None` without one."""
        return None if self.grid is None else self.grid.weights(t)

    def _read(
        self, t: ArrayLike, state: eqx.nn.State
    ) -> tuple[Array | None, Float[Array, " channels"], Float[Array, " channels"]]:
        """`(weights, mean, var)` of the inference read at time `t`: the weights
        over the grid (`None` without one) and the running statistics read with
        them, bias-corrected where coverage is tracked."""
        assert self.state_index is not None
        running_mean, running_var = jax.lax.stop_gradient(state.get(self.state_index))
        if self.coverage_index is None or self.grid is None:
            w = self._weights(t)
            return w, _contract(w, running_mean), _contract(w, running_var)
        u = jax.lax.stop_gradient(state.get(self.coverage_index))
        covered = (u <= 1.0 - self.min_coverage) & (u < 1.0)
        w = self.grid.covered_weights(t, covered)
        # running = u init + (1 - u) estimate (init: 0 for the mean, 1 for the
        # variance, as init_running_statistics), so the estimate is
        # running + u / (1 - u) (running - init); 0 where uncovered (unread).
        ratio = jnp.where(covered, u / jnp.where(u < 1.0, 1.0 - u, 1.0), 0)[:, None]
        ratio = ratio.astype(running_mean.dtype)
        mean = _contract(w, running_mean + ratio * running_mean)
        # The buffers' rounding, magnified by 1 / (1 - u), can take the estimate of a
        # variance of (nearly) zero below zero (a constant channel: running_var and u
        # both decay as prod(1 - eta w)); a variance is >= 0, and below -eps the
        # normalisation would be NaN.
        var = jnp.maximum(running_var + ratio * (running_var - 1.0), 0.0)
        return w, mean, _contract(w, var)

    def _update(self, w, state, batch_mean, batch_var) -> eqx.nn.State:
        """The state after one training evaluation with weights `w` (`None`: the
        one pair) and these batch statistics (variance unbiased)."""
        assert self.state_index is not None
        running_mean, running_var = state.get(self.state_index)
        # Momentum eta * w_k on every grid point; points of zero weight are left as
        # they are (also when the batch is not finite: 0 * inf would be NaN).
        if w is None:
            rate = jnp.asarray(self.momentum, running_mean.dtype)
        else:
            rate = (self.momentum * w.astype(running_mean.dtype))[:, None]
        rate = jax.lax.stop_gradient(rate)
        new = []
        for running, batch in ((running_mean, batch_mean), (running_var, batch_var)):
            batch = jax.lax.stop_gradient(batch).astype(running.dtype)
            new.append(jnp.where(rate > 0, running + rate * (batch - running), running))
        state = state.set(self.state_index, tuple(new))
        if self.coverage_index is not None:
            # In the coverage's own dtype (at least float32), not the statistics'.
            assert w is not None
            remaining = state.get(self.coverage_index)
            rate = jax.lax.stop_gradient(self.momentum * w.astype(remaining.dtype))
            state = state.set(self.coverage_index, remaining * (1.0 - rate))
        return state


def _contract(w: Array | None, buffer: Array) -> Array:
    """`w @ buffer`: the buffer read with weights `w` over its grid axis; the buffer
    itself without a grid (`w is None`)."""
    return buffer if w is None else w.astype(buffer.dtype) @ buffer


def _at(w: Array | None, buffer: Array | None) -> Array | None:
    """`_contract` of an optional buffer (affine parameters)."""
    return None if buffer is None else _contract(w, buffer)


def init_affine(
    shape: tuple[int, ...], affine: bool, dtype
) -> tuple[Array | None, Array | None]:
    """(weight, bias) initialised to ones and zeros of `shape`, or `(None, None)`."""
    if not affine:
        return None, None
    dtype = jnp.float32 if dtype is None else dtype
    return jnp.ones(shape, dtype), jnp.zeros(shape, dtype)


def init_running_statistics(shape: tuple[int, ...], dtype) -> eqx.nn.StateIndex:
    """A state index holding `(running_mean, running_var)` = (zeros, ones)."""
    dtype = jnp.float32 if dtype is None else dtype
    return eqx.nn.StateIndex((jnp.zeros(shape, dtype), jnp.ones(shape, dtype)))


def batch_moments(
    x: Float[Array, "batch *rest"], axis: int
) -> tuple[Float[Array, " channels"], Float[Array, " channels"], int]:
    """Mean and biased variance of `x` over every axis but `axis`, and the number of
    values per channel. Computed in at least float32."""
    reduce = tuple(i for i in range(x.ndim) if i != axis)
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(xf, axis=reduce)
    var = jnp.mean(jnp.square(xf - jnp.expand_dims(mean, reduce)), axis=reduce)
    count = x.size // x.shape[axis]
    return mean, var, count


def normalise(
    x: Float[Array, "batch *rest"],
    axis: int,
    mean: Float[Array, " channels"],
    var: Float[Array, " channels"],
    eps: float,
    weight: Float[Array, " channels"] | None,
    bias: Float[Array, " channels"] | None,
) -> Float[Array, "batch *rest"]:
    """(x - mean) / sqrt(var + eps) * weight + bias, broadcast along `axis`; the
    result has the dtype of `x`."""
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    scale = jax.lax.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return x * scale.reshape(shape).astype(x.dtype) + shift.reshape(shape).astype(
        x.dtype
    )
