"""The Butcher tableau of an explicit Runge--Kutta method, as tadiffeq reads it."""

import diffrax as dfx
import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._custom_types import Y


def _tuple(x) -> tuple:
    x = np.asarray(x, dtype=float)
    return tuple(map(_tuple, x)) if x.ndim > 1 else tuple(float(v) for v in x)


def stage_sum(coeffs, ks: Y) -> Y:
    """`sum_i coeffs[i] ks[i]` for each leaf of a stacked-stages pytree (stage axis
    first; `coeffs` a NumPy or JAX vector), at full precision: the weights of an error
    estimate or of a stiffness difference sum to zero, and a TF32 / bfloat16 matmul
    default on GPU or TPU would lose their O(dt^2) result in the cancellation."""
    return jtu.tree_map(
        lambda k: jnp.tensordot(
            jnp.asarray(coeffs, k.dtype), k, axes=1, precision=lax.Precision.HIGHEST
        ),
        ks,
    )


class RKTableau(eqx.Module):
    """The dense Butcher tableau of an explicit Runge--Kutta method with s stages:
    nodes `c` (s,), with c[0] = 0; the strictly lower triangular `a` (s, s); the
    solution weights `b` (s,); the embedded error weights `b_error` (s,), the
    difference between the solution and the embedded solution's weights (`None`
    without an error estimate); `fsal`, whether the last stage is the next step's
    first. Stored as static tuples of floats (hashable, so a solver holding one stays
    a static part of a jitted function); read as NumPy arrays.

    `RKTableau.of(solver)` reads a diffrax solver's: `diffrax.Euler` or any
    `diffrax.AbstractERK` with a single `ButcherTableau` (Dopri5, Tsit5, Bosh3, Heun,
    Midpoint, Ralston, Dopri8); anything else is a TypeError naming `solver`.
    """

    c_: tuple[float, ...] = eqx.field(static=True)
    a_: tuple[tuple[float, ...], ...] = eqx.field(static=True)
    b_: tuple[float, ...] = eqx.field(static=True)
    b_error_: tuple[float, ...] | None = eqx.field(static=True)
    fsal: bool = eqx.field(static=True)

    @classmethod
    def of(cls, solver: dfx.AbstractSolver) -> "RKTableau":
        """The tableau of `solver` (see the class docstring)."""
        if isinstance(solver, dfx.Euler):
            return cls((0.0,), ((0.0,),), (1.0,), None, False)
        tableau = getattr(type(solver), "tableau", None)
        if not isinstance(solver, dfx.AbstractERK) or not isinstance(
            tableau, dfx.ButcherTableau
        ):
            raise TypeError(
                "`solver` must be diffrax.Euler or an explicit Runge--Kutta solver "
                "with a single Butcher tableau (Dopri5, Tsit5, Bosh3, Heun, Midpoint, "
                f"Ralston, Dopri8); got {type(solver).__name__}."
            )
        s = tableau.num_stages
        a = np.zeros((s, s))
        for i, row in enumerate(tableau.a_lower):
            a[i + 1, : len(row)] = row
        c = np.concatenate([[0.0], np.asarray(tableau.c, dtype=float)])
        return cls(
            _tuple(c),
            _tuple(a),
            _tuple(tableau.b_sol),
            _tuple(tableau.b_error),
            bool(tableau.fsal),
        )

    @property
    def c(self) -> np.ndarray:
        """Nodes, (s,)."""
        return np.asarray(self.c_)

    @property
    def a(self) -> np.ndarray:
        """Stage coefficients, (s, s), strictly lower triangular."""
        return np.asarray(self.a_)

    @property
    def b(self) -> np.ndarray:
        """Solution weights, (s,)."""
        return np.asarray(self.b_)

    @property
    def b_error(self) -> np.ndarray | None:
        """Embedded error weights, (s,), or `None`."""
        return None if self.b_error_ is None else np.asarray(self.b_error_)

    @property
    def num_stages(self) -> int:
        """s, the number of stages."""
        return len(self.b_)

    @property
    def has_error_estimate(self) -> bool:
        """Whether the method has an embedded error estimate (adaptive steps)."""
        return self.b_error_ is not None
