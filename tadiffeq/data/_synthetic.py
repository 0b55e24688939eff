"""A small generated image-classification dataset that needs no download."""

import numpy as np

from .._misc import check_float, check_int, check_positive_int


def synthetic_digits(
    num_train: int = 4000,
    num_test: int = 1000,
    *,
    size: int = 14,
    num_classes: int = 10,
    noise: float = 0.35,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Generated grey-scale "digits": each class is a fixed pattern of three Gaussian
    strokes on a `size x size` canvas; every sample shifts it by up to one pixel,
    scales its contrast and adds pixel noise. Deterministic given `seed`.

    Returns `{"train": (x, y), "test": (x, y)}` with x float32 `(N, size, size, 1)`
    standardised to zero mean and unit variance, y int32.
    """
    for name, value in (
        ("num_train", num_train),
        ("num_test", num_test),
        ("num_classes", num_classes),
    ):
        check_positive_int(name, value)
    check_int("size", size, minimum=6)
    check_float("noise", noise, low=0.0)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1)
    prototypes = []
    for _ in range(num_classes):
        img = np.zeros((size, size))
        for _ in range(3):  # three elongated strokes per class
            centre = rng.uniform(2, size - 3, 2)
            axis = rng.normal(size=2)
            axis /= np.linalg.norm(axis)
            d = grid - centre
            along = d @ axis
            across = d @ np.array([-axis[1], axis[0]])
            img += np.exp(-(along**2) / (2 * 2.5**2) - across**2 / (2 * 0.8**2))
        prototypes.append(img / img.max())
    prototypes = np.stack(prototypes)

    def sample(n):
        y = rng.integers(0, num_classes, n)
        x = prototypes[y]
        shifts = rng.integers(-1, 2, (n, 2))
        x = np.stack([np.roll(img, tuple(s), (0, 1)) for img, s in zip(x, shifts)])
        x = x * rng.uniform(0.6, 1.4, (n, 1, 1)) + noise * rng.normal(size=x.shape)
        return x.astype(np.float32)[..., None], y.astype(np.int32)

    xtr, ytr = sample(num_train)
    xte, yte = sample(num_test)
    mean, std = xtr.mean(), xtr.std()
    return {"train": ((xtr - mean) / std, ytr), "test": ((xte - mean) / std, yte)}
