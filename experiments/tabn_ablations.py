"""TA-BN ablations of Zheng et al. (2024) on the offline MNIST split.

Studies (`--study`, comma-separated):

- `noise`: one test sample in ten carries Gaussian noise (std `--noise-std`, in
  normalised pixel units); accuracy on the clean nine in ten, test batch 256, for every
  normalisation (the paper's Fig. 3 middle: with mini-batch BN the noisy samples
  corrupt the batch statistics used for the clean ones; TA-BN and Pop-TI BN solve each
  sample on its own with running statistics, so the clean samples are untouched).
- `solver`: Euler (20 fixed steps) vs dopri5 (rtol = atol = 1e-3) for TA-BN and no BN
  (the paper's Table 4).
- `grid`: TA-BN with M = 10 / 50 / 100 / 500 grid intervals (Table 5).
- `depth`: conv vector fields with 4 / 6 / 8 / 10 / 12 layers, each normalisation of
  `--norms` (Figs. 1 and 6). Conv fields inside a solve are slow on CPU: use
  `--train-limit`, and `--conv-width 8` (8/16/32/64 channels instead of the paper's
  32/64/128/256).
- `stats`: the first TA-BN layer's running mean and variance over t (Fig. 3 right),
  with its coverage.
- `coverage`: TA-BN's inference read with and without coverage on the depth
  study's conv fields (`--depths`, `--grids`): the share of grid points covered
  after training, inference accuracy and NFE with the coverage-aware read (the
  default) and with the paper's read of the same statistics, against the same
  weights with batch statistics and the training NFE.

Every run uses the paper's recipe (`common.ClassifierConfig`: AdamW 1e-3, weight decay
2e-2, lr x0.1 at half the steps, clip 10, affine penalty 0.1 for TA-BN), checkpoints
per epoch under `--out` and resumes. Writes `<study>.json` and `<study>.png`.

    python -m experiments.tabn_ablations --study noise,solver,grid,stats
    python -m experiments.tabn_ablations --study depth --conv-width 8 --train-limit 4000
"""

import argparse
import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import tadiffeq as td

from .common import (
    adaptive_steps,
    ClassifierConfig,
    evaluate,
    load_image_data,
    name_list,
    nonnegative_float,
    one_in_ten_noisy,
    positive_int,
    positive_int_list,
    print_table,
    train_classifier,
    write_json,
)
from .reporting import pyplot, save_figure


STUDIES = ("noise", "solver", "grid", "depth", "stats", "coverage")
DEFAULT_GRID = ClassifierConfig.num_intervals


def _train(cfg: ClassifierConfig, data, out: pathlib.Path, label: str):
    name = "_".join(
        f"{k}{v}" for k, v in dataclasses.asdict(cfg).items()
        if v != getattr(ClassifierConfig(), k)
    ) or "default"  # fmt: skip
    return train_classifier(
        cfg, data, label=label, checkpoint_dir=out / "checkpoints" / name
    )


def _row(cfg, model, state, history, data, **extra):
    x, y = data["test"]
    acc, nfe = evaluate(model, state, x, y, 256)
    return dict(
        norm=cfg.norm, field=cfg.field, solver=cfg.solver, grid=cfg.num_intervals,
        test_acc=acc, test_nfe=nfe, train_nfe=history[-1]["train_nfe"],
        train_s=history[-1]["seconds"], **extra,
    )  # fmt: skip


def study_noise(base, data, out, args):
    x, y = data["test"]
    x_noisy, noisy = one_in_ten_noisy(x, args.noise_std, args.seed)
    rows = []
    for norm in args.norms.split(","):
        cfg = dataclasses.replace(base, norm=norm)
        model, state, history = _train(cfg, data, out, norm)
        _, _, clean_pred = evaluate(model, state, x, y, 256, return_predictions=True)
        _, _, pred = evaluate(model, state, x_noisy, y, 256, return_predictions=True)
        rows.append(
            dict(
                norm=norm,
                acc_clean_batches=float(np.mean(clean_pred[~noisy] == y[~noisy])),
                acc_clean_in_noisy_batches=float(np.mean(pred[~noisy] == y[~noisy])),
                acc_noisy_samples=float(np.mean(pred[noisy] == y[noisy])),
            )
        )
    columns = [
        ("norm", "normalisation"), ("acc_clean_batches", "clean acc, clean batches"),
        ("acc_clean_in_noisy_batches", "clean acc, 1-in-10 noisy batches"),
        ("acc_noisy_samples", "acc of noisy samples"),
    ]  # fmt: skip
    return rows, columns


def study_solver(base, data, out, args):
    rows = []
    for norm in ("tabn", "none"):
        for solver in ("euler", "dopri5"):
            cfg = dataclasses.replace(base, norm=norm, solver=solver)
            if not adaptive_steps(cfg):  # constant steps: no first step to jitter
                cfg = dataclasses.replace(cfg, first_step_jitter=0.0)
            rows.append(_row(cfg, *_train(cfg, data, out, f"{norm} {solver}"), data))
    return rows, _columns()


def study_grid(base, data, out, args):
    rows = []
    for m in (10, 50, 100, 500):
        cfg = dataclasses.replace(base, norm="tabn", num_intervals=m)
        rows.append(_row(cfg, *_train(cfg, data, out, f"M={m}"), data))
    return rows, _columns()


def pad_to_multiple(data, multiple: int = 8):
    """Images padded (with the background value) to a side divisible by `multiple`,
    so that the conv fields' three stride-2 downs and ups give back the input size
    (MNIST 28x28 -> 32x32, the paper's CIFAR size)."""
    padded = {}
    for split, (x, y) in data.items():
        h, w = x.shape[1:3]
        ph, pw = -h % multiple, -w % multiple
        widths = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
        padded[split] = (np.pad(x, widths, constant_values=x.min()), y)
    return padded


def study_depth(base, data, out, args):
    data = pad_to_multiple(data)
    rows = []
    for depth in [int(d) for d in args.depths.split(",")]:
        for norm in args.norms.split(","):
            # The grid is TA-BN's (and its variants'): the other runs share one
            # config (and checkpoint) whatever --num-intervals says.
            grid = base.num_intervals if norm.startswith("tabn") else DEFAULT_GRID
            cfg = dataclasses.replace(
                base, norm=norm, field=f"conv{depth}", conv_width=args.conv_width,
                num_intervals=grid,
            )  # fmt: skip
            model, state, history = _train(cfg, data, out, f"conv{depth} {norm}")
            x, y = data["test"]
            # With running statistics (TA-BN, Pop-TI): also the accuracy with each
            # test batch's own statistics, which separates what the weights learnt
            # from how well the running statistics stand in for the batch's.
            acc_batch = (
                evaluate(model, state, x, y, 256, batch_statistics=True)[0]
                if norm.startswith("tabn") or norm == "popti" else None
            )  # fmt: skip
            rows.append(
                _row(
                    cfg, model, state, history, data, depth=depth,
                    train_loss=history[-1]["loss"], test_acc_batch_stats=acc_batch,
                )
            )  # fmt: skip
    columns = [("depth", "conv layers"), ("train_loss", "train loss")] + _columns()
    at = [c[0] for c in columns].index("test_acc") + 1
    columns.insert(at, ("test_acc_batch_stats", "test acc, batch stats"))
    return rows, columns


def papers_read(model, state):
    """`state` with every TA-BN layer of `model` marked fully covered: the coverage
    read of it is the paper's read of the same statistics (raw buffers, plain grid
    weights)."""
    state = td.clone_state(state)
    for layer in td.norm_layers(model):
        if isinstance(layer, td.TABatchNorm) and layer.coverage_aware:
            u = state.get(layer.coverage_index)
            state = state.set(layer.coverage_index, jnp.zeros_like(u))
    return state


def study_coverage(base, data, out, args):
    data = pad_to_multiple(data)
    x, y = data["test"]
    rows = []
    for depth in [int(d) for d in args.depths.split(",")]:
        for m in [int(g) for g in args.grids.split(",")]:
            cfg = dataclasses.replace(
                base, norm="tabn", field=f"conv{depth}", conv_width=args.conv_width,
                num_intervals=m,
            )  # fmt: skip
            model, state, history = _train(cfg, data, out, f"conv{depth} M={m}")
            cov = np.stack([np.asarray(c) for c in td.tabn_coverage(model, state)])
            threshold = td.norm_layers(model.ode)[0].min_coverage
            acc_cov, nfe_cov = evaluate(model, state, x, y, 256)
            acc_paper, nfe_paper = evaluate(model, papers_read(model, state), x, y, 256)
            acc_batch = evaluate(model, state, x, y, 256, batch_statistics=True)[0]
            rows.append(
                dict(
                    depth=depth, grid=m, points=m + 1,
                    covered=float(np.mean(cov >= threshold)),
                    never=float(np.mean(cov == 0)),
                    acc_batch=acc_batch, acc_cov=acc_cov, acc_paper=acc_paper,
                    nfe_cov=nfe_cov, nfe_paper=nfe_paper,
                    train_nfe=history[-1]["train_nfe"],
                    train_loss=history[-1]["loss"],
                )
            )  # fmt: skip
    columns = [
        ("depth", "conv layers"), ("grid", "M"),
        ("covered", "share covered"), ("never", "share never updated"),
        ("acc_batch", "acc, batch stats"), ("acc_cov", "acc, coverage read"),
        ("acc_paper", "acc, paper's read"), ("train_nfe", "train NFE"),
        ("nfe_cov", "test NFE, coverage read"), ("nfe_paper", "test NFE, paper's read"),
    ]  # fmt: skip
    return rows, columns


def study_stats(base, data, out, args):
    cfg = dataclasses.replace(base, norm="tabn")
    model, state, _ = _train(cfg, data, out, "tabn")
    layer = model.ode.field.norms[0]
    ts = jnp.linspace(0.0, 1.0, cfg.num_intervals + 1)
    mean, var = jax.vmap(lambda t: layer.statistics_at(t, state))(ts)
    weight, bias = jax.vmap(lambda t: layer.affine_at(t, state))(ts)
    coverage = np.asarray(layer.coverage(state))
    rows = [dict(t=float(t), mean=m.tolist(), var=v.tolist(), coverage=float(c))
            for t, m, v, c in zip(ts, np.asarray(mean[:, :8]), np.asarray(var[:, :8]),
                                  coverage)]  # fmt: skip
    _plot_stats(layer.grid.points(), coverage, ts, mean, var, weight, bias,
                out / "stats.png")  # fmt: skip
    spread = np.asarray(mean.max(0) - mean.min(0))
    print(
        f"first TA-BN layer: running mean varies over t by {spread.mean():.3f} on "
        f"average (max {spread.max():.3f}) across {spread.size} channels"
    )
    return rows, None


def _columns():
    return [
        ("norm", "normalisation"), ("field", "field"), ("solver", "solver"),
        ("grid", "M"), ("test_acc", "test acc"), ("test_nfe", "test NFE"),
        ("train_nfe", "train NFE"), ("train_s", "train s"),
    ]  # fmt: skip


def _plot_stats(points, coverage, ts, mean, var, weight, bias, path):
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 5, figsize=(17, 3))
    axes[0].bar(np.asarray(points), coverage, width=0.8 * float(points[1] - points[0]))
    axes[0].set(xlabel="grid point t_k", ylabel="coverage c_k", title="coverage")
    titles = ("mean (inference read)", "var (inference read)", "weight", "bias")
    for ax, values, title in zip(axes[1:], (mean, var, weight, bias), titles):
        ax.plot(ts, np.asarray(values)[:, :8])
        ax.set(xlabel="t", title=f"{title} (8 channels)")
    fig.tight_layout()
    save_figure(fig, path)


def _plot_rows(study, rows, path):
    plt = pyplot()
    if plt is None:
        return
    if study == "depth":
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for norm, color in (("tabn", "C0"), ("none", "C1")):
            sel = [r for r in rows if r["norm"] == norm]
            depths = [r["depth"] for r in sel]
            for ax, key in zip(axes, ("train_loss", "test_acc")):
                ax.plot(depths, [r[key] for r in sel], "o-", color=color, label=norm)
            if sel and sel[0].get("test_acc_batch_stats") is not None:
                axes[1].plot(depths, [r["test_acc_batch_stats"] for r in sel], "o--",
                             color=color, label=f"{norm}, batch stats")  # fmt: skip
        axes[0].set(xlabel="conv layers in the vector field",
                    ylabel="train loss (last epoch mean)")  # fmt: skip
        axes[1].set(xlabel="conv layers in the vector field", ylabel="test accuracy")
        axes[1].legend()
        fig.tight_layout()
        save_figure(fig, path)
        return
    if study == "coverage":
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for i, depth in enumerate(sorted({r["depth"] for r in rows})):
            sel = [r for r in rows if r["depth"] == depth]
            grids = [r["grid"] for r in sel]
            for key, style, what in (
                ("batch", ":", "batch stats"), ("cov", "o-", "coverage read"),
                ("paper", "x--", "paper's read"),
            ):  # fmt: skip
                axes[0].plot(grids, [r[f"acc_{key}"] for r in sel], style,
                             color=f"C{i}", label=f"conv{depth}, {what}")  # fmt: skip
                if key != "batch":
                    ratio = [r[f"nfe_{key}"] / r["train_nfe"] for r in sel]
                    axes[1].plot(grids, ratio, style, color=f"C{i}")
        axes[0].set(xscale="log", xlabel="grid intervals M", ylabel="test accuracy")
        axes[1].set(xscale="log", xlabel="grid intervals M",
                    ylabel="test NFE / train NFE")  # fmt: skip
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, path)
        return
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if study == "noise":
        labels = [r["norm"] for r in rows]
        pos = np.arange(len(rows))
        ax.bar(pos - 0.2, [r["acc_clean_batches"] for r in rows], 0.4, label="clean")
        ax.bar(pos + 0.2, [r["acc_clean_in_noisy_batches"] for r in rows], 0.4,
               label="1 in 10 noisy")  # fmt: skip
        ax.set(xticks=pos, xticklabels=labels, ylabel="accuracy on clean samples")
        ax.legend()
    else:
        labels = [f"{r['norm']} {r['solver']} M={r['grid']}" for r in rows]
        ax.barh(labels, [r["test_acc"] for r in rows])
        ax.set(xlabel="test accuracy")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="noise,solver,grid,stats",
                        help=f"comma-separated, from {STUDIES}")  # fmt: skip
    parser.add_argument(
        "--data", default="auto", choices=["auto", "mnist", "synthetic"]
    )
    parser.add_argument(
        "--norms", default="tabn,minibatch,popti,none", type=name_list(td.NORM_NAMES)
    )
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--hidden", type=positive_int, default=64)
    parser.add_argument("--noise-std", type=nonnegative_float, default=3.0)
    parser.add_argument(
        "--depths", default="4,6,8,10,12", type=name_list(("4", "6", "8", "10", "12"))
    )
    parser.add_argument(
        "--grids",
        default="10,50,100,500",
        type=positive_int_list,
        help="coverage study: the grids M",
    )
    parser.add_argument(
        "--num-intervals", type=positive_int, default=DEFAULT_GRID,
        help="TA-BN grid intervals M (the paper: 100); the grid study sweeps its own",
    )  # fmt: skip
    parser.add_argument(
        "--conv-width", type=positive_int, default=32,
        help="depth study: the conv fields' first hidden channels (paper: 32; the "
        "others are 2x, 4x, 8x it)",
    )  # fmt: skip
    parser.add_argument(
        "--first-step-jitter", type=nonnegative_float, default=0.0,
        help="every run's training solves' first step times 2**(-a U) "
        "(td.NeuralODE; the same for every normalisation, so the comparison keeps "
        "one training procedure; Euler runs take none); default 0, the paper's",
    )  # fmt: skip
    parser.add_argument(
        "--architecture", default="authors", choices=["authors", "0.1"],
        help="conv fields and head: the TA-BN authors' (default) or tadiffeq 0.1's "
        "(bare last conv, head BN per feature; the runs recorded before 2026-12-06)",
    )  # fmt: skip
    parser.add_argument("--train-limit", type=positive_int, default=None)
    parser.add_argument("--test-limit", type=positive_int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/tabn_ablations")
    args = parser.parse_args(argv)
    studies = args.study.split(",")
    for s in studies:
        if s not in STUDIES:
            raise ValueError(f"--study: unknown study {s!r}; expected {STUDIES}.")
    data, description = load_image_data(args.data, seed=args.seed)
    if args.train_limit:
        data["train"] = tuple(a[: args.train_limit] for a in data["train"])
    if args.test_limit:
        data["test"] = tuple(a[: args.test_limit] for a in data["test"])
    base = ClassifierConfig(
        hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
        num_intervals=args.num_intervals, seed=args.seed,
        first_step_jitter=args.first_step_jitter, architecture=args.architecture,
    )  # fmt: skip
    out = pathlib.Path(args.out)
    results = {}
    for study in studies:
        print(f"\n== {study} ({description}, {args.epochs} epochs, seed {args.seed})")
        rows, columns = globals()[f"study_{study}"](base, data, out, args)
        if columns is not None:
            print_table(rows, columns)
            _plot_rows(study, rows, out / f"{study}.png")
        write_json(out / f"{study}.json", dict(data=description, args=vars(args),
                                                 rows=rows))  # fmt: skip
        results[study] = rows
    return results


if __name__ == "__main__":
    main()
