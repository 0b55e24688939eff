"""Runs (train, evaluate, save) and the command line."""

import argparse
import dataclasses
import functools
import hashlib
import json
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..common import (
    nonnegative_float,
    nonnegative_int,
    nonnegative_int_list,
    positive_float,
    positive_int,
    print_table,
    write_json,
)
from .config import AUTHORS, EVAL_FIELDS, LorenzConfig, SOLVERS, SYMMETRIES, variant
from .evaluation import (
    evaluate,
    METRICS_VERSION,
    model_name,
    paired_comparisons,
    pooled_tv,
    references,
    seed_summary,
)
from .figures import plot_model, plot_summary
from .model import load_authors_model, load_data, make_steppers
from .training import diagnostics, kept_mse, repair, step_summary, train


def float64(fn):
    """Runs `fn` with 64-bit types enabled (restored afterwards)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


@float64
def run(
    cfg: LorenzConfig,
    out: pathlib.Path,
    *,
    data_dir=None,
    refs=None,
    checkpoint_every: int = 100,
    log_every: int = 25,
    stop_after: int | None = None,
    figures: bool = True,
    train_out: pathlib.Path | None = None,
    log=print,
):
    """Trains (resuming from the checkpoint in `train_out`, default `out`), evaluates
    and plots one model into `out`. `refs`: a callable returning `references(...)`
    (computed here if `None`). With `stop_after`, stops (checkpointed) after that many
    iterations in total and returns `None`. The L-BFGS phase does not depend on
    `cfg.stability_weight`, so the script gives a repaired run the folder of the same
    run without the repair as `train_out`: the two share one training."""
    if cfg.solver in AUTHORS:
        raise ValueError(f"{cfg.solver!r} is not trained here: use `run_authors`.")
    train_out = out if train_out is None else train_out
    name = cfg.solver + variant(cfg)  # the row's model (authors' rows: their solver)
    cache = out.parent / "cache"
    train_x, test_x, description = load_data(cfg, data_dir, cache)
    result_file = out / "result.json"
    if stop_after is None and result_file.exists():
        saved = json.loads(result_file.read_text())
        if (
            saved.get("config") == dataclasses.asdict(cfg)
            and saved.get("metrics_version") == METRICS_VERSION
        ):
            log(f"  [{cfg.solver}] finished earlier: {result_file}")
            return {**saved, "model": name}
    if stop_after is not None:
        cfg_stop = dataclasses.replace(cfg, iterations=min(stop_after, cfg.iterations))
        train(cfg_stop, train_x, train_out, checkpoint_every=checkpoint_every,
              log_every=log_every, log=log)  # fmt: skip
        return None
    mlp, history = train(
        cfg, train_x, train_out, checkpoint_every=checkpoint_every, log_every=log_every,
        log=log,
    )  # fmt: skip
    extra, train_loss = {"model": name}, history["loss"][-1]
    if cfg.stability_weight:
        mlp, rec = repair(cfg, mlp, train_x, out, log=log)
        extra["repair"] = rec
        train_loss = kept_mse(rec)
    return _evaluate_and_save(
        cfg, mlp, train_x, test_x, out, refs=refs, figures=figures, log=log,
        train_loss=train_loss,
        iterations_trained=history["iteration"][-1],
        training_final=history["train"][-1],
        training_mean_acceptance=float(
            np.mean([s["acceptance"] for s in history["train"]])
        ),
        train_s=history["seconds"],
        lbfgs_evals=int(np.sum(history["evals"])),
        history=history,
        data=description,
        **extra,
    )  # fmt: skip


def _evaluate_and_save(
    cfg, mlp, train_x, test_x, out: pathlib.Path, *, refs, figures, log, **extra
):
    """`evaluate`, the row's bookkeeping (`extra` added), figures and result.json."""
    refs, truth_row = (
        references(cfg, train_x, test_x, out.parent / "cache")
        if refs is None
        else refs()
    )
    t = time.perf_counter()
    row, arrays = evaluate(cfg, mlp, train_x, test_x, refs, log)
    row.update(truth=truth_row, solver=cfg.solver)
    row.update(extra)
    row.update(eval_s=time.perf_counter() - t, config=dataclasses.asdict(cfg))
    if figures:
        plot_model(cfg, row, arrays, refs, out)
    write_json(out / "result.json", row)
    return row


@float64
def run_authors(
    cfg: LorenzConfig,
    model_file,
    out: pathlib.Path,
    *,
    data_dir=None,
    refs=None,
    figures: bool = True,
    log=print,
):
    """Evaluates one of the study's own trained models (`cfg.solver` a key of
    `AUTHORS`, `model_file` its .npz) with every metric of `run`, without training;
    the training columns are its one-step loss and step statistics on the training
    set under the training rule it was fitted with. Reads back `out`'s result if the
    file's SHA-256 and the configuration's `EVAL_FIELDS` match."""
    if cfg.solver not in AUTHORS:
        raise ValueError(f"`cfg.solver` must be one of {tuple(AUTHORS)}.")
    model_file = pathlib.Path(model_file)
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    train_x, test_x, description = load_data(cfg, data_dir, out.parent / "cache")
    result_file = out / "result.json"
    if result_file.exists():
        saved = json.loads(result_file.read_text())
        config = saved.get("config", {})
        if (
            saved.get("model_sha256") == digest
            and saved.get("metrics_version") == METRICS_VERSION
            and all(config.get(k) == getattr(cfg, k) for k in EVAL_FIELDS)
        ):
            log(f"  [{cfg.solver}] evaluated earlier: {result_file}")
            return saved
    mlp = load_authors_model(model_file)
    train_step, _ = make_steppers(cfg)
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    loss, info = diagnostics(
        params, static, train_step, jnp.asarray(train_x[:-1]), jnp.asarray(train_x[1:])
    )
    training = step_summary(info)
    log(
        f"  [{cfg.solver}] {model_file.name}: training-rule loss {float(loss):.3e} "
        f"accepted {100 * training['acceptance']:.1f}%"
    )
    return _evaluate_and_save(
        cfg, mlp, train_x, test_x, out, refs=refs, figures=figures, log=log,
        train_loss=float(loss), training_final=training,
        training_mean_acceptance=None, train_s=0.0, lbfgs_evals=0, history=None,
        data=description, model_file=str(model_file), model_sha256=digest,
    )  # fmt: skip


@float64
def main(argv=None):
    package_doc = sys.modules[__package__].__doc__ or ""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.lorenz63",
        description=package_doc.split("\n\n")[0],
    )
    defaults = LorenzConfig()
    parser.add_argument(
        "--solvers",
        default=",".join(SOLVERS),
        help=f"comma-separated, from {SOLVERS}; 'none' trains nothing",
    )
    parser.add_argument(
        "--authors-models",
        default=None,
        metavar="DIR",
        help="also evaluate the study's trained models in DIR "
        f"({', '.join(f for f, _ in AUTHORS.values())}) as rows {tuple(AUTHORS)}",
    )
    for name in (
        "iterations", "num_ics", "horizon", "long_steps", "lyap_steps", "long_runs",
        "n_points", "hidden", "rollout",
    ):  # fmt: skip
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=positive_int,
            default=getattr(defaults, name),
        )  # fmt: skip
    parser.add_argument(
        "--seed", type=nonnegative_int_list, default=[defaults.seed],
        help="a seed, or several (comma-separated): each trained in turn, then a "
        "table across them",
    )  # fmt: skip
    parser.add_argument("--threshold", type=positive_float, default=defaults.threshold)
    parser.add_argument(
        "--input-noise", type=nonnegative_float, default=defaults.input_noise,
        help="train also on a copy of the data whose inputs carry Gaussian noise of "
        "this standard deviation (data units; 0: the study's data only)",
    )  # fmt: skip
    parser.add_argument(
        "--symmetry", default=defaults.symmetry, choices=SYMMETRIES,
        help="'lorenz': the field averaged with its mirror image under "
        "(x1, x2, x3) -> (-x1, -x2, x3), Lorenz'63's symmetry (tadiffeq.dynamics."
        "Symmetrized); 'none': the study's field",
    )  # fmt: skip
    parser.add_argument(
        "--stability-weight", type=nonnegative_float,
        default=defaults.stability_weight,
        help="after L-BFGS, repair the model with this weight x the penalty on "
        "attracting equilibria of the learned field inside the training data's box: "
        "a projection onto penalty 0, then L-BFGS on the loss plus the penalty "
        "(training.repair; 0: off)",
    )  # fmt: skip
    parser.add_argument(
        "--stability-starts", type=positive_int, default=defaults.stability_starts,
        help="the penalty's Newton starts: this many training points, evenly spaced",
    )  # fmt: skip
    parser.add_argument(
        "--stability-iterations", type=positive_int,
        default=defaults.stability_iterations,
        help="the repair's L-BFGS iterations at most",
    )  # fmt: skip
    parser.add_argument(
        "--stability-tolerance", type=positive_float,
        default=defaults.stability_tolerance,
        help="the repair stops once the penalty is 0 and the training MSE at most "
        "this times the trained model's (>= 1)",
    )  # fmt: skip
    parser.add_argument(
        "--stall-window", type=nonnegative_int, default=defaults.stall_window,
        help="stopping rule: stop at the first multiple of this many iterations where "
        "the training MSE fell by less than --min-improvement over the last window "
        "(0: off, train for --iterations); a multiple of --log-every",
    )  # fmt: skip
    parser.add_argument(
        "--min-improvement", type=positive_float, default=defaults.min_improvement,
        help="the stopping rule's relative improvement, in (0, 1)",
    )  # fmt: skip
    parser.add_argument("--data", default="shared", choices=["shared", "generated"])
    parser.add_argument(
        "--data-dir", default=None, help="the study's files (default: shared data)"
    )
    parser.add_argument("--checkpoint-every", type=positive_int, default=100)
    parser.add_argument("--log-every", type=positive_int, default=25)
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--out", default="results/lorenz63")
    args = parser.parse_args(argv)
    if args.rollout < 1:
        parser.error(f"--rollout must be >= 1, got {args.rollout}")
    if args.stability_tolerance < 1:
        parser.error(
            f"--stability-tolerance must be >= 1, got {args.stability_tolerance}"
        )
    if args.min_improvement >= 1:
        parser.error(f"--min-improvement must be < 1, got {args.min_improvement}")
    if args.stall_window % args.log_every:
        parser.error(
            f"--stall-window ({args.stall_window}) must be a multiple of --log-every "
            f"({args.log_every}): the stopping rule reads the recorded losses"
        )
    names = [] if args.solvers in ("", "none") else args.solvers.split(",")
    for name in names:
        if name not in SOLVERS:
            parser.error(f"--solvers: unknown {name!r}; expected one of {SOLVERS}")
    authors_dir = None
    if args.authors_models is not None:
        authors_dir = pathlib.Path(args.authors_models)
        for file, _ in AUTHORS.values():
            if not (authors_dir / file).is_file():
                parser.error(f"--authors-models: {authors_dir / file} is missing")
    if not names and authors_dir is None:
        parser.error("nothing to do: --solvers none without --authors-models")
    out = pathlib.Path(args.out)
    memo = {}

    def make_cfg(name, iterations, seed):
        return LorenzConfig(
            solver=name, iterations=iterations, seed=seed,
            num_ics=args.num_ics, horizon=args.horizon, long_steps=args.long_steps,
            lyap_steps=args.lyap_steps, long_runs=args.long_runs,
            n_points=args.n_points, hidden=args.hidden,
            threshold=args.threshold, data=args.data, rollout=args.rollout,
            input_noise=args.input_noise, symmetry=args.symmetry,
            stall_window=args.stall_window,
            stability_weight=args.stability_weight,
            stability_starts=args.stability_starts,
            stability_iterations=args.stability_iterations,
            stability_tolerance=args.stability_tolerance,
            min_improvement=args.min_improvement,
        )  # fmt: skip

    def refs():  # computed once, when a model is first evaluated (solver-free)
        if not memo:
            cfg = make_cfg(SOLVERS[0], args.iterations, 0)
            train_x, test_x, _ = load_data(cfg, args.data_dir, out / "cache")
            memo["refs"] = references(cfg, train_x, test_x, out / "cache")
        return memo["refs"]

    suffix = variant(make_cfg(SOLVERS[0], args.iterations, 0))
    by_seed = {}
    for seed in args.seed:
        rows = []
        # The study's own models first: the reference rows (evaluated, not trained;
        # after the first seed, read back).
        for name, (file, _) in AUTHORS.items() if authors_dir is not None else ():
            print(f"\n{name}:")
            rows.append(
                run_authors(
                    make_cfg(name, 0, seed), authors_dir / file, out / name,
                    data_dir=args.data_dir, refs=refs, figures=not args.no_figures,
                )
            )  # fmt: skip
        for name in names:
            print(f"\n{name}:")
            cfg = make_cfg(name, args.iterations, seed)
            rows.append(
                run(
                    cfg, out / f"{name}{variant(cfg)}_seed{seed}",
                    data_dir=args.data_dir, refs=refs,
                    checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                    figures=not args.no_figures,
                    train_out=out / f"{name}{variant(cfg, repair=False)}_seed{seed}",
                )
            )  # fmt: skip
        report_seed(rows, seed, args.iterations if names else None, authors_dir, out,
                    figures=not args.no_figures)  # fmt: skip
        by_seed[seed] = rows
    if len(by_seed) > 1 and names:
        summary = seed_summary(by_seed)
        print(f"\nAcross seeds {','.join(map(str, by_seed))} (long-run criterion: "
              "LLE within 10% of the true exponent, pooled hist TV below every "
              "authors' model's):")  # fmt: skip
        print_table(
            summary["rows"],
            [
                ("solver", "solver"), ("seed", "seed"), ("vpt_median", "VPT median"),
                ("lyap", "LLE"), ("tv", "hist TV"), ("train_tv", "hist TV (train)"),
                ("outside", "outside"), ("long_run", "long-run criterion"),
                ("selected", "chosen by hist TV (train)"),
            ],
        )  # fmt: skip
        write_json(out / f"lorenz63_seeds{suffix}.json", summary)
    return [r for rows in by_seed.values() for r in rows]


def report_seed(rows, seed, iterations, authors_dir, out, *, figures):
    """One seed's table, paired comparisons, summary figure and JSON."""
    truth_row = rows[0]["truth"]
    if figures:
        plot_summary(rows, truth_row, out)
    table = [
        dict(
            solver=model_name(r), its=r.get("iterations_trained", ""),
            train_mse=f"{r['train_loss']:.2e}", test_mse=f"{r['test_mse']:.2e}",
            train_acc=r["training_final"]["acceptance"],
            train_sub=r["training_final"]["mean_substeps"],
            inf_acc=r["inference_free_run"]["acceptance"],
            inf_sub=r["inference_free_run"]["mean_substeps"],
            vpt_mean=r["vpt"]["mean"], vpt_median=r["vpt"]["median"],
            lyap=r["lyapunov"], tv=pooled_tv(r),
            train_tv=r["attractor_train"]["tv"],
            **{
                f"growth_{k}": "{growth:.3f} ({distance:.1f})".format(
                    **r["equilibria"][k]
                )
                for k in ("C+", "C-")
            },
        )
        for r in rows
    ]  # fmt: skip
    if iterations is not None:
        print(f"\nLorenz'63, {iterations} L-BFGS iterations, seed {seed}:")
    else:
        print("\nLorenz'63:")
    if authors_dir is not None:
        print(f"(authors-*: the study's trained models from {authors_dir}, not trained")
        print(" here; train columns: their loss and steps under the training rule)")
    print_table(
        table,
        [
            ("solver", "solver"), ("its", "iterations"), ("train_mse", "train MSE"),
            ("test_mse", "test MSE"), ("train_acc", "train acc"),
            ("train_sub", "train substeps"), ("inf_acc", "inference acc"),
            ("inf_sub", "inference substeps"), ("vpt_mean", "VPT mean"),
            ("vpt_median", "VPT median"), ("lyap", "LLE"), ("tv", "hist TV"),
            ("train_tv", "hist TV (train)"),
            ("growth_C+", "C+ growth (dist)"), ("growth_C-", "C- growth (dist)"),
        ],
    )  # fmt: skip
    print(
        "(C+- growth: the largest real part of the field's eigenvalues at the "
        "equilibrium Newton reaches from C+-, per time unit, and its distance to C+-; "
        f"true {truth_row['equilibria']['C+']['growth']:.3f}; negative: it attracts)"
    )
    print(
        "(hist TV (train): ten long runs from training points against the training "
        "split's histogram, which is itself "
        f"{truth_row['train_split_tv']:.3f} from the exact attractor's)"
    )
    comparisons = paired_comparisons(rows)
    if comparisons:
        print("\nPaired over the same initial conditions (VPT, Lyapunov times):")
        print_table(
            comparisons,
            [
                ("a", "model"), ("b", "against"), ("mean_diff", "mean VPT diff"),
                ("ci_low", "95% CI low"), ("ci_high", "95% CI high"),
                ("longer", "share longer"), ("p", "p (sign-flip)"),
            ],
        )  # fmt: skip
    write_json(
        out / f"lorenz63_seed{seed}.json",
        dict(truth=truth_row, rows=rows, paired=comparisons),
    )
