"""`NeuralSDE`: a Neural SDE with diagonal noise, solved adaptively with diffrax."""

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Shaped

from ._custom_types import Scalar, Y
from ._misc import check_float
from ._neural_de import AbstractNeuralDE, check_solve_arguments, SolveStats
from ._norm.base import norm_layers
from ._regularizers.base import AbstractRegularizer, SolveSpec
from ._solver.controllers import controller_tolerances, pid_controller
from ._solver.estimates import scaled_error
from ._solver.stateful import clone_state, run_stages, StatefulSolver, time_dtype
from ._solver.tableau import RKTableau


class _StratonovichSolver(StatefulSolver, dfx.AbstractStratonovichSolver):
    """`StatefulSolver` marked as converging to the Stratonovich solution (as the
    wrapped `diffrax.Heun` does), for diffrax's SDE checks."""


class _Drift(eqx.Module):
    field: Callable
    state: eqx.nn.State

    def __call__(self, t, y, args):
        return self.field(t, y, clone_state(self.state))[0]


class _DiagonalDiffusion(eqx.Module):
    field: Callable
    state: eqx.nn.State

    def __call__(self, t, y, args):
        return lx.DiagonalLinearOperator(self.field(t, y, clone_state(self.state))[0])


def _sde_initial_step(drift, diffusion, t, y, *, t_end, rtol, atol, order, norm):
    """The initial step size of an adaptive SDE solve from `(t, y)`, as
    StochasticDiffEq.jl's `sde_determine_initdt` (the heuristic the paper's SOSRI
    solves start with): the ODE heuristic of Hairer et al. with the drift f widened
    by three times the diffusion g, `max(|f + 3g|, |f - 3g|)`, in both the size of
    the first derivative and of its change over a trial Euler step, the exponent
    taken from the strong order. At most `t_end - t`. `diffusion(t, y)` returns a
    `lineax.DiagonalLinearOperator` (diagonal noise)."""
    scale = atol + rtol * jnp.abs(y)
    f0 = drift(t, y, None)
    g0 = 3 * diffusion(t, y, None).diagonal
    d0 = norm(y / scale)
    d1 = norm(jnp.maximum(jnp.abs(f0 + g0), jnp.abs(f0 - g0)) / scale)
    tiny = (d0 < 1e-5) | (d1 < 1e-5)
    dt0 = jnp.where(tiny, 1e-6, 0.01 * d0 / jnp.where(tiny, 1.0, d1))
    dt0 = jnp.minimum(dt0, t_end - t).astype(jnp.result_type(t))
    y1 = y + dt0 * f0
    f1 = drift(t + dt0, y1, None)
    g1 = 3 * diffusion(t + dt0, y1, None).diagonal
    dg = jnp.maximum(jnp.abs(g0 - g1), jnp.abs(g0 + g1))
    df = f1 - f0
    d2 = norm(jnp.maximum(jnp.abs(df + dg), jnp.abs(df - dg)) / scale) / dt0
    dmax = jnp.maximum(d1, d2)
    dt1 = jnp.where(
        dmax <= 1e-15,
        jnp.maximum(1e-6, dt0 * 1e-3),
        10.0 ** (-(2 + jnp.log10(jnp.maximum(dmax, 1e-15))) / (order + 0.5)),
    )
    return jnp.minimum(jnp.minimum(100 * dt0, dt1), t_end - t).astype(dt0.dtype)


class NeuralSDE(AbstractNeuralDE):
    r"""A Neural SDE with diagonal noise,

        dy = f(t, y) dt + g(t, y) * dW(t)

    (`*` elementwise: each coordinate has its own Brownian motion, scaled by the
    matching output of the diffusion network: "diagonal multiplicative noise" when g
    depends on y), interpreted in the Stratonovich sense and solved adaptively.

    **Solver.** diffrax has no SOSRI (the Itô method with an embedded error estimate
    that Pal et al. 2023 used). We use `diffrax.Heun()`: a Stratonovich method whose
    embedded Euler estimate drives the PID controller, at two stages a step.
    diffrax's `SPaRK` also has an error estimate for general noise but takes three
    stages and a Brownian tree with space-time Lévy area; at the loose tolerances
    adaptive SDE training uses (the paper's 0.14) the cheaper pair is what keeps a
    step cheap. Heun converges with strong order 1 in the Stratonovich sense when
    the noise commutes (here: when g_i depends on y_i alone); a diffusion network
    whose every output depends on all of y gives non-commutative noise, and strong
    order 1/2. The Brownian motion is a `diffrax.VirtualBrownianTree` over
    `[t0, t1]` (adaptive steps need one), built from the `key` of each call. The
    initial step is StochasticDiffEq.jl's SDE heuristic (`sde_determine_initdt`, on
    drift and diffusion: two evaluations of each), or `dt0`. The batch is one
    system (shared step sizes; each sample has its own noise) in training and in
    inference. `SolveStats` counts one evaluation per stage (a drift and a
    diffusion evaluation each).

    The drift and diffusion are vector fields `(t, y, state) -> (out, state)` (e.g.
    [`tadiffeq.MLPField`][]) whose normalisation layers, if any, keep no running
    statistics (`"none"` or `"minibatch"`).

    **Arguments:**

    - `drift`, `diffusion`: the two fields; the diffusion returns the shape of y.
    - `solver`: default `diffrax.Heun()` (an explicit Runge--Kutta solver of diffrax
      with an error estimate; with adaptive steps also a strong order, as Heun,
      Midpoint and Ralston have, or a `PIDController` given its `error_order`. Heun
      is the one that is Stratonovich-consistent).
    - `stepsize_controller`: default `diffrax.PIDController(rtol=1e-3, atol=1e-3)`.
    - `t0`, `t1`: the interval (default `[0, 1]`).
    - `dt0`: initial step (default: the SDE heuristic on drift and diffusion);
      required, and the step, with a non-adaptive `stepsize_controller` such as
      `diffrax.ConstantStepSize()`.
    - `brownian_tol`: the Brownian tree's resolution, in `[(t1 - t0) 2**-40, t1 - t0)`
      (default `(t1 - t0) / 2**12`).
    - `max_steps`: default `4096`.
    - `initial_step_order`: the strong order in the SDE heuristic's exponent,
      dt1 = (0.01 / d)**(1 / (order + 1/2)). Default 1.5, SOSRI's, the method the
      paper's heuristic was run with: the local regularizer's step then has the
      paper's scale (with Heun's own 1/2 it is ~1000x shorter on the paper's MNIST
      SDE, and its error estimate ~1e-12).
    """

    drift: Callable
    diffusion: Callable
    solver: dfx.AbstractSolver
    stepsize_controller: dfx.AbstractStepSizeController
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    brownian_tol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    initial_step_order: float = eqx.field(static=True)

    solver_wrapper = _StratonovichSolver

    def __init__(
        self,
        drift: Callable,
        diffusion: Callable,
        *,
        solver: dfx.AbstractSolver | None = None,
        stepsize_controller: dfx.AbstractStepSizeController | None = None,
        t0: float = 0.0,
        t1: float = 1.0,
        dt0: float | None = None,
        brownian_tol: float | None = None,
        max_steps: int = 4096,
        initial_step_order: float = 1.5,
    ):
        solver = dfx.Heun() if solver is None else solver
        if stepsize_controller is None:
            stepsize_controller = dfx.PIDController(rtol=1e-3, atol=1e-3)
        t0, t1, dt0 = check_solve_arguments(
            solver, stepsize_controller, t0=t0, t1=t1, dt0=dt0, max_steps=max_steps
        )
        if not RKTableau.of(solver).has_error_estimate:
            raise ValueError(
                f"`solver={type(solver).__name__}()` has no error estimate; NeuralSDE "
                "needs one for its local step and its Stratonovich solve (use "
                "diffrax.Heun(), also with a constant step size)."
            )
        pid = pid_controller(stepsize_controller)
        if (
            pid is not None
            and pid.error_order is None
            and solver.strong_order(None) is None
        ):
            raise ValueError(
                f"`solver={type(solver).__name__}()` has no strong order for SDEs, "
                "from which the adaptive step-size control takes its error order: use "
                "diffrax.Heun(), Midpoint() or Ralston(), or pass "
                "`PIDController(..., error_order=...)`."
            )
        for name, field in (("drift", drift), ("diffusion", diffusion)):
            if not callable(field):
                raise TypeError(f"`{name}` must be callable.")
            for layer in norm_layers(field):
                if getattr(layer, "state_index", None) is not None:
                    raise ValueError(
                        f"`{name}` holds a {type(layer).__name__} with running "
                        "statistics; NeuralSDE supports normalisations without them "
                        "('none', 'minibatch')."
                    )
        self.drift = drift
        self.diffusion = diffusion
        self.solver = solver
        self.stepsize_controller = stepsize_controller
        self.t0 = t0
        self.t1 = t1
        self.dt0 = dt0
        if brownian_tol is None:
            brownian_tol = (t1 - t0) / 2**12
        brownian_tol = check_float("brownian_tol", brownian_tol)
        # Finer than 2**-40 of the interval the tree's depth exceeds what its
        # float32 times resolve (a negative tolerance never terminates).
        if not (t1 - t0) * 2.0**-40 <= brownian_tol < t1 - t0:
            raise ValueError(
                f"`brownian_tol` must be in [(t1 - t0) * 2**-40, t1 - t0) = "
                f"[{(t1 - t0) * 2.0**-40:.3g}, {t1 - t0:.3g}), got {brownian_tol}."
            )
        self.brownian_tol = brownian_tol
        self.max_steps = max_steps
        self.initial_step_order = check_float(
            "initial_step_order", initial_step_order, low=0.0, low_open=True
        )

    def spec(self) -> SolveSpec:
        """This SDE's training solve as regularizers see it: the drift is the
        field, the local step is this model's (`local_step_estimate`)."""
        return SolveSpec(
            field=self.drift, solver=self.solver,
            stepsize_controller=self.stepsize_controller, adjoint=None, t0=self.t0,
            t1=self.t1, dt0=self.dt0, local_step=self.local_step_estimate,
            stochastic=True,
        )  # fmt: skip

    def _terms(self, field, state, y0, key):
        assert key is not None  # __call__ always passes one
        tdt = time_dtype(y0)
        bm = dfx.VirtualBrownianTree(
            jnp.asarray(self.t0, tdt),
            jnp.asarray(self.t1, tdt),
            tol=self.brownian_tol,
            shape=jax.ShapeDtypeStruct(y0.shape, y0.dtype),
            key=key,
        )
        return dfx.MultiTerm(
            dfx.ODETerm(_Drift(field, state)),
            dfx.ControlTerm(_DiagonalDiffusion(self.diffusion, state), bm),
        )

    def _initial_step(self, terms, solver, controller, t0, t1, y0, state):
        del terms, solver, controller, t1
        return self.initial_step(state, t0, y0), 2

    def _statistics(self, state, new_state, ys):
        del new_state  # NeuralSDE's fields keep no running statistics
        return ys, state, 0

    def initial_step(
        self, state: eqx.nn.State, t: ArrayLike, y: Float[Array, "batch ..."]
    ) -> Scalar:
        """The first step size of an adaptive solve from `(t, y)` (time units):
        StochasticDiffEq.jl's SDE heuristic on drift *and* diffusion
        (`sde_determine_initdt`, as the paper's SOSRI solves start, with
        `initial_step_order`), at most `t1 - t`, gradient stopped; `dt0` for a
        non-adaptive controller. `t` in the state's float dtype."""
        if not self._adaptive:
            return jnp.asarray(self.dt0, jnp.result_type(t))
        rtol, atol, norm = controller_tolerances(self.stepsize_controller, None, None)
        dt = _sde_initial_step(
            _Drift(self.drift, state), _DiagonalDiffusion(self.diffusion, state),
            t, y, t_end=jnp.asarray(self.t1, jnp.result_type(t)), rtol=rtol,
            atol=atol, order=self.initial_step_order, norm=norm,
        )  # fmt: skip
        return jax.lax.stop_gradient(dt)

    def __call__(
        self,
        x: Shaped[Array, "batch ..."],
        state: eqx.nn.State,
        *,
        key: PRNGKeyArray,
        regularizer: AbstractRegularizer | None = None,
    ) -> tuple[Y, eqx.nn.State, SolveStats]:
        """Solves from `x` at `t0` along the Brownian path drawn from `key`.

        `regularizer`: a [`tadiffeq.LocalRegularizer`][] (error kind) or
        [`tadiffeq.GlobalRegularizer`][] (error kind); its value is
        `stats.regularization`. Returns `(y(t1), state, stats)`; `state` is unchanged.
        """
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"`x` must be a floating-point array, got {x.dtype}.")
        lift = getattr(self.drift, "lift", None)
        y0 = x if lift is None else lift(x)
        if regularizer is not None and not regularizer.supports_sde:
            raise ValueError(
                f"`regularizer`: {type(regularizer).__name__} does not regularize a "
                "NeuralSDE's solve (LocalRegularizer and GlobalRegularizer, "
                "kind='error', do)."
            )
        if key is None:
            raise ValueError(
                "NeuralSDE draws its Brownian motion from `key`: pass `key=`."
            )
        bm_key, reg_key = jax.random.split(key)
        plan_key, noise_key = jax.random.split(reg_key)
        y1, state, stats = self._solve(
            y0, state, regularizer=regularizer, plan_key=plan_key,
            finish_key=noise_key, terms_key=bm_key,
        )  # fmt: skip
        readout = getattr(self.drift, "readout", None)
        return (y1 if readout is None else readout(y1)), state, stats

    def local_step_estimate(
        self,
        state,
        t,
        y,
        *,
        kind: str = "error",
        rtol: float | None = None,
        atol: float | None = None,
        stop_first_stage: bool | None = None,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Scalar, int]:
        """One adaptive step of the SDE solver from `(t, y)`, as the paper's code
        takes it: dt from the SDE heuristic (`initial_step`, on drift and
        diffusion, at most `t1 - t`), a fresh Brownian increment dW ~ N(0, dt)
        drawn from `key` (independent of the training solve's path),
        and every stage, the first included, differentiable in the parameters
        (`stop_first_stage=True` freezes the first). `y`, `t` and dt are
        gradient-stopped. Returns `(E * dt, evals)`."""
        if kind != "error" or key is None:
            raise ValueError("NeuralSDE's local step needs kind='error' and a `key`.")
        tab = RKTableau.of(self.solver)
        rtol_, atol_, norm = controller_tolerances(self.stepsize_controller, rtol, atol)
        t = jax.lax.stop_gradient(jnp.asarray(t, time_dtype(y)))
        y = jax.lax.stop_gradient(y)
        dt = self.initial_step(state, t, y)
        dw = jnp.sqrt(dt) * jax.random.normal(key, y.shape, y.dtype)
        drift = _Drift(self.drift, state)
        diffusion = _DiagonalDiffusion(self.diffusion, state)

        def evaluate(tt, z, _):
            g = diffusion(tt, z, None).diagonal
            return drift(tt, z, None) * dt + g * dw, None, None

        k0, _, _ = evaluate(t, y, None)
        if stop_first_stage:  # None: differentiated, as the paper's SDE code
            k0 = jax.lax.stop_gradient(k0)
        stages = run_stages(tab, evaluate, t, dt, y, k0, None, None, keep_last_f=False)
        e = scaled_error(y, stages.y1, stages.y_error, rtol_, atol_, norm)
        return e * dt, (2 if self._adaptive else 0) + tab.num_stages
