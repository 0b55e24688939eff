"""`NeuralODE`: solve dy/dt = f(t, y) with diffrax, threading normalisation state."""

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from ._custom_types import BatchedY, Y
from ._fields.field import AbstractVectorField
from ._misc import check_float
from ._neural_de import AbstractNeuralDE, check_solve_arguments, SolveStats
from ._norm.base import norm_layers
from ._norm.batchnorm import AbstractBatchNorm
from ._norm.state import check_state
from ._norm.tabn import TABatchNorm
from ._regularizers.base import AbstractRegularizer, SolveSpec
from ._regularizers.local import local_step_estimate
from ._solver.controllers import pid_controller
from ._solver.stateful import clone_state, StatefulField


class NeuralODE(AbstractNeuralDE):
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
      Needs an adaptive `stepsize_controller` (with constant steps every step is
      `dt0`, and there is no first step to move).
    - `nonfinite_statistics`: what a training solve does when a batch statistic is
      not finite (an overflowing activation, a NaN input), which would otherwise
      poison the running statistics for good: `"error"` (default) raises at run
      time, so the non-finite statistics never reach the caller's state;
      `"keep_previous"` keeps every running-statistic entry the solve made
      non-finite at its value before the solve and counts them in
      `SolveStats.num_nonfinite_statistics`.
    - `inference`: start in inference mode (default `False`).
    """

    field: AbstractVectorField | Callable
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
        field: AbstractVectorField | Callable,
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
        solver = dfx.Dopri5() if solver is None else solver
        if stepsize_controller is None:
            stepsize_controller = dfx.PIDController(rtol=1e-3, atol=1e-3)
        t0, t1, dt0 = check_solve_arguments(
            solver, stepsize_controller, t0=t0, t1=t1, dt0=dt0, max_steps=max_steps
        )
        for layer in norm_layers(field):
            grid = layer.grid if isinstance(layer, TABatchNorm) else None
            if grid is not None and (grid.t0 != t0 or grid.t1 != t1):
                raise ValueError(
                    f"`field` holds a TABatchNorm whose time grid covers "
                    f"[{grid.t0}, {grid.t1}], but the NeuralODE "
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
        self.first_step_jitter = check_float(
            "first_step_jitter", first_step_jitter, low=0.0
        )
        if self.first_step_jitter > 0 and not self._adaptive:
            # With constant steps every step is `dt0`: jittering it would change
            # the whole discretisation of training, not just where steps fall.
            raise ValueError(
                "`first_step_jitter` moves the first step of an adaptive solve; with "
                f"`stepsize_controller={type(stepsize_controller).__name__}()` every "
                "step is `dt0`, so it would change the number of steps of every "
                "training solve. Use `first_step_jitter=0.0` with constant steps."
            )
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
        check_state("NeuralODE", self, state)
        y0 = self._lift(x)
        times = None if ts is None else jnp.asarray(ts)
        if times is not None:
            if times.ndim != 1 or times.shape[0] < 1:
                raise ValueError(
                    f"`ts` must be a non-empty 1-D array, got {times.shape}."
                )
            ok = jnp.all((times >= self.t0) & (times <= self.t1)) & jnp.all(
                jnp.diff(times) >= 0
            )
            times = eqx.error_if(
                times,
                ~ok,
                f"`ts` must be non-decreasing times in [t0, t1] = [{self.t0}, "
                f"{self.t1}] (no NaN).",
            )
        per_sample = self.inference and self.per_sample_inference
        if regularizer is not None:
            self._check_regularizer(regularizer, key, per_sample, times)
        if per_sample:
            # Each sample as a batch of one, with its own step sizes.
            solve = lambda y: self._solve(
                jtu.tree_map(lambda a: a[None], y), state, ts=times
            )
            ys, _, stats = jax.vmap(solve)(y0)
            if times is None:
                ys = jtu.tree_map(lambda a: a[:, 0], ys)
            else:  # (batch, times, 1, ...) -> (times, batch, ...)
                ys = jtu.tree_map(lambda a: jnp.swapaxes(a[:, :, 0], 0, 1), ys)
            new_state = state
        else:
            jitter = None
            if self.first_step_jitter > 0 and not self.inference:
                if key is None:
                    raise ValueError(
                        "`first_step_jitter` randomises the first step of every "
                        "training solve: pass `key=`."
                    )
                key, jitter_key = jax.random.split(key)
                jitter = (self.first_step_jitter, jitter_key)
            ys, new_state, stats = self._solve(
                y0,
                state,
                ts=times,
                regularizer=regularizer,
                plan_key=key,
                jitter=jitter,
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

    def _terms(self, field, state, y0, key):
        del y0, key
        return dfx.ODETerm(StatefulField(field, state))

    def _initial_step(self, terms, solver, controller, t0, t1, y0, state):
        del state
        # diffrax 0.7 wraps terms before its PID controller checks for an ODETerm,
        # which silently replaces the initial-step heuristic by dt0 = 0.01. Run the
        # heuristic on the unwrapped term ourselves.
        tnext, _ = controller.init(
            terms, t0, t1, y0, None, None, solver.func, solver.error_order(terms)
        )
        num_evals = 0 if pid_controller(controller) is None else 2
        return jax.lax.stop_gradient(tnext - t0), num_evals

    def _statistics(self, state, new_state, ys):
        if self.inference:  # the layers read the state and leave it as it was
            return ys, state, 0
        new_state = jax.lax.stop_gradient(clone_state(new_state))
        new_state, num_nonfinite = self._check_statistics(state, new_state)
        if self.nonfinite_statistics == "error":
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
        return ys, new_state, num_nonfinite

    def _check_statistics(self, old: eqx.nn.State, new: eqx.nn.State):
        """`new` with every non-finite entry put back to its value in `old` (the
        state before the solve), and how many there were.

        A coverage-aware layer's grid point with any non-finite new statistic keeps
        all its old statistics *and* its old coverage: its coverage says how much
        data its statistics hold, and the solve's data was thrown away there."""
        new_leaves, treedef = jax.tree.flatten(new)
        kept, count = [], jnp.zeros((), jnp.int32)
        for n, o in zip(new_leaves, jax.tree.leaves(old)):
            if jnp.issubdtype(n.dtype, jnp.inexact):
                finite = jnp.isfinite(n)
                count = count + jnp.sum(~finite)
                n = jnp.where(finite, n, o)
            kept.append(n)
        kept = jax.tree.unflatten(treedef, kept)
        for layer in norm_layers(self.field):
            if not isinstance(layer, AbstractBatchNorm):
                continue
            coverage_index = layer.coverage_index
            if coverage_index is None or layer.state_index is None:
                continue
            stats = new.get(layer.state_index)  # (mean, var), each (points, C)
            bad = ~jnp.all(jnp.isfinite(jnp.stack(stats)), axis=(0, 2))

            def keep_old(o, n, bad=bad):
                return jnp.where(bad.reshape(bad.shape + (1,) * (n.ndim - 1)), o, n)

            for index in (layer.state_index, coverage_index):
                kept = kept.set(
                    index, jax.tree.map(keep_old, old.get(index), kept.get(index))
                )
        return kept, count
