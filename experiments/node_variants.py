"""Neural ODE variants with and without TA-BN: Aug-NODE, HBNODE and SONODE (Zheng et
al. 2024, Table 2) on the offline MNIST split.

Each variant wraps the unmixed classifier's MLP vector field (`common.wrap_variant`):

- `aug<k>`: Aug-NODE (Dupont et al. 2019), `k` zero features appended to the flattened
  image; the field evolves all D + k (`td.AugmentedField`); the head reads all of them.
- `hbnode`: the heavy-ball Neural ODE (Xia et al. 2021), state (h, m) with dh/dt = m,
  dm/dt = f(t, h) - sigmoid(gamma) m (`td.HeavyBallField`); the head reads h.
- `sonode`: the second-order Neural ODE (Norcliffe et al. 2020), state (y, v) with
  dy/dt = v, dv/dt = f(t, [y, v]) (`td.SecondOrderField`); the head reads y.
- `node`: the plain Neural ODE of `main.py`, for reference.

Each is trained with every normalisation of `--norms` (default: none and TA-BN) after
the field's hidden layer, with the paper's recipe (`common.ClassifierConfig`: dopri5
rtol = atol = 1e-3 on [0, 1], AdamW 1e-3, lr x0.1 at half the steps, weight decay 2e-2,
clip 10, TA-BN affine penalty 0.1; TA-BN runs train with a jittered first step,
`--first-step-jitter`, default `common.TABN_FIRST_STEP_JITTER`), and evaluated in
inference mode at test batch 256
and 2 (accuracy, mean test NFE per sample, parameters). Checkpoints per epoch under
`--out` (a rerun resumes); writes `node_variants.json` and `node_variants.png`.

    python -m experiments.node_variants               # 6 runs of ~1-4 min on 2 cores
    python -m experiments.node_variants --variants node,aug16 --norms none,tabn,popti
"""

import argparse
import pathlib
import sys
import time
from dataclasses import dataclass, field

import jax

import tadiffeq as td

from .common import (
    add_first_step_jitter_argument,
    build_classifier,
    ClassifierConfig,
    evaluate,
    load_image_data,
    name_list,
    positive_int,
    positive_int_list,
    print_table,
    SOLVERS,
    TABN_FIRST_STEP_JITTER,
    train_classifier,
    with_first_step_jitter,
    write_json,
)
from .reporting import pyplot, save_figure


NAMES = {"node": "NODE", "hbnode": "HBNODE", "sonode": "SONODE"}


@dataclass
class VariantsConfig:
    """The sweep; every run uses `ClassifierConfig`'s recipe with these overrides."""

    variants: tuple[str, ...] = ("aug16", "hbnode", "sonode")
    norms: tuple[str, ...] = ("none", "tabn")
    data: str = "auto"
    epochs: int = 3
    batch_size: int = 128
    hidden: int = 64
    train_limit: int | None = None
    test_limit: int | None = None
    test_batches: tuple[int, ...] = field(default=(256, 2))
    solver: str = "dopri5"  # the paper's; "euler" (20 steps) for quick checks
    first_step_jitter: float = TABN_FIRST_STEP_JITTER  # TA-BN runs only
    seed: int = 0


def variant_name(variant: str) -> str:
    """`"aug16"` -> `"Aug-NODE (+16)"`, `"hbnode"` -> `"HBNODE"`, ..."""
    if variant.startswith("aug"):
        return f"Aug-NODE (+{variant[3:]})"
    return NAMES.get(variant, variant)


def main(argv=None):
    defaults = VariantsConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants", default=",".join(defaults.variants),
        help="comma-separated: node, aug<k>, hbnode, sonode",
    )  # fmt: skip
    parser.add_argument("--norms", default=",".join(defaults.norms),
                        type=name_list(td.NORM_NAMES),
                        help="comma-separated normalisation names")  # fmt: skip
    parser.add_argument(
        "--data", default=defaults.data, choices=["auto", "mnist", "synthetic"]
    )
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--hidden", type=positive_int, default=defaults.hidden)
    parser.add_argument("--train-limit", type=positive_int, default=None)
    parser.add_argument("--test-limit", type=positive_int, default=None)
    parser.add_argument("--test-batches", default="256,2", type=positive_int_list,
                        help="comma-separated test batch sizes")  # fmt: skip
    parser.add_argument("--solver", default=defaults.solver, choices=sorted(SOLVERS))
    add_first_step_jitter_argument(parser, defaults.first_step_jitter)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default="results/node_variants")
    args = parser.parse_args(argv)
    cfg = VariantsConfig(
        variants=tuple(args.variants.split(",")), norms=tuple(args.norms.split(",")),
        data=args.data, epochs=args.epochs, batch_size=args.batch_size,
        hidden=args.hidden, train_limit=args.train_limit, test_limit=args.test_limit,
        test_batches=tuple(int(b) for b in args.test_batches.split(",")),
        solver=args.solver, first_step_jitter=args.first_step_jitter, seed=args.seed,
    )  # fmt: skip
    for variant in cfg.variants:  # fail before any training on a typo
        try:
            build_classifier(
                ClassifierConfig(variant=variant, norm="none", hidden=1), (1, 1, 1),
                2, jax.random.PRNGKey(0),
            )  # fmt: skip
        except ValueError as e:
            raise ValueError(f"--variants: {e}") from None
    for norm in cfg.norms:
        if norm not in td.NORM_NAMES:
            raise ValueError(f"--norms: unknown {norm!r}; expected {td.NORM_NAMES}.")
    out = pathlib.Path(args.out)
    rows = run(cfg, out)
    figure = plot(rows, out / "node_variants.png")
    print(f"\nresults: {out / 'node_variants.json'}; figure: {figure}")
    return rows


def run(cfg: VariantsConfig, out: pathlib.Path) -> list[dict]:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    data, description = load_image_data(cfg.data, seed=cfg.seed)
    if cfg.train_limit is not None:
        data["train"] = tuple(a[: cfg.train_limit] for a in data["train"])
    if cfg.test_limit is not None:
        data["test"] = tuple(a[: cfg.test_limit] for a in data["test"])
    x_test, y_test = data["test"]
    print(f"data: {description}; train {len(data['train'][1])}, test {len(y_test)}")
    runs = [(v, n) for v in cfg.variants for n in cfg.norms]
    rows = []
    bar = tqdm(runs, desc="runs", file=sys.stdout, mininterval=1.0)
    for variant, norm in bar:
        ccfg = ClassifierConfig(
            norm=norm, variant=variant, hidden=cfg.hidden, epochs=cfg.epochs,
            batch_size=cfg.batch_size, solver=cfg.solver, seed=cfg.seed,
        )  # fmt: skip
        ccfg = with_first_step_jitter(ccfg, cfg.first_step_jitter)

        def log(msg="", end="\n"):  # the trainer's step line (loss, acc, NFE)
            if msg.strip():
                bar.set_description(msg.strip())

        model, state, history = train_classifier(
            ccfg, data, log=log, label=f"{variant}/{norm}",
            checkpoint_dir=out / "checkpoints" / f"{variant}_{norm}_seed{cfg.seed}",
        )  # fmt: skip
        row = dict(
            variant=variant, name=variant_name(variant), norm=norm,
            params=td.count_parameters(model),
            params_ti_affine=td.count_parameters(model, grid_affine=False),
            train_nfe=history[-1]["train_nfe"], train_s=history[-1]["seconds"],
        )  # fmt: skip
        for b in cfg.test_batches:
            acc, nfe = evaluate(model, state, x_test, y_test, b)
            row[f"acc_b{b}"], row[f"test_nfe_b{b}"] = acc, nfe
        row["history"] = history
        rows.append(row)
        b0 = cfg.test_batches[0]
        bar.set_postfix(acc=f"{row[f'acc_b{b0}']:.3f}",
                        nfe=f"{row[f'test_nfe_b{b0}']:.1f}")  # fmt: skip
    bar.close()
    print(
        f"\nUnmixed classifiers, MLP field (hidden {cfg.hidden}), {description}, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, seed {cfg.seed}:"
    )
    b0 = cfg.test_batches[0]
    columns = [("name", "variant"), ("norm", "normalisation")]
    columns += [(f"acc_b{b}", f"acc@batch{b}") for b in cfg.test_batches]
    columns += [(f"test_nfe_b{b0}", "test NFE"), ("train_nfe", "train NFE"),
                ("params", "params"), ("train_s", "train s")]  # fmt: skip
    print_table(rows, columns)
    seconds = time.perf_counter() - t0
    print(f"(total {seconds:.0f} s)")
    write_json(
        out / "node_variants.json",
        dict(data=description, config=cfg, rows=rows, seconds=seconds),
    )
    return rows


def plot(rows: list[dict], path: pathlib.Path) -> pathlib.Path | None:
    """Test accuracy (batch 256) and test NFE per variant, one bar per
    normalisation; `None` without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    by = {(r["variant"], r["norm"]): r for r in rows}
    width = 0.8 / len(norms)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    key_acc = next(k for k in rows[0] if k.startswith("acc_b"))
    key_nfe = next(k for k in rows[0] if k.startswith("test_nfe_b"))
    acc_label = f"test accuracy (batch {key_acc[5:]})"
    for ax, key, label in ((axes[0], key_acc, acc_label),
                           (axes[1], key_nfe, "test NFE per sample")):  # fmt: skip
        for j, norm in enumerate(norms):
            xs = [i + (j - (len(norms) - 1) / 2) * width for i in range(len(variants))]
            ys = [by[(v, norm)][key] if (v, norm) in by else 0.0 for v in variants]
            ax.bar(xs, ys, width, label=norm)
        ax.set(xticks=range(len(variants)), ylabel=label,
               xticklabels=[variant_name(v) for v in variants])  # fmt: skip
    lo = min(r[key_acc] for r in rows)
    axes[0].set_ylim(max(0.0, lo - 0.1), 1.0)
    # One legend above both panels: inside, it would cover accuracy bars near 1.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="normalisation", loc="upper center",
               ncol=len(norms), frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.82))
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
