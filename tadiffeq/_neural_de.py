"""The one solve of `NeuralODE` and `NeuralSDE`: plan -> stateful solver -> initial
step -> `diffeqsolve` -> diagnosis -> the regularizer's finish -> `SolveStats`."""

import abc
from typing import Any, ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._custom_types import Scalar, Y
from ._misc import check_float, check_positive_int
from ._regularizers.base import AbstractRegularizer, Plan, SolveResult, SolveSpec
from ._solver.controllers import check_tolerances, pid_controller, with_error_norm
from ._solver.diagnose import check_finite_input, check_solution
from ._solver.stateful import StatefulSolver, time_dtype
from ._solver.tableau import RKTableau


class SolveStats(eqx.Module):
    """What a solve cost, and its regularization.

    Scalars for a batch solved as one system; shape `(batch,)` when every sample was
    solved on its own (inference mode with batch-independent normalisation).

    - `num_steps`: steps attempted (accepted + rejected).
    - `num_accepted_steps`, `num_rejected_steps`.
    - `num_fn_evals`: vector-field evaluations of the forward solve, including the
      initial step-size heuristic's two (adaptive controllers with `dt0=None`) and an
      FSAL method's first evaluation. Evaluations of a backward (adjoint) pass are not
      included.
    - `num_regularizer_evals`: extra evaluations made by the regularizer (e.g. the
      local regularizer's step); the training solve's total is the sum of the two.
    - `regularization`: the regularizer's value (0 without one), differentiable: add
      it, weighted, to the loss.
    - `num_nonfinite_statistics`: running-statistic entries that this (training)
      solve made non-finite and that were kept at their previous values (only with
      `NeuralODE(nonfinite_statistics="keep_previous")`; 0 otherwise).
    """

    num_steps: Int[Array, "*batch"]
    num_accepted_steps: Int[Array, "*batch"]
    num_rejected_steps: Int[Array, "*batch"]
    num_fn_evals: Int[Array, "*batch"]
    num_regularizer_evals: Int[Array, "*batch"]
    regularization: Float[Array, "*batch"]
    num_nonfinite_statistics: Int[Array, "*batch"]

    @classmethod
    def of(
        cls,
        sol: dfx.Solution,
        num_fn_evals,
        regularization,
        num_regularizer_evals,
        num_nonfinite_statistics: ArrayLike = 0,
    ):
        """The stats of a diffrax solution, with the evaluation counts and the
        regularization computed by the caller."""
        num_steps = sol.stats["num_steps"]
        return cls(
            num_steps=num_steps,
            num_accepted_steps=sol.stats["num_accepted_steps"],
            num_rejected_steps=sol.stats["num_rejected_steps"],
            num_fn_evals=jnp.asarray(num_fn_evals, num_steps.dtype),
            num_regularizer_evals=jnp.asarray(num_regularizer_evals, num_steps.dtype),
            regularization=jnp.asarray(regularization),
            num_nonfinite_statistics=jnp.asarray(
                num_nonfinite_statistics, num_steps.dtype
            ),
        )


def check_solve_arguments(
    solver: dfx.AbstractSolver,
    stepsize_controller: dfx.AbstractStepSizeController,
    *,
    t0: float,
    t1: float,
    dt0: float | None,
    max_steps: int,
) -> tuple[float, float, float | None]:
    """Trace-time errors, naming the argument, for the arguments every neural
    differential equation takes; returns `(t0, t1, dt0)` as floats."""
    t0, t1 = check_float("t0", t0), check_float("t1", t1)
    if not t0 < t1:
        raise ValueError(f"Need `t0 < t1`, got t0={t0}, t1={t1}.")
    check_positive_int("max_steps", max_steps)
    tableau = RKTableau.of(solver)  # a TypeError naming `solver` if unsupported
    if not isinstance(stepsize_controller, dfx.AbstractStepSizeController):
        raise TypeError(
            "`stepsize_controller` must be a diffrax step-size controller, got "
            f"{type(stepsize_controller).__name__}."
        )
    name = type(stepsize_controller).__name__
    if isinstance(stepsize_controller, dfx.StepTo):
        raise ValueError(
            "`stepsize_controller=diffrax.StepTo(...)` is not supported (its steps "
            "are fixed in advance, with no `dt0`); use `diffrax.ConstantStepSize()` "
            "with a `dt0`, or an adaptive controller."
        )
    if isinstance(stepsize_controller, dfx.AbstractAdaptiveStepSizeController):
        if not tableau.has_error_estimate:
            raise ValueError(
                f"`solver={type(solver).__name__}()` has no error estimate, so it "
                "cannot be used with an adaptive `stepsize_controller`; use "
                "`diffrax.ConstantStepSize()` with a `dt0`."
            )
    elif dt0 is None:
        raise ValueError(
            f"`stepsize_controller={name}()` does not choose step sizes: it needs an "
            "explicit `dt0` (pass `dt0=`)."
        )
    if dt0 is not None:
        dt0 = check_float("dt0", dt0, low=0.0, low_open=True)
    pid = pid_controller(stepsize_controller)
    if pid is not None:
        check_tolerances("stepsize_controller", pid.rtol, pid.atol)
    return t0, t1, dt0


class AbstractNeuralDE(eqx.Module):
    """What [`tadiffeq.NeuralODE`][] and [`tadiffeq.NeuralSDE`][] share: the solve.

    A subclass says what it solves (`spec`, `_terms`), how its first step is chosen
    when `dt0` is `None` (`_initial_step`) and what becomes of its normalisation
    state (`_statistics`); `_solve` is the one skeleton both run.
    """

    solver: eqx.AbstractVar[dfx.AbstractSolver]
    stepsize_controller: eqx.AbstractVar[dfx.AbstractStepSizeController]
    t0: eqx.AbstractVar[float]
    t1: eqx.AbstractVar[float]
    dt0: eqx.AbstractVar[float | None]
    max_steps: eqx.AbstractVar[int]

    #: The `StatefulSolver` class the solve wraps `solver` in.
    solver_wrapper: ClassVar[type[StatefulSolver]] = StatefulSolver

    @property
    def _adaptive(self) -> bool:
        """Whether the step-size controller chooses the steps (else `dt0` does)."""
        return isinstance(
            self.stepsize_controller, dfx.AbstractAdaptiveStepSizeController
        )

    @abc.abstractmethod
    def spec(self) -> SolveSpec:
        """This model's training solve as regularizers see it."""

    @abc.abstractmethod
    def _terms(
        self, field, state: eqx.nn.State, y0: Y, key: PRNGKeyArray | None
    ) -> dfx.AbstractTerm:
        """The diffrax terms of the solve from `y0` with vector field `field` (the
        spec's, or a regularizer's augmentation of it)."""

    @abc.abstractmethod
    def _initial_step(
        self, terms, solver, controller, t0: Scalar, t1: Scalar, y0: Y, state
    ) -> tuple[Scalar, int]:
        """`(dt0, evaluations)`: the first step when `dt0` is `None`."""

    @abc.abstractmethod
    def _statistics(
        self, state: eqx.nn.State, new_state: eqx.nn.State, ys
    ) -> tuple[Any, eqx.nn.State, ArrayLike]:
        """`(ys, state, num_nonfinite)` after the solve, from the state before it
        (`state`) and the solver's (`new_state`)."""

    def _solve(
        self,
        y0: Y,
        state: eqx.nn.State,
        *,
        ts: Float[Array, " times"] | None = None,
        regularizer: AbstractRegularizer | None = None,
        plan_key: PRNGKeyArray | None = None,
        finish_key: PRNGKeyArray | None = None,
        terms_key: PRNGKeyArray | None = None,
        jitter: tuple[float, PRNGKeyArray] | None = None,
    ) -> tuple[Y, eqx.nn.State, SolveStats]:
        """Solves from `y0` (the lifted input): `(ys, state, stats)`, `ys` at `t1`
        or at `ts`. `jitter = (a, key)` multiplies the first step by
        `2**(-a U)`, U ~ Uniform(0, 1)."""
        y0 = check_finite_input(y0)
        spec = self.spec()
        plan = (
            Plan()
            if regularizer is None
            else regularizer.plan(spec=spec, y0=y0, key=plan_key)
        )
        field, y_init, controller = spec.field, y0, self.stepsize_controller
        if plan.augment is not None:
            field, y_init, restrict = plan.augment(spec.field, y0)
            controller = with_error_norm(controller, restrict)
        # Times in the state's float dtype (at least float32), so that with x64 on
        # a float32 state stays float32 (diffrax would promote it to the times').
        tdt = time_dtype(y_init)
        t0 = jnp.asarray(self.t0, tdt)
        t1 = jnp.asarray(self.t1 if plan.t1 is None else plan.t1, tdt)
        if plan.t1 is not None and ts is not None:
            raise ValueError("`ts` cannot be combined with a random end time (STEER).")
        if ts is not None:
            ts = ts.astype(tdt)
        solver = self.solver_wrapper(self.solver, plan.observers)
        terms = self._terms(field, state, y_init, terms_key)
        if self.dt0 is None:
            dt0, num_heuristic = self._initial_step(
                terms, solver, controller, t0, t1, y_init, state
            )
        else:
            dt0, num_heuristic = jnp.asarray(self.dt0, tdt), 0
        if jitter is not None:
            amount, key = jitter
            dt0 = dt0 * 2.0 ** (-amount * jax.random.uniform(key, (), tdt))
        # A regularizer reads its integrals off the state at t1, also when `ts` ends
        # earlier: then t1 is saved after `ts` (one SaveAt, which BacksolveAdjoint
        # needs) and split off below.
        save_t1 = ts is not None and regularizer is not None
        if ts is None:
            saveat = dfx.SaveAt(t1=True, solver_state=True)
        elif save_t1:
            ts_t1 = jnp.concatenate([ts, jnp.full((1,), t1, ts.dtype)])
            saveat = dfx.SaveAt(ts=ts_t1, solver_state=True)
        else:
            saveat = dfx.SaveAt(ts=ts, solver_state=True)
        adjoint = spec.adjoint
        sol = dfx.diffeqsolve(
            terms,
            solver,
            t0,
            t1,
            dt0,
            y_init,
            saveat=saveat,
            stepsize_controller=controller,
            adjoint=dfx.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
            max_steps=self.max_steps,
            # Solving to t1, a failure is diagnosed below (check_solution).
            throw=ts is not None,
        )
        # SaveAt(t1 or ts, solver_state=True): both are saved.
        assert sol.ys is not None and sol.solver_state is not None
        ys, y_end = sol.ys, None
        if ts is None:
            ys = jtu.tree_map(lambda a: a[0], ys)
            ys = check_solution(
                sol,
                y_init,
                ys,
                max_steps=self.max_steps,
                model_part=None if plan.augment is None else lambda y: y[0],
            )
            y_end = ys
        elif save_t1:
            y_end = jtu.tree_map(lambda a: a[-1], ys)
            ys = jtu.tree_map(lambda a: a[:-1], ys)
        _, new_state, observed = sol.solver_state
        ys, new_state, num_nonfinite = self._statistics(state, new_state, ys)
        value, extra = jnp.zeros((), tdt), 0
        if regularizer is not None:
            result = SolveResult(
                plan=plan, y1=y_end, observed=observed, state=state, key=finish_key
            )
            value, extra = regularizer.finish(spec=spec, result=result)
        if plan.augment is not None:
            ys = ys[0]
        evals = solver.num_evaluations(sol.stats["num_steps"], terms) + num_heuristic
        stats = SolveStats.of(sol, evals, value, extra, num_nonfinite)
        return ys, new_state, stats
