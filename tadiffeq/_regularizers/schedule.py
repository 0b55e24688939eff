"""Regularization weight schedules (optax schedules)."""

import optax

from .._misc import check_float, check_positive_int


def regularization_schedule(
    initial: float, final: float | None = None, num_steps: int | None = None
) -> optax.Schedule:
    """The regularization weight per training step, as an optax schedule: constant
    `initial` if `final` is `None`, else an exponential decay from `initial` at step 0
    to `final` at `num_steps` (held there afterwards), as Pal et al. (2021, 2023) use.
    """
    check_float("initial", initial, low=0.0)
    if final is None:
        return optax.constant_schedule(initial)
    # An exponential decay needs positive weights at both ends.
    check_float("initial", initial, low=0.0, low_open=True)
    check_float("final", final, low=0.0, low_open=True)
    if num_steps is None:
        raise ValueError("`num_steps` must be a positive int when `final` is given.")
    check_positive_int("num_steps", num_steps)
    return optax.exponential_decay(
        init_value=initial,
        transition_steps=num_steps,
        decay_rate=final / initial,
        end_value=final,
    )
