"""Argument checks shared across the library."""


def check_positive_int(name: str, value, *, owner: str | None = None) -> int:
    """`value` as an int >= 1, else a `ValueError` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}`{name}` must be a positive int, got {value!r}.")
    return value
