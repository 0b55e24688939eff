"""An explicit Runge--Kutta solver that threads an `eqx.nn.State` through the stage
evaluations of a diffrax solve.

diffrax's vector field `f(t, y, args)` cannot return new state. Following the advice
of diffrax's maintainer (diffrax issues #196, #462, #595), the evolving,
non-differentiable state lives at the solver level: `StatefulSolver` carries it in its
`solver_state`, which diffrax's integration loop keeps for accepted steps and throws
away for rejected ones. The Butcher tableau, interpolation, order and error estimate
all come from the wrapped diffrax solver (`Dopri5`, `Tsit5`, `Bosh3`, `Heun`, ...);
step-size control, `SaveAt` and adjoints stay diffrax's.

Design decisions (documented in the user guide as well):

- Which evaluations update the statistics: every stage of every *accepted* step, in
  stage order, plus the first evaluation f(t0, y0) of FSAL methods (made in `init`).
  Stages of rejected steps do not count (diffrax discards their `solver_state`). The
  evaluations of the initial step-size heuristic (two, at t0 and t0 + h0 on a probe
  point off the trajectory) do not count either, and neither does any evaluation of
  an adjoint's backward pass: that pass sees diffrax's `AdjointTerm`, which this
  solver integrates with plain stages.
- Order within a step: the stages are applied one after another in evaluation order
  (c_1 <= ... <= c_s for the supported tableaux), each to the state left by the
  previous one. For FSAL methods the last stage of a step (at t1, on y1) is the first
  stage of the next and is counted once. After a jump of
  `ClipStepSizeController(jump_ts=...)` f(t0, y0) is evaluated again and updates the
  statistics (once per jump); under `vmap` only for the members that jumped.
"""

from collections.abc import Callable, Sequence
from typing import Any, cast, ClassVar, NamedTuple

import diffrax as dfx
import equinox as eqx
import equinox.internal as eqxi
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from .._custom_types import Y
from .._diffrax_private import AdjointTerm
from .observers import AbstractStepObserver, StepInfo
from .tableau import RKTableau, stage_sum


def clone_state(state: eqx.nn.State) -> eqx.nn.State:
    """A fresh `eqx.nn.State` with the same values.

    `eqx.nn.State.set` invalidates the object it is called on; cloning before handing a
    state to a layer keeps the caller's copy usable.
    """
    leaves, treedef = jtu.tree_flatten(state)
    return jtu.tree_unflatten(treedef, leaves)


class StatefulField(eqx.Module):
    """Wraps a stateful vector field `field(t, y, state) -> (dy, state)` and the state
    to evaluate it with, so that diffrax can also call it as a plain `f(t, y, args)`.

    The plain call (used by diffrax's step-size heuristic and by adjoint terms)
    evaluates with a copy of `state` and drops the returned state.
    """

    field: Callable[..., tuple[PyTree, eqx.nn.State]]
    state: eqx.nn.State

    def __call__(self, t, y, args):
        del args
        dy, _ = self.field(t, y, clone_state(self.state))
        return dy

    def with_state(self, t, y, state: eqx.nn.State):
        return self.field(t, y, clone_state(state))


def _unwrap(terms) -> tuple[Any, Any]:
    """`terms` without diffrax's time-direction wrapper, and the direction."""
    if not isinstance(terms, dfx.ODETerm) and hasattr(terms, "direction"):
        return terms.term, terms.direction
    return terms, 1


def _find_stateful(terms) -> tuple[StatefulField | None, Any]:
    """The `StatefulField` inside `terms` (an `ODETerm`, possibly wrapped in diffrax's
    time-direction wrapper) and the direction, or `(None, 1)` for any other term."""
    inner, direction = _unwrap(terms)
    if isinstance(inner, dfx.ODETerm) and isinstance(inner.vector_field, StatefulField):
        return inner.vector_field, direction
    return None, 1


def _is_adjoint(terms) -> bool:
    """Whether `terms` is the backward (adjoint) ODE of `BacksolveAdjoint`."""
    return isinstance(_unwrap(terms)[0], AdjointTerm)


def _add(y: Y, dy: Y) -> Y:
    return jtu.tree_map(lambda a, b: a + b.astype(a.dtype), y, dy)


#: `evaluate(t, z, state) -> (k, f, state)`: the stage increment k = f * dt (or the
#: control product for general terms), the vector field f (or `None`), the new state.
Evaluate = Callable[[Any, Y, Any], tuple[Y, Any, Any]]


class Stages(NamedTuple):
    """The result of the stages of one explicit Runge--Kutta step from `y0`."""

    ks: Y  # stage increments, stacked on a leading stage axis
    y1: Y
    y_error: Y | None
    f_last: Y | None  # the last stage's vector field (for FSAL)
    state: Any


def run_stages(
    tableau: RKTableau,
    evaluate: Evaluate,
    t0,
    dt,
    y0: Y,
    k0: Y,
    f0: Y | None,
    state: Any,
    *,
    keep_last_f: bool,
) -> Stages:
    """Stages 1..s-1 of an explicit Runge--Kutta step, given stage 0 (`k0`, `f0`).

    The stages run in a `lax.scan`, so the vector field is traced once; `state`
    threads through them in stage order.
    """
    ks = jtu.tree_map(
        lambda k: jnp.zeros((tableau.num_stages,) + k.shape, k.dtype).at[0].set(k), k0
    )
    f_last = f0
    if tableau.num_stages > 1:

        def body(carry, xs):
            ks, state, _ = carry
            i, a_row, c_i = xs
            z = _add(y0, stage_sum(a_row, ks))
            k, f, state = evaluate(t0 + c_i * dt, z, state)
            ks = jtu.tree_map(lambda kk, ki: kk.at[i].set(ki), ks, k)
            return (ks, state, f if keep_last_f else None), None

        init_f = jtu.tree_map(jnp.zeros_like, y0) if keep_last_f else None
        (ks, state, f_last), _ = lax.scan(
            body,
            (ks, state, init_f),
            (
                jnp.arange(1, tableau.num_stages),
                jnp.asarray(tableau.a[1:]),
                jnp.asarray(tableau.c[1:], dtype=jnp.result_type(dt)),
            ),
        )
    y1 = _add(y0, stage_sum(tableau.b, ks))
    y_error = None if tableau.b_error is None else stage_sum(tableau.b_error, ks)
    return Stages(ks, y1, y_error, f_last, state)


class StatefulSolver(dfx.AbstractAdaptiveSolver):
    """Runs a diffrax explicit Runge--Kutta solver, threading the `eqx.nn.State` of a
    [`tadiffeq.StatefulField`][] through every stage evaluation, and letting step
    observers see every step.

    For any other term (e.g. an SDE's `MultiTerm`, or diffrax's adjoint term in
    `BacksolveAdjoint`'s backward pass) it is the plain Runge--Kutta method of the
    wrapped solver, without FSAL.

    **Arguments:**

    - `solver`: `diffrax.Euler()` or an explicit Runge--Kutta solver such as
      `diffrax.Dopri5()` or `diffrax.Tsit5()`; it supplies the tableau, the order, the
      error estimate and the dense-output interpolation.
    - `observers`: [`tadiffeq.AbstractStepObserver`][]s updated after every step of the
      forward solve. Their states ride in the solver state, so diffrax keeps them for
      accepted steps only: what they see are the accepted steps. They are not run in
      an adjoint's backward pass.

    The solver state is `(fsal_f, state, observer_states)`: the last stage's vector
    field for FSAL methods (else `None`), the normalisation state (`None` for
    non-stateful terms) and one state per observer.
    """

    solver: dfx.AbstractSolver
    tableau: RKTableau
    observers: tuple[AbstractStepObserver, ...]

    term_structure: ClassVar = dfx.AbstractTerm

    def __init__(
        self,
        solver: dfx.AbstractSolver,
        observers: Sequence[AbstractStepObserver] = (),
    ):
        self.tableau = RKTableau.of(solver)
        self.solver = solver
        self.observers = tuple(observers)
        for obs in self.observers:
            if not isinstance(obs, AbstractStepObserver):
                raise TypeError(
                    f"`observers` must hold AbstractStepObservers, got {obs!r}."
                )

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    @property
    def has_error_estimate(self) -> bool:
        return self.tableau.has_error_estimate

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms) if self.has_error_estimate else None

    def num_evaluations(self, num_steps, terms) -> Array:
        """Vector-field evaluations made by `init` and `num_steps` steps (accepted
        or rejected) on `terms`: FSAL applies to a `StatefulField`'s terms only.
        (Not counted: the re-evaluation of f(t0, y0) after each jump of a
        `ClipStepSizeController(jump_ts=...)`, one per jump.)"""
        tab = self.tableau
        if tab.fsal and _find_stateful(terms)[0] is not None:
            return 1 + (tab.num_stages - 1) * num_steps
        return tab.num_stages * num_steps

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def init(self, terms, t0, t1, y0, args):
        del t1
        if self.observers and not _is_adjoint(terms):
            observed = tuple(obs.init(t0, y0) for obs in self.observers)
        else:
            observed = None  # (`None`, not `()`: diffrax's adjoints tree_at it.)
        field, direction = _find_stateful(terms)
        if field is None:
            return None, None, observed
        state = clone_state(field.state)
        if self.tableau.fsal:
            f0, state = field.with_state(t0 * direction, y0, state)
            return f0, state, observed
        return None, state, observed

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        tab = self.tableau
        field, direction = _find_stateful(terms)
        control = terms.contr(t0, t1)
        dt = t1 - t0
        fsal_f, state, observed = solver_state
        fsal = tab.fsal and field is not None

        def evaluate(t, y, state):
            if field is None:
                return terms.vf_prod(t, y, args, control), None, state
            f, state = field.with_state(t * direction, y, state)
            return terms.prod(f, control), f, state

        # Stage 0.
        if fsal:
            assert field is not None  # fsal implies it
            if made_jump is False:
                f0 = fsal_f
            else:
                # After a discontinuity the stored f(t0, y0) is stale: re-evaluate.
                # Under `vmap` the cond runs for every member once any jumped: keep
                # the others' f and statistics (the re-evaluation would update them).
                jumped = lax.cond(
                    eqxi.unvmap_any(made_jump),
                    lambda s: field.with_state(t0 * direction, y0, s),
                    lambda s: (fsal_f, s),
                    state,
                )
                f0, state = jtu.tree_map(
                    lambda new, old: jnp.where(made_jump, new, old),
                    jumped,
                    (fsal_f, state),
                )
            k0 = terms.prod(f0, control)
        else:
            k0, f0, state = evaluate(t0, y0, state)
        stages = run_stages(tab, evaluate, t0, dt, y0, k0, f0, state, keep_last_f=fsal)
        if isinstance(self.solver, dfx.AbstractERK):
            dense_info = dict(y0=y0, y1=stages.y1, k=stages.ks)
        else:
            dense_info = dict(y0=y0, y1=stages.y1)
        if observed is not None:
            info = StepInfo(  # (diffrax's loop passes the times as arrays)
                t0=cast(Array, t0), t1=cast(Array, t1), y0=y0, y1=stages.y1,
                y_error=stages.y_error, ks=stages.ks, tableau=tab,
                interpolation=self.interpolation_cls(t0=t0, t1=t1, **dense_info),
            )  # fmt: skip
            observed = tuple(
                obs.update(o, info) for obs, o in zip(self.observers, observed)
            )
        new_solver_state = (stages.f_last if fsal else None, stages.state, observed)
        return (
            stages.y1,
            stages.y_error,
            dense_info,
            new_solver_state,
            dfx.RESULTS.successful,
        )


def time_dtype(y) -> jnp.dtype:
    """The dtype for the times of a solve of state `y` (a pytree): its float dtype,
    at least float32."""
    dtype = jnp.result_type(*jtu.tree_leaves(y))
    return jnp.promote_types(dtype, jnp.float32)
