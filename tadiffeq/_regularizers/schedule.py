"""Regularization weight schedules (optax schedules)."""

import math

import optax


def regularization_schedule(
    initial: float, final: float | None = None, num_steps: int | None = None
) -> optax.Schedule:
    """The regularization weight per training step, as an optax schedule: constant
    `initial` if `final` is `None`, else an exponential decay from `initial` at step 0
    to `final` at `num_steps` (held there afterwards), as Pal et al. (2021, 2023) use.
    """
    if not (initial >= 0 and math.isfinite(initial)):
        raise ValueError(f"`initial` must be a finite weight >= 0, got {initial}.")
    if final is None:
        return optax.constant_schedule(initial)
    if not final > 0 or not initial > 0:
        raise ValueError(
            f"An exponential decay needs positive weights, got {initial} -> {final}."
        )
    if num_steps is None or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive int, got {num_steps!r}.")
    return optax.exponential_decay(
        init_value=initial,
        transition_steps=num_steps,
        decay_rate=final / initial,
        end_value=final,
    )
