"""RNODE: kinetic energy and Jacobian Frobenius-norm regularization (Finlay et al.,
2020)."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array

from .._custom_types import Scalar, Y
from .._misc import check_float
from .base import AbstractRegularizer, Plan, SolveResult, SolveSpec


def _per_sample_sum(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


class _KineticField(eqx.Module):
    """The field augmented with the two RNODE integrands, per sample:
    0.5 |f|^2 and |eps^T df/dy|^2 (Hutchinson's estimator of |df/dy|_F^2)."""

    field: Callable
    noise: Array

    def __call__(self, t, ya, state):
        y, _, _ = ya
        f, vjp, state = jax.vjp(lambda y: self.field(t, y, state), y, has_aux=True)
        (eps_jac,) = vjp(self.noise.astype(f.dtype))
        kinetic = 0.5 * _per_sample_sum(f**2)
        frobenius = _per_sample_sum(eps_jac**2)
        return (f, kinetic, frobenius), state


class RNODE(AbstractRegularizer):
    """RNODE (Finlay et al., ICML 2020): the kinetic energy `0.5 |f|^2` and the
    Frobenius norm of the Jacobian `|df/dy|_F^2` (Hutchinson's estimator with one
    Gaussian probe per solve) integrated along the training solve as auxiliary ODE
    states, which are excluded from the error control. The value is the batch mean of
    `kinetic_weight * integral(kinetic) + jacobian_weight * integral(frobenius)`.

    Each vector-field evaluation also computes one vector-Jacobian product.

    ??? cite "Reference"

        ```bibtex
        @inproceedings{finlay2020train,
            title={How to train your neural {ODE}: the world of {J}acobian and
                   kinetic regularization},
            author={Finlay, Chris and Jacobsen, J{\"o}rn-Henrik and Nurbekyan,
                    Levon and Oberman, Adam},
            booktitle={International Conference on Machine Learning},
            year={2020}
        }
        ```
    """

    kinetic_weight: float = eqx.field(static=True, default=1.0)
    jacobian_weight: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        for name in ("kinetic_weight", "jacobian_weight"):
            check_float(name, getattr(self, name), owner="RNODE", low=0.0)

    def plan(self, *, spec: SolveSpec, y0: Y, key) -> Plan:
        leaves = jtu.tree_leaves(y0)
        if len(leaves) != 1:
            raise ValueError("RNODE needs an array state (not a pytree).")
        assert key is not None  # needs_key: the solve passes one
        noise = jax.random.normal(key, leaves[0].shape, leaves[0].dtype)

        def augment(field, y0):
            batch = y0.shape[0]
            zeros = jnp.zeros((batch,), y0.dtype)
            return (
                _KineticField(field, noise),
                (y0, zeros, zeros),
                lambda n: lambda tree: n(tree[0]),
            )

        return Plan(augment=augment)

    def finish(self, *, spec: SolveSpec, result: SolveResult) -> tuple[Scalar, int]:
        _, kinetic, frobenius = result.y1
        value = self.kinetic_weight * jnp.mean(kinetic)
        return value + self.jacobian_weight * jnp.mean(frobenius), 0
