"""Argument checks shared across the library."""

import jax.numpy as jnp


def check_positive_int(name: str, value, *, owner: str | None = None) -> int:
    """`value` as an int >= 1, else a `ValueError` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}`{name}` must be a positive int, got {value!r}.")
    return value


def check_scalar_time(owner: str, t) -> None:
    """A `ValueError` naming `owner` unless `t` is a scalar (a time, not a batch of
    them)."""
    if jnp.ndim(t) != 0:
        shape = jnp.shape(t)
        raise ValueError(f"{owner}: `t` must be a scalar time, got shape {shape}.")
