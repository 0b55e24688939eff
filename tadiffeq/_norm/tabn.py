"""Temporal Adaptive BatchNorm (TA-BN)."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._misc import check_float
from .base import (
    check_channel_axis,
    check_momentum_eps,
    check_num_features,
    norm_layers,
)
from .batchnorm import AbstractBatchNorm, init_affine, init_running_statistics
from .time_grid import AbstractTimeGrid, make_time_grid


class TABatchNorm(AbstractBatchNorm):
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

    **Coverage (the library's default, beyond the paper).** Only grid points near the
    times of training evaluations are ever updated, and an adaptive solver often
    steps at nearly the same times in every batch: in the depth study of
    `docs/results.md` (M = 100) one training solve touched 37 of the 101 points and
    4-21 points per layer were never updated, so inference solves, which evaluate
    elsewhere, normalised with the initial mean 0 / variance 1 and untrained affine
    parameters, and accuracy fell from 0.93-0.97 (batch statistics) to 0.62-0.79.
    With `coverage_aware=True` the state also holds, per grid point, the weight
    `u_k` that the initial value still has in its running statistics (init 1,
    `u_k <- (1 - momentum w_k) u_k` at every update, so the *coverage*
    `c_k = 1 - u_k` is the momentum average of the constant 1, as Adam's bias
    correction). The inference read then

    - bias-corrects each point's statistics:
      `(running_k - u_k init) / (1 - u_k)` with init 0 for the mean, 1 for the
      variance (the momentum average of the batch statistics alone);
    - uses only *covered* points, `c_k >= min_coverage` (default `momentum / 2`:
      the point holds at least about half of one evaluation's weight, i.e. it was
      the nearer neighbour of at least one training evaluation), for the
      statistics *and* the affine parameters (an uncovered point's affine never
      received a gradient either): linear interpolation between the nearest covered
      points on either side of t, flat beyond the outermost (see
      [`tadiffeq.AbstractTimeGrid.covered_weights`][]).

    Where every point is fully covered (`u_k = 0`) this is the paper's read
    exactly; where no point is covered (`c_k < min_coverage` everywhere) it is the
    paper's read of the buffers as they are (the initial values, or barely updated
    ones, not bias-corrected). Training mode is unchanged. `coverage_aware=False`
    is the paper's rule exactly (and the state layout of tadiffeq 0.1: checkpoints
    written before coverage existed load into such a layer). `coverage(state)`
    returns `c`.

    Coverage makes inference read only what training saw; to make training see the
    whole grid, train with `NeuralODE(..., first_step_jitter=1.0)` (and a `key` in
    every training call): the solver's step times then move from batch to batch. In
    `docs/results.md` (conv fields, M = 100) that covers every grid point, brings
    the inference read within 0.5 point of batch statistics and inference solves to
    the training NFE.

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
    - `dtype`: parameter and statistics dtype (default float32); the coverage is
      kept in at least float32.
    - `coverage_aware`: track coverage and read only covered, bias-corrected points
      at inference (default `True`, above); `False` for the paper's rule.
    - `min_coverage`: the coverage from which a point counts as covered, in (0, 1]
      (default `momentum / 2`).

    The state holds `(running_mean, running_var)` under `state_index`, each of shape
    `(M + 1, C)`, and with `coverage_aware=True` the initial value's remaining
    weight `u`, shape `(M + 1,)`, under `coverage_index`.

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
    grid: AbstractTimeGrid | None
    weight: Float[Array, "points channels"] | None
    bias: Float[Array, "points channels"] | None
    state_index: eqx.nn.StateIndex | None
    coverage_index: eqx.nn.StateIndex | None
    min_coverage: float = eqx.field(static=True)
    momentum: float = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)
    inference: bool

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
        coverage_aware: bool = True,
        min_coverage: float | None = None,
        inference: bool = False,
    ):
        check_num_features("TABatchNorm", num_features, dtype)
        check_momentum_eps("TABatchNorm", momentum, eps)
        check_channel_axis("TABatchNorm", channel_axis)
        if not isinstance(coverage_aware, bool):
            raise TypeError(
                f"TABatchNorm: `coverage_aware` must be a bool, got {coverage_aware!r}."
            )
        if min_coverage is None:
            min_coverage = momentum / 2
        elif not coverage_aware:
            raise ValueError(
                "TABatchNorm: `min_coverage` only applies with `coverage_aware=True`."
            )
        else:
            check_float(
                "min_coverage", min_coverage, owner="TABatchNorm", low=0.0, high=1.0,
                low_open=True,
            )  # fmt: skip
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
        self.coverage_index = (
            eqx.nn.StateIndex(
                # At least float32: in bfloat16 / float16 the product of (1 - eta w)
                # is a percent off within a few steps, and the read divides by it.
                jnp.ones(
                    shape[:1],
                    jnp.promote_types(
                        jnp.float32 if dtype is None else dtype, jnp.float32
                    ),
                )
            )
            if coverage_aware
            else None
        )
        self.min_coverage = float(min_coverage)
        self.momentum = momentum
        self.eps = eps
        self.channel_axis = channel_axis
        self.inference = inference


def tabn_coverage(model, state: eqx.nn.State) -> list[Float[Array, " points"]]:
    """The coverage of every coverage-aware [`tadiffeq.TABatchNorm`][] in `model`, in
    pytree order: per layer, `layer.coverage(state)`, shape `(M + 1,)`, the share of
    each grid point's running statistics that comes from data (0: never updated)."""
    return [
        layer.coverage(state)
        for layer in norm_layers(model)
        if isinstance(layer, TABatchNorm) and layer.coverage_aware
    ]
