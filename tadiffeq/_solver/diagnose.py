"""Errors that say why a solve failed: a non-finite input, a state that became
non-finite or grew without bound, or the step budget, instead of diffrax's one
"Try increasing `max_steps`" for all of them."""

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool

from .._custom_types import Y


#: Growth of max|y| over a solve beyond which a failed solve is called a blow-up
#: (dy/dt = y**3 from 10, float32, dopri5 at 1e-3: 144x after 64 steps, 2,779x
#: after 4,096, with t stuck at the singularity 0.005).
BLOWUP_FACTOR = 100.0


def _all_finite(tree: Y) -> Bool[Array, ""]:
    leaves = jtu.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _max_abs(tree: Y) -> Array:
    return jnp.max(
        jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in jtu.tree_leaves(tree)])
    )


def check_finite_input(y0: Y, name: str = "x") -> Y:
    """`y0`, with a runtime error (`eqx.error_if`) if any entry is NaN or inf."""
    return eqx.error_if(
        y0,
        ~_all_finite(y0),
        f"`{name}` contains NaN or inf: no solver can integrate from it (check the "
        "batch; this is not a step-count problem).",
    )


def check_solution(
    sol: dfx.Solution,
    y0: Y,
    y_stop: Y,
    *,
    max_steps: int,
    model_part: Callable[[Y], Y] | None = None,
) -> Y:
    """`y_stop`, the state where the solve `sol` (made with `throw=False`) stopped
    (with `SaveAt(t1=True)`, diffrax returns the state reached), with a runtime
    error if the solve failed. A solve that ran out of steps is diagnosed:

    - the state became NaN/inf (the field overflowed or returned NaN, e.g. poisoned
      normalisation statistics or NaN weights);
    - max|y| grew beyond `BLOWUP_FACTOR` x max(max|y0|, 1): the solution blows up
      before t1 (more steps will not help);
    - otherwise the step budget, or a field that returns NaN/inf near the state
      reached (its steps are all rejected, so NaN never enters the state; telling
      the two apart would cost an evaluation of the field in every solve).

    Other failures keep diffrax's own message. `model_part` picks the model's state
    out of an augmented one for the growth test (a regularizer's integrals that ride
    along, RNODE's or TayNODE's, start at 0 and grow by design); default: all of it.
    """
    result = sol.result
    other = (result != dfx.RESULTS.successful) & (
        result != dfx.RESULTS.max_steps_reached
    )
    out = result.error_if(y_stop, other)
    finite = _all_finite(y_stop)
    part = (lambda y: y) if model_part is None else model_part
    grew = _max_abs(part(y_stop)) > BLOWUP_FACTOR * jnp.maximum(_max_abs(part(y0)), 1.0)
    index = jnp.where(~finite, 0, jnp.where(grew, 1, 2))
    messages = (
        f"The solve stopped after max_steps = {max_steps} steps because the state "
        "became NaN or inf: the vector field returned NaN/inf or overflowed (check "
        "the weights and the normalisation statistics). Raising max_steps will not "
        "help.",
        f"The solve stopped after max_steps = {max_steps} steps with the state grown "
        f"more than {BLOWUP_FACTOR:.0f}x beyond the initial state's: the solution "
        "most likely blows up before t1 (a finite-time singularity or an unstable "
        "field), where raising max_steps will not help.",
        f"The maximum number of solver steps (max_steps = {max_steps}) was reached "
        "before t1 at a finite, bounded state. Either the budget is too small for "
        "these tolerances (raise `max_steps`, or loosen `rtol`/`atol`), or the vector "
        "field returns NaN/inf near the state reached, so that every step there is "
        "rejected (NaN weights or normalisation statistics, or a NaN-producing "
        "operation): evaluate the field there to tell.",
    )
    return eqx.branched_error_if(
        out, result == dfx.RESULTS.max_steps_reached, index, messages
    )
