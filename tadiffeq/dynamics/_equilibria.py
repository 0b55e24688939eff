"""Equilibria of a vector field and their linearisation: where a learned field's
fixed points lie and whether they attract, which long free runs depend on and
one-step training losses barely see."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float

from .._misc import check_float, check_int


class Equilibria(eqx.Module):
    """What [`tadiffeq.dynamics.equilibria`][] found, one row per starting point.

    - `points`: `(n, dim)`, the equilibria x* (f(x*) = 0) Newton converged to.
    - `jacobians`: `(n, dim, dim)`, df/dx at each point. Its eigenvalues (e.g.
      `numpy.linalg.eigvals(jacobians)`; `jnp.linalg.eig` is not available on every
      backend) decide the point's linear stability: it attracts nearby states if all
      have negative real part. In the field's own time unit (for a field in rescaled
      time s = t / dt, divide by dt for per time unit).
    - `residuals`: `(n,)`, max |f(x*)|.
    - `converged`: `(n,)`, whether Newton met its tolerance within `max_steps` (a
      start in no equilibrium's basin does not: its row is where Newton stopped).
    """

    points: Float[Array, "n dim"]
    jacobians: Float[Array, "n dim dim"]
    residuals: Float[Array, " n"]
    converged: Bool[Array, " n"]


def equilibria(
    field: Callable[[Float[Array, " dim"]], Float[Array, " dim"]],
    x0: ArrayLike,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    max_steps: int = 100,
) -> Equilibria:
    """The equilibria of the autonomous field `field` reached by Newton's method
    (`optimistix.Newton`) from each starting point, with the Jacobian there.

    **Arguments:**

    - `field`: `(dim,) -> (dim,)`, differentiable (a learned field, or one in
      rescaled time).
    - `x0`: the starting points `(n, dim)` (e.g. the true system's equilibria, to
      find the learned field's counterparts).
    - `rtol`, `atol`: Newton's tolerances on the iterate (state units).
    - `max_steps`: Newton iterations at most.

    **Returns:** an [`tadiffeq.dynamics.Equilibria`][]. Never raises for a start that
    does not converge: its `converged` is False.
    """
    x0 = jnp.asarray(x0)
    if x0.ndim != 2:
        raise ValueError(f"`x0` must have shape (n, dim), got {x0.shape}.")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.result_type(float))
    check_float("rtol", rtol, owner="equilibria", low=0.0, low_open=True)
    check_float("atol", atol, owner="equilibria", low=0.0, low_open=True)
    check_int("max_steps", max_steps, owner="equilibria", minimum=1)
    solver = optx.Newton(rtol=rtol, atol=atol)

    def one(x):
        sol = optx.root_find(
            lambda y, _: field(y), solver, x, max_steps=max_steps, throw=False
        )
        x = sol.value
        return (
            x,
            jax.jacfwd(field)(x),
            jnp.max(jnp.abs(field(x))),
            sol.result == optx.RESULTS.successful,
        )

    return Equilibria(*jax.vmap(one)(x0))
