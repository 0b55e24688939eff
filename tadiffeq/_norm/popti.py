"""Pop-TI BatchNorm: one pair of running statistics for all times."""

import equinox as eqx
from jaxtyping import Array, Float

from .base import check_channel_axis, check_momentum_eps, check_num_features
from .batchnorm import AbstractBatchNorm, init_affine, init_running_statistics
from .time_grid import AbstractTimeGrid


class PopTIBatchNorm(AbstractBatchNorm):
    """Standard BatchNorm inside a vector field: one running mean/variance shared by
    all times t ("population statistics, time independent", Pop-TI BN in Zheng et al.
    2024) and a time-independent affine: TA-BN on a one-point grid.

    Training mode normalises with the batch statistics and updates the running pair
    with `running <- (1 - momentum) running + momentum batch` at every recorded
    evaluation (the running variance uses the unbiased batch variance, as PyTorch);
    inference mode normalises with the running pair. Because an adaptive solver
    evaluates the field at different times in every batch, one pair cannot describe
    all of them: this is the baseline TA-BN fixes.

    **Arguments:**

    - `num_features`: number of channels C.
    - `momentum`: running-average momentum (default `0.1`).
    - `eps`: added to the variance (default `1e-5`).
    - `affine`: learn a per-channel weight (init 1) and bias (init 0) (default `True`).
    - `channel_axis`: channel axis of the batched input (default `-1`).
    - `dtype`: parameter and statistics dtype (default float32).

    The state holds `(running_mean, running_var)`, each of shape `(C,)`, initialised
    to zeros and ones.
    """

    num_features: int = eqx.field(static=True)
    weight: Float[Array, " channels"] | None
    bias: Float[Array, " channels"] | None
    state_index: eqx.nn.StateIndex | None
    momentum: float = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)
    inference: bool
    # One pair for all times: no grid, no coverage (see AbstractBatchNorm).
    grid: AbstractTimeGrid | None
    coverage_index: eqx.nn.StateIndex | None
    min_coverage: float = eqx.field(static=True)

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.1,
        eps: float = 1e-5,
        affine: bool = True,
        channel_axis: int = -1,
        dtype=None,
        inference: bool = False,
    ):
        check_num_features("PopTIBatchNorm", num_features, dtype)
        check_momentum_eps("PopTIBatchNorm", momentum, eps)
        check_channel_axis("PopTIBatchNorm", channel_axis)
        self.num_features = num_features
        self.weight, self.bias = init_affine((num_features,), affine, dtype)
        self.state_index = init_running_statistics((num_features,), dtype)
        self.momentum = momentum
        self.eps = eps
        self.channel_axis = channel_axis
        self.inference = inference
        self.grid = None
        self.coverage_index = None
        self.min_coverage = 1.0
