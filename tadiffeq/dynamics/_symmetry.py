"""Fields that respect a known symmetry of the system by construction."""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


#: Lorenz'63's symmetry group: the identity and the rotation by pi about the x3 axis,
#: (x1, x2, x3) -> (-x1, -x2, x3), which maps the field onto itself (and C+ onto C-).
LORENZ63_SYMMETRY = (
    ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
)

Group = tuple[tuple[tuple[float, ...], ...], ...]


def _as_group(group, owner: str) -> Group:
    """`group` checked (a finite group of orthogonal matrices: square, one size, the
    identity among them, closed under products) and made hashable."""
    try:
        mats = [np.asarray(g, dtype=np.float64) for g in group]
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{owner}: `group` must be a sequence of square matrices ({e})."
        ) from e
    if not mats or any(g.ndim != 2 or g.shape[0] != g.shape[1] for g in mats):
        raise ValueError(
            f"{owner}: `group` must be a non-empty sequence of square matrices, "
            f"got shapes {[g.shape for g in mats]}."
        )
    dim = mats[0].shape[0]
    if any(g.shape != (dim, dim) for g in mats):
        raise ValueError(
            f"{owner}: the matrices of `group` differ in size: "
            f"{[g.shape for g in mats]}."
        )

    def index(m):
        return next(
            (i for i, g in enumerate(mats) if np.allclose(g, m, atol=1e-12)), None
        )

    eye = np.eye(dim)
    for i, g in enumerate(mats):
        if not np.allclose(g @ g.T, eye, atol=1e-12):
            raise ValueError(f"{owner}: `group[{i}]` is not orthogonal.")
    if index(eye) is None:
        raise ValueError(f"{owner}: `group` must contain the identity.")
    for i, g in enumerate(mats):
        for j, h in enumerate(mats):
            if index(g @ h) is None:
                raise ValueError(
                    f"{owner}: `group` is not closed: group[{i}] @ group[{j}] "
                    "is not in it."
                )
    return tuple(tuple(tuple(float(v) for v in row) for row in g) for g in mats)


class Symmetrized(eqx.Module):
    r"""A field made equivariant under a finite group of orthogonal maps by averaging
    over the group:

    $f_G(x) = \frac{1}{|G|} \sum_{g \in G} g^{-1} f(g x)$, so $f_G(g x) = g f_G(x)$
    for every $g$ in $G$ whatever `field` is, and $f_G = f$ where `field` already is
    equivariant. A field that has the symmetry of the true system then behaves the same
    in regions the data visit and in their images that the data never reach (for
    Lorenz'63: the neighbourhood of C+ and that of C-).

    **Arguments:**

    - `field`: `(..., dim) -> (..., dim)` (e.g. an MLP on a batch of states).
    - `group`: the matrices $g$, each `(dim, dim)` and orthogonal; they must form a
      group (the identity among them, closed under products), e.g.
      `tadiffeq.dynamics.LORENZ63_SYMMETRY`. Held as static data, not parameters.

    Called on `x` of shape `(..., dim)`; costs |G| evaluations of `field`.
    """

    field: Callable[[Array], Array]
    group: Group = eqx.field(static=True)

    def __init__(
        self,
        field: Callable[[Array], Array],
        group: Sequence[ArrayLike | Sequence[Sequence[float]]] | ArrayLike,
    ):
        self.field = field
        self.group = _as_group(group, "Symmetrized")

    def __call__(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        dim = len(self.group[0])
        if x.shape[-1:] != (dim,):
            raise ValueError(
                f"Symmetrized: `x` must have shape (..., {dim}), got {x.shape}."
            )
        total = jnp.zeros_like(x)
        for g in self.group:
            g = jnp.asarray(g, dtype=x.dtype)
            # Row vectors: g x is x @ g.T, and g^{-1} y = g.T y is y @ g.
            total = total + self.field(x @ g.T) @ g
        return total / len(self.group)


def equivariance_defect(
    field: Callable[[Array], Array],
    group: Sequence[ArrayLike | Sequence[Sequence[float]]] | ArrayLike,
    x: ArrayLike,
) -> Float[Array, " n"]:
    r"""How far `field` is from equivariance under `group` at each point of `x`:
    $\max_{g} \|f(g x) - g f(x)\| / \|f(x)\|$ (Euclidean norms; 0 for an equivariant
    field, e.g. [`tadiffeq.dynamics.Symmetrized`][]).

    For a field learned from data of a system with this symmetry, it bounds the field's
    error from below: the true field f* is equivariant, so the defect times
    $\|f(x)\|$ is at most $\|f(g x) - f^*(g x)\| + \|f(x) - f^*(x)\|$. Evaluated at
    the mirror images of the data, it shows where the data do not constrain the field.

    **Arguments:**

    - `field`: `(n, dim) -> (n, dim)`.
    - `group`: as for [`tadiffeq.dynamics.Symmetrized`][].
    - `x`: the points `(n, dim)`, where `field` is not 0.

    **Returns:** `(n,)`, the relative defect at each point.
    """
    mats = _as_group(group, "equivariance_defect")
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != len(mats[0]):
        raise ValueError(
            f"equivariance_defect: `x` must have shape (n, {len(mats[0])}), got "
            f"{x.shape}."
        )
    fx = field(x)
    worst = jnp.zeros(x.shape[0], fx.dtype)
    eye = np.eye(x.shape[1])
    for g in mats:
        if np.array_equal(g, eye):
            continue  # (the identity's defect is 0: no second evaluation at x)
        g = jnp.asarray(g, dtype=x.dtype)
        worst = jnp.maximum(worst, jnp.linalg.norm(field(x @ g.T) - fx @ g.T, axis=1))
    return worst / jnp.linalg.norm(fx, axis=1)
