"""Local vs global regularization of solver heuristics on MNIST (Pal, Edelman and
Rackauckas, ICML 2023, MNIST Neural ODE and Neural SDE experiments), offline.

Neural ODE ("--model ode"): images flattened to 784 -> Neural ODE with a tanh MLP field
(784 -> 100 -> 784, time concatenated to each layer's input), tsit5 -> linear 784 -> 10.
Neural SDE ("--model sde"), as the paper's: linear 784 -> 32 -> Neural SDE with drift
32 -> 64 (tanh) -> 32 and a linear diagonal diffusion 32 -> 32 (noise multiplicative in
the state), Heun (Stratonovich) -> linear 32 -> 10.

Trains with Adam, full loss = cross-entropy + weight * regularization (weight decaying
exponentially from --weight to --weight-end). Reports test accuracy, test NFE per
sample, training NFE per step (forward + the regularizer's extra step), prediction time
of the whole test split and training time. Data: the offline MNIST split (first 8,000
test images train, last 2,000 evaluate). Checkpoints every --checkpoint-every steps to
--out and resumes from there.

    python -m experiments.regularization_mnist --model ode --regularizer local
"""

import argparse
import dataclasses
import json
import pathlib
import time
from dataclasses import dataclass

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import tadiffeq as td
from tadiffeq.data import iterate_batches

from .common import (
    add_baseline_ratios,
    data_fingerprint,
    load_image_data,
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
from .training import optimizer_step


REGULARIZERS = regularizers()


@dataclass
class RegConfig:
    model: str = "ode"  # "ode" or "sde"
    regularizer: str = "none"
    weight: float = 5.0
    weight_end: float = 2.5
    steps: int = 600
    batch_size: int = 256
    lr: float = 1e-3
    tol: float = 1e-5
    hidden: int = 100
    eval_batch: int = 500
    data: str = "auto"
    x64: bool = False  # float64 model and data (for tolerances below ~1e-6)
    seed: int = 0
    init: str = "torch"  # "torch" (the library's layers) or "glorot" (Lux's Dense)
    adjoint: str = "recursive"  # "recursive" (checkpointed) or "backsolve"
    lr_decay: float = 0.0  # lr / (1 + lr_decay * step) (Optimisers' InverseDecay)
    time_input: bool = True  # the SDE's fields see t (the paper's do not)


# The paper's code (LocalRegNeuralDE.jl, experiments/mnist_ode/mlp.yml and
# mnist_sde/mlp.yml at the commits read for issue 19): batch 512, Lux's Glorot-uniform
# weights and zero biases; ODE tsit5 at rtol = atol = 1.4e-8 (Float32), Adam 1e-3,
# weight 5 -> 2.5 exponentially; SDE tolerance 0.14, weight 1000, Adam
# 0.01 / (1 + 1e-5 t), fields without a time input.
PROTOCOLS = {
    "library": {
        "ode": dict(weight=5.0, weight_end=2.5, lr=1e-3, tol=1e-5),
        "sde": dict(weight=10.0, weight_end=10.0, lr=1e-2, tol=0.14),
    },
    "paper": {
        "ode": dict(
            weight=5.0, weight_end=2.5, lr=1e-3, tol=1.4e-8, batch_size=512,
            eval_batch=512, init="glorot",
        ),
        "sde": dict(
            weight=1000.0, weight_end=1000.0, lr=1e-2, lr_decay=1e-5, tol=0.14,
            batch_size=512, eval_batch=512, init="glorot", time_input=False,
        ),
    },
}  # fmt: skip


def glorot_init(model, key):
    """`model` with every `TimeLinear` and `eqx.nn.Linear` re-initialised as Lux's
    `Dense`: Glorot-uniform weights (limit sqrt(6 / (fan_in + fan_out)), the time
    input counted in fan_in) and zero biases."""
    is_layer = lambda x: isinstance(x, (td.TimeLinear, eqx.nn.Linear))

    def layers(m):
        return [x for x in jax.tree.leaves(m, is_leaf=is_layer) if is_layer(x)]

    new = []
    for layer, k in zip(layers(model), jax.random.split(key, len(layers(model)))):
        w = layer.weight
        lim = float(np.sqrt(6.0 / (w.shape[0] + w.shape[1])))
        new += [jax.random.uniform(k, w.shape, w.dtype, -lim, lim)]
        new += [jnp.zeros_like(layer.bias)]
    where = lambda m: [a for x in layers(m) for a in (x.weight, x.bias)]
    return eqx.tree_at(where, model, new)


class _Autonomous(eqx.Module):
    """A field without a time input (the paper's SDE drift and diffusion): an MLP on
    `(batch, features)` whose hidden layers are tanh, `(t, y, state) -> (f, state)`."""

    mlp: eqx.nn.MLP

    def __init__(self, features: int, hidden: tuple[int, ...], *, key):
        self.mlp = eqx.nn.MLP(
            features, features, hidden[0] if hidden else 0, len(hidden),
            activation=jnp.tanh, key=key,
        )  # fmt: skip

    def __call__(self, t, y, state):
        return jax.vmap(self.mlp)(y), state


class ODEClassifier(eqx.Module):
    node: td.NeuralODE
    head: eqx.nn.Linear

    def __init__(self, cfg: RegConfig, features: int, key):
        k1, k2 = jax.random.split(key)
        dtype = jnp.float64 if cfg.x64 else jnp.float32
        field = td.MLPField(
            features, (cfg.hidden,), norm="none", activation="tanh", key=k1,
            dtype=dtype,
        )  # fmt: skip
        ctrl = dfx.PIDController(rtol=cfg.tol, atol=cfg.tol)
        adjoint = (
            dfx.BacksolveAdjoint() if cfg.adjoint == "backsolve" else None
        )  # None: the node's default, RecursiveCheckpointAdjoint
        self.node = td.NeuralODE(
            field, solver=dfx.Tsit5(), stepsize_controller=ctrl, max_steps=4096,
            adjoint=adjoint,
        )  # fmt: skip
        self.head = eqx.nn.Linear(features, 10, key=k2, dtype=dtype)

    def __call__(self, x, state, *, key, regularizer=None):
        y, state, stats = self.node(x, state, regularizer=regularizer, key=key)
        return y @ self.head.weight.T + self.head.bias, state, stats


class SDEClassifier(eqx.Module):
    down: eqx.nn.Linear
    sde: td.NeuralSDE
    head: eqx.nn.Linear

    def __init__(self, cfg: RegConfig, features: int, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        if cfg.time_input:
            drift = td.MLPField(32, (64,), norm="none", activation="tanh", key=k2)
            diffusion = td.MLPField(32, (), norm="none", key=k3)  # linear in y
        else:
            drift, diffusion = (
                _Autonomous(32, (64,), key=k2),
                _Autonomous(32, (), key=k3),
            )
        ctrl = dfx.PIDController(rtol=cfg.tol, atol=cfg.tol)
        self.down = eqx.nn.Linear(features, 32, key=k1)
        self.sde = td.NeuralSDE(drift, diffusion, stepsize_controller=ctrl)
        self.head = eqx.nn.Linear(32, 10, key=k4)

    def __call__(self, x, state, *, key, regularizer=None):
        h = x.reshape(x.shape[0], -1) @ self.down.weight.T + self.down.bias
        y, state, stats = self.sde(h, state, key=key, regularizer=regularizer)
        return y @ self.head.weight.T + self.head.bias, state, stats


@dataclass
class _Setup:
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    description: str
    model: eqx.Module
    state: eqx.nn.State
    optimizer: optax.GradientTransformation
    opt_state: optax.OptState
    key: jax.Array  # the training key (steps fold in their index)


def _setup(cfg: RegConfig) -> _Setup:
    """Data, the initial model and optimizer of a run of `cfg`."""
    jax.config.update("jax_enable_x64", cfg.x64)
    data, description = load_image_data(cfg.data, seed=cfg.seed)
    dtype = np.float64 if cfg.x64 else np.float32
    x_train, y_train = data["train"][0].astype(dtype), data["train"][1]
    x_test, y_test = data["test"][0].astype(dtype), data["test"][1]
    k_model, k_train = jax.random.split(jax.random.PRNGKey(cfg.seed))
    cls = ODEClassifier if cfg.model == "ode" else SDEClassifier
    features = int(np.prod(x_train.shape[1:]))
    model, state = eqx.nn.make_with_state(cls)(cfg, features, k_model)
    if cfg.init == "glorot":
        model = glorot_init(model, jax.random.fold_in(k_model, 1))
    optimizer = optax.adam(lambda step: cfg.lr / (1.0 + cfg.lr_decay * step))
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    return _Setup(
        (x_train, y_train), (x_test, y_test), description, model, state, optimizer,
        opt_state, k_train,
    )  # fmt: skip


TIMING_REPEATS = 7  # rounds of `time_interleaved`; the median is reported
EVAL_REPEATS = 5  # timed passes of a finished run's evaluation; the median is reported


def time_interleaved(
    runs: list[tuple[RegConfig, pathlib.Path]], repeats: int = TIMING_REPEATS
) -> list[float]:
    """The median wall time (s) of predicting the test split with each finished run's
    model (restored from its checkpoint), the models timed round-robin in this one
    process after each is compiled, so load on the machine affects all alike."""
    predictors = []
    for cfg, out in runs:
        s = _setup(cfg)
        restored = restore_checked(
            td.Checkpointer(out / "checkpoint"), (s.model, s.opt_state),
            dataclasses.asdict(cfg), out, data_fingerprint(*s.train),
        )  # fmt: skip
        if restored is None or restored[0] != cfg.steps:
            raise ValueError(f"{out} holds no finished run of this configuration.")
        model = restored[1][0]
        predictors.append(_predictor(model, s.state, s.test[0], cfg, s.key)[0])
    for once in predictors:
        once()  # compiles
    times = [[] for _ in predictors]
    for _ in range(repeats):
        for i, once in enumerate(predictors):
            t = time.perf_counter()
            once()
            times[i].append(time.perf_counter() - t)
    return [float(np.median(t)) for t in times]


def saved_run(out: pathlib.Path) -> tuple[RegConfig, pathlib.Path]:
    """`(config, out)` of the finished run in `out`, its configuration read from its
    result.json (so it is restored with the settings it was trained with)."""
    result = out / "result.json"
    if not result.exists():
        raise ValueError(f"--time-runs: {out} holds no finished run (no result.json).")
    saved = json.loads(result.read_text())["config"]
    fields = {f.name for f in dataclasses.fields(RegConfig)}
    return RegConfig(**{k: v for k, v in saved.items() if k in fields}), out


def print_timing(
    runs: list[tuple[RegConfig, pathlib.Path]],
    file: pathlib.Path,
    repeats: int = TIMING_REPEATS,
):
    """`time_interleaved(runs, repeats)` as rows (the first run the speedup's
    baseline), printed and written to `file`."""
    times = time_interleaved(runs, repeats)
    rows = [
        dict(
            run=out.name, regularizer=cfg.regularizer, adjoint=cfg.adjoint,
            seed=cfg.seed, predict_s=t, speedup=times[0] / t,
        )
        for (cfg, out), t in zip(runs, times)
    ]  # fmt: skip
    print(f"Prediction time, interleaved (median of {repeats} after compilation):")
    print_table(
        rows, [("run", "run"), ("adjoint", "adjoint"), ("predict_s", "predict s"),
               ("speedup", "speedup")],
    )  # fmt: skip
    write_json(file, rows)
    return rows


def make_train_step(cfg: RegConfig, s: _Setup):
    """The jitted training step of `cfg` on `s`'s model:
    `(model, opt_state, x, y, key, weight) -> (model, opt_state, loss, (ce, nfe,
    regularization))`, `nfe` the forward solve's evaluations plus the regularizer's.
    The weight is an array, not static: one compilation."""
    reg = REGULARIZERS[cfg.regularizer]

    def loss_fn(model, x, y, key, weight):
        logits, _, stats = model(x, s.state, key=key, regularizer=reg)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        nfe = stats.num_fn_evals + stats.num_regularizer_evals
        return ce + weight * stats.regularization, (ce, nfe, stats.regularization)

    return optimizer_step(loss_fn, s.optimizer, max_traces=1)


def run(
    cfg: RegConfig,
    out: pathlib.Path,
    *,
    checkpoint_every: int = 100,
    stop_after: int | None = None,
    timing_repeats: int = EVAL_REPEATS,
    log=print,
):
    """Trains (resuming from `out`'s checkpoint if any) and evaluates (the prediction
    time the median of `timing_repeats` passes). With `stop_after`, returns `None`
    after that many steps of this call, checkpointed."""
    if cfg.regularizer not in REGULARIZERS:
        raise ValueError(f"Unknown regularizer {cfg.regularizer!r}.")
    if cfg.model not in ("ode", "sde"):
        raise ValueError(f"--model must be 'ode' or 'sde', got {cfg.model!r}.")
    if cfg.init not in ("torch", "glorot"):
        raise ValueError(f"`init` must be 'torch' or 'glorot', got {cfg.init!r}.")
    if cfg.adjoint not in ("recursive", "backsolve"):
        raise ValueError(
            f"`adjoint` must be 'recursive' or 'backsolve', got {cfg.adjoint!r}."
        )
    s = _setup(cfg)
    (x_train, y_train), (x_test, y_test) = s.train, s.test
    model, state, opt_state = s.model, s.state, s.opt_state
    k_train, description = s.key, s.description
    schedule = regularization_weights(REGULARIZERS[cfg.regularizer], cfg)
    train_step = make_train_step(cfg, s)

    ckpt = td.Checkpointer(out / "checkpoint")
    history = {"ce": [], "train_nfe": [], "reg": [], "seconds": 0.0}
    step = 0
    fingerprint = data_fingerprint(x_train, y_train)
    restored = restore_checked(
        ckpt, (model, opt_state), dataclasses.asdict(cfg), out, fingerprint
    )
    if restored is not None:
        step, (model, opt_state), meta = restored
        history = meta["history"]
        log(f"  resumed from step {step}")
    steps_per_epoch = len(x_train) // cfg.batch_size
    t_start = time.perf_counter() - history["seconds"]
    stop_at = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    while step < stop_at:
        epoch, offset = divmod(step, steps_per_epoch)
        batches = iterate_batches(
            x_train, y_train, cfg.batch_size, seed=cfg.seed * 1000 + epoch
        )
        for i, (xb, yb) in enumerate(batches):
            if i < offset:
                continue
            model, opt_state, _, (ce, nfe, r) = train_step(
                model, opt_state, jnp.asarray(xb), jnp.asarray(yb),
                jax.random.fold_in(k_train, step), jnp.asarray(schedule(step)),
            )  # fmt: skip
            history["ce"].append(float(ce))
            history["train_nfe"].append(int(nfe))
            history["reg"].append(float(r))
            step += 1
            if step % 25 == 0 or step == cfg.steps:
                log(
                    f"  [{cfg.model} {cfg.regularizer}] step {step}/{cfg.steps} "
                    f"ce {np.mean(history['ce'][-25:]):.3f} "
                    f"train nfe {np.mean(history['train_nfe'][-25:]):.1f} "
                    f"({time.perf_counter() - t_start:.0f} s)"
                )
            if step % checkpoint_every == 0 or step == stop_at:
                history["seconds"] = time.perf_counter() - t_start
                meta = dict(
                    config=dataclasses.asdict(cfg), history=history, data=fingerprint
                )
                ckpt.save(step, (model, opt_state), meta)
            if step >= stop_at:
                break
        if step >= stop_at:
            break
    if step < cfg.steps:
        return None
    train_seconds = history["seconds"]
    acc, test_nfe, predict_s = evaluate(
        model, state, x_test, y_test, cfg, k_train, timing_repeats
    )
    sample_nfe = per_sample_nfe(model, state, x_test[: cfg.eval_batch], k_train)
    result = dict(
        model=cfg.model,
        regularizer=cfg.regularizer,
        test_acc=acc,
        test_nfe=test_nfe,
        sample_nfe=sample_nfe,
        train_nfe=float(np.mean(history["train_nfe"][-steps_per_epoch:])),
        predict_s=predict_s,
        train_s=train_seconds,
        step_s=train_seconds / cfg.steps,
        config=dataclasses.asdict(cfg),
        data=description,
    )
    write_json(out / "result.json", result)
    return result


@eqx.filter_jit
def _predict(model, state, xb, key):
    """Labels and the joint solve's NFE (broadcast per sample) of batch `xb`,
    `model` in inference mode. One function for every run, so runs of the same
    architecture and batch shape share its compilation."""
    logits, _, stats = model(xb, state, key=key)
    nfe = jnp.broadcast_to(stats.num_fn_evals, (xb.shape[0],))
    return jnp.argmax(logits, -1), nfe


def _predictor(model, state, x, cfg: RegConfig, key):
    """`(once, batches)`: `once()` predicts all of `x` in batches of
    `cfg.eval_batch`, one joint solve (shared step sizes) per batch, in inference
    mode, and returns `[(labels, nfe per sample), ...]` per batch (synchronised)."""
    model = eqx.nn.inference_mode(model)
    batches = [
        jnp.asarray(x[i : i + cfg.eval_batch]) for i in range(0, len(x), cfg.eval_batch)
    ]

    def once():
        outs = [
            _predict(model, state, xb, jax.random.fold_in(key, i))
            for i, xb in enumerate(batches)
        ]
        return jax.block_until_ready(outs)

    return once, batches


def evaluate(model, state, x, y, cfg: RegConfig, key, repeats: int = EVAL_REPEATS):
    """Accuracy, mean NFE per sample and the median wall time over `repeats` passes
    (after compilation) of predicting the whole test split in batches of
    `cfg.eval_batch`, one joint solve (shared step sizes) per batch, as the paper's
    code evaluates."""
    once, _ = _predictor(model, state, x, cfg, key)
    outs = once()  # compiles
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    pred = np.concatenate([np.asarray(p) for p, _ in outs])
    nfe = np.concatenate([np.asarray(n) for _, n in outs])
    return float(np.mean(pred == y)), float(np.mean(nfe)), float(np.median(times))


@eqx.filter_jit
def _per_sample_nfe(model, state, x, keys):
    def one(xi, k):
        return model(xi[None], state, key=k)[2].num_fn_evals

    return jax.vmap(one)(x, keys)


def per_sample_nfe(model, state, x, key) -> float:
    """Mean NFE of solving each sample of `x` on its own (a batch of one each, its
    own step sizes), in inference mode."""
    keys = jax.random.split(jax.random.fold_in(key, 10**6), len(x))
    nfe = _per_sample_nfe(eqx.nn.inference_mode(model), state, jnp.asarray(x), keys)
    return float(np.mean(np.asarray(nfe)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = RegConfig()
    parser.add_argument("--model", default="ode", choices=["ode", "sde"])
    parser.add_argument(
        "--protocol", default="library", choices=sorted(PROTOCOLS),
        help="'paper': the paper's code's settings (see PROTOCOLS); 'library': ours",
    )  # fmt: skip
    parser.add_argument(
        "--regularizers", default="none,local,local_biased,global",
        type=name_list(REGULARIZERS),
        help=f"comma-separated, from {sorted(REGULARIZERS)}",
    )  # fmt: skip
    for name, kind in (
        ("weight", nonnegative_float), ("weight_end", nonnegative_float),
        ("lr", positive_float), ("tol", positive_float),
        ("lr_decay", nonnegative_float),
    ):  # fmt: skip
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    for name in ("batch_size", "eval_batch"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=positive_int)
    for name in ("steps", "hidden"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=positive_int,
            default=getattr(defaults, name),
        )  # fmt: skip
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--adjoint", default=None, choices=["recursive", "backsolve"])
    parser.add_argument(
        "--data", default="auto", choices=["auto", "mnist", "synthetic"]
    )
    parser.add_argument(
        "--x64", action="store_true", help="float64 (ODE), for tolerances < 1e-6"
    )
    parser.add_argument("--checkpoint-every", type=positive_int, default=100)
    parser.add_argument(
        "--stop-after", type=positive_int, default=None,
        help="checkpoint and stop each row after this many steps of this call",
    )  # fmt: skip
    parser.add_argument(
        "--time-only", action="store_true",
        help="time the finished rows' predictions interleaved in this process "
        "(predict s and speedup); trains nothing",
    )  # fmt: skip
    parser.add_argument(
        "--time-runs", type=str, default=None, metavar="DIR,DIR,...",
        help="like --time-only, for finished runs in any folders (each run's "
        "configuration read from its result.json; the first is the speedup's "
        "baseline): rows of other seeds, adjoints or --out folders side by side",
    )  # fmt: skip
    parser.add_argument(
        "--timing-repeats", type=positive_int, default=None,
        help="timed prediction passes, the median reported (default "
        f"{EVAL_REPEATS} after training, {TIMING_REPEATS} with --time-only or "
        "--time-runs)",
    )  # fmt: skip
    parser.add_argument("--out", default="results/regularization_mnist")
    args = parser.parse_args(argv)
    interleaved = args.timing_repeats or TIMING_REPEATS
    if args.time_runs is not None:
        runs = [saved_run(pathlib.Path(d)) for d in args.time_runs.split(",")]
        return print_timing(runs, pathlib.Path(args.out) / "timing.json", interleaved)
    preset = PROTOCOLS[args.protocol][args.model]
    given = {k: v for k, v in vars(args).items() if k in _FIELDS and v is not None}
    runs = []
    for name in args.regularizers.split(","):
        cfg = RegConfig(model=args.model, regularizer=name, **{**preset, **given})
        runs.append(
            (cfg, pathlib.Path(args.out) / f"{args.model}_{name}_seed{args.seed}")
        )
    if args.time_only:
        name = f"{args.model}_seed{args.seed}_timing.json"
        return print_timing(runs, pathlib.Path(args.out) / name, interleaved)
    rows = []
    for cfg, out in runs:
        row = run(
            cfg, out, checkpoint_every=args.checkpoint_every,
            stop_after=args.stop_after,
            timing_repeats=args.timing_repeats or EVAL_REPEATS,
        )  # fmt: skip
        if row is not None:
            rows.append(row)
    if not rows:
        print("Stopped before the end of training (checkpointed); run again to go on.")
        return rows
    add_baseline_ratios(rows)
    print(f"\n{args.model.upper()} on {rows[0]['data']},")
    print(f"{args.protocol} protocol, {args.steps} steps, seed {args.seed}:")
    print_table(
        rows,
        [
            ("regularizer", "regularizer"), ("test_acc", "test acc"),
            ("test_nfe", "test NFE"), ("nfe_ratio", "NFE ratio"),
            ("sample_nfe", "NFE per sample"), ("train_nfe", "train NFE"),
            ("predict_s", "predict s"), ("speedup", "predict speedup"),
            ("step_s", "s / step"), ("train_s", "train s"),
        ],
    )  # fmt: skip
    write_json(pathlib.Path(args.out) / f"{args.model}_seed{args.seed}.json", rows)
    return rows


_FIELDS = {f.name for f in dataclasses.fields(RegConfig)} - {"model", "regularizer"}


if __name__ == "__main__":
    main()
