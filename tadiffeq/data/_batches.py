"""Shuffled mini-batches from in-memory arrays."""

from collections.abc import Iterator

import numpy as np


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
    shape, so a jitted step compiles once."""
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` differ in length: {len(x)} vs {len(y)}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
    order = np.arange(len(x))
    if seed is not None:
        np.random.default_rng(seed).shuffle(order)
    stop = len(x) - len(x) % batch_size if drop_last else len(x)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]
