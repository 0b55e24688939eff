"""Step observers: small pieces of state that watch every step of a solve.

An observer's state rides in [`tadiffeq.StatefulSolver`][]'s solver state, which
diffrax keeps for accepted steps and discards for rejected ones, so an observer sees
exactly the accepted steps of the forward solve. This is how the adaptive step
controller is exposed to the regularizers: the biased sampler draws a uniformly random
accepted step (a reservoir sample, O(1) memory however many steps the solve takes), the
unbiased one reads the solution at a given time off the dense output, and the global
regularizers accumulate a per-step error or stiffness estimate.
"""

import abc
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

from .._custom_types import Scalar, Y
from .._misc import check_choice, check_float
from .controllers import check_tolerances
from .estimates import scaled_error, stiffness_estimate
from .tableau import RKTableau


class StepInfo(NamedTuple):
    """What one explicit Runge--Kutta step computed, as handed to observers."""

    t0: Array
    t1: Array
    y0: Y
    y1: Y
    y_error: Y | None
    ks: Y  # stage increments k_i = f_i dt, stacked on a leading axis
    tableau: RKTableau  # the solver's Butcher tableau
    interpolation: Any  # diffrax local interpolation over [t0, t1]


class AbstractStepObserver(eqx.Module):
    """Watches the steps of a solve: `init(t0, y0)` gives its initial state,
    `update(state, info)` the state after a step described by a
    [`tadiffeq.StepInfo`][]."""

    @abc.abstractmethod
    def init(self, t0, y0: Y) -> PyTree:
        """The observer's state before the first step."""

    @abc.abstractmethod
    def update(self, state: PyTree, info: StepInfo) -> PyTree:
        """The observer's state after the step `info` (kept only if accepted)."""


class TimeProbe(AbstractStepObserver):
    """Records the solution at a time `t` from the dense output of the accepted step
    that covers it (no extra function evaluation). Gradients are stopped.

    State: `(y(t), found)`.
    """

    t: Scalar

    def init(self, t0, y0):
        zeros = jtu.tree_map(jnp.zeros_like, y0)
        return zeros, jnp.array(False)

    def update(self, state, info: StepInfo):
        y_t, found = state
        t = self.t.astype(jnp.result_type(info.t0))
        hit = (info.t0 <= t) & (t <= info.t1)
        value = jax.lax.stop_gradient(info.interpolation.evaluate(t))
        y_t = jtu.tree_map(
            lambda new, old: jnp.where(hit, new.astype(old.dtype), old), value, y_t
        )
        return y_t, found | hit


class StepReservoir(AbstractStepObserver):
    """A uniformly random interior step boundary of the solve: the *end* of one of
    its accepted steps, excluding the last step's (t1), kept as a reservoir sample of
    one (the n-th candidate replaces the sample with probability 1/n). The end of
    step i is the start of step i + 1, so the candidates are the starts of the
    accepted steps after the first; a solve of a single step keeps its start t0
    (there is no interior boundary). This is the paper's biased sampling
    (`rand(sol.t[1:end-1])` with `save_start=false`). Gradients are stopped.

    State: `(num_accepted, t_sample, y_sample)`.
    """

    key: PRNGKeyArray

    def init(self, t0, y0):
        zeros = jtu.tree_map(jnp.zeros_like, y0)
        t_dtype = jnp.promote_types(jnp.result_type(t0), jnp.float32)
        return jnp.array(0), jnp.asarray(t0, dtype=t_dtype), zeros

    def update(self, state, info: StepInfo):
        count, t_sample, y_sample = state
        count = count + 1
        # Step `count`'s start is candidate `count - 1` (the first step's start, t0,
        # is no candidate: it is only the fallback, taken at the first step).
        u = jax.random.uniform(jax.random.fold_in(self.key, count))
        take = (count == 1) | (u * (count - 1) < 1.0)  # probability 1 / (count - 1)
        t_sample = jnp.where(take, info.t0, t_sample)
        y_new = jax.lax.stop_gradient(info.y0)
        y_sample = jtu.tree_map(
            lambda new, old: jnp.where(take, new, old), y_new, y_sample
        )
        return count, t_sample, y_sample


class StepAccumulator(AbstractStepObserver):
    """Accumulates a per-step quantity over the accepted steps, differentiably:

    - `kind="error"`: `E * dt`, with E the controller's scaled RMS error
      `norm(y_error / (atol + rtol * max(|y0|, |y1|)))` (as `diffrax.PIDController`).
    - `kind="stiffness"`: the stiffness estimate of
      [`tadiffeq.stiffness_estimate`][] divided by the method's real stability
      boundary `stability_size`.

    State: `(sum, max, count)`; see `reduce`.
    """

    kind: str = eqx.field(static=True)  # "error" | "stiffness"
    rtol: float = eqx.field(static=True, default=1e-3)
    atol: float = eqx.field(static=True, default=1e-3)
    stability_size: float = eqx.field(static=True, default=1.0)
    norm: Any = optx.rms_norm

    def __check_init__(self):
        check_choice("kind", self.kind, ("error", "stiffness"), owner="StepAccumulator")
        check_tolerances("StepAccumulator", self.rtol, self.atol)
        check_float(
            "stability_size", self.stability_size, owner="StepAccumulator", low=0.0,
            low_open=True,
        )  # fmt: skip

    def init(self, t0, y0):
        zero = jnp.zeros((), jnp.result_type(*jtu.tree_leaves(y0), float))
        return zero, zero, jnp.array(0)

    def quantity(self, info: StepInfo) -> Scalar:
        dt = jax.lax.stop_gradient(info.t1 - info.t0)
        if self.kind == "error":
            e = scaled_error(
                info.y0, info.y1, info.y_error, self.rtol, self.atol, self.norm
            )
            return e * dt
        rho = stiffness_estimate(info.tableau, info.ks, dt, self.norm)
        return rho / self.stability_size

    def update(self, state, info: StepInfo):
        total, maximum, count = state
        q = self.quantity(info).astype(total.dtype)
        return total + q, jnp.maximum(maximum, q), count + 1

    @staticmethod
    def reduce(
        state: tuple[Scalar, Scalar, Int[Array, ""]],
        how: Literal["sum", "mean", "max"],
    ) -> Scalar:
        total, maximum, count = state
        if how == "sum":
            return total
        if how == "mean":
            return total / jnp.maximum(count, 1)
        return maximum
