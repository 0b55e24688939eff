"""Physical-system modelling with TA-BN (Zheng et al. 2024, Sec. 5): learning the
dynamics of a chain of 8 coupled, damped pendulums with a Neural ODE whose MLP vector
field holds TA-BN / mini-batch BN / Pop-TI BN / no normalisation.

The paper used 17-dimensional MuJoCo trajectories, not available offline. Here the
system is generated (`tadiffeq.data.generate_pendulum_chain`, float64 Dopri8, rtol =
atol = 1e-8, cached as `.npz`): 8 pendulums with natural frequency nu = 1, torsion
springs kappa = 0.5 between neighbours and damping gamma = 0.05,

    theta_i'' = -nu^2 sin theta_i - gamma theta_i'
                + kappa (theta_{i-1} - 2 theta_i + theta_{i+1})   (free ends)

a 16-dimensional state [angles, angular velocities]; 128 trajectories of 201 samples
(dt = 0.05) from random initial conditions, the last 32 for testing.

Training: windows of `--window` samples (1 time unit by default) cut at random from
the training trajectories; the Neural ODE starts at a window's first point and is
solved with dopri5 (its own time grid [0, window dt], so TA-BN's statistics are per
time into the window), with the MSE to the observed points (`ts`) as the loss. Adam
with the learning rate x0.1 at half the steps, global-norm clip 10, the TA-BN affine
penalty for TA-BN. Checkpoints every `--chunk` steps under `--out` and resumes exactly.

Evaluation (inference mode), at test batch `--test-batch` and at 2:

- window MAE: every non-overlapping window of the test trajectories, integrated from
  its true first point; mean absolute error over the window's points;
- rollout MAE: each whole test trajectory predicted from its initial state alone, by
  chaining windows (each starts from the previous window's predicted end);
- mean NFE per window solve and wall times.

Writes `physical_system.json` and `physical_system.png` (predicted vs true trajectory
of a test initial condition; MAE bars).

    python -m experiments.physical_system      # 4 models, ~17 min on 2 busy cores
    python -m experiments.physical_system --norms tabn,none --steps 500
"""

import argparse
import dataclasses
import pathlib
import sys
import time
from dataclasses import asdict, dataclass

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import tadiffeq as td
from tadiffeq.data import generate_pendulum_chain

from .common import (
    name_list,
    nonnegative_int,
    positive_float,
    positive_int,
    positive_int_list,
    print_table,
    restore_checked,
    write_json,
)
from .reporting import pyplot, save_figure
from .training import optimizer_step


@dataclass(frozen=True)
class PhysicalConfig:
    norm: str = "tabn"
    # data: the pendulum chain
    num_pendulums: int = 8
    num_trajectories: int = 128
    num_times: int = 201
    dt: float = 0.05
    damping: float = 0.05
    stiffness: float = 0.5
    data_seed: int = 0
    # model: MLP field 16 -> hidden -> 16, the normalisation after the first
    # `norm_layers` hidden layers, tanh
    hidden: tuple[int, ...] = (128, 128)
    norm_layers: int = 1
    activation: str = "tanh"
    num_intervals: int = 100  # TA-BN's grid over one window
    window: int = 20  # samples per training window (window * dt time units)
    rtol: float = 1e-4
    atol: float = 1e-4
    # training
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    clip_norm: float = 10.0
    affine_penalty: float = 0.1  # TA-BN only (the paper)
    chunk: int = 250  # steps between checkpoints
    seed: int = 0


def load_data(cfg: PhysicalConfig, cache_dir=None):
    """The pendulum-chain trajectories of `cfg` (cached); float32 copies."""
    data = generate_pendulum_chain(
        cfg.num_trajectories, cfg.num_times, cfg.dt, num_pendulums=cfg.num_pendulums,
        damping=cfg.damping, stiffness=cfg.stiffness, seed=cfg.data_seed,
        cache_dir=cache_dir,
    )  # fmt: skip
    return {k: v.astype(np.float32) for k, v in data.items()}


def build_model(cfg: PhysicalConfig, key):
    """`(NeuralODE, state)` over one window, [0, window * dt]."""
    t1 = cfg.window * cfg.dt
    kwargs = (
        dict(t0=0.0, t1=t1, num_intervals=cfg.num_intervals)
        if cfg.norm.startswith("tabn")
        else None
    )
    dim = 2 * cfg.num_pendulums

    def build(key):
        field = td.MLPField(
            dim, cfg.hidden, activation=cfg.activation, norm=cfg.norm,
            norm_kwargs=kwargs, norm_layers=cfg.norm_layers, key=key,
        )  # fmt: skip
        ctrl = dfx.PIDController(rtol=cfg.rtol, atol=cfg.atol)
        return td.NeuralODE(field, stepsize_controller=ctrl, t1=t1)

    return eqx.nn.make_with_state(build)(key)


def window_times(cfg: PhysicalConfig):
    return jnp.arange(1, cfg.window + 1, dtype=jnp.float32) * cfg.dt


def sample_windows(train, cfg: PhysicalConfig, step: int):
    """`(batch, window + 1, D)` windows of the training trajectories, drawn by
    `(seed, step)` (so a resumed run sees the same batches)."""
    rng = np.random.default_rng([cfg.seed, step])
    traj = rng.integers(0, train.shape[0], cfg.batch_size)
    start = rng.integers(0, train.shape[1] - cfg.window, cfg.batch_size)
    idx = start[:, None] + np.arange(cfg.window + 1)
    return train[traj[:, None], idx]


def make_optimizer(cfg: PhysicalConfig):
    schedule = optax.piecewise_constant_schedule(cfg.lr, {max(1, cfg.steps // 2): 0.1})
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), optax.adam(schedule))


@eqx.filter_jit
def train_step(cfg: PhysicalConfig, model, opt_state, state, windows):
    """One optimizer step of `cfg` (with `make_optimizer(cfg)`) on `windows`:
    `(model, opt_state, state, loss, mae, nfe)`. `cfg` is a static (hashable)
    argument, so repeated and resumed runs of one configuration compile once per
    process."""
    ts = window_times(cfg)
    penalty = cfg.affine_penalty if cfg.norm.startswith("tabn") else 0.0

    def loss_fn(model, state, windows):
        ys, new_state, stats = model(windows[:, 0], state, ts=ts)
        target = jnp.swapaxes(windows[:, 1:], 0, 1)  # (window, batch, D)
        mse = jnp.mean((ys - target) ** 2)
        loss = mse + (td.affine_penalty(model.field, penalty) if penalty else 0.0)
        mae = jnp.mean(jnp.abs(ys - target))
        return loss, (new_state, stats.num_fn_evals, mae)

    step = optimizer_step(loss_fn, make_optimizer(cfg))
    model, opt_state, loss, (new_state, nfe, mae) = step(
        model, opt_state, state, windows
    )
    return model, opt_state, new_state, loss, mae, nfe


def train(cfg: PhysicalConfig, data, *, checkpoint_dir=None, stop_after_chunks=None):
    """Trains the Neural ODE of `cfg`; `(model, state, history)`, one history entry
    per chunk. With `checkpoint_dir`, saves after every chunk and resumes from the
    last; `stop_after_chunks` ends this call early (checkpointed) returning `None`."""
    from tqdm.auto import tqdm

    model, state = build_model(cfg, jax.random.PRNGKey(cfg.seed))
    optimizer = make_optimizer(cfg)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    history = []
    ckpt = None if checkpoint_dir is None else td.Checkpointer(checkpoint_dir)
    # The configuration also fixes the generated data.
    if ckpt is not None and (
        restored := restore_checked(
            ckpt, (model, opt_state, state), _jsonable_config(cfg), checkpoint_dir
        )
    ):
        _, (model, opt_state, state), meta = restored
        history = meta["history"]
    step = history[-1]["step"] if history else 0
    t_start = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.norm, file=sys.stdout,
               mininterval=1.0, leave=False)  # fmt: skip
    chunks = 0
    while step < cfg.steps:
        if stop_after_chunks is not None and chunks >= stop_after_chunks:
            bar.close()
            return None
        losses, maes, nfes = [], [], []
        for _ in range(min(cfg.chunk, cfg.steps - step)):
            windows = jnp.asarray(sample_windows(data["train"], cfg, step))
            model, opt_state, state, loss, mae, nfe = train_step(
                cfg, model, opt_state, state, windows
            )
            losses.append(float(loss))
            maes.append(float(mae))
            nfes.append(int(nfe))
            step += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.2e}",
                                mae=f"{np.mean(maes[-10:]):.4f}",
                                nfe=f"{np.mean(nfes[-10:]):.0f}")  # fmt: skip
        chunks += 1
        history.append(
            dict(
                step=step, loss=float(np.mean(losses)), train_mae=float(np.mean(maes)),
                train_nfe=float(np.mean(nfes)), seconds=time.perf_counter() - t_start,
            )
        )  # fmt: skip
        if ckpt is not None:
            meta = dict(config=_jsonable_config(cfg), history=history)
            ckpt.save(step, (model, opt_state, state), meta)
    bar.close()
    return model, state, history


def _jsonable_config(cfg: PhysicalConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


@eqx.filter_jit
def _predict(model, state, y0, ts):
    """`(ys (len(ts), b, D), nfe (b,))` from the initial states `y0` `(b, D)`."""
    ys, _, stats = model(y0, state, ts=ts)
    return ys, jnp.broadcast_to(stats.num_fn_evals, (y0.shape[0],))


def _in_batches(fn, x, batch_size: int, axes: tuple[int, ...]):
    """`fn` (returning a tuple) on consecutive batches of `x` along axis 0 (the last
    may be smaller); its outputs concatenated along their batch axes `axes`."""
    outs = [fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return [np.concatenate([np.asarray(o[j]) for o in outs], axis=a)
            for j, a in enumerate(axes)]  # fmt: skip


def evaluate(model, state, test, cfg: PhysicalConfig, batch_size: int) -> dict:
    """Window and rollout MAE, NFE and wall times at test batch `batch_size`."""
    model = eqx.nn.inference_mode(model)
    predict = lambda y0, ts: _predict(model, state, y0, ts)
    ts = window_times(cfg)
    w = cfg.window
    n_win = (test.shape[1] - 1) // w
    starts = np.arange(n_win) * w
    # every non-overlapping window, from its true first point
    y0 = test[:, starts].reshape(-1, test.shape[-1])
    target = np.stack([test[:, s + 1 : s + w + 1] for s in starts], 1)
    target = target.reshape(-1, w, test.shape[-1])

    def windows():
        return _in_batches(
            lambda y: predict(jnp.asarray(y), ts), y0, batch_size, (1, 0)
        )

    jax.block_until_ready(windows())  # compile
    t0 = time.perf_counter()
    ys, nfe = windows()
    window_s = time.perf_counter() - t0
    window_mae = float(np.mean(np.abs(np.swapaxes(ys, 0, 1) - target)))

    # whole trajectories from their initial states, window after window
    def rollout(y):
        parts = []
        for _ in range(n_win):
            ys_w, _ = predict(y, ts)
            parts.append(ys_w)
            y = ys_w[-1]
        return (jnp.concatenate(parts, 0),)

    jax.block_until_ready(_in_batches(rollout, test[:, 0], batch_size, (1,)))
    t0 = time.perf_counter()
    (traj,) = _in_batches(rollout, test[:, 0], batch_size, (1,))
    rollout_s = time.perf_counter() - t0
    traj = np.swapaxes(traj, 0, 1)  # (n_test, n_win * w, D)
    true = test[:, 1 : n_win * w + 1]
    return dict(
        window_mae=window_mae, window_nfe=float(np.mean(nfe)), window_s=window_s,
        rollout_mae=float(np.mean(np.abs(traj - true))), rollout_s=rollout_s,
        rollout=traj,
    )  # fmt: skip


def main(argv=None):
    d = PhysicalConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--norms", default="tabn,minibatch,popti,none",
                        type=name_list(td.NORM_NAMES),
                        help="comma-separated normalisation names")  # fmt: skip
    parser.add_argument("--steps", type=positive_int, default=d.steps)
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    parser.add_argument("--hidden", default=",".join(map(str, d.hidden)),
                        type=positive_int_list,
                        help="comma-separated hidden widths")  # fmt: skip
    parser.add_argument("--norm-layers", type=nonnegative_int, default=d.norm_layers)
    parser.add_argument("--window", type=positive_int, default=d.window)
    parser.add_argument("--num-intervals", type=positive_int, default=d.num_intervals)
    parser.add_argument(
        "--num-trajectories", type=positive_int, default=d.num_trajectories
    )
    parser.add_argument("--num-times", type=positive_int, default=d.num_times)
    parser.add_argument("--lr", type=positive_float, default=d.lr)
    parser.add_argument("--chunk", type=positive_int, default=d.chunk)
    parser.add_argument(
        "--test-batch", type=positive_int, default=256,
        help="the large test batch (windows / trajectories)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--cache-dir", default=None,
                        help="data cache (default ~/.cache/tadiffeq)")  # fmt: skip
    parser.add_argument("--out", default="results/physical_system")
    args = parser.parse_args(argv)
    norms = args.norms.split(",")
    for norm in norms:
        if norm not in td.NORM_NAMES:
            raise ValueError(f"--norms: unknown {norm!r}; expected {td.NORM_NAMES}.")
    base = PhysicalConfig(
        steps=args.steps, batch_size=args.batch_size,
        hidden=tuple(int(h) for h in args.hidden.split(",")),
        norm_layers=args.norm_layers, window=args.window,
        num_intervals=args.num_intervals, num_trajectories=args.num_trajectories,
        num_times=args.num_times, lr=args.lr, chunk=args.chunk, seed=args.seed,
    )  # fmt: skip
    if base.window >= base.num_times:
        raise ValueError(
            f"--window ({base.window}) must be below --num-times ({base.num_times})."
        )
    out = pathlib.Path(args.out)
    t0 = time.perf_counter()
    data = load_data(base, args.cache_dir)
    n_train, n_test = len(data["train"]), len(data["test"])
    description = (
        f"pendulum chain, {base.num_pendulums} pendulums ({2 * base.num_pendulums}-dim "
        f"state), {n_train} train / {n_test} test trajectories of {base.num_times} "
        f"samples, dt {base.dt}"
    )
    print(f"data: {description} ({time.perf_counter() - t0:.1f} s)")
    rows, rollouts = [], {}
    for norm in norms:
        cfg = dataclasses.replace(base, norm=norm)
        model, state, history = train(
            cfg, data, checkpoint_dir=out / "checkpoints" / f"{norm}_seed{cfg.seed}"
        )
        row = dict(
            norm=norm, params=td.count_parameters(model),
            train_mae=history[-1]["train_mae"], train_nfe=history[-1]["train_nfe"],
            train_s=history[-1]["seconds"],
        )  # fmt: skip
        for b, tag in ((args.test_batch, "big"), (2, "b2")):
            ev = evaluate(model, state, data["test"], cfg, b)
            if tag == "big":
                rollouts[norm] = ev["rollout"][0]
            row.update({f"{k}_{tag}": v for k, v in ev.items() if k != "rollout"})
        row["history"] = history
        rows.append(row)
        print(
            f"  {norm}: window MAE {row['window_mae_big']:.4f} (batch "
            f"{args.test_batch}) / {row['window_mae_b2']:.4f} (batch 2), rollout MAE "
            f"{row['rollout_mae_big']:.4f} / {row['rollout_mae_b2']:.4f}, NFE "
            f"{row['window_nfe_big']:.1f}"
        )
    print(f"\nNeural ODE on the {description};")
    print(
        f"MLP field {2 * base.num_pendulums}-{'-'.join(map(str, base.hidden))}-"
        f"{2 * base.num_pendulums} ({base.activation}, norm after the first "
        f"{base.norm_layers} hidden layer(s)), window {base.window} samples, "
        f"{base.steps} steps of batch {base.batch_size}, seed {base.seed}:"
    )
    tb = args.test_batch
    print_table(
        rows,
        [
            ("norm", "normalisation"), ("window_mae_big", f"window MAE @{tb}"),
            ("window_mae_b2", "window MAE @2"),
            ("rollout_mae_big", f"rollout MAE @{tb}"),
            ("rollout_mae_b2", "rollout MAE @2"), ("window_nfe_big", "test NFE"),
            ("train_nfe", "train NFE"), ("train_s", "train s"),
            ("window_s_big", f"test s @{tb}"),
        ],
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    print(f"(total {seconds:.0f} s)")
    write_json(
        out / "physical_system.json",
        dict(data=description, config=_jsonable_config(base), test_batch=tb,
             rows=rows, seconds=seconds),
    )  # fmt: skip
    figure = plot(rows, rollouts, data, base, tb, out / "physical_system.png")
    print(f"results: {out / 'physical_system.json'}; figure: {figure}")
    return rows


def plot(rows, rollouts, data, cfg, test_batch, path: pathlib.Path):
    """Predicted vs true angle and velocity of pendulum 1 for the first test initial
    condition (whole-trajectory rollouts), and the MAE bars; `None` without
    matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    true = data["test"][0]
    ts = data["ts"]
    n = cfg.num_pendulums
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, dim, label in ((axes[0], 0, "angle theta_1"),
                           (axes[1], n, "velocity omega_1")):  # fmt: skip
        ax.plot(ts, true[:, dim], "k-", lw=2.5, label="true")
        for norm, traj in rollouts.items():
            ax.plot(ts[1 : len(traj) + 1], traj[:, dim], "--", label=norm)
        ax.set(xlabel="t", ylabel=label, title=f"test trajectory 0: {label}")
    axes[0].legend(fontsize=8)
    pos = np.arange(len(rows))
    for off, key, label in ((-0.3, "window_mae_big", f"window, batch {test_batch}"),
                            (-0.1, "window_mae_b2", "window, batch 2"),
                            (0.1, "rollout_mae_big", f"rollout, batch {test_batch}"),
                            (0.3, "rollout_mae_b2", "rollout, batch 2")):  # fmt: skip
        axes[2].bar(pos + off, [r[key] for r in rows], 0.2, label=label)
    axes[2].set(xticks=pos, xticklabels=[r["norm"] for r in rows], yscale="log",
                ylabel="test MAE", title="test MAE")  # fmt: skip
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
