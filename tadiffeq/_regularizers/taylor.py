"""TayNODE: regularizing the K-th total time derivative (Kelly et al., 2020)."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._custom_types import Scalar
from .._misc import check_positive_int
from .._solver.stateful import clone_state
from .base import AbstractRegularizer, Plan, SolveResult, SolveSpec
from .kinetic import _per_sample_sum


def total_derivatives(fn, t, y: Array, order: int) -> list[Array]:
    """`[y', y'', ..., y^(order)]` along the flow dy/dt = fn(t, y): each derivative
    is the forward-mode derivative (`jax.jvp`) of the previous one along the flow,
    d/dt g(t, y(t)) = dg/dt + dg/dy fn(t, y). Works with any JAX function, custom
    derivative rules included (ReLU, softplus), at a cost that doubles per order."""
    t = jnp.asarray(t, y.dtype)
    derivatives = [fn(t, y)]
    g = fn
    for _ in range(1, order):

        def g(t_, y_, g=g):
            return jax.jvp(g, (t_, y_), (jnp.ones_like(t_), fn(t_, y_)))[1]

        derivatives.append(g(t, y))
    return derivatives


class _TaylorField(eqx.Module):
    """The field augmented with the per-sample integrand |d^K y / dt^K|^2."""

    field: Callable
    order: int = eqx.field(static=True)

    def __call__(self, t, ya, state):
        y, _ = ya
        snapshot = clone_state(state)
        f, new_state = self.field(t, y, state)
        if self.order == 1:
            top = f
        else:
            plain = lambda t_, y_: self.field(t_, y_, clone_state(snapshot))[0]
            top = total_derivatives(plain, t, y, self.order)[-1]
        return (f, _per_sample_sum(top**2)), new_state


class TayNODE(AbstractRegularizer):
    """TayNODE (Kelly et al., NeurIPS 2020): the squared norm of the `order`-th total
    time derivative of the solution, `|d^K y / dt^K|^2`, integrated along the
    training solve as an auxiliary ODE state (excluded from error control). The
    derivatives come from nested forward-mode differentiation
    ([`tadiffeq.total_derivatives`][]). The value is the batch mean of the integral.

    **Arguments:**

    - `order`: K (default 2).

    ??? cite "Reference"

        ```bibtex
        @inproceedings{kelly2020learning,
            title={Learning Differential Equations that are Easy to Solve},
            author={Kelly, Jacob and Bettencourt, Jesse and Johnson, Matthew J and
                    Duvenaud, David K},
            booktitle={Advances in Neural Information Processing Systems},
            year={2020}
        }
        ```
    """

    order: int = eqx.field(static=True, default=2)

    needs_key = False

    def __check_init__(self):
        check_positive_int("order", self.order, owner="TayNODE")

    def plan(self, *, spec: SolveSpec, y0, key) -> Plan:
        del y0, key

        def augment(field, y0):
            zeros = jnp.zeros((y0.shape[0],), y0.dtype)
            return (
                _TaylorField(field, self.order),
                (y0, zeros),
                lambda n: lambda tree: n(tree[0]),
            )

        return Plan(augment=augment)

    def finish(self, *, spec: SolveSpec, result: SolveResult) -> tuple[Scalar, int]:
        _, integral = result.y1
        return jnp.mean(integral), 0
