"""The interface between a regularizer and a `NeuralODE` solve."""

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._solver.observers import AbstractStepObserver


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
    y1: PyTree[Array]  # the (possibly augmented) state at the end time
    observed: tuple | None  # the final state of each observer (None if none)
    state: Any  # the normalisation state the solve started from
    context: Any = None  # model-specific (a NeuralSDE's key for the local step's noise)


class AbstractRegularizer(eqx.Module):
    """A solver-aware regularizer of a [`tadiffeq.NeuralODE`][] training solve.

    Pass one to the solve, `y, state, stats = node(x, state, regularizer=reg,
    key=key)`, and add `stats.regularization` (times a weight, see
    [`tadiffeq.regularization_schedule`][]) to the loss. `stats.num_regularizer_evals`
    counts the extra vector-field evaluations it made.
    """

    @abc.abstractmethod
    def plan(self, node, y0: PyTree[Array], key: PRNGKeyArray | None) -> Plan:
        """What the solve must do for this regularizer."""

    @abc.abstractmethod
    def finish(
        self, node, result: SolveResult
    ) -> tuple[Float[Array, ""], Int[Array, ""] | int]:
        """`(value, extra_evaluations)` from the finished solve."""

    #: Whether `plan` needs a PRNG key.
    needs_key: ClassVar[bool] = True
    #: Whether the value is differentiated through the solver's internal state (needs
    #: a discretise-then-optimise adjoint such as `RecursiveCheckpointAdjoint`).
    through_solve: ClassVar[bool] = False
