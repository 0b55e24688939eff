"""Latent ODE on PhysioNet 2012-format ICU time series: unregularized vs local vs global
regularization of the solver's cost (Pal, Edelman and Rackauckas, ICML 2023, the
PhysioNet latent ODE experiment), offline.

Data (--data): "generated" (default) writes a synthetic dataset in the PhysioNet 2012
file format (tadiffeq.data.generate_physionet: a smooth latent ODE mapped to the 37
features, random observation minutes and missingness, noise) and reads it with the
same loader as the real files; "physionet" reads the real set-a/set-b folders under
--physionet-dir. Times rounded to --quantization hours (default 1 h: the 49 grid
times of the paper's preprocessed data), divided by 48 h; features min-max
normalised on the training split; 80/20 split.

Model (tadiffeq.LatentODE, the paper's sizes): GRU encoder (hidden 40) run backwards
over the grid on [values * mask, mask, t] -> q(z0) in R^20 -> Neural ODE with a tanh
MLP field (20 -> 40 -> 40 -> 20, time concatenated), tsit5 -> linear 20 -> 37. Loss:
masked Gaussian NLL (obs std 0.01) + KL (the paper's annealing
max(0, 1 - 0.99^(step - 100))) + weight * regularization (100 decaying exponentially
to 10, the paper's). Reports the test masked MSE (reconstruction, and extrapolation:
encode t <= 0.5, score t > 0.5), mean test NFE per series (each series solved on its
own), training NFE per step, prediction time per test batch (median of repeats after
compilation) and training time. Checkpoints every --checkpoint-every steps to --out
and resumes from there exactly.

    python -m experiments.latent_ode --regularizers none,local,global
"""

import argparse
import dataclasses
import pathlib
import time
from dataclasses import dataclass

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import tadiffeq as td
from tadiffeq.data import (
    generate_physionet,
    iterate_batches,
    load_physionet,
)

from .common import (
    add_baseline_ratios,
    data_fingerprint,
    name_list,
    nonnegative_float,
    positive_float,
    positive_int,
    print_table,
    regularization_weights,
    regularizers,
    restore_checked,
    write_json,
)
from .reporting import pyplot, save_figure
from .training import optimizer_step


REGULARIZERS = regularizers("none", "local", "local_biased", "global")


@dataclass
class LatentODEConfig:
    regularizer: str = "none"
    data: str = "generated"  # or "physionet"
    physionet_dir: str | None = None
    num_patients: int = 1000  # generated data
    data_seed: int = 0  # generated data
    quantization: float = 1.0  # hours
    steps: int = 3000  # the paper's
    batch_size: int = 512  # the paper's
    lr: float = 1e-3  # Adam (the paper: AdaMax 1e-2, which stalled here)
    weight: float = 100.0  # the paper's 100 -> 10
    weight_end: float = 10.0
    tol: float = 1e-5  # rtol = atol (the paper: 1.4e-8 in float64)
    latent: int = 20  # the paper's
    hidden: int = 40  # the paper's
    obs_std: float = 0.01  # Rubanova et al.'s
    eval_batch: int = 200
    seed: int = 0


def kl_weight(step: int) -> float:
    """The paper's KL annealing: 0 for 100 steps, then 1 - 0.99^(step - 100)."""
    return max(0.0, 1.0 - 0.99 ** (step - 100))


def check_config(cfg: LatentODEConfig) -> None:
    """Raises a ValueError naming the command-line flag of a bad setting."""
    if cfg.regularizer not in REGULARIZERS:
        raise ValueError(
            f"--regularizers: unknown {cfg.regularizer!r}; expected some of "
            f"{sorted(REGULARIZERS)}."
        )
    if cfg.data not in ("generated", "physionet"):
        raise ValueError(
            f"--data must be 'generated' or 'physionet', got {cfg.data!r}."
        )
    if cfg.data == "physionet" and not cfg.physionet_dir:
        raise ValueError("--data physionet needs --physionet-dir PATH.")
    for flag, value in (
        ("--steps", cfg.steps), ("--batch-size", cfg.batch_size),
        ("--num-patients", cfg.num_patients), ("--latent", cfg.latent),
        ("--hidden", cfg.hidden), ("--eval-batch", cfg.eval_batch),
    ):  # fmt: skip
        if value < 1:
            raise ValueError(f"{flag} must be positive, got {value}.")
    for flag, value in (
        ("--lr", cfg.lr), ("--tol", cfg.tol), ("--quantization", cfg.quantization),
    ):  # fmt: skip
        if not value > 0:
            raise ValueError(f"{flag} must be positive, got {value}.")
    if cfg.weight < 0 or cfg.weight_end <= 0:
        raise ValueError(
            f"--weight must be >= 0 and --weight-end > 0, got {cfg.weight} and "
            f"{cfg.weight_end}."
        )


def load_data(cfg: LatentODEConfig, data_dir: pathlib.Path):
    """`(data, description)` as [`tadiffeq.data.load_physionet`][] returns it."""
    if cfg.data == "physionet":
        data = load_physionet(
            cfg.physionet_dir, quantization=cfg.quantization, seed=cfg.data_seed
        )
        what = f"PhysioNet 2012 files in {cfg.physionet_dir}"
    else:
        folder = generate_physionet(
            data_dir / f"generated_n{cfg.num_patients}_seed{cfg.data_seed}",
            cfg.num_patients,
            seed=cfg.data_seed,
        )
        data = load_physionet(folder, quantization=cfg.quantization, seed=cfg.data_seed)
        what = (
            f"generated PhysioNet-format records ({cfg.num_patients} patients, "
            f"data seed {cfg.data_seed}, latent dim 6, 1 + Poisson(24) observation "
            "times, noise 0.05)"
        )
    n_train, n_test = len(data["train"]["values"]), len(data["test"]["values"])
    what += (
        f"; {n_train} train / {n_test} test, {len(data['times'])} grid times "
        f"(quantization {cfg.quantization} h)"
    )
    return data, what


def build_model(cfg: LatentODEConfig, key):
    ctrl = dfx.PIDController(rtol=cfg.tol, atol=cfg.tol)
    return eqx.nn.make_with_state(td.LatentODE)(
        len(td.data.PHYSIONET_FEATURES), cfg.latent, cfg.hidden,
        (cfg.hidden, cfg.hidden), stepsize_controller=ctrl, obs_std=cfg.obs_std,
        key=key,
    )  # fmt: skip


def run(
    cfg: LatentODEConfig,
    out: pathlib.Path,
    *,
    data_dir: pathlib.Path | None = None,
    checkpoint_every: int = 100,
    stop_after: int | None = None,
    progress: bool = True,
):
    """Trains (resuming from `out`'s checkpoint if any) and evaluates one
    regularizer. With `stop_after`, returns `None` after that many steps of this
    call, checkpointed."""
    check_config(cfg)
    reg = REGULARIZERS[cfg.regularizer]
    data, description = load_data(cfg, out.parent if data_dir is None else data_dir)
    times = jnp.asarray(data["times"])
    train, test = data["train"], data["test"]
    k_model, k_train = jax.random.split(jax.random.PRNGKey(cfg.seed))
    model, state = build_model(cfg, k_model)
    schedule = regularization_weights(reg, cfg)
    optimizer = optax.adam(cfg.lr)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    def loss_fn(model, values, mask, key, weights):
        loss, aux = model.loss(
            times, values, mask, state, key=key, regularizer=reg,
            kl_weight=weights[0], reg_weight=weights[1],
        )  # fmt: skip
        stats = aux["stats"]
        nfe = stats.num_fn_evals + stats.num_regularizer_evals
        return loss, (aux["mse"], nfe, stats.regularization)

    update = optimizer_step(loss_fn, optimizer)

    def train_step(model, opt_state, values, mask, key, weights):
        model, opt_state, loss, (mse, nfe, r) = update(
            model, opt_state, values, mask, key, weights
        )
        return model, opt_state, loss, mse, nfe, r

    ckpt = td.Checkpointer(out / "checkpoint")
    history = {"loss": [], "mse": [], "train_nfe": [], "reg": [], "seconds": 0.0}
    step = 0
    fingerprint = data_fingerprint(train["values"], train["mask"])
    restored = restore_checked(
        ckpt, (model, opt_state), dataclasses.asdict(cfg), out, fingerprint
    )
    if restored is not None:
        step, (model, opt_state), meta = restored
        history = meta["history"]
    n_train = len(train["values"])
    batch_size = min(cfg.batch_size, n_train)
    steps_per_epoch = n_train // batch_size
    stop_at = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    bar = tqdm(
        total=cfg.steps, initial=step, disable=not progress, leave=False,
        desc=f"latent ODE {cfg.regularizer}",
    )  # fmt: skip
    t_start = time.perf_counter() - history["seconds"]
    index = np.arange(n_train)
    while step < stop_at:
        epoch, offset = divmod(step, steps_per_epoch)
        batches = iterate_batches(
            index, index, batch_size, seed=cfg.seed * 1000 + epoch
        )
        for i, (idx, _) in enumerate(batches):
            if i < offset:
                continue
            weights = jnp.asarray([kl_weight(step), schedule(step)], jnp.float32)
            model, opt_state, loss, mse, nfe, r = train_step(
                model, opt_state, jnp.asarray(train["values"][idx]),
                jnp.asarray(train["mask"][idx]), jax.random.fold_in(k_train, step),
                weights,
            )  # fmt: skip
            history["loss"].append(float(loss))
            history["mse"].append(float(mse))
            history["train_nfe"].append(int(nfe))
            history["reg"].append(float(r))
            step += 1
            bar.update(1)
            bar.set_postfix(
                loss=f"{np.mean(history['loss'][-20:]):.1f}",
                mse=f"{np.mean(history['mse'][-20:]):.4f}",
                nfe=f"{np.mean(history['train_nfe'][-20:]):.1f}",
            )
            if step % checkpoint_every == 0 or step == stop_at:
                history["seconds"] = time.perf_counter() - t_start
                meta = dict(
                    config=dataclasses.asdict(cfg), history=history, data=fingerprint
                )
                ckpt.save(step, (model, opt_state), meta)
            if step >= stop_at:
                break
    bar.close()
    if step < cfg.steps:
        return None
    ev = evaluate(model, state, times, test, cfg.eval_batch)
    result = dict(
        regularizer=cfg.regularizer,
        **ev,
        train_nfe=float(np.mean(history["train_nfe"][-steps_per_epoch:])),
        train_mse=float(np.mean(history["mse"][-steps_per_epoch:])),
        train_s=history["seconds"],
        epochs=cfg.steps / steps_per_epoch,
        config=dataclasses.asdict(cfg),
        data=description,
        history={k: history[k] for k in ("mse", "train_nfe")},
    )
    write_json(out / "result.json", result)
    return result


def evaluate(model, state, times, test, eval_batch: int, repeats: int = 5) -> dict:
    """Test masked MSE (reconstruction, and extrapolation: observations at
    t <= 0.5 encoded, entries at t > 0.5 scored), mean NFE per series (each series
    solved on its own, z0 the posterior mean) and the median wall time of predicting
    one test batch of `eval_batch` series after compilation."""
    model = eqx.nn.inference_mode(model)
    early = (times <= 0.5)[None, :, None]

    @eqx.filter_jit
    def predict(model, values, mask):
        pred, _, _, stats = model(times, values, mask, state)
        mse = td.LatentODE.masked_mse(pred, values, mask)
        nfe = jnp.broadcast_to(stats.num_fn_evals, (values.shape[0],))
        return pred, mse, nfe

    @eqx.filter_jit
    def extrapolate(model, values, mask):
        pred, _, _, _ = model(times, values, mask * early, state)
        return td.LatentODE.masked_mse(pred, values, mask * ~early)

    values, mask = test["values"], test["mask"]
    mses, nfes, extrap, weights = [], [], [], []
    for start in range(0, len(values), eval_batch):
        v = jnp.asarray(values[start : start + eval_batch])
        m = jnp.asarray(mask[start : start + eval_batch])
        _, mse, nfe = predict(model, v, m)
        mses.append(np.asarray(mse))
        nfes.append(np.asarray(nfe))
        extrap.append(np.asarray(extrapolate(model, v, m)))
        weights.append(np.asarray((m * ~early).sum((1, 2)) > 0))
    v = jnp.asarray(values[:eval_batch])
    m = jnp.asarray(mask[:eval_batch])
    jax.block_until_ready(predict(model, v, m))  # compiled already; warm
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(predict(model, v, m))
        seconds.append(time.perf_counter() - t)
    extrap, weights = np.concatenate(extrap), np.concatenate(weights)
    return dict(
        test_mse=float(np.mean(np.concatenate(mses))),
        test_extrap_mse=float(np.mean(extrap[weights])) if weights.any() else None,
        test_nfe=float(np.mean(np.concatenate(nfes))),
        predict_s=float(np.median(seconds)),
        predict_batch=int(v.shape[0]),
    )


def plot(rows, path: pathlib.Path) -> None:
    """Training NFE and masked MSE per regularizer (nothing without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in rows:
        for ax, key in zip(axes, ("train_nfe", "mse")):
            y = np.asarray(r["history"][key], dtype=float)
            w = max(1, min(25, len(y) // 10))
            smooth = np.convolve(y, np.ones(w) / w, mode="valid")
            ax.plot(np.arange(len(smooth)) + w, smooth, label=r["regularizer"])
    axes[0].set(xlabel="step", ylabel="NFE per training step", title="training NFE")
    axes[1].set(xlabel="step", ylabel="masked MSE", title="training masked MSE")
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = LatentODEConfig()
    parser.add_argument(
        "--regularizers", default="none,local,global", type=name_list(REGULARIZERS),
        help=f"comma-separated, from {sorted(REGULARIZERS)}",
    )  # fmt: skip
    parser.add_argument("--data", default=d.data, help="generated or physionet")
    parser.add_argument("--physionet-dir", default=None)
    parser.add_argument(
        "--data-dir", default=None,
        help="where generated data is cached (default: --out)",
    )  # fmt: skip
    for name in (
        "num_patients", "steps", "batch_size", "latent", "hidden", "eval_batch"
    ):  # fmt: skip
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=positive_int, default=getattr(d, name)
        )
    for name in ("data_seed", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int,
                            default=getattr(d, name))  # fmt: skip
    for name, kind in (
        ("quantization", positive_float), ("lr", positive_float),
        ("weight", nonnegative_float), ("weight_end", nonnegative_float),
        ("tol", positive_float), ("obs_std", positive_float),
    ):  # fmt: skip
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=getattr(d, name)
        )
    parser.add_argument("--checkpoint-every", type=positive_int, default=100)
    parser.add_argument("--out", default="results/latent_ode")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args(argv)
    if args.checkpoint_every < 1:
        raise ValueError(
            f"--checkpoint-every must be positive, got {args.checkpoint_every}."
        )
    configs = [
        LatentODEConfig(
            regularizer=name,
            data=args.data,
            physionet_dir=args.physionet_dir,
            num_patients=args.num_patients,
            data_seed=args.data_seed,
            quantization=args.quantization,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight=args.weight,
            weight_end=args.weight_end,
            tol=args.tol,
            latent=args.latent,
            hidden=args.hidden,
            obs_std=args.obs_std,
            eval_batch=args.eval_batch,
            seed=args.seed,
        )  # fmt: skip
        for name in args.regularizers.split(",")
    ]
    for cfg in configs:  # every bad setting is reported before any training
        check_config(cfg)
    out = pathlib.Path(args.out)
    data_dir = out if args.data_dir is None else pathlib.Path(args.data_dir)
    rows = []
    for cfg in configs:
        run_dir = out / f"{cfg.regularizer}_seed{cfg.seed}"
        rows.append(
            run(
                cfg, run_dir, data_dir=data_dir,
                checkpoint_every=args.checkpoint_every,
                progress=not args.no_progress,
            )
        )  # fmt: skip
    add_baseline_ratios(rows)
    print(f"\nLatent ODE on {rows[0]['data']};")
    print(f"{args.steps} steps at batch {args.batch_size}, seed {args.seed}:")
    print_table(
        rows,
        [
            ("regularizer", "regularizer"), ("test_mse", "test MSE"),
            ("test_extrap_mse", "extrap MSE"), ("test_nfe", "test NFE"),
            ("nfe_ratio", "NFE ratio"), ("train_nfe", "train NFE"),
            ("predict_s", "predict s/batch"), ("speedup", "predict speedup"),
            ("train_s", "train s"),
        ],
    )  # fmt: skip
    summary = [{k: v for k, v in r.items() if k != "history"} for r in rows]
    write_json(out / f"latent_ode_seed{args.seed}.json", summary)
    if not args.no_figures:
        plot(rows, out / f"latent_ode_seed{args.seed}.png")
    return rows


if __name__ == "__main__":
    main()
