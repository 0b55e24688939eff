import gzip
import struct

import numpy as np
import pytest
from conftest import SHARED

from tadiffeq.data import (
    iterate_batches,
    load_mnist_idx,
    mnist_offline_split,
    read_idx,
    synthetic_digits,
)


def _write_idx(path, array, compress):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    labels = np.arange(5)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images, compress)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, compress)
    x, y = load_mnist_idx(tmp_path, "test")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    split = mnist_offline_split(tmp_path, num_train=3)
    assert split["train"][0].shape == (3, 28, 28, 1) and split["test"][1].tolist() == [
        3,
        4,
    ]
    np.testing.assert_allclose(
        split["train"][0][0, ..., 0], (images[0] / 255 - 0.1307) / 0.3081, rtol=1e-5
    )


def test_read_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + b"\0\0\0\1abcd")
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(tmp_path / "bad")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing")
    with pytest.raises(ValueError, match="`split`"):
        load_mnist_idx(tmp_path, "val")
    # A truncated header, a header declaring more than the file holds (a huge
    # dimension included), labels out of MNIST's range: each names the file.
    (tmp_path / "short").write_bytes(b"\0\0")
    with pytest.raises(ValueError, match="short: truncated IDX header"):
        read_idx(tmp_path / "short")
    (tmp_path / "dims").write_bytes(struct.pack(">HBB", 0, 0x08, 3) + b"\0\0\0\5")
    with pytest.raises(ValueError, match="dims: truncated IDX header"):
        read_idx(tmp_path / "dims")
    huge = struct.pack(">HBB", 0, 0x08, 2) + struct.pack(">II", 2**32 - 1, 2**32 - 1)
    (tmp_path / "huge").write_bytes(huge + b"abc")
    with pytest.raises(ValueError, match=r"huge: the header declares shape .* holds 3"):
        read_idx(tmp_path / "huge")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)), False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 12]), False)
    with pytest.raises(ValueError, match="labels-idx1-ubyte: MNIST labels must be 0-9"):
        load_mnist_idx(tmp_path, "test")


@pytest.mark.skipif(not (SHARED / "mnist").exists(), reason="shared MNIST data absent")
def test_real_mnist_offline_split():
    split = mnist_offline_split(SHARED / "mnist")
    xtr, ytr = split["train"]
    xte, yte = split["test"]
    assert xtr.shape == (8000, 28, 28, 1) and xte.shape == (2000, 28, 28, 1)
    assert ytr[:5].tolist() == [7, 2, 1, 0, 4]  # the first MNIST test labels
    assert set(np.unique(yte)) == set(range(10))
    assert abs(float(xtr.mean())) < 0.1


def test_synthetic_digits_deterministic_and_balanced():
    a = synthetic_digits(500, 100, seed=3)
    b = synthetic_digits(500, 100, seed=3)
    c = synthetic_digits(500, 100, seed=4)
    np.testing.assert_array_equal(a["train"][0], b["train"][0])
    assert not np.array_equal(a["train"][0], c["train"][0])
    assert a["train"][0].shape == (500, 14, 14, 1) and a["train"][0].dtype == np.float32
    assert np.bincount(a["train"][1], minlength=10).min() > 20


def test_iterate_batches():
    x = np.arange(10)
    y = np.arange(10) * 2
    batches = list(iterate_batches(x, y, 4, seed=1))
    assert len(batches) == 2 and all(len(b[0]) == 4 for b in batches)
    for xb, yb in batches:
        np.testing.assert_array_equal(yb, 2 * xb)
    seen = np.concatenate([b[0] for b in batches])
    assert len(set(seen.tolist())) == 8  # no sample twice
    assert [len(b[0]) for b in iterate_batches(x, y, 4, drop_last=False)] == [4, 4, 2]
    for seed in range(3):  # every sample once per epoch, in a seed-dependent order
        order = np.concatenate(
            [b[0] for b in iterate_batches(x, y, 4, seed=seed, drop_last=False)]
        )
        np.testing.assert_array_equal(np.sort(order), x)
        assert not np.array_equal(order, x)
    other = list(iterate_batches(x, y, 4, seed=2))
    assert not np.array_equal(batches[0][0], other[0][0])
    again = list(iterate_batches(x, y, 4, seed=1))
    np.testing.assert_array_equal(batches[0][0], again[0][0])
    with pytest.raises(ValueError, match="differ in length"):
        iterate_batches(x, y[:3], 2)  # checked when called, not when first iterated
    with pytest.raises(ValueError, match="`batch_size` 11 is larger than the data"):
        iterate_batches(x, y, 11)
    assert [len(b[0]) for b in iterate_batches(x, y, 11, drop_last=False)] == [10]
    for bad in (0, -3):
        with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
            iterate_batches(x, y, bad)


def test_dataset_folders_env_then_cache_and_no_silent_fallback(tmp_path, monkeypatch):
    import tadiffeq as td

    monkeypatch.delenv("TADIFFEQ_MNIST_DIR", raising=False)
    monkeypatch.delenv("TADIFFEQ_LORENZ63_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert td.data.cache_dir() == tmp_path / "cache" / "tadiffeq"
    # Nothing set up: no folder (the library assumes no workspace layout).
    assert td.data.default_mnist_dir() is None
    assert td.data.default_lorenz63_dir() == tmp_path / "cache/tadiffeq/lorenz63"
    # The cache folder, once it holds the files.
    mnist = tmp_path / "cache" / "tadiffeq" / "mnist"
    mnist.mkdir(parents=True)
    (mnist / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    assert td.data.default_mnist_dir() == mnist
    # An environment variable wins, and a wrong one is an error, not a fall-back.
    monkeypatch.setenv("TADIFFEQ_MNIST_DIR", str(tmp_path / "nonexistent"))
    with pytest.raises(FileNotFoundError, match="TADIFFEQ_MNIST_DIR"):
        td.data.default_mnist_dir()
    monkeypatch.setenv("TADIFFEQ_LORENZ63_DIR", str(tmp_path / "nonexistent"))
    with pytest.raises(FileNotFoundError, match="TADIFFEQ_LORENZ63_DIR"):
        td.data.default_lorenz63_dir()
