"""Full-scale TA-BN image classification (Zheng et al. 2024): the unmixed U-Net
Neural ODE on CIFAR-10, SVHN, CIFAR-100, Tiny-ImageNet or MNIST.

The model is the paper's "unmixed" classifier: one Neural ODE over the image (the
18-conv U-Net vector field `td.UNetField`, widths 32/64/128/256, 2.2M parameters on
CIFAR-10 without TA-BN's per-grid affine) with TA-BN on 100 grid intervals, solved by
dopri5 rtol = atol = 1e-3 on [0, 1], then BN -> dropout -> one linear layer. Recipe:
AdamW lr 1e-3, weight decay 2e-2, lr x0.1 at half the epochs, batch 256, global-norm
clip 10, TA-BN affine penalty 0.1; TA-BN's training solves take a jittered first step
(`--first-step-jitter`, default `common.TABN_FIRST_STEP_JITTER`) so that they cover its
grid (docs/results.md, "TA-BN coverage"). Training batches are augmented (random crop
with padding, horizontal flip where it keeps the label, random erasing); see
`PRESETS`.

Data come from tensorflow-datasets (`tadiffeq.data.load_image_dataset`; `--download`
lets tfds fetch and prepare a dataset once, which needs TensorFlow, the `tfds` extra)
or, for Tiny-ImageNet, from the `tiny-imagenet-200` folder (`--data-dir`). `--mock N`
replaces the data with N generated examples per split (tfds's `mock_data`; a generated
folder for Tiny-ImageNet) to check a preset's whole path offline.

Checkpoints per epoch under `--out` (a rerun resumes exactly); writes
`<preset>.json` and `<preset>.png`. Full-scale runs need a GPU (convolutions inside a
solve are slow on CPU; see docs/benchmarks.md).

    python -m experiments.tabn_images --preset cifar10            # GPU, the paper's run
    python -m experiments.tabn_images --preset cifar10 --mock 8 --widths 4,8 \\
        --batch-size 4 --epochs 1 --eval-batch 4                  # smoke run, CPU
"""

import argparse
import dataclasses
import pathlib
import re
import sys
import time
from dataclasses import asdict, dataclass

import jax
import numpy as np

import tadiffeq as td
from tadiffeq.data import (
    image_dataset_info,
    ImageAugmentation,
    load_image_dataset,
)

from .common import (
    add_first_step_jitter_argument,
    build_classifier,
    ClassifierConfig,
    evaluate,
    name_list,
    positive_int,
    positive_int_list,
    SOLVERS,
    train_classifier,
    with_first_step_jitter,
    workspace_data,
    write_json,
)
from .reporting import pyplot, save_figure


@dataclass
class ImageConfig(ClassifierConfig):
    """`ClassifierConfig` (the paper's optimiser and solver recipe) plus the image
    experiment's settings. Defaults: the paper's CIFAR-10 run."""

    field: str = "unet"
    batch_size: int = 256
    epochs: int = 100  # deep conv fields train for 100+ epochs; set with --epochs
    dataset: str = "cifar10"
    widths: str = "32,64,128,256"  # U-Net channels per level
    crop_padding: int = 4
    flip: bool = True
    erasing: float = 0.5  # random-erasing probability
    train_limit: int = 0  # 0: the whole split
    test_limit: int = 0


PRESETS: dict[str, dict] = {
    # 32x32 RGB, 50k train / 10k test: crop (pad 4), flip, erasing.
    "cifar10": dict(dataset="cifar10"),
    # Digits: no left-right flip (it changes some digits' meaning).
    "svhn": dict(dataset="svhn", flip=False),
    "cifar100": dict(dataset="cifar100"),
    # 64x64 RGB, 100k train / 10k val (the test set): crop with padding 8 (the same
    # eighth of the side as 4 on 32x32).
    "tiny_imagenet": dict(dataset="tiny_imagenet", crop_padding=8),
    # 28x28 grey digits, zero-padded to 32x32 (the U-Net halves the side 3 times);
    # no augmentation, as in the MNIST experiments of this repository.
    "mnist": dict(dataset="mnist", crop_padding=0, flip=False, erasing=0.0),
}


def preset_config(preset: str, **overrides) -> ImageConfig:
    """The `ImageConfig` of `preset` with `overrides` (config field names)."""
    if preset not in PRESETS:
        raise ValueError(
            f"`preset` must be one of {', '.join(PRESETS)}, got {preset!r}."
        )
    return ImageConfig(**{**PRESETS[preset], **overrides})


def parse_widths(widths: str) -> tuple[int, ...]:
    try:
        values = tuple(int(w) for w in widths.split(","))
    except ValueError:
        values = ()
    if len(values) < 2 or min(values) < 1:
        raise ValueError(
            f"`widths` must be at least two positive comma-separated ints, got "
            f"{widths!r}."
        )
    return values


def build_image_classifier(cfg: ImageConfig, image_shape, num_classes, key):
    """`(model, state)`: `common.build_classifier` with a U-Net of `cfg.widths`."""
    widths = parse_widths(cfg.widths) if cfg.field == "unet" else None
    return build_classifier(cfg, image_shape, num_classes, key, widths=widths)


def pad_images(data, multiple: int, fill: np.ndarray):
    """Images padded with `fill` (per channel) to a side divisible by `multiple`."""
    out = {}
    for split, (x, y) in data.items():
        h, w = x.shape[1:3]
        ph, pw = -h % multiple, -w % multiple
        if ph or pw:
            canvas = np.empty((len(x), h + ph, w + pw, x.shape[-1]), x.dtype)
            canvas[...] = fill
            canvas[:, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w] = x
            x = canvas
        out[split] = (x, y)
    return out


def write_mock_tiny_imagenet(
    directory: pathlib.Path, *, num_classes: int = 3, per_class: int = 2, seed: int = 0
) -> pathlib.Path:
    """A small folder in the `tiny-imagenet-200` layout (random 64x64 JPEGs, the
    first class grey-scale): `wnids.txt`, `train/<wnid>/images/*.JPEG`,
    `val/images/*.JPEG`, `val/val_annotations.txt`. Returns `directory`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    wnids = [f"n{i:08d}" for i in range(num_classes)]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    (directory / "val" / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for c, wnid in enumerate(wnids):
        folder = directory / "train" / wnid / "images"
        folder.mkdir(parents=True, exist_ok=True)
        mode, shape = ("L", (64, 64)) if c == 0 else ("RGB", (64, 64, 3))
        for i in range(per_class):
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(folder / f"{wnid}_{i}.JPEG")
            name = f"val_{c * per_class + i}.JPEG"
            Image.fromarray(pixels, mode).save(directory / "val" / "images" / name)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (directory / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return directory


def load_data(cfg: ImageConfig, args):
    """`(data, description)` for `cfg.dataset`: real, or generated with `--mock`."""
    limits = dict(limit=cfg.train_limit or None, test_limit=cfg.test_limit or None)
    if not args.mock:
        data_dir = args.data_dir
        if data_dir is None and cfg.dataset == "tiny_imagenet":
            data_dir = workspace_data(
                "tiny-imagenet-200", td.data.default_tiny_imagenet_dir()
            )
        data = load_image_dataset(
            cfg.dataset, data_dir=data_dir, download=args.download,
            reader=args.reader, **limits,
        )  # fmt: skip
        return data, cfg.dataset
    if cfg.dataset == "tiny_imagenet":
        folder = write_mock_tiny_imagenet(
            pathlib.Path(args.out) / "mock_tiny_imagenet",
            per_class=max(1, -(-args.mock // 3)),
        )
        data = load_image_dataset(cfg.dataset, data_dir=folder, **limits)
        return data, f"mock tiny-imagenet-200 folder ({args.mock} images)"
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(
        num_examples=args.mock, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        data = load_image_dataset(cfg.dataset, **limits)
    return data, f"tfds mock data for {cfg.dataset} ({args.mock} random examples)"


def _progress(total: int):
    """A tqdm bar over training steps fed by `train_classifier`'s log lines."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="train", file=sys.stdout, mininterval=1.0)
    pattern = re.compile(r"step (\d+)/\d+ (.*)")

    def log(msg="", end="\n"):
        match = pattern.search(msg)
        if match:
            bar.update(int(match.group(1)) - bar.n)
            bar.set_postfix_str(match.group(2), refresh=False)
        elif msg.strip():
            bar.write(msg.strip())

    return bar, log


def run(cfg: ImageConfig, args) -> dict:
    """Trains and evaluates one preset; returns the results row."""
    t0 = time.perf_counter()
    info = image_dataset_info(cfg.dataset)
    data, description = load_data(cfg, args)
    fill = (0.0 - np.asarray(info.mean, np.float32)) / np.asarray(info.std, np.float32)
    if cfg.field == "unet":
        data = pad_images(data, 2 ** (len(parse_widths(cfg.widths)) - 1), fill)
    x_train, (x_test, y_test) = data["train"][0], data["test"]
    print(
        f"data: {description}; train {x_train.shape}, test {x_test.shape}, "
        f"{info.num_classes} classes"
    )
    augment = None
    if cfg.crop_padding or cfg.flip or cfg.erasing:
        augment = ImageAugmentation(
            crop_padding=cfg.crop_padding,
            crop_fill=tuple(float(v) for v in fill),  # black, as torchvision pads
            flip_probability=0.5 if cfg.flip else 0.0,
            erasing_probability=cfg.erasing,
        )
    steps = cfg.epochs * (len(x_train) // cfg.batch_size)
    if steps == 0:
        raise ValueError(
            f"--batch-size {cfg.batch_size} is larger than the {len(x_train)} "
            "training examples."
        )
    out = pathlib.Path(args.out)
    bar, log = _progress(steps)
    model, state, history = train_classifier(
        cfg, data, log=log, label=args.preset, build=build_image_classifier,
        augment=augment, num_classes=info.num_classes,
        checkpoint_dir=out / "checkpoints" / f"{args.preset}_seed{cfg.seed}",
    )  # fmt: skip
    bar.close()
    test_acc, test_nfe = evaluate(model, state, x_test, y_test, args.eval_batch)
    row = dict(
        preset=args.preset, data=description, config=asdict(cfg),
        params=td.count_parameters(model),
        params_without_grid_affine=td.count_parameters(model, grid_affine=False),
        test_acc=test_acc, test_nfe=test_nfe, eval_batch=args.eval_batch,
        train_nfe=history[-1]["train_nfe"], train_s=history[-1]["seconds"],
        seconds=time.perf_counter() - t0, device=str(jax.devices()[0]),
        history=history,
    )  # fmt: skip
    print(
        f"{args.preset}: test acc {test_acc:.4f}, test NFE {test_nfe:.1f}, "
        f"params {row['params_without_grid_affine']:,} ({row['params']:,} with the "
        f"TA-BN grid affine), {row['seconds']:.0f} s"
    )
    write_json(out / f"{args.preset}.json", row)
    plot(row, out / f"{args.preset}.png")
    return row


def plot(row: dict, path: pathlib.Path) -> pathlib.Path | None:
    """Training loss, accuracy and NFE per epoch; `None` without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    history = row["history"]
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, key, label in zip(
        axes, ("loss", "train_acc", "train_nfe"), ("train loss", "train acc", "NFE")
    ):
        ax.plot(epochs, [h[key] for h in history], "o-")
        ax.set(xlabel="epoch", ylabel=label)
    axes[1].axhline(row["test_acc"], color="k", ls="--", label="test")
    axes[1].legend()
    fig.suptitle(f"{row['preset']}: {row['data']}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", required=True, choices=list(PRESETS))
    parser.add_argument("--epochs", type=positive_int, help="default 100")
    parser.add_argument("--batch-size", type=positive_int, help="default 256")
    parser.add_argument(
        "--widths", type=positive_int_list, help="U-Net channels per level, e.g. 8,16"
    )
    parser.add_argument("--field", help="vector field (default unet; mlp or conv<d> "
                        "for cheap checks)")  # fmt: skip
    parser.add_argument(
        "--hidden", type=positive_int, help="MLP field width (with --field mlp)"
    )
    parser.add_argument("--solver", choices=list(SOLVERS), help="default dopri5")
    parser.add_argument(
        "--norm", type=name_list(td.NORM_NAMES), help="normalisation (default tabn)"
    )
    parser.add_argument(
        "--num-intervals", type=positive_int, help="TA-BN grid (default 100)"
    )
    parser.add_argument(
        "--train-limit", type=positive_int, help="use only this many examples"
    )
    parser.add_argument("--test-limit", type=positive_int)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--eval-batch", type=positive_int, default=256)
    parser.add_argument("--data-dir", help="tfds data dir / tiny-imagenet-200 folder")
    parser.add_argument("--download", action="store_true",
                        help="let tfds download and prepare the dataset")  # fmt: skip
    parser.add_argument("--reader", default="data_source",
                        choices=["data_source", "tf"])  # fmt: skip
    parser.add_argument(
        "--mock", type=int, default=0,
        help="N generated examples per split instead of the data",
    )  # fmt: skip
    add_first_step_jitter_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/tabn_images")
    args = parser.parse_args(argv)
    overrides = {
        name: value
        for name, value in (
            ("epochs", args.epochs), ("batch_size", args.batch_size),
            ("widths", args.widths), ("field", args.field),
            ("hidden", args.hidden), ("solver", args.solver), ("norm", args.norm),
            ("num_intervals", args.num_intervals),
            ("train_limit", args.train_limit), ("test_limit", args.test_limit),
        )
        if value is not None
    }  # fmt: skip
    if args.no_augment:
        overrides.update(crop_padding=0, flip=False, erasing=0.0)
    cfg = preset_config(args.preset, seed=args.seed, **overrides)
    cfg = with_first_step_jitter(cfg, args.first_step_jitter)
    parse_widths(cfg.widths)
    print(f"== {args.preset}: {dataclasses.asdict(cfg)}")
    return run(cfg, args)


if __name__ == "__main__":
    main()
