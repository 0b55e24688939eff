"""The penalty on the normalisation layers' affine parameters."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, PyTree

from .._misc import check_float
from .base import AbstractNorm


def affine_penalty(tree: PyTree, weight: float = 0.1) -> Float[Array, ""]:
    """`weight * sum over layers and grid points of (mean_c (gamma - 1)^2 +
    mean_c beta^2)`: the BN-affine penalty `r` of Zheng et al. (2024).

    Every [`tadiffeq.AbstractNorm`][] with affine parameters found in `tree`
    contributes: TA-BN once per grid point (its weight and bias are `(M + 1, C)`),
    layers with a time-independent affine once. Pass the part of the model to
    penalise, e.g. `model.ode.field`.
    """
    if not hasattr(weight, "shape"):  # (an array weight, e.g. a schedule's, is not)
        check_float("weight", weight, owner="affine_penalty", low=0.0)
    norms = [
        x
        for x in jtu.tree_leaves(tree, is_leaf=lambda x: isinstance(x, AbstractNorm))
        if isinstance(x, AbstractNorm)
    ]
    total = jnp.zeros((), jnp.float32)
    for layer in norms:
        gamma = getattr(layer, "weight", None)
        beta = getattr(layer, "bias", None)
        if gamma is not None and eqx.is_array(gamma):
            total = total + jnp.sum(jnp.mean(jnp.square(gamma - 1.0), axis=-1))
        if beta is not None and eqx.is_array(beta):
            total = total + jnp.sum(jnp.mean(jnp.square(beta), axis=-1))
    return weight * total
