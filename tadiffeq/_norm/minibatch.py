"""Mini-batch BatchNorm: batch statistics in training *and* at test time."""

from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, Float

from .base import check_channel_axis, check_momentum_eps, check_num_features
from .batchnorm import AbstractBatchNorm, init_affine
from .time_grid import AbstractTimeGrid


class MiniBatchNorm(AbstractBatchNorm):
    """BatchNorm that always normalises with the statistics of the current batch and
    keeps no running statistics (the "mini-batch BN" baseline of Zheng et al. 2024).

    Its output for one sample depends on the rest of the batch at test time too, so it
    degrades at small or noisy test batches. The affine parameters are time
    independent.

    **Arguments:**

    - `num_features`: number of channels C.
    - `eps`: added to the variance (default `1e-5`).
    - `affine`: learn a per-channel weight (init 1) and bias (init 0) (default `True`).
    - `channel_axis`: channel axis of the batched input (default `-1`).
    - `dtype`: parameter dtype (default float32).
    """

    num_features: int = eqx.field(static=True)
    weight: Float[Array, " channels"] | None
    bias: Float[Array, " channels"] | None
    eps: float = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)
    inference: bool
    # No time grid, no running statistics (see AbstractBatchNorm).
    grid: AbstractTimeGrid | None
    state_index: eqx.nn.StateIndex | None
    coverage_index: eqx.nn.StateIndex | None
    momentum: float = eqx.field(static=True)
    min_coverage: float = eqx.field(static=True)

    batch_independent_at_inference: ClassVar[bool] = False

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        affine: bool = True,
        channel_axis: int = -1,
        dtype=None,
        inference: bool = False,
    ):
        check_num_features("MiniBatchNorm", num_features, dtype)
        check_momentum_eps("MiniBatchNorm", 0.0, eps)
        check_channel_axis("MiniBatchNorm", channel_axis)
        self.num_features = num_features
        self.weight, self.bias = init_affine((num_features,), affine, dtype)
        self.eps = eps
        self.channel_axis = channel_axis
        self.inference = inference
        self.grid = None
        self.state_index = None
        self.coverage_index = None
        self.momentum = 0.0
        self.min_coverage = 1.0
