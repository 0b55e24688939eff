"""Tiny-ImageNet (200 classes, 64x64) read from the standard `tiny-imagenet-200`
folder: it is not in the tensorflow-datasets catalogue."""

import os
import pathlib

import numpy as np

from .._misc import check_positive_int
from ._paths import dataset_dir


_SPLITS = ("train", "val")
IMAGE_SIZE = 64


def default_tiny_imagenet_dir() -> pathlib.Path | None:
    """Where to look for the `tiny-imagenet-200` folder: `$TADIFFEQ_TINY_IMAGENET_DIR`
    (an error if it holds no `wnids.txt`), else `~/.cache/tadiffeq/tiny-imagenet-200`
    (see [`tadiffeq.data.cache_dir`][]). Returns `None` if neither is set up."""
    return dataset_dir(
        "tiny-imagenet-200", "TADIFFEQ_TINY_IMAGENET_DIR", ("wnids.txt",)
    )


def tiny_imagenet_classes(directory: str | os.PathLike) -> list[str]:
    """The sorted WordNet ids of `wnids.txt` (else of the `train/` subfolders); a
    label is the index into this list (as torchvision's `ImageFolder` numbers the
    sorted class folders)."""
    directory = pathlib.Path(directory)
    wnids_file = directory / "wnids.txt"
    if wnids_file.exists():
        wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    elif (directory / "train").is_dir():
        wnids = [p.name for p in (directory / "train").iterdir() if p.is_dir()]
    else:
        raise FileNotFoundError(
            f"{directory} is not a tiny-imagenet-200 folder (no wnids.txt or train/)."
        )
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{wnids_file}: repeated class ids.")
    return sorted(wnids)


def _train_files(directory: pathlib.Path, wnids: list[str]) -> list[tuple[str, int]]:
    """Every class's images, interleaved round-robin over the classes (the first
    image of each class, then the second, ...), so a prefix is class-balanced."""
    per_class = []
    for label, wnid in enumerate(wnids):
        folder = directory / "train" / wnid / "images"
        if not folder.is_dir():
            raise FileNotFoundError(f"Missing class folder {folder}.")
        per_class.append(
            [(str(p), label) for p in sorted(folder.iterdir()) if p.is_file()]
        )
    longest = max((len(files) for files in per_class), default=0)
    return [files[i] for i in range(longest) for files in per_class if i < len(files)]


def _val_files(directory: pathlib.Path, wnids: list[str]) -> list[tuple[str, int]]:
    """`val/images/*` labelled by `val/val_annotations.txt` (tab-separated: file name,
    wnid, bounding box), in the file's order."""
    annotations = directory / "val" / "val_annotations.txt"
    if not annotations.exists():
        raise FileNotFoundError(f"Missing {annotations}.")
    index = {w: i for i, w in enumerate(wnids)}
    files = []
    for line_no, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(
                f"{annotations}:{line_no}: expected '<file>\\t<wnid>...' with a wnid "
                f"of wnids.txt, got {line!r}."
            )
        files.append((str(directory / "val" / "images" / fields[0]), index[fields[1]]))
    return files


def load_tiny_imagenet_split(
    directory: str | os.PathLike,
    split: str = "train",
    *,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One split of Tiny-ImageNet from its folder: images uint8 `(N, 64, 64, 3)`
    (grey-scale JPEGs converted to RGB) and labels int32 `(N,)` indexing
    [`tadiffeq.data.tiny_imagenet_classes`][].

    The folder layout is the standard download's:
    `wnids.txt`, `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` and
    `val/val_annotations.txt`. The unlabelled `test/` split is not read; the
    labelled `val` split serves as the test set.

    **Arguments:**

    - `directory`: the `tiny-imagenet-200` folder.
    - `split`: `"train"` (100,000 images, interleaved over the classes so that the
      first `limit` are class-balanced) or `"val"` (10,000).
    - `limit`: read at most this many images (default all).

    Needs Pillow to decode the JPEGs.
    """
    if split not in _SPLITS:
        raise ValueError(
            f"`split` of tiny_imagenet must be one of {', '.join(_SPLITS)}, got "
            f"{split!r}."
        )
    if limit is not None:
        check_positive_int("limit", limit)
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(
            "Reading Tiny-ImageNet needs Pillow (pip install pillow)."
        ) from e
    directory = pathlib.Path(directory)
    wnids = tiny_imagenet_classes(directory)
    files = (_train_files if split == "train" else _val_files)(directory, wnids)
    if limit is not None:
        files = files[:limit]
    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.empty((len(files),), np.int32)
    for i, (path, label) in enumerate(files):
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
        if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(
                f"{path}: expected a {IMAGE_SIZE}x{IMAGE_SIZE} image, got "
                f"{array.shape[1]}x{array.shape[0]}."
            )
        images[i] = array
        labels[i] = label
    return images, labels
