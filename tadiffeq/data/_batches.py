"""Shuffled mini-batches from in-memory arrays."""

from collections.abc import Iterator

import numpy as np

from .._misc import check_positive_int


def iterate_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int | None = None,
    drop_last: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields `(x, y)` mini-batches: shuffled with `np.random.default_rng(seed)` if a
    seed is given, in order otherwise. `drop_last` (default) keeps every batch the same
    shape, so a jitted step compiles once. The arguments are checked when called (a
    batch larger than the data with `drop_last` is an error: it would yield
    nothing, and a training loop waiting for a batch would never end)."""
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` differ in length: {len(x)} vs {len(y)}.")
    check_positive_int("batch_size", batch_size, owner="iterate_batches")
    if drop_last and batch_size > len(x):
        raise ValueError(
            f"iterate_batches: `batch_size` {batch_size} is larger than the data "
            f"({len(x)} samples), so no full batch exists; lower it or pass "
            "`drop_last=False`."
        )
    order = np.arange(len(x))
    if seed is not None:
        np.random.default_rng(seed).shuffle(order)
    stop = len(x) - len(x) % batch_size if drop_last else len(x)

    def batches():
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]

    return batches()
