"""The image-classification datasets of the TA-BN experiments (MNIST, CIFAR-10, SVHN,
CIFAR-100 through tensorflow-datasets; Tiny-ImageNet from its folder) as normalised
NumPy arrays."""

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from .._misc import check_positive_int
from ._tiny_imagenet import default_tiny_imagenet_dir, load_tiny_imagenet_split


@dataclasses.dataclass(frozen=True)
class ImageDatasetInfo:
    """What the loaders need to know about one dataset.

    - `name`: this library's name (a key of `IMAGE_DATASETS`).
    - `tfds_name`: the tensorflow-datasets builder, or `None` (Tiny-ImageNet is not
      in the tfds catalogue and is read from its folder).
    - `image_shape`: `(height, width, channels)`.
    - `num_classes`: number of classes.
    - `mean`, `std`: per-channel mean and standard deviation of the training pixels
      scaled to [0, 1]; images are normalised as `(x / 255 - mean) / std`.
    - `splits`: the accepted split names; `train_split`, `test_split`: the two
      used for training and evaluation.
    - `mirror_symmetric`: whether left-right flips keep the label (not for digits).
    """

    name: str
    tfds_name: str | None
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: tuple[str, ...]
    train_split: str
    test_split: str
    mirror_symmetric: bool


# Per-channel mean and std of all training pixels (scaled to [0, 1]), the values in
# common use: MNIST as in PyTorch's MNIST example (60,000 training images); CIFAR-10
# and CIFAR-100 over their 50,000 training images (std over all pixels, not the mean
# of per-image stds); SVHN over the 73,257 `train` images of the cropped digits;
# Tiny-ImageNet over its 100,000 training images. They were not recomputed here (no
# data offline); `channel_statistics` recomputes them from a loaded training split.
IMAGE_DATASETS: dict[str, ImageDatasetInfo] = {
    info.name: info
    for info in (
        ImageDatasetInfo(
            "mnist", "mnist", (28, 28, 1), 10, (0.1307,), (0.3081,),
            ("train", "test"), "train", "test", False,
        ),
        ImageDatasetInfo(
            "cifar10", "cifar10", (32, 32, 3), 10,
            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
            ("train", "test"), "train", "test", True,
        ),
        ImageDatasetInfo(
            "svhn", "svhn_cropped", (32, 32, 3), 10,
            (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
            ("train", "test", "extra"), "train", "test", False,
        ),
        ImageDatasetInfo(
            "cifar100", "cifar100", (32, 32, 3), 100,
            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
            ("train", "test"), "train", "test", True,
        ),
        ImageDatasetInfo(
            "tiny_imagenet", None, (64, 64, 3), 200,
            (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821),
            ("train", "val"), "train", "val", True,
        ),
    )
}  # fmt: skip

_READERS = ("data_source", "tf")


def image_dataset_info(name: str) -> ImageDatasetInfo:
    """The [`tadiffeq.data.ImageDatasetInfo`][] of `name` (one of
    `IMAGE_DATASETS`)."""
    if name not in IMAGE_DATASETS:
        raise ValueError(
            f"`name` must be one of {', '.join(IMAGE_DATASETS)}, got {name!r}."
        )
    return IMAGE_DATASETS[name]


def _check_split(info: ImageDatasetInfo, split: str) -> None:
    if split not in info.splits:
        raise ValueError(
            f"`split` of {info.name} must be one of {', '.join(info.splits)}, got "
            f"{split!r}."
        )


def _check_limit(limit: int | None) -> None:
    if limit is not None:
        check_positive_int("limit", limit)


def normalize_images(images: np.ndarray, name: str) -> np.ndarray:
    """uint8 images `(N, H, W, C)` of dataset `name` -> float32
    `(x / 255 - mean) / std` with the dataset's per-channel constants."""
    info = image_dataset_info(name)
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(
            f"`images` must be uint8 (0-255), got {images.dtype}; images already "
            "scaled to floats would be scaled twice."
        )
    if images.ndim != 4 or images.shape[1:] != info.image_shape:
        shape = ", ".join(map(str, info.image_shape))
        raise ValueError(
            f"`images` of {name} must have shape (N, {shape}), got {images.shape}."
        )
    mean = np.asarray(info.mean, np.float32)
    scale = np.asarray(info.std, np.float32) * np.float32(255.0)
    out = np.empty(images.shape, np.float32)
    for start in range(0, len(images), 8192):  # chunks keep the float64-free peak low
        chunk = images[start : start + 8192].astype(np.float32)
        out[start : start + 8192] = (chunk - mean * np.float32(255.0)) / scale
    return out


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 images `(N, H, W, C)` over
    all pixels, in [0, 1] units (how the constants of `IMAGE_DATASETS` are
    defined)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` must be (N, H, W, C), got shape {images.shape}.")
    total = np.zeros(images.shape[-1])
    total_sq = np.zeros(images.shape[-1])
    for start in range(0, len(images), 8192):
        chunk = images[start : start + 8192].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 1, 2))
        total_sq += np.square(chunk).sum(axis=(0, 1, 2))
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))


def load_tfds_split(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    download: bool = False,
    reader: str = "data_source",
) -> tuple[np.ndarray, np.ndarray]:
    """One split of a tensorflow-datasets image dataset as raw arrays: images uint8
    `(N, H, W, C)` and labels int32 `(N,)`, the first `limit` examples in the
    prepared order (tfds shuffles examples when it prepares a dataset).

    **Arguments:**

    - `name`: `"mnist"`, `"cifar10"`, `"svhn"` (tfds `svhn_cropped`) or
      `"cifar100"` (fine labels).
    - `split`: a name from the dataset's `splits` (`"train"`, `"test"`, and
      `"extra"` for SVHN).
    - `data_dir`: tfds's data directory (default: tfds's, `~/tensorflow_datasets` or
      `$TFDS_DATA_DIR`).
    - `limit`: read at most this many examples (default all).
    - `download`: let tfds download and prepare the dataset if it is absent
      (preparing encodes the images with TensorFlow, so it needs the `tfds` extra;
      reading does not).
    - `reader`: `"data_source"` (default: `tfds.data_source`, random access to the
      ArrayRecord files, no TensorFlow at run time; the dataset must be prepared in
      the `array_record` format, which `download=True` does) or `"tf"`
      (`tfds.load` + `tfds.as_numpy`, needs TensorFlow, reads TFRecord datasets).
    """
    info = image_dataset_info(name)
    if info.tfds_name is None:
        raise ValueError(
            f"`name` {name!r} is not in the tensorflow-datasets catalogue; use "
            "`load_image_dataset` (it reads the dataset's folder)."
        )
    _check_split(info, split)
    _check_limit(limit)
    if reader not in _READERS:
        raise ValueError(
            f"`reader` must be one of {', '.join(_READERS)}, got {reader!r}."
        )
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "Reading image datasets needs tensorflow-datasets: pip install "
            "'tadiffeq[tfds]'."
        ) from e
    tfds_split = split if limit is None else f"{split}[:{limit}]"
    if reader == "tf":
        arrays = tfds.as_numpy(
            tfds.load(
                info.tfds_name, split=tfds_split, batch_size=-1, data_dir=data_dir,
                download=download,
            )
        )  # fmt: skip
        images, labels = arrays["image"], arrays["label"]
    else:
        source = cast(  # one split: one data source
            Sequence[Any],
            tfds.data_source(
                info.tfds_name, split=split, data_dir=data_dir, download=download
            ),
        )
        count = len(source) if limit is None else min(limit, len(source))
        images = np.empty((count, *info.image_shape), np.uint8)
        labels = np.empty((count,), np.int32)
        for i in range(count):  # one record at a time: random access, decoded
            example = source[i]
            images[i] = np.asarray(example["image"]).reshape(info.image_shape)
            labels[i] = example["label"]
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int32)
    if images.shape[1:] != info.image_shape or images.dtype != np.uint8:
        raise ValueError(
            f"{info.tfds_name} gave images {images.shape} {images.dtype}; expected "
            f"uint8 (N, {', '.join(map(str, info.image_shape))})."
        )
    if labels.size and not 0 <= labels.min() <= labels.max() < info.num_classes:
        raise ValueError(
            f"{info.tfds_name} gave labels outside [0, {info.num_classes})."
        )
    return images, labels


def load_image_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    test_limit: int | None = None,
    download: bool = False,
    reader: str = "data_source",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The training and test split of an image dataset, normalised, in the format of
    the experiments: `{"train": (x, y), "test": (x, y)}` with x float32
    `(N, H, W, C)` channels-last, `(x / 255 - mean) / std` per channel (see
    `IMAGE_DATASETS`), and y int32.

    **Arguments:**

    - `name`: `"mnist"`, `"cifar10"`, `"svhn"`, `"cifar100"` (read with
      tensorflow-datasets, see [`tadiffeq.data.load_tfds_split`][]) or
      `"tiny_imagenet"` (the `tiny-imagenet-200` folder, see
      [`tadiffeq.data.load_tiny_imagenet_split`][]; its labelled `val` split is the
      test split).
    - `data_dir`: tfds's data directory, or for Tiny-ImageNet the
      `tiny-imagenet-200` folder (default `$TADIFFEQ_TINY_IMAGENET_DIR` or
      `../shared/data/tiny-imagenet-200`).
    - `limit`, `test_limit`: at most this many training / test examples (default
      all).
    - `download`, `reader`: as for `load_tfds_split` (tfds datasets only).
    """
    info = image_dataset_info(name)
    _check_limit(limit)
    _check_limit(test_limit)
    out = {}
    for key, split, n in (
        ("train", info.train_split, limit),
        ("test", info.test_split, test_limit),
    ):
        if info.tfds_name is None:
            directory = data_dir or default_tiny_imagenet_dir()
            if directory is None:
                raise FileNotFoundError(
                    "No tiny-imagenet-200 folder found; set TADIFFEQ_TINY_IMAGENET_DIR "
                    "or pass `data_dir`."
                )
            images, labels = load_tiny_imagenet_split(directory, split, limit=n)
        else:
            images, labels = load_tfds_split(
                name, split, data_dir=data_dir, limit=n, download=download,
                reader=reader,
            )  # fmt: skip
        out[key] = (normalize_images(images, name), labels)
    return out
