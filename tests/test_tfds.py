"""Image datasets (tensorflow-datasets' mock data, a generated Tiny-ImageNet folder),
the training augmentations, and the full-scale image script on mock data."""

import argparse
import io
import json
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tadiffeq as td
from tadiffeq.data import (
    channel_statistics,
    image_dataset_info,
    IMAGE_DATASETS,
    ImageAugmentation,
    load_image_dataset,
    load_tfds_split,
    load_tiny_imagenet_split,
    normalize_images,
    random_crop,
    random_erasing,
    random_flip,
    tiny_imagenet_classes,
)


TFDS_NAMES = ["mnist", "cifar10", "svhn", "cifar100"]


def _images(key, shape):
    return jax.random.uniform(key, shape, minval=0.5, maxval=1.5)  # never 0


# --- augmentations ---------------------------------------------------------------


def test_random_crop_is_a_window_of_the_padded_image(getkey):
    x = _images(getkey(), (24, 5, 6, 2))
    fill = np.array([-1.0, -2.0], np.float32)
    key = getkey()
    crop = jax.jit(random_crop, static_argnums=2)
    out = np.asarray(crop(key, x, 2, fill=fill))
    np.testing.assert_array_equal(out, crop(key, x, 2, fill=fill))
    padded = np.empty((24, 9, 10, 2), np.float32)
    padded[...] = fill
    padded[:, 2:7, 2:8] = np.asarray(x)
    offsets = set()
    for b in range(24):
        found = [
            (i, j)
            for i in range(5)
            for j in range(5)
            if np.array_equal(out[b], padded[b, i : i + 5, j : j + 6])
        ]
        assert found, b
        offsets.add(found[0])
    assert len(offsets) > 5  # independent offsets per image
    np.testing.assert_array_equal(random_crop(key, x, 0), x)
    with pytest.raises(ValueError, match="`padding`"):
        random_crop(key, x, -1)
    with pytest.raises(ValueError, match="`fill`"):
        random_crop(key, x, 1, fill=[0.0, 1.0, 2.0])


def test_random_flip_mirrors_whole_images(getkey):
    x = _images(getkey(), (64, 4, 5, 3))
    mirrored = np.asarray(x)[:, :, ::-1]
    key = getkey()
    flip = jax.jit(random_flip, static_argnums=2)
    np.testing.assert_array_equal(flip(key, x, 0.0), x)
    np.testing.assert_array_equal(flip(key, x, 1.0), mirrored)
    out = np.asarray(flip(key, x, 0.5))
    same = np.all(out == np.asarray(x), axis=(1, 2, 3))
    flipped = np.all(out == mirrored, axis=(1, 2, 3))
    assert np.all(same | flipped) and 10 < flipped.sum() < 54
    with pytest.raises(ValueError, match="`probability`"):
        random_flip(key, x, 1.5)


def test_random_erasing_sets_one_rectangle_to_value(getkey):
    h, w = 16, 16
    x = np.asarray(_images(getkey(), (48, h, w, 3)))
    value = np.array([0.0, -1.0, 2.0], np.float32)
    scale, ratio = (0.02, 0.33), (0.3, 3.3)
    erasing = jax.jit(random_erasing, static_argnums=2)
    out = np.asarray(erasing(getkey(), x, 1.0, value=value))
    erased = 0
    for b in range(len(x)):
        changed = np.any(out[b] != x[b], axis=-1)
        if not changed.any():
            continue
        erased += 1
        rows, cols = np.nonzero(changed)
        eh, ew = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert changed.sum() == eh * ew  # a filled axis-aligned rectangle
        np.testing.assert_array_equal(out[b][changed], np.tile(value, (eh * ew, 1)))
        np.testing.assert_array_equal(out[b][~changed], x[b][~changed])
        # Its sides are round(sqrt(s A r)) and round(sqrt(s A / r)) for s in scale
        # and r in ratio: check the area and aspect up to that rounding.
        s_lo, s_hi = (
            (eh - 0.5) * (ew - 0.5) / (h * w),
            (eh + 0.5) * (ew + 0.5) / (h * w),
        )
        assert s_lo <= scale[1] and s_hi >= scale[0]
        assert (eh - 0.5) / (ew + 0.5) <= ratio[1] and (eh + 0.5) / (ew - 0.5) >= ratio[
            0
        ]
        assert eh < h and ew < w
    assert erased >= 45  # p = 1: all but the rare images where no candidate fits
    np.testing.assert_array_equal(erasing(getkey(), x, 0.0), x)
    half = np.asarray(erasing(getkey(), x, 0.5))
    assert 8 < np.any(half != x, axis=(1, 2, 3)).sum() < 40
    with pytest.raises(ValueError, match="`scale`"):
        random_erasing(getkey(), x, scale=(0.5, 0.1))


def test_image_augmentation_composes_crop_flip_erasing(getkey):
    x = _images(getkey(), (8, 8, 8, 3))
    key = getkey()
    aug = ImageAugmentation(crop_padding=2, crop_fill=(-1.0, -2.0, -3.0))
    # Per-channel fills as an array (e.g. -mean / std) are the same thing.
    assert ImageAugmentation(crop_padding=2, crop_fill=-np.arange(1.0, 4.0)) == aug
    with pytest.raises(ValueError, match="`crop_fill`"):
        ImageAugmentation(crop_fill=())
    out = eqx.filter_jit(aug)(key, x)
    k_crop, k_flip, k_erase = jax.random.split(key, 3)
    by_hand = random_crop(k_crop, x, 2, fill=jnp.array([-1.0, -2.0, -3.0]))
    by_hand = random_erasing(k_erase, random_flip(k_flip, by_hand), 0.5)
    np.testing.assert_array_equal(out, by_hand)
    none = ImageAugmentation(
        crop_padding=0, flip_probability=0.0, erasing_probability=0.0
    )
    np.testing.assert_array_equal(none(key, x), x)


# --- tensorflow-datasets (mock data, offline) -------------------------------------


@pytest.fixture
def mock_tfds():
    tfds = pytest.importorskip("tensorflow_datasets")

    def mock(num_examples):
        return tfds.testing.mock_data(
            num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
        )

    return mock


@pytest.mark.parametrize("name", TFDS_NAMES)
def test_tfds_mock_split_and_normalisation(mock_tfds, name):
    """Raw split: uint8 NHWC of the dataset's shape, int32 labels in range, `limit`
    respected; the normalised dataset is `(x / 255 - mean) / std` of it."""
    info = image_dataset_info(name)
    tf_before = "tensorflow" in sys.modules
    with mock_tfds(7):
        x, y = load_tfds_split(name, "train", limit=5)
        full = load_image_dataset(name, limit=5)
    assert x.shape == (5, *info.image_shape) and x.dtype == np.uint8
    assert y.dtype == np.int32 and 0 <= y.min() and y.max() < info.num_classes
    xn, yn = full["train"]
    assert xn.dtype == np.float32 and full["test"][0].shape == (7, *info.image_shape)
    np.testing.assert_array_equal(yn, y)
    mean, std = np.array(info.mean), np.array(info.std)
    np.testing.assert_allclose(xn, (x / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    if not tf_before:  # the data_source reader runs without TensorFlow
        assert "tensorflow" not in sys.modules


def test_tfds_reads_real_array_record_files_without_tensorflow(tmp_path):
    """Not mocked: a tiny "cifar10" prepared by tfds in its own format (ArrayRecord
    files of PNG-encoded examples; PNG bytes need no TensorFlow to write) is read
    back exactly through `tfds.data_source`."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = [3, 1, 4, 1, 5, 9]

    def png(a):
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="PNG")
        return buffer.getvalue()

    class TinyCifar10(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "cifar10"
        VERSION = tfds.core.Version("3.0.2")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "id": tfds.features.Text(),
                    "image": tfds.features.Image(shape=(32, 32, 3)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }),
            )  # fmt: skip

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(0, 4),
                "test": self._generate_examples(4, 6),
            }

        def _generate_examples(self, start, stop):
            for i in range(start, stop):
                yield i, {"id": str(i), "image": png(images[i]), "label": labels[i]}

    tf_before = "tensorflow" in sys.modules
    TinyCifar10(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    x, y = load_tfds_split("cifar10", "train", data_dir=tmp_path)
    assert x.shape == (4, 32, 32, 3)
    for img, label in zip(x, y):  # tfds shuffles when preparing: match each image
        (i,) = [i for i in range(4) if np.array_equal(images[i], img)]
        assert label == labels[i]
    data = load_image_dataset("cifar10", data_dir=tmp_path, limit=3)
    assert data["train"][0].shape == (3, 32, 32, 3) and len(data["test"][1]) == 2
    if not tf_before:
        assert "tensorflow" not in sys.modules


def test_tfds_bad_arguments_name_the_accepted_values(mock_tfds):
    with pytest.raises(ValueError, match="`name` must be one of mnist, cifar10, svhn"):
        load_image_dataset("imagenet")
    with pytest.raises(ValueError, match="`split` of cifar10 must be one of train, "):
        load_tfds_split("cifar10", "validation")
    with pytest.raises(ValueError, match="`reader` must be one of data_source, tf"):
        load_tfds_split("cifar10", reader="torch")
    with pytest.raises(ValueError, match="`limit`"):
        load_image_dataset("cifar10", limit=0)
    with pytest.raises(ValueError, match="not in the tensorflow-datasets catalogue"):
        load_tfds_split("tiny_imagenet")
    with mock_tfds(3):
        x, _ = load_tfds_split("svhn", "extra")  # SVHN's third split
    assert x.shape == (3, 32, 32, 3)
    with pytest.raises(ValueError, match=r"shape \(N, 32, 32, 3\)"):
        normalize_images(np.zeros((2, 28, 28, 1), np.uint8), "cifar10")
    with pytest.raises(ValueError, match="`images` must be uint8"):
        normalize_images(np.zeros((2, 32, 32, 3), np.float32), "cifar10")


def test_channel_statistics_by_hand():
    x = np.random.default_rng(0).integers(0, 256, (5, 4, 3, 2), dtype=np.uint8)
    mean, std = channel_statistics(x)
    flat = x.reshape(-1, 2) / 255.0
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(0), rtol=1e-10)
    assert {"mnist", "cifar10", "svhn", "cifar100", "tiny_imagenet"} == set(
        IMAGE_DATASETS
    )
    assert IMAGE_DATASETS["svhn"].tfds_name == "svhn_cropped"


# --- Tiny-ImageNet folder ----------------------------------------------------------


def test_tiny_imagenet_folder(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    from experiments.tabn_images import write_mock_tiny_imagenet

    folder = write_mock_tiny_imagenet(tmp_path / "tiny-imagenet-200", per_class=2)
    wnids = tiny_imagenet_classes(folder)
    assert wnids == sorted(wnids) and len(wnids) == 3  # wnids.txt is written reversed
    x, y = load_tiny_imagenet_split(folder, "train")
    assert x.shape == (6, 64, 64, 3) and x.dtype == np.uint8
    assert y.tolist() == [0, 1, 2, 0, 1, 2]  # interleaved: prefixes are balanced
    # Class 0 is grey-scale JPEG, read as RGB with equal channels.
    assert np.all(x[0, ..., 0] == x[0, ..., 1]) and not np.all(
        x[1, ..., 0] == x[1, ..., 1]
    )
    xv, yv = load_tiny_imagenet_split(folder, "val", limit=4)
    assert yv.tolist() == [0, 0, 1, 1]
    # val_k was saved from the same pixels as the k-th training image of its class.
    np.testing.assert_array_equal(xv[2], x[1])
    monkeypatch.setenv("TADIFFEQ_TINY_IMAGENET_DIR", str(folder))
    data = load_image_dataset("tiny_imagenet", limit=3)
    assert data["train"][0].shape == (3, 64, 64, 3) and len(data["test"][1]) == 6
    with pytest.raises(ValueError, match="`split` of tiny_imagenet must be one of "):
        load_tiny_imagenet_split(folder, "test")
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\n")
    with pytest.raises(ValueError, match="wnid"):
        load_tiny_imagenet_split(folder, "val")


# --- experiments/tabn_images.py ----------------------------------------------------


def _abstract_parameters(cfg, image_shape, num_classes):
    """Parameter counts of the preset's model, built abstractly (no compilation)."""
    from experiments import tabn_images

    model, _ = eqx.filter_eval_shape(
        tabn_images.build_image_classifier, cfg, image_shape, num_classes,
        jax.random.PRNGKey(0),
    )  # fmt: skip
    model = jax.tree.map(
        lambda s: (
            np.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s
        ),
        model,
    )
    return td.count_parameters(model, grid_affine=False)


@pytest.mark.parametrize(
    "preset", ["cifar10", "svhn", "cifar100", "tiny_imagenet", "mnist"]
)
def test_tabn_images_preset_config_path_on_mock_data(tmp_path, mock_tfds, preset):
    """Every preset's data path on mock data and its full-width U-Net model (built
    abstractly); training is covered by the smoke run below and the slow tests."""
    from experiments import tabn_images

    cfg = tabn_images.preset_config(preset, train_limit=3)
    info = image_dataset_info(cfg.dataset)
    args = argparse.Namespace(mock=4, out=str(tmp_path), data_dir=None)
    data, description = tabn_images.load_data(cfg, args)
    assert "mock" in description
    assert data["train"][0].shape == (3, *info.image_shape)
    assert cfg.field == "unet" and cfg.widths == "32,64,128,256"
    assert (cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.clip_norm) == (
        256, 1e-3, 2e-2, 10.0,
    )  # fmt: skip
    assert (cfg.solver, cfg.rtol, cfg.atol, cfg.num_intervals) == (
        "dopri5", 1e-3, 1e-3, 100,
    )  # fmt: skip
    assert cfg.flip == info.mirror_symmetric
    if preset == "cifar10":  # the paper's 2.2M: the authors' U-Net, one BN affine
        assert _abstract_parameters(cfg, (32, 32, 3), 10) == 2_190_196
    with pytest.raises(ValueError, match="`preset` must be one of cifar10, svhn"):
        tabn_images.preset_config("imagenet")


def _smoke(tmp_path, preset, *extra):
    from experiments import tabn_images

    return tabn_images.main(
        ["--preset", preset, "--mock", "4", "--field", "mlp", "--hidden", "8",
         "--batch-size", "2", "--epochs", "1", "--eval-batch", "4",
         "--out", str(tmp_path), *extra]
    )  # fmt: skip


def test_tabn_images_smoke(tmp_path, mock_tfds, capsys):
    """The script end to end on mock CIFAR-10 (reduced model: an 8-unit MLP field):
    augmented training, evaluation, JSON, figure and checkpoint."""
    row = _smoke(tmp_path, "cifar10", "--solver", "euler")  # the cheapest compile
    saved = json.loads((tmp_path / "cifar10.json").read_text())
    assert saved["config"]["dataset"] == "cifar10" and saved["config"]["erasing"] == 0.5
    assert 0.0 <= row["test_acc"] <= 1.0 and row["test_nfe"] > 0
    assert len(saved["history"]) == 1 and (tmp_path / "cifar10.png").stat().st_size
    assert td.Checkpointer(tmp_path / "checkpoints" / "cifar10_seed0").latest()[0] == 1
    assert "test acc" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["svhn", "cifar100", "tiny_imagenet", "mnist"])
def test_tabn_images_smoke_other_presets(tmp_path, mock_tfds, preset):
    row = _smoke(tmp_path, preset)
    assert 0.0 <= row["test_acc"] <= 1.0
    classes = IMAGE_DATASETS[preset].num_classes
    assert row["params"] > classes  # the head has num_classes outputs


@pytest.mark.slow
def test_tabn_images_unet_reduced_width(tmp_path, mock_tfds):
    """The U-Net path (widths 4, 8) for two steps on mock CIFAR-10."""
    row = _smoke(tmp_path, "cifar10", "--field", "unet", "--widths", "4,8")
    assert row["train_nfe"] > 0 and row["config"]["widths"] == "4,8"


@pytest.mark.slow
def test_tabn_images_unet_full_width_step(tmp_path, mock_tfds):
    """One training step of the paper's 2.2M-parameter U-Net on a mock CIFAR-10
    batch of 2 (CPU: minutes, dominated by compilation)."""
    row = _smoke(
        tmp_path, "cifar10", "--field", "unet", "--train-limit", "2",
        "--test-limit", "2", "--eval-batch", "2",
    )  # fmt: skip
    assert row["params_without_grid_affine"] == 2_190_196
    assert np.isfinite(row["history"][0]["loss"])


@pytest.mark.slow
def test_augmented_training_is_deterministic_and_resumes_exactly(tmp_path):
    """With the augmentation hook, a run stopped after one epoch and resumed ends
    exactly where an uninterrupted run ends."""
    from experiments.common import ClassifierConfig, train_classifier
    from tadiffeq.data import synthetic_digits

    data = synthetic_digits(seed=0)
    data = {k: (x[:64], y[:64]) for k, (x, y) in data.items()}
    cfg = ClassifierConfig(norm="tabn", hidden=8, epochs=2, batch_size=32)
    aug = ImageAugmentation(crop_padding=2)
    log = lambda *a, **k: None
    kw = dict(log=log, augment=aug)
    full = train_classifier(cfg, data, checkpoint_dir=tmp_path / "a", **kw)
    assert (
        train_classifier(
            cfg, data, checkpoint_dir=tmp_path / "b", stop_after_epochs=1, **kw
        )
        is None
    )
    resumed = train_classifier(cfg, data, checkpoint_dir=tmp_path / "b", **kw)
    plain = train_classifier(cfg, data, log=log)
    assert [h["loss"] for h in full[2]] == [h["loss"] for h in resumed[2]]
    assert [h["loss"] for h in full[2]] != [h["loss"] for h in plain[2]]
    leaves = lambda run: jax.tree.leaves(eqx.filter(run[:2], eqx.is_array))
    for a, b in zip(leaves(full), leaves(resumed)):
        np.testing.assert_array_equal(a, b)
