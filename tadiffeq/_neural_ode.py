"""`NeuralODE`: solve dy/dt = f(t, y) with diffrax, threading normalisation state."""

import math
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._custom_types import BatchedY, Y
from ._norm.base import norm_layers
from ._norm.tabn import TABatchNorm
from ._regularizers.base import AbstractRegularizer, Plan, SolveResult, SolveSpec
from ._regularizers.local import local_step_estimate
from ._solver.controllers import check_tolerances, pid_controller, with_error_norm
from ._solver.diagnose import check_finite_input, check_solution
from ._solver.stateful import clone_state, StatefulField, StatefulSolver, time_dtype
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


class NeuralODE(eqx.Module):
    """A Neural ODE dy/dt = field(t, y) over `[t0, t1]`, solved with diffrax, whose
    vector field may hold normalisation layers with running statistics.

    The vector field is called as `dy, state = field(t, y, state)` with the batch
    inside `y` (shape `(batch, ...)`), so the whole batch is one system: it shares step
    sizes, and batch statistics are taken at one time t.

    **Training mode** (`inference=False`, the default): the batch is solved as one
    system and the returned state holds the running statistics updated with every
    evaluation of the forward solve's accepted steps, in evaluation order (see
    [`tadiffeq.StatefulSolver`][] for exactly which evaluations count). The statistics
    never carry gradients; parameters do.

    **Inference mode** (`eqx.nn.inference_mode(model)`): the state is returned
    unchanged. If every normalisation layer is independent of the batch at inference
    (TA-BN, Pop-TI BN, none) each sample is solved on its own (a `vmap` over the
    batch, each sample a batch of one with its own step sizes), so a sample's output
    does not depend on the rest of the batch. Mini-batch BN needs the batch and is
    solved jointly. Override with `per_sample_inference`.

    A failed solve raises an error that says why (`x` with NaN/inf; a state that
    became NaN/inf or blew up; the step budget, `max_steps`); the solver is never
    silently switched.

    **Arguments:**

    - `field`: the vector field, `field(t, y, state) -> (dy, state)`; typically a
      [`tadiffeq.AbstractVectorField`][], whose `lift`/`readout` then map inputs to the
      ODE state and back.
    - `solver`: `diffrax.Dopri5()` (default), `Tsit5()`, `Bosh3()`, `Heun()`,
      `Euler()`, ... (explicit Runge--Kutta).
    - `stepsize_controller`: default `diffrax.PIDController(rtol=1e-3, atol=1e-3)`.
    - `t0`, `t1`: the integration interval (default `[0, 1]`); must match the grids of
      any TA-BN layer in the field.
    - `dt0`: initial step; `None` (default) chooses it with the PID controller's
      heuristic at `(t0, y0)`.
    - `adjoint`: how to differentiate the solve, default
      `diffrax.RecursiveCheckpointAdjoint()`; `BacksolveAdjoint()` also works.
    - `max_steps`: the most steps a solve may take (default `1000`).
    - `per_sample_inference`: solve samples separately in inference mode; `None`
      (default) decides from the normalisation layers as above.
    - `first_step_jitter`: `a >= 0`; with `a > 0` every training solve multiplies
      its first step by `2**(-a U)`, `U ~ Uniform(0, 1)` drawn from the call's `key`
      (then required), so the solver's step times differ from batch to batch and
      the evaluations of training cover a TA-BN grid (see docs/results.md, "TA-BN
      coverage"). Default `0.0` (deterministic steps); inference is never jittered.
    - `nonfinite_statistics`: what a training solve does when a batch statistic is
      not finite (an overflowing activation, a NaN input), which would otherwise
      poison the running statistics for good: `"error"` (default) raises at run
      time, so the non-finite statistics never reach the caller's state;
      `"keep_previous"` keeps every running-statistic entry the solve made
      non-finite at its value before the solve and counts them in
      `SolveStats.num_nonfinite_statistics`.
    - `inference`: start in inference mode (default `False`).
    """

    field: Callable
    solver: dfx.AbstractSolver
    stepsize_controller: dfx.AbstractStepSizeController
    adjoint: dfx.AbstractAdjoint
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    per_sample_inference: bool = eqx.field(static=True)
    first_step_jitter: float = eqx.field(static=True)
    nonfinite_statistics: str = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        field: Callable,
        *,
        solver: dfx.AbstractSolver | None = None,
        stepsize_controller: dfx.AbstractStepSizeController | None = None,
        t0: float = 0.0,
        t1: float = 1.0,
        dt0: float | None = None,
        adjoint: dfx.AbstractAdjoint | None = None,
        max_steps: int = 1000,
        per_sample_inference: bool | None = None,
        first_step_jitter: float = 0.0,
        nonfinite_statistics: str = "error",
        inference: bool = False,
    ):
        if not callable(field):
            raise TypeError(f"`field` must be callable, got {type(field).__name__}.")
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1)):
            raise ValueError(f"`t0` and `t1` must be finite, got t0={t0}, t1={t1}.")
        if not t0 < t1:
            raise ValueError(f"Need `t0 < t1`, got t0={t0}, t1={t1}.")
        if (
            isinstance(max_steps, bool)
            or not isinstance(max_steps, int)
            or max_steps < 1
        ):
            raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}.")
        solver = dfx.Dopri5() if solver is None else solver
        RKTableau.of(solver)  # Raises a TypeError naming `solver` if unsupported.
        if stepsize_controller is None:
            stepsize_controller = dfx.PIDController(rtol=1e-3, atol=1e-3)
        if not isinstance(stepsize_controller, dfx.AbstractStepSizeController):
            raise TypeError(
                "`stepsize_controller` must be a diffrax step-size controller, got "
                f"{type(stepsize_controller).__name__}."
            )
        adaptive = isinstance(
            stepsize_controller, dfx.AbstractAdaptiveStepSizeController
        )
        if adaptive and not RKTableau.of(solver).has_error_estimate:
            raise ValueError(
                f"`solver={type(solver).__name__}()` has no error estimate, so it "
                "cannot be used with an adaptive `stepsize_controller`; use "
                "`diffrax.ConstantStepSize()` with a `dt0`."
            )
        if isinstance(stepsize_controller, dfx.StepTo):
            raise ValueError(
                "`stepsize_controller=diffrax.StepTo(...)` is not supported (its "
                "steps are fixed in advance, with no `dt0`); use "
                "`diffrax.ConstantStepSize()` with a `dt0`, or an adaptive controller."
            )
        if not adaptive and dt0 is None:
            raise ValueError(
                f"`stepsize_controller={type(stepsize_controller).__name__}()` needs "
                "an explicit `dt0`."
            )
        if dt0 is not None:
            dt0 = float(dt0)
            if not (math.isfinite(dt0) and dt0 > 0):
                raise ValueError(f"`dt0` must be positive and finite, got {dt0}.")
        pid = pid_controller(stepsize_controller)
        if pid is not None:
            check_tolerances("stepsize_controller", pid.rtol, pid.atol)
        for layer in norm_layers(field):
            if isinstance(layer, TABatchNorm) and (
                layer.grid.t0 != t0 or layer.grid.t1 != t1
            ):
                raise ValueError(
                    f"`field` holds a TABatchNorm whose time grid covers "
                    f"[{layer.grid.t0}, {layer.grid.t1}], but the NeuralODE "
                    f"integrates over [{t0}, {t1}]; build the layers with the same "
                    "`t0` and `t1`."
                )
        batch_dependent = [
            type(layer).__name__
            for layer in norm_layers(field)
            if not type(layer).batch_independent_at_inference
        ]
        if per_sample_inference is None:
            per_sample_inference = not batch_dependent
        elif per_sample_inference and batch_dependent:
            raise ValueError(
                "`per_sample_inference=True` solves every sample on its own, but the "
                f"field's {', '.join(sorted(set(batch_dependent)))} normalises with "
                "batch statistics in inference mode too, which one sample cannot "
                "give; use `per_sample_inference=False`."
            )
        self.field = field
        self.solver = solver
        self.stepsize_controller = stepsize_controller
        self.adjoint = dfx.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
        self.t0 = t0
        self.t1 = t1
        self.dt0 = dt0
        self.max_steps = max_steps
        self.per_sample_inference = bool(per_sample_inference)
        first_step_jitter = float(first_step_jitter)
        if not (math.isfinite(first_step_jitter) and first_step_jitter >= 0):
            raise ValueError(
                "`first_step_jitter` must be a finite float >= 0, got "
                f"{first_step_jitter}."
            )
        self.first_step_jitter = first_step_jitter
        if nonfinite_statistics not in ("error", "keep_previous"):
            raise ValueError(
                "`nonfinite_statistics` must be 'error' or 'keep_previous', got "
                f"{nonfinite_statistics!r}."
            )
        self.nonfinite_statistics = nonfinite_statistics
        self.inference = inference

    def __call__(
        self,
        x: BatchedY,
        state: eqx.nn.State,
        *,
        ts: Float[ArrayLike, " times"] | None = None,
        regularizer: AbstractRegularizer | None = None,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Y, eqx.nn.State, SolveStats]:
        """Solves from `x` at `t0`.

        **Arguments:**

        - `x`: the batched input, `(batch, ...)`; the field's `lift` maps it to the
          initial state y(t0) (the identity for plain fields).
        - `state`: the `eqx.nn.State` holding the normalisation statistics.
        - `ts`: optional increasing times in `[t0, t1]` at which to return the
          solution; default: only `t1`.
        - `regularizer`: an optional [`tadiffeq.AbstractRegularizer`][] for this
          (training) solve; its value is `stats.regularization`.
        - `key`: a PRNG key for regularizers that sample (local, RNODE, STEER) and
          for `first_step_jitter`.

        **Returns:** `(y, state, stats)`: the field's `readout` of y(t1) (or of the
        solution at every time in `ts`, stacked on a leading axis), the updated state
        (unchanged in inference mode) and the [`tadiffeq.SolveStats`][] of the solve.
        """
        self._check_state(state)
        y0 = self._lift(x)
        if ts is not None:
            ts = jnp.asarray(ts)
            if ts.ndim != 1 or ts.shape[0] < 1:
                raise ValueError(f"`ts` must be a non-empty 1-D array, got {ts.shape}.")
            ok = jnp.all((ts >= self.t0) & (ts <= self.t1)) & jnp.all(jnp.diff(ts) >= 0)
            ts = eqx.error_if(
                ts,
                ~ok,
                f"`ts` must be non-decreasing times in [t0, t1] = [{self.t0}, "
                f"{self.t1}] (no NaN).",
            )
        per_sample = self.inference and self.per_sample_inference
        if regularizer is not None:
            self._check_regularizer(regularizer, key, per_sample, ts)
        if per_sample:
            # Each sample as a batch of one, with its own step sizes.
            solve = lambda y: self._solve(jtu.tree_map(lambda a: a[None], y), state, ts)
            ys, _, stats = jax.vmap(solve)(y0)
            if ts is None:
                ys = jtu.tree_map(lambda a: a[:, 0], ys)
            else:  # (batch, times, 1, ...) -> (times, batch, ...)
                ys = jtu.tree_map(lambda a: jnp.swapaxes(a[:, :, 0], 0, 1), ys)
            new_state = state
        else:
            jitter_key = None
            if self.first_step_jitter > 0 and not self.inference:
                if key is None:
                    raise ValueError(
                        "`first_step_jitter` randomises the first step of every "
                        "training solve: pass `key=`."
                    )
                key, jitter_key = jax.random.split(key)
            ys, new_state, stats = self._solve(
                y0, state, ts, regularizer, key, jitter_key
            )
        return self._readout(ys), new_state, stats

    def local_step_estimate(self, state, t, y, **kwargs):
        """[`tadiffeq.local_step_estimate`][] of this node."""
        return local_step_estimate(self, state, t, y, **kwargs)

    def spec(self) -> SolveSpec:
        """This node's training solve as regularizers see it."""
        return SolveSpec(
            field=self.field, solver=self.solver,
            stepsize_controller=self.stepsize_controller, adjoint=self.adjoint,
            t0=self.t0, t1=self.t1, dt0=self.dt0,
        )  # fmt: skip

    def _check_regularizer(self, regularizer, key, per_sample, ts):
        if not isinstance(regularizer, AbstractRegularizer):
            raise TypeError(
                "`regularizer` must be a tadiffeq.AbstractRegularizer, got "
                f"{type(regularizer).__name__}."
            )
        if per_sample:
            raise ValueError(
                "`regularizer` applies to training solves (the batch as one system); "
                "this node is in inference mode with per-sample solves."
            )
        if regularizer.needs_key and key is None:
            raise ValueError(
                f"{type(regularizer).__name__} samples at random: pass `key=`."
            )
        if regularizer.through_solve and isinstance(self.adjoint, dfx.BacksolveAdjoint):
            raise ValueError(
                f"{type(regularizer).__name__} is differentiated through the solver's "
                "internal state, which `BacksolveAdjoint` cannot do; use "
                "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
            )

    def _check_state(self, state) -> None:
        """Trace-time errors for a `state` that is not this model's: not an
        `eqx.nn.State`, or without an entry for a layer of the field."""
        if not isinstance(state, eqx.nn.State):
            raise TypeError(
                "`state` must be the model's eqx.nn.State (from "
                f"eqx.nn.make_with_state), got {type(state).__name__}."
            )
        is_index = lambda x: isinstance(x, eqx.nn.StateIndex)
        for index in jtu.tree_leaves(self.field, is_leaf=is_index):
            if not is_index(index):
                continue
            try:
                state.get(index)
            except Exception as e:  # equinox's own error for an unknown index
                name = index.marker if isinstance(index.marker, str) else "a layer"
                raise ValueError(
                    f"`state` holds no entry for {name!r}: it is the state of "
                    "another model; build the model and its state together with "
                    "eqx.nn.make_with_state."
                ) from e

    def _lift(self, x):
        for leaf in jtu.tree_leaves(x):
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise TypeError(
                    f"`x` must be a floating-point array, got dtype {leaf.dtype}."
                )
            if jnp.finfo(leaf.dtype).bits < 32:
                raise TypeError(
                    f"`x` has dtype {leaf.dtype}: diffrax's step-size control needs "
                    "float32 or float64; cast `x` (e.g. `x.astype(jnp.float32)`)."
                )
            if leaf.ndim < 1:
                raise ValueError(
                    f"`x` must have a leading batch axis, got shape {leaf.shape}."
                )
        lift = getattr(self.field, "lift", None)
        return x if lift is None else lift(x)

    def _readout(self, ys):
        readout = getattr(self.field, "readout", None)
        return ys if readout is None else readout(ys)

    def _solve(self, y0, state, ts, regularizer=None, key=None, jitter_key=None):
        spec = self.spec()
        plan = (
            Plan()
            if regularizer is None
            else regularizer.plan(spec=spec, y0=y0, key=key)
        )
        field, y_init, controller = self.field, y0, self.stepsize_controller
        if plan.augment is not None:
            field, y_init, restrict = plan.augment(self.field, y0)
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
        solver = StatefulSolver(self.solver, plan.observers)
        y_init = check_finite_input(y_init)
        term = dfx.ODETerm(StatefulField(field, state))
        num_heuristic = 0
        dt0 = None if self.dt0 is None else jnp.asarray(self.dt0, tdt)
        if dt0 is None:
            # diffrax 0.7 wraps terms before its PID controller checks for an ODETerm,
            # which silently replaces the initial-step heuristic by dt0 = 0.01. Run the
            # heuristic on the unwrapped term ourselves.
            tnext, _ = controller.init(
                term, t0, t1, y_init, None, None, solver.func, solver.error_order(term)
            )
            dt0 = jax.lax.stop_gradient(tnext - t0)
            num_heuristic = 0 if pid_controller(controller) is None else 2
        if jitter_key is not None:
            u = jax.random.uniform(jitter_key, (), tdt)
            dt0 = dt0 * 2.0 ** (-self.first_step_jitter * u)
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
        sol = dfx.diffeqsolve(
            term,
            solver,
            t0,
            t1,
            dt0,
            y_init,
            saveat=saveat,
            stepsize_controller=controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            # Solving to t1, a failure is diagnosed below (check_solution).
            throw=ts is not None,
        )
        # SaveAt(t1 or ts, solver_state=True): both are saved.
        assert sol.ys is not None and sol.solver_state is not None
        ys, y_end = sol.ys, None
        if ts is None:
            ys = jtu.tree_map(lambda a: a[0], ys)
            ys = check_solution(sol, y_init, ys, max_steps=self.max_steps)
            y_end = ys
        elif save_t1:
            y_end = jtu.tree_map(lambda a: a[-1], ys)
            ys = jtu.tree_map(lambda a: a[:-1], ys)
        _, new_state, observed = sol.solver_state
        new_state = jax.lax.stop_gradient(clone_state(new_state))
        num_nonfinite = 0
        if not self.inference:  # (inference leaves the state as it was)
            new_state, num_nonfinite = self._check_statistics(state, new_state)
        if self.nonfinite_statistics == "error" and not self.inference:
            ys = eqx.error_if(
                ys,
                num_nonfinite > 0,
                "A batch statistic of a normalisation layer was not finite in this "
                "training solve (an input or an activation is NaN/inf or overflowed); "
                "its running statistics would be poisoned for good. Check the batch, "
                "or build the NeuralODE with nonfinite_statistics='keep_previous' to "
                "keep the previous statistics and carry on.",
            )
            num_nonfinite = 0
        value, extra = jnp.zeros((), tdt), 0
        if regularizer is not None:
            result = SolveResult(plan=plan, y1=y_end, observed=observed, state=state)
            value, extra = regularizer.finish(spec=spec, result=result)
        if plan.augment is not None:
            ys = ys[0]
        evals = solver.num_evaluations(sol.stats["num_steps"]) + num_heuristic
        stats = SolveStats.of(sol, evals, value, extra, num_nonfinite)
        return ys, new_state, stats

    @staticmethod
    def _check_statistics(old: eqx.nn.State, new: eqx.nn.State):
        """`new` with every non-finite entry put back to its value in `old` (the
        state before the solve), and how many there were."""
        new_leaves, treedef = jax.tree.flatten(new)
        kept, count = [], jnp.zeros((), jnp.int32)
        for n, o in zip(new_leaves, jax.tree.leaves(old)):
            if jnp.issubdtype(n.dtype, jnp.inexact):
                finite = jnp.isfinite(n)
                count = count + jnp.sum(~finite)
                n = jnp.where(finite, n, o)
            kept.append(n)
        return jax.tree.unflatten(treedef, kept), count
