"""Global regularization of the solver's heuristics: ERNODE and SRNODE (Pal et al.,
ICML 2021)."""

from typing import cast, Literal

import equinox as eqx

from .._custom_types import Scalar
from .._solver.controllers import (
    check_tolerances,
    controller_norm,
    controller_tolerances,
)
from .._solver.estimates import check_stiffness_tableau, real_stability_boundary
from .._solver.observers import StepAccumulator
from .._solver.tableau import RKTableau
from .base import AbstractRegularizer, Plan, SolveResult, SolveSpec


class GlobalRegularizer(AbstractRegularizer):
    """Accumulates a per-step solver heuristic over *every accepted step* of the
    training solve and differentiates it through the solve: ERNODE (`kind="error"`,
    each step's `E * dt`) and SRNODE (`kind="stiffness"`, each step's stiffness
    estimate over the stability boundary) of Pal et al. (2021), the baseline the
    local regularizer is measured against.

    The accumulator rides in the solver state, so rejected steps do not count.
    Differentiating through the solver state needs a discretise-then-optimise adjoint
    (`RecursiveCheckpointAdjoint`, the default); `BacksolveAdjoint` is refused.

    **Arguments:**

    - `kind`: `"error"` (default) or `"stiffness"`.
    - `reduce`: `"mean"`, `"sum"` or `"max"` over the accepted steps. Default
      `"mean"` for error: the paper writes R_E as the sum of the steps' `E * dt`,
      its code (RegNeuralDE.jl) averages them, which differs by the step count and
      keeps the weight's scale independent of it; `"sum"` is the paper's formula.
      Default `"max"` for stiffness: the stiffest accepted step.
    - `rtol`, `atol`: the error scaling (`kind="error"` only: the stiffness estimate
      takes the controller's norm and no tolerances); default the node's
      `PIDController`'s.

    ??? cite "Reference"

        ```bibtex
        @inproceedings{pal2021opening,
            title={Opening the Blackbox: Accelerating Neural Differential Equations
                   by Regularizing Internal Solver Heuristics},
            author={Pal, Avik and Ma, Yingbo and Shah, Viral and Rackauckas,
                    Christopher V},
            booktitle={International Conference on Machine Learning},
            year={2021}
        }
        ```
    """

    kind: str = eqx.field(static=True, default="error")  # "error" | "stiffness"
    reduce: str | None = eqx.field(static=True, default=None)  # mean|sum|max
    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)

    needs_key = False
    through_solve = True
    supports_sde = True  # kind="error"

    def __check_init__(self):
        if self.kind not in ("error", "stiffness"):
            raise ValueError(
                f"`kind` must be 'error' or 'stiffness', got {self.kind!r}."
            )
        if self.reduce not in (None, "mean", "sum", "max"):
            raise ValueError(
                f"`reduce` must be 'mean', 'sum' or 'max', got {self.reduce!r}."
            )
        check_tolerances("GlobalRegularizer", self.rtol, self.atol)

    @property
    def reduction(self) -> Literal["mean", "sum", "max"]:
        if self.reduce is not None:
            return cast(Literal["mean", "sum", "max"], self.reduce)  # checked
        return "mean" if self.kind == "error" else "max"

    def plan(self, *, spec: SolveSpec, y0, key) -> Plan:
        del y0, key
        if spec.stochastic and self.kind != "error":
            raise ValueError(
                "A NeuralSDE's solve takes GlobalRegularizer(kind='error') only."
            )
        tableau = RKTableau.of(spec.solver)
        stability = 1.0
        if self.kind == "stiffness":
            check_stiffness_tableau(tableau)
            stability = real_stability_boundary(tableau)
        norm = controller_norm(spec.stepsize_controller)
        if self.kind == "error":
            rtol, atol, _ = controller_tolerances(
                spec.stepsize_controller, self.rtol, self.atol
            )
            acc = StepAccumulator("error", rtol, atol, norm=norm)
        else:  # the stiffness estimate scales nothing by the tolerances
            acc = StepAccumulator("stiffness", stability_size=stability, norm=norm)
        return Plan(observers=(acc,))

    def finish(self, *, spec: SolveSpec, result: SolveResult) -> tuple[Scalar, int]:
        assert result.observed is not None  # the plan's observer
        return StepAccumulator.reduce(result.observed[0], self.reduction), 0
