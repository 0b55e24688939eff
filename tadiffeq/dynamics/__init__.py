"""Learning dynamical systems from trajectories: the Lorenz'63 field, one-step-ahead
integrators (Fehlberg's 3(2) with the adaptive-solver study's step rule and its
"Fehlberg training" variant, fixed-step RK4, diffrax's adaptive solvers), free runs,
and chaos metrics (valid prediction time, Lyapunov exponents, attractor statistics,
equilibria and their linearisation), and fields equivariant under a known symmetry.
"""

from ._chaos import (
    attractor_scale as attractor_scale,
    attractor_statistics as attractor_statistics,
    AttractorStatistics as AttractorStatistics,
    histogram_distance as histogram_distance,
    largest_lyapunov_exponent as largest_lyapunov_exponent,
    lyapunov_spectrum as lyapunov_spectrum,
    normalised_error as normalised_error,
    valid_prediction_time as valid_prediction_time,
)
from ._diffrax_step import DiffraxStep as DiffraxStep
from ._equilibria import Equilibria as Equilibria, equilibria as equilibria
from ._fehlberg import FehlbergStep as FehlbergStep, heun_rk3 as heun_rk3
from ._lorenz import (
    Lorenz63 as Lorenz63,
    LORENZ63_LYAPUNOV_EXPONENT as LORENZ63_LYAPUNOV_EXPONENT,
)
from ._onestep import (
    AbstractOneStep as AbstractOneStep,
    OneStepInfo as OneStepInfo,
    RK4Step as RK4Step,
    rollout as rollout,
)
from ._symmetry import (
    equivariance_defect as equivariance_defect,
    LORENZ63_SYMMETRY as LORENZ63_SYMMETRY,
    Symmetrized as Symmetrized,
)
