"""The interface between a regularizer and the solve of a `NeuralODE` or `NeuralSDE`."""

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax as dfx
import equinox as eqx
from jaxtyping import PRNGKeyArray

from .._custom_types import Count, Scalar, Y
from .._solver.observers import AbstractStepObserver


class SolveSpec(eqx.Module):
    """The training solve a regularizer joins, explicit and typed (as diffrax hands
    `AbstractAdjoint.loop` its solve): what [`tadiffeq.AbstractRegularizer`][]'s
    `plan` and `finish` read, instead of the model.

    - `field`: the vector field `(t, y, state) -> (dy/dt, state)` (a NeuralSDE's
      drift).
    - `solver`, `stepsize_controller`, `adjoint`: the model's diffrax objects.
    - `t0`, `t1`: the interval; `dt0`: the fixed first step, or `None` (the
      controller's heuristic).
    - `local_step`: the model's one adaptive step from `(t, y)`,
      `(state, t, y, *, kind, rtol, atol, stop_first_stage, key) -> (value,
      evaluations)` (see [`tadiffeq.local_step_estimate`][]), or `None`: the ODE
      step of `local_step_estimate` on this spec.
    - `stochastic`: whether the solve is a NeuralSDE's (drift plus noise).
    """

    field: Callable
    solver: dfx.AbstractSolver
    stepsize_controller: dfx.AbstractStepSizeController
    adjoint: dfx.AbstractAdjoint | None
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    local_step: Callable | None = None
    stochastic: bool = eqx.field(static=True, default=False)


class Plan(eqx.Module):
    """How a regularizer changes one training solve.

    - `observers`: step observers to run during the solve (their final states are
      handed back to `finish`).
    - `t1`: the end time to integrate to (STEER changes it); `None` keeps the node's.
    - `augment`: for regularizers integrated along the solve, a function
      `(field, y0) -> (field, y0, restrict)` giving the augmented vector field, the
      augmented initial state `(y0, aux...)` and `restrict: norm -> norm`, which makes
      the controller's error norm see only the model's own state (the auxiliary
      integrals are excluded from error control); `None` for no augmentation.
    """

    observers: tuple[AbstractStepObserver, ...] = ()
    t1: Any = None
    augment: Callable | None = eqx.field(static=True, default=None)


class SolveResult(eqx.Module):
    """What `finish` sees after the solve."""

    plan: Plan  # the plan the solve followed
    y1: Y  # the (possibly augmented) state at the end time
    observed: tuple | None  # the final state of each observer (None if none)
    state: Any  # the normalisation state the solve started from
    key: PRNGKeyArray | None = None  # for a stochastic local step's noise


class AbstractRegularizer(eqx.Module):
    """A solver-aware regularizer of a [`tadiffeq.NeuralODE`][] (or
    [`tadiffeq.NeuralSDE`][]) training solve.

    Pass one to the solve, `y, state, stats = node(x, state, regularizer=reg,
    key=key)`, and add `stats.regularization` (times a weight, see
    [`tadiffeq.regularization_schedule`][]) to the loss. `stats.num_regularizer_evals`
    counts the extra vector-field evaluations it made.

    A new regularizer implements `plan` (what the solve must do: observers of its
    steps, another end time, an augmented state) and `finish` (its value from the
    finished solve); both receive the solve as a [`tadiffeq.SolveSpec`][], keyword
    only. The class variables say what it needs and supports.
    """

    @abc.abstractmethod
    def plan(self, *, spec: SolveSpec, y0: Y, key: PRNGKeyArray | None) -> Plan:
        """What the solve from `y0` must do for this regularizer. Raises a ValueError
        for a solve it cannot regularize."""

    @abc.abstractmethod
    def finish(self, *, spec: SolveSpec, result: SolveResult) -> tuple[Scalar, Count]:
        """`(value, extra_evaluations)` from the finished solve."""

    #: Whether `plan` needs a PRNG key.
    needs_key: ClassVar[bool] = True
    #: Whether the value is differentiated through the solver's internal state (needs
    #: a discretise-then-optimise adjoint such as `RecursiveCheckpointAdjoint`).
    through_solve: ClassVar[bool] = False
    #: Whether it regularizes a NeuralSDE's solve (`spec.stochastic`).
    supports_sde: ClassVar[bool] = False
