"""Argument checks shared across the library: one helper per kind of argument, each
raising an error that names the argument (and its owner, where given)."""

import math
import numbers

import jax.core
import jax.numpy as jnp


def _prefix(owner: str | None) -> str:
    return f"{owner}: " if owner else ""


def check_positive_int(name: str, value, *, owner: str | None = None) -> int:
    """`value` as an int >= 1, else a `ValueError` naming the argument."""
    return check_int(name, value, owner=owner, minimum=1)


def check_int(name: str, value, *, owner: str | None = None, minimum: int = 0) -> int:
    """`value` as an int >= `minimum`, else a `ValueError` naming the argument."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{_prefix(owner)}`{name}` must be {wanted}, got {value!r}.")
    return int(value)


def check_float(
    name: str,
    value,
    *,
    owner: str | None = None,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """`value` as a finite float in the interval from `low` to `high` (open at an end
    with `low_open`/`high_open`), else a `ValueError` naming the argument. Strings,
    bools, NaN and infinities are refused; a 0-d NumPy or JAX array counts as its
    number; a traced value (under `jit`/`vmap`) is returned unchecked."""
    if isinstance(value, jax.core.Tracer):
        # A traced argument (under jit/vmap) cannot be checked here: passed through.
        return value  # pyright: ignore[reportReturnType]
    if hasattr(value, "shape") and not isinstance(value, numbers.Real):
        if jnp.shape(value) != ():
            raise ValueError(
                f"{_prefix(owner)}`{name}` must be a scalar, got shape "
                f"{jnp.shape(value)}."
            )
        value = value.item()  # a 0-d NumPy or JAX array: its number
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    ok = ok and math.isfinite(v)
    ok = (
        ok
        and (v > low if low_open else v >= low)
        and (v < high if high_open else v <= high)
    )
    if not ok:
        if low == -math.inf and high == math.inf:
            where = ""
        elif high == math.inf:
            where = f" {'>' if low_open else '>='} {low:g}"
        elif low == -math.inf:
            where = f" {'<' if high_open else '<='} {high:g}"
        else:
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            where = f" in {lo}{low:g}, {high:g}{hi}"
        raise ValueError(
            f"{_prefix(owner)}`{name}` must be a finite float{where}, got {value!r}."
        )
    return v


def check_choice(name: str, value, choices, *, owner: str | None = None):
    """`value` if it is one of `choices`, else a `ValueError` naming the argument and
    listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"{_prefix(owner)}`{name}` must be one of {sorted(choices)}, got {value!r}."
        )
    return value


def check_scalar_time(owner: str, t) -> None:
    """A `ValueError` naming `owner` unless `t` is a scalar (a time, not a batch of
    them)."""
    if jnp.ndim(t) != 0:
        shape = jnp.shape(t)
        raise ValueError(f"{owner}: `t` must be a scalar time, got shape {shape}.")
