"""The experiments' one train-step builder."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import optax
from jaxtyping import Array


def optimizer_step(
    loss_fn: Callable[..., tuple[Array, Any]],
    optimizer: optax.GradientTransformation,
    *,
    max_traces: int | None = None,
) -> Callable:
    """`step(model, opt_state, *args) -> (model, opt_state, loss, aux)`: one optimizer
    update of `model` on `loss_fn(model, *args) -> (loss, aux)`, jitted.

    The gradient is taken in the model's inexact arrays (`eqx.filter_value_and_grad`);
    `optimizer.update` also receives those parameters (AdamW's weight decay needs
    them). `max_traces`: fail if the step compiles more often than that (e.g. 1 when a
    schedule's weight is passed as an array and nothing should recompile).
    """

    def step(model, opt_state, *args):
        value_and_grad = eqx.filter_value_and_grad(loss_fn, has_aux=True)
        (loss, aux), grads = value_and_grad(model, *args)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss, aux

    if max_traces is not None:
        step = eqx.debug.assert_max_traces(step, max_traces=max_traces)
    return eqx.filter_jit(step)
