"""The main job: TA-BN vs mini-batch BN vs Pop-TI BN vs no normalisation, and local
regularization's NFE reduction, offline.

Trains the unmixed Neural ODE classifier (MLP vector field with the normalisation
under test, dopri5 rtol = atol = 1e-3 on [0, 1], then BN -> dropout -> linear) with
each normalisation (TA-BN's training solves with a jittered first step, so that
training covers its grid: `--first-step-jitter`), and evaluates accuracy at test
batch 256 and at test batch 2 (Zheng et al. 2024, Fig. 3 left: mini-batch BN
collapses at small test batches, TA-BN does not), and the accuracy on the clean
samples of test batches in which one sample in ten carries Gaussian noise (Fig. 3
middle, `--noise-std`: mini-batch BN lets the noisy samples corrupt the statistics
of the clean ones). Data: the offline MNIST split when
the IDX files are found (`common.load_image_data`), else generated digits. Then
trains the small augmented Neural ODE of `regularization_toy.py` without and with the
local and global regularizers (same seed) and reports the test NFE.
Figures go to `--out`.

    python -m experiments.main                 # 2 to 4 minutes on 2 CPU cores
    python -m experiments.main --data synthetic --epochs 1
"""

import argparse
import pathlib
import time

import numpy as np

import tadiffeq as td

from . import regularization_toy as toy
from .common import (
    add_first_step_jitter_argument,
    ClassifierConfig,
    evaluate,
    load_image_data,
    name_list,
    nonnegative_float,
    nonnegative_int,
    one_in_ten_noisy,
    positive_int,
    print_table,
    train_classifier,
    with_first_step_jitter,
    write_json,
)
from .reporting import pyplot, save_figure


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default="auto", choices=["auto", "mnist", "synthetic"]
    )
    parser.add_argument("--norms", default="tabn,minibatch,popti,none",
                        type=name_list(td.NORM_NAMES),
                        help="comma-separated normalisation names")  # fmt: skip
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--hidden", type=positive_int, default=64)
    parser.add_argument(
        "--train-limit",
        type=positive_int,
        default=None,
        help="use only this many samples",
    )
    parser.add_argument("--test-limit", type=positive_int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--noise-std", type=nonnegative_float, default=10.0,
        help="std of the noise on one test sample in ten (normalised pixel units)",
    )  # fmt: skip
    add_first_step_jitter_argument(parser)
    parser.add_argument(
        "--reg-steps", type=nonnegative_int, default=200,
        help="training steps of the regularization part (0 skips it)",
    )  # fmt: skip
    parser.add_argument("--out", default="results/main")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    data, description = load_image_data(args.data, seed=args.seed)
    if args.train_limit is not None:
        data["train"] = tuple(a[: args.train_limit] for a in data["train"])
    if args.test_limit is not None:
        data["test"] = tuple(a[: args.test_limit] for a in data["test"])
    n_train, n_test = len(data["train"][1]), len(data["test"][1])
    x_noisy, noisy = one_in_ten_noisy(data["test"][0], args.noise_std, args.seed)
    print(f"data: {description}; train {n_train}, test {n_test}")
    rows = []
    for norm in args.norms.split(","):
        cfg = ClassifierConfig(
            norm=norm, hidden=args.hidden, epochs=args.epochs,
            batch_size=args.batch_size, seed=args.seed,
        )  # fmt: skip
        cfg = with_first_step_jitter(cfg, args.first_step_jitter)
        ckpt_dir = pathlib.Path(args.out) / "checkpoints" / f"{norm}_seed{args.seed}"
        model, state, history = train_classifier(
            cfg, data, label=norm, checkpoint_dir=ckpt_dir
        )
        x_test, y_test = data["test"]
        acc256, nfe256 = evaluate(model, state, x_test, y_test, 256)
        acc2, _ = evaluate(model, state, x_test, y_test, 2)
        *_, pred = evaluate(model, state, x_noisy, y_test, 256, return_predictions=True)
        acc_noisy = float(np.mean(pred[~noisy] == y_test[~noisy]))
        rows.append(
            dict(
                norm=norm, acc_b256=acc256, acc_b2=acc2, acc_noisy=acc_noisy,
                test_nfe=nfe256,
                train_nfe=history[-1]["train_nfe"], train_s=history[-1]["seconds"],
                config=cfg, history=history,
            )
        )  # fmt: skip
    print()
    print(f"Unmixed Neural ODE classifier, MLP field (hidden {args.hidden}),")
    print(f"{description},")
    print(f"{args.epochs} epochs, batch {args.batch_size}, seed {args.seed}:")
    print_table(
        rows,
        [
            ("norm", "normalisation"), ("acc_b256", "acc@batch256"),
            ("acc_b2", "acc@batch2"),
            ("acc_noisy", "clean acc, 1-in-10 noisy batches"),
            ("test_nfe", "test NFE"),
            ("train_nfe", "train NFE"), ("train_s", "train s"),
        ],
    )  # fmt: skip
    reg_rows = []
    if args.reg_steps:
        print("\nLocal regularization of the solver's error estimate (toy task):")
        configs = [
            toy.ToyConfig(regularizer=n, weight=w, steps=args.reg_steps, seed=args.seed)
            for n, w in (("none", 0.0), ("local", 3.0), ("global", 10.0))
        ]
        reg_rows = toy.run_all(configs, pathlib.Path(args.out) / "regularization")
        base = reg_rows[0]["test_nfe"]
        for r in reg_rows[1:]:
            print(f"  {r['regularizer']}: test NFE x{r['test_nfe'] / base:.2f}")
    out = pathlib.Path(args.out) / "main.json"
    write_json(
        out, dict(data=description, seed=args.seed, rows=rows, regularization=reg_rows)
    )
    figures = plot(rows, reg_rows, pathlib.Path(args.out))
    print(f"\nresults: {out}; figures: {', '.join(map(str, figures))}")
    print(f"(total {time.perf_counter() - t0:.0f} s)")
    return rows


def plot(rows, reg_rows, out: pathlib.Path) -> list[pathlib.Path]:
    """Accuracy at test batch 256 vs 2 per normalisation (the paper's Fig. 3 left)
    and test NFE per regularizer; `[]` without matplotlib."""
    plt = pyplot()
    if plt is None:
        return []
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2 if reg_rows else 1, figsize=(9, 3.2), squeeze=False)
    ax = axes[0, 0]
    names = [r["norm"] for r in rows]
    pos = range(len(rows))
    ax.bar([p - 0.2 for p in pos], [r["acc_b256"] for r in rows], 0.4, label="256")
    ax.bar([p + 0.2 for p in pos], [r["acc_b2"] for r in rows], 0.4, label="2")
    ax.set(xticks=list(pos), xticklabels=names, ylabel="test accuracy", ylim=(0, 1))
    ax.legend(title="test batch", loc="lower left")
    if reg_rows:
        ax = axes[0, 1]
        ax.bar([r["regularizer"] for r in reg_rows], [r["test_nfe"] for r in reg_rows])
        ax.set(ylabel="test NFE", title="regularization (toy task)")
    fig.tight_layout()
    path = out / "main.png"
    save_figure(fig, path)
    return [path]


if __name__ == "__main__":
    main()
