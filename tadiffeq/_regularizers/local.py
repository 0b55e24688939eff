"""Local regularization of solver heuristics (Pal, Edelman and Rackauckas, 2023)."""

import functools
from typing import cast, Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, PRNGKeyArray

from .._custom_types import Count, Scalar, Y
from .._solver.controllers import (
    check_tolerances,
    controller_norm,
    controller_tolerances,
)
from .._solver.estimates import (
    check_stiffness_tableau,
    real_stability_boundary,
    scaled_error,
    stiffness_estimate,
)
from .._solver.observers import StepReservoir, TimeProbe
from .._solver.stateful import (
    clone_state,
    run_stages,
    StatefulField,
    StatefulSolver,
    time_dtype,
)
from .base import AbstractRegularizer, Plan, SolveResult, SolveSpec


def local_step_estimate(
    node: SolveSpec | eqx.Module,
    state: eqx.nn.State,
    t: ArrayLike,
    y: Y,
    *,
    kind: Literal["error", "stiffness"] = "error",
    rtol: float | None = None,
    atol: float | None = None,
    stop_first_stage: bool | None = None,
    key: PRNGKeyArray | None = None,
) -> tuple[Scalar, int]:
    """One adaptive step of `node`'s solver from `(t, y)`, as the local regularizer
    takes it. Returns `(value, evaluations)`. `node`: a [`tadiffeq.NeuralODE`][] or
    the [`tadiffeq.SolveSpec`][] of its solve; `key` is unused (an ODE step draws
    no noise).

    `y` and `t` are treated as constants (gradients stopped). The step size dt is
    what the step-size controller's initial-step heuristic proposes at `(t, y)`
    (`PIDController.init` with `dt0=None`, gradient stopped), clamped to `t1 - t`
    as the paper's code does (its solver is initialised on `(t, t1)`); a
    constant-step node uses its `dt0`. The first stage f(t, y) is gradient-stopped
    too, as in the paper's ODE code (`stop_first_stage=None`, the default, or
    `True`; `False` differentiates it as well); the other stages are
    differentiable in the parameters. The normalisation state is read (training
    mode normalises with batch statistics anyway) and never updated.

    Note: the error weights sum to zero (sum_i beta_i = 0), so with the first stage
    frozen the gradient is *not* the gradient of the estimate: it is dominated by
    `-beta_1 dt df(t, y)/dtheta` (see docs/design.md).

    - `kind="error"`: `E * dt`, E the controller's scaled RMS error of the step
      (`tadiffeq.scaled_error`).
    - `kind="stiffness"`: the step's stiffness estimate divided by the method's real
      stability boundary (`tadiffeq.stiffness_estimate`,
      `tadiffeq.real_stability_boundary`).
    """
    del key
    spec: SolveSpec
    if isinstance(node, SolveSpec):
        spec = node
    else:  # a NeuralODE (annotated as a Module: this module cannot import it)
        spec = node.spec()  # pyright: ignore[reportAttributeAccessIssue]
    solver = StatefulSolver(spec.solver)
    tab = solver.tableau
    if not solver.has_error_estimate and kind == "error":
        raise ValueError(f"`{type(spec.solver).__name__}` has no error estimate.")
    if kind == "stiffness":
        check_stiffness_tableau(tab)
    norm = controller_norm(spec.stepsize_controller)
    tdt = time_dtype(y)
    t = jax.lax.stop_gradient(jnp.asarray(t, tdt))
    y = jax.lax.stop_gradient(y)
    field = spec.field
    term = dfx.ODETerm(StatefulField(field, state))
    evaluations = 0
    controller = spec.stepsize_controller
    if isinstance(controller, dfx.AbstractAdaptiveStepSizeController):
        t1 = jnp.asarray(spec.t1, tdt)
        tnext, _ = controller.init(
            term, t, t1, y, None, None, solver.func, solver.error_order(term)
        )
        # The heuristic on (t, t1), as the paper's code initialises its solver: the
        # step never ends past t1.
        dt = jax.lax.stop_gradient(jnp.minimum(tnext, t1) - t)
        evaluations += 2
    else:
        dt = jnp.asarray(spec.dt0, jnp.result_type(t))

    def evaluate(tt, z, _):
        f, _ = field(tt, z, clone_state(state))
        return jax.tree.map(lambda v: v * dt, f), f, None

    f0 = field(t, y, clone_state(state))[0]
    if stop_first_stage is None or stop_first_stage:
        f0 = jax.lax.stop_gradient(f0)
    k0 = jax.tree.map(lambda v: v * dt, f0)
    stages = run_stages(tab, evaluate, t, dt, y, k0, f0, None, keep_last_f=False)
    evaluations += tab.num_stages
    if kind == "error":  # (the stiffness estimate scales nothing by the tolerances)
        rtol_, atol_, _ = controller_tolerances(spec.stepsize_controller, rtol, atol)
        e = scaled_error(y, stages.y1, stages.y_error, rtol_, atol_, norm)
        return e * dt, evaluations
    rho = stiffness_estimate(tab, stages.ks, dt, norm)
    return rho / real_stability_boundary(tab), evaluations


class LocalRegularizer(AbstractRegularizer):
    r"""Local regularization of the solver's heuristics (Pal, Edelman and Rackauckas,
    ICML 2023): at one random time per training solve, take one adaptive step and
    penalise its error estimate (times dt) or its stiffness estimate, so the learned
    dynamics become cheaper to integrate.

    The time is shared by the batch (one system with shared step sizes):

    - `sampling="unbiased"`: t_s uniform on [t0, t1); y(t_s) is read off the forward
      solve's dense output (no extra evaluation).
    - `sampling="biased"`: (t_s, y(t_s)) drawn uniformly from the *ends* of the
      forward solve's accepted steps, excluding the last (t1), as the paper's code
      does (`rand(sol.t[1:end-1])` with `save_start=false`): never t0 unless the
      solve took a single step. Samples concentrate where the solver works hardest.
      A reservoir sample in the solver state: O(1) memory.

    Then [`tadiffeq.local_step_estimate`][] takes the step: `kind="error"` returns
    `E * dt`, `kind="stiffness"` the stiffness estimate over the stability boundary.
    Costs the step-size heuristic's two evaluations plus one step (9 for dopri5 and
    tsit5), reported in `stats.num_regularizer_evals`.

    **Arguments:**

    - `kind`: `"error"` (default) or `"stiffness"` (dopri5 and tsit5).
    - `sampling`: `"unbiased"` (default) or `"biased"`.
    - `rtol`, `atol`: the error scaling (`kind="error"` only: the stiffness estimate
      takes the controller's norm and no tolerances); default the node's
      `PIDController`'s.
    - `stop_first_stage`: freeze the first stage's gradient. Default `None`: as the
      paper's code, frozen for a [`tadiffeq.NeuralODE`][], differentiated for a
      [`tadiffeq.NeuralSDE`][] (whose SOSRI step recomputes it).

    ??? cite "Reference"

        ```bibtex
        @inproceedings{pal2023locally,
            title={Locally Regularized Neural Differential Equations: Some Black
                   Boxes Were Meant to Remain Closed!},
            author={Pal, Avik and Edelman, Alan and Rackauckas, Christopher},
            booktitle={International Conference on Machine Learning},
            year={2023}
        }
        ```
    """

    kind: str = eqx.field(static=True, default="error")  # "error" | "stiffness"
    sampling: str = eqx.field(static=True, default="unbiased")  # or "biased"
    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    stop_first_stage: bool | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.kind not in ("error", "stiffness"):
            raise ValueError(
                f"`kind` must be 'error' or 'stiffness', got {self.kind!r}."
            )
        if self.sampling not in ("unbiased", "biased"):
            raise ValueError(
                f"`sampling` must be 'unbiased' or 'biased', got {self.sampling!r}."
            )
        check_tolerances("LocalRegularizer", self.rtol, self.atol)

    supports_sde = True  # kind="error"

    def plan(self, *, spec: SolveSpec, y0, key: PRNGKeyArray | None) -> Plan:
        if spec.stochastic and self.kind != "error":
            raise ValueError(
                "A NeuralSDE's solve takes LocalRegularizer(kind='error') only."
            )
        assert key is not None  # needs_key: the solve passes one
        if self.sampling == "biased":
            return Plan(observers=(StepReservoir(key),))
        tdt = time_dtype(y0)
        t0, t1 = jnp.asarray(spec.t0, tdt), jnp.asarray(spec.t1, tdt)
        t_s = jax.random.uniform(key, (), tdt, minval=t0, maxval=t1)
        # [t0, t1) as documented: t0 + u (t1 - t0) rounds to t1 for some t0 != 0.
        t_s = jnp.minimum(t_s, jnp.nextafter(t1, t0))
        return Plan(observers=(TimeProbe(t_s),))

    def sample(self, result: SolveResult) -> tuple[Scalar, Y]:
        """The sampled `(t_s, y(t_s))` of a finished solve."""
        assert result.observed is not None  # the plan's observer
        if self.sampling == "biased":
            _, t_s, y_s = result.observed[0]
            return t_s, y_s
        (probe,) = result.plan.observers
        y_s, _ = result.observed[0]
        return cast(TimeProbe, probe).t, y_s

    def finish(self, *, spec: SolveSpec, result: SolveResult) -> tuple[Scalar, Count]:
        t_s, y_s = self.sample(result)
        step = spec.local_step
        if step is None:
            step = functools.partial(local_step_estimate, spec)
        kind = cast(Literal["error", "stiffness"], self.kind)  # checked at init
        return step(
            result.state, t_s, y_s, kind=kind, rtol=self.rtol, atol=self.atol,
            stop_first_stage=self.stop_first_stage, key=result.key,
        )  # fmt: skip
