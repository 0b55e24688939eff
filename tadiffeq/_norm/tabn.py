"""Temporal Adaptive BatchNorm (TA-BN)."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Shaped

from .base import (
    AbstractNorm,
    batch_moments,
    check_momentum_eps,
    check_num_features,
    init_affine,
    init_running_statistics,
    normalise,
    unbiased,
)
from .time_grid import AbstractTimeGrid, make_time_grid


class TABatchNorm(AbstractNorm):
    r"""Temporal Adaptive BatchNorm: running statistics *and* affine parameters on a
    uniform time grid over the integration interval (Zheng et al., NeurIPS 2024,
    Eq. 7 and Algorithm 1).

    The grid has M + 1 points t_k = t0 + k h, h = (t1 - t0) / M (both ends included).
    Each point holds a running mean and variance (init 0 and 1) and a learnable
    weight gamma_k and bias beta_k (init 1 and 0). A time t between grid points l and
    l + 1 has the linear-interpolation weights

        w_{l+1} = (t - t_l) / h,    w_l = 1 - w_{l+1}

    so the *nearer* point weighs more. These are the paper's weights; the authors'
    released PyTorch code swaps w_l and w_{l+1} in both the update and the read, so
    there the farther grid point gets more weight. We follow the paper.

    - Training: normalise with the mini-batch mean and (biased) variance; affine
      `sum_k w_k gamma_k`, `sum_k w_k beta_k`; update every grid point with momentum
      `momentum * w_k` (only the two neighbours for linear weights):
      `running_k <- (1 - momentum w_k) running_k + momentum w_k batch`. The running
      variance takes the unbiased batch variance (PyTorch's convention). Statistics
      never carry gradients; the affine parameters do.
    - Inference: normalise with `sum_k w_k running_mean_k` and
      `sum_k w_k running_var_k`, and the same interpolated affine.

    Times outside [t0, t1] are clamped to the end points. `interpolation` selects the
    weights: `"linear"` (above, the default), `"nearest"` (all weight on the nearest
    point, the appendix's "euler" variant) or `"gaussian"` (Gaussian kernel smoothing
    over all points, std `kernel_width`, default h); or pass any
    [`tadiffeq.AbstractTimeGrid`][].

    **Arguments:**

    - `num_features`: number of channels C.
    - `t0`, `t1`: the integration interval the grid covers (default `[0, 1]`); must
      match the `NeuralODE`'s interval.
    - `num_intervals`: M, the number of grid intervals (default `100`, so 101 points).
    - `interpolation`: `"linear"`, `"nearest"`, `"gaussian"`, or a time grid.
    - `kernel_width`: std of the Gaussian kernel in time units (gaussian only).
    - `momentum`: eta (default `0.1`).
    - `eps`: added to the variance (default `1e-5`).
    - `affine`: learn the per-grid-point weight and bias (default `True`).
    - `channel_axis`: channel axis of the batched input (default `-1`).
    - `dtype`: parameter and statistics dtype (default float32).

    The state holds `(running_mean, running_var)`, each of shape `(M + 1, C)`.

    Only grid points next to the times of training evaluations are updated; the
    others keep their initial statistics (mean 0, variance 1). An adaptive solver
    often steps at nearly the same times in every batch, and an inference solve that
    evaluates elsewhere then normalises with those initial values. If inference-mode
    accuracy lags the accuracy with batch statistics, use a coarser grid
    (`num_intervals`); see the depth study in `docs/results.md`.

    ??? cite "Reference"

        ```bibtex
        @inproceedings{zheng2024tabn,
            title={Improving Neural {ODE} Training with Temporal Adaptive Batch
                   Normalization},
            author={Zheng, Su and Gao, Zhengqi and Sun, Fan-Keng and Boning, Duane S.
                    and Yu, Bei and Wong, Martin D.},
            booktitle={Advances in Neural Information Processing Systems},
            year={2024}
        }
        ```
    """

    num_features: int = eqx.field(static=True)
    grid: AbstractTimeGrid
    weight: Float[Array, "points channels"] | None
    bias: Float[Array, "points channels"] | None
    state_index: eqx.nn.StateIndex
    momentum: float = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)
    inference: bool

    batch_independent_at_inference: ClassVar[bool] = True

    def __init__(
        self,
        num_features: int,
        *,
        t0: float = 0.0,
        t1: float = 1.0,
        num_intervals: int = 100,
        interpolation: str | AbstractTimeGrid = "linear",
        kernel_width: float | None = None,
        momentum: float = 0.1,
        eps: float = 1e-5,
        affine: bool = True,
        channel_axis: int = -1,
        dtype=None,
        inference: bool = False,
    ):
        check_num_features("TABatchNorm", num_features)
        check_momentum_eps("TABatchNorm", momentum, eps)
        if isinstance(interpolation, AbstractTimeGrid):
            grid = interpolation
        else:
            grid = make_time_grid(
                interpolation,
                t0=t0,
                t1=t1,
                num_intervals=num_intervals,
                width=kernel_width,
                width_name="kernel_width",
            )
        shape = (grid.num_points, num_features)
        self.num_features = num_features
        self.grid = grid
        self.weight, self.bias = init_affine(shape, affine, dtype)
        self.state_index = init_running_statistics(shape, dtype)
        self.momentum = momentum
        self.eps = eps
        self.channel_axis = channel_axis
        self.inference = inference

    def affine_at(
        self, t: ArrayLike
    ) -> tuple[Float[Array, " channels"] | None, Float[Array, " channels"] | None]:
        """The interpolated affine weight and bias at time `t`."""
        if self.weight is None or self.bias is None:
            return None, None
        w = self.grid.weights(t).astype(self.weight.dtype)
        return w @ self.weight, w @ self.bias

    def statistics_at(
        self, t: ArrayLike, state: eqx.nn.State
    ) -> tuple[Float[Array, " channels"], Float[Array, " channels"]]:
        """The interpolated running mean and variance at time `t`."""
        running_mean, running_var = state.get(self.state_index)
        w = self.grid.weights(t).astype(running_mean.dtype)
        return w @ running_mean, w @ running_var

    def __call__(
        self,
        t: ArrayLike,
        x: Shaped[Array, "batch *rest"],
        state: eqx.nn.State,
        *,
        inference: bool | None = None,
    ) -> tuple[Float[Array, "batch *rest"], eqx.nn.State]:
        axis = self._axis(x)
        gamma, beta = self.affine_at(t)
        if self._is_inference(inference):
            mean, var = self.statistics_at(t, state)
            return normalise(x, axis, mean, var, self.eps, gamma, beta), state
        mean, var, count = batch_moments(x, axis)
        out = normalise(x, axis, mean, var, self.eps, gamma, beta)
        running_mean, running_var = state.get(self.state_index)
        batch_var = unbiased("TABatchNorm", var, count, x.shape)
        # Momentum eta * w_k on every grid point; points of zero weight are left as
        # they are (also when the batch is not finite: 0 * inf would be NaN).
        rate = jax.lax.stop_gradient(
            self.momentum * self.grid.weights(t).astype(running_mean.dtype)
        )[:, None]
        batch_mean = jax.lax.stop_gradient(mean).astype(running_mean.dtype)
        batch_var = jax.lax.stop_gradient(batch_var).astype(running_var.dtype)
        new = tuple(
            jnp.where(rate > 0, running + rate * (batch - running), running)
            for running, batch in (
                (running_mean, batch_mean),
                (running_var, batch_var),
            )
        )
        return out, state.set(self.state_index, new)
