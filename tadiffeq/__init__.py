"""tadiffeq: Neural differential equations in JAX that are accurate and cheap to solve.

Temporal Adaptive BatchNorm (TA-BN) and its baselines as Equinox layers whose running
statistics are explicit `eqx.nn.State` threaded through diffrax solves; the vector
fields and Neural ODE models of the TA-BN paper.
"""

from ._checkpoint import Checkpointer as Checkpointer
from ._fields.conv import (
    conv2d as conv2d,
    conv_geometry as conv_geometry,
    conv_impl as conv_impl,
    conv_strategy as conv_strategy,
    tap_mask as tap_mask,
    TimeConv2d as TimeConv2d,
)
from ._fields.conv_field import (
    conv_field_spec as conv_field_spec,
    ConvField as ConvField,
    TimeConvBlock as TimeConvBlock,
)
from ._fields.field import AbstractVectorField as AbstractVectorField
from ._fields.mlp import MLPField as MLPField, TimeLinear as TimeLinear
from ._fields.unet import UNetField as UNetField
from ._fields.variants import (
    AugmentedField as AugmentedField,
    HeavyBallField as HeavyBallField,
    SecondOrderField as SecondOrderField,
)
from ._models.classifier import (
    count_parameters as count_parameters,
    UnmixedClassifier as UnmixedClassifier,
)
from ._models.latent_ode import LatentODE as LatentODE
from ._neural_de import SolveStats as SolveStats
from ._neural_ode import NeuralODE as NeuralODE
from ._neural_sde import NeuralSDE as NeuralSDE
from ._norm.base import AbstractNorm as AbstractNorm, norm_layers as norm_layers
from ._norm.batchnorm import AbstractBatchNorm as AbstractBatchNorm
from ._norm.factory import make_norm as make_norm, NORM_NAMES as NORM_NAMES
from ._norm.identity import NoNorm as NoNorm
from ._norm.minibatch import MiniBatchNorm as MiniBatchNorm
from ._norm.penalty import affine_penalty as affine_penalty
from ._norm.popti import PopTIBatchNorm as PopTIBatchNorm
from ._norm.tabn import TABatchNorm as TABatchNorm, tabn_coverage as tabn_coverage
from ._norm.time_grid import (
    AbstractTimeGrid as AbstractTimeGrid,
    GaussianTimeGrid as GaussianTimeGrid,
    LinearTimeGrid as LinearTimeGrid,
    make_time_grid as make_time_grid,
    NearestTimeGrid as NearestTimeGrid,
)
from ._regularizers.base import (
    AbstractRegularizer as AbstractRegularizer,
    Plan as Plan,
    SolveResult as SolveResult,
    SolveSpec as SolveSpec,
)
from ._regularizers.global_ import GlobalRegularizer as GlobalRegularizer
from ._regularizers.kinetic import RNODE as RNODE
from ._regularizers.local import (
    local_step_estimate as local_step_estimate,
    LocalRegularizer as LocalRegularizer,
)
from ._regularizers.schedule import regularization_schedule as regularization_schedule
from ._regularizers.steer import STEER as STEER
from ._regularizers.taylor import (
    TayNODE as TayNODE,
    total_derivatives as total_derivatives,
)
from ._sharding import (
    data_parallel_mesh as data_parallel_mesh,
    replicate as replicate,
    shard_batch as shard_batch,
)
from ._solver.estimates import (
    real_stability_boundary as real_stability_boundary,
    scaled_error as scaled_error,
    stiffness_estimate as stiffness_estimate,
)
from ._solver.observers import (
    AbstractStepObserver as AbstractStepObserver,
    StepAccumulator as StepAccumulator,
    StepInfo as StepInfo,
    StepReservoir as StepReservoir,
    TimeProbe as TimeProbe,
)
from ._solver.stateful import (
    clone_state as clone_state,
    StatefulField as StatefulField,
    StatefulSolver as StatefulSolver,
)
from ._solver.tableau import RKTableau as RKTableau


__version__ = "0.2.0"
