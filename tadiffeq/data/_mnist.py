"""The MNIST digits from the original IDX files, read offline."""

import gzip
import math
import os
import pathlib
import struct

import numpy as np

from .._misc import check_positive_int
from ._paths import dataset_dir


_FILES = {
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
}
#: The normalisation used for MNIST (mean and std of the training pixels).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _open(path: pathlib.Path):
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.exists():
            return (
                gzip.open(candidate, "rb")
                if candidate.suffix == ".gz"
                else open(candidate, "rb")
            )
    raise FileNotFoundError(f"No IDX file {path} (or {path}.gz).")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file of unsigned bytes (optionally gzip-compressed) into a NumPy
    array of the shape its header declares. A damaged file (short header, another
    element type, more or fewer bytes than the header declares) is a ValueError
    naming it."""
    with _open(pathlib.Path(path)) as f:
        header = f.read(4)
        if len(header) < 4:
            raise ValueError(f"{path}: truncated IDX header ({len(header)} bytes).")
        zero, dtype_code, ndim = struct.unpack(">HBB", header)
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path}: not an unsigned-byte IDX file.")
        dims = f.read(4 * ndim)
        if len(dims) < 4 * ndim:
            raise ValueError(f"{path}: truncated IDX header (its {ndim} dimensions).")
        shape = struct.unpack(">" + "I" * ndim, dims)
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != math.prod(shape):
        raise ValueError(
            f"{path}: the header declares shape {shape} ({math.prod(shape)} values), "
            f"the file holds {data.size}."
        )
    return data.reshape(shape)


def default_mnist_dir() -> pathlib.Path | None:
    """Where to look for the MNIST IDX files: `$TADIFFEQ_MNIST_DIR` (an error if it
    does not hold them), else `~/.cache/tadiffeq/mnist` (see
    [`tadiffeq.data.cache_dir`][]). Returns `None` if neither is set up."""
    test = _FILES["test"][0]
    return dataset_dir("mnist", "TADIFFEQ_MNIST_DIR", (test, test + ".gz"))


def load_mnist_idx(
    directory: str | os.PathLike | None = None, split: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
    """Reads MNIST images `(N, 28, 28)` uint8 and labels `(N,)` uint8 of `split`
    ("test" or "train") from the IDX files in `directory` (default:
    [`tadiffeq.data.default_mnist_dir`][])."""
    if split not in _FILES:
        raise ValueError(f"`split` must be 'test' or 'train', got {split!r}.")
    if directory is None:
        directory = default_mnist_dir()
        if directory is None:
            raise FileNotFoundError(
                "No MNIST IDX files found; set TADIFFEQ_MNIST_DIR or pass `directory`."
            )
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"`directory` must be a path (str or os.PathLike), got {directory!r}."
        )
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"`directory` {str(directory)!r} is not a folder.")
    images = read_idx(directory / _FILES[split][0])
    labels = read_idx(directory / _FILES[split][1])
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"Inconsistent MNIST files in {directory}: images {images.shape}, labels "
            f"{labels.shape}."
        )
    if labels.size and labels.max() > 9:
        raise ValueError(
            f"{directory / _FILES[split][1]}: MNIST labels must be 0-9, found "
            f"{int(labels.max())}."
        )
    return images, labels


def mnist_offline_split(
    directory: str | os.PathLike | None = None, num_train: int = 8000
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The fixed offline split of the 10k MNIST test set used by the experiments:
    the first `num_train` (default 8,000) images for training, the rest (2,000) for
    evaluation. Images are float32 `(N, 28, 28, 1)`, normalised with the MNIST mean
    and std; labels int32."""
    check_positive_int("num_train", num_train)
    images, labels = load_mnist_idx(directory, "test")
    if not 0 < num_train < len(images):
        raise ValueError(f"`num_train` must be in (0, {len(images)}), got {num_train}.")
    x = ((images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[..., None]
    y = labels.astype(np.int32)
    return {
        "train": (x[:num_train], y[:num_train]),
        "test": (x[num_train:], y[num_train:]),
    }
