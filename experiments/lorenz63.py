"""Neural ODE training with an adaptive solver on Lorenz'63 (Allauzen, Dardis and
Plath, "Experimental study of Neural ODE training with adaptive solver for dynamical
systems modeling", NeurIPS 2022 DLDE workshop).

The paper's setup: the 10,000-point Lorenz'63 run of the study (sampled every 0.01
time units; first 5,000 points train, last 5,000 test), time rescaled so one sample
step is h = 1; an autonomous MLP field 3 -> 50 -> 50 -> 3 with ReLU in float64; the
one-step-ahead MSE from the true previous point over all 4,999 training transitions
(full batch); L-BFGS (optax.lbfgs, memory 100, zoom linesearch with the strong Wolfe
conditions). Solvers (--solvers):

- naive-EPS: training through Fehlberg's 3(2) with the study's step rule as is
  (eps = EPS in 0.1, 0.05, 0.01); inference with the same rule;
- fehlberg-EPS: "Fehlberg training", the target in the error estimate during
  training; inference with the standard rule;
- rk4: fixed-step RK4, one step per sample;
- dopri5, tsit5: diffrax's adaptive solvers with a PIDController (rtol 1e-3, atol
  1e-6, first step h); trained with the batch as one system, evaluated with a solve
  per sample.

Per model: one-step test MSE; acceptance rate and substeps in training and in
inference; the valid prediction time (normalised error threshold 0.4, in Lyapunov
times, lambda = 0.9056) of free runs from --num-ics test initial conditions against
the exact flow; the learned map's Lyapunov spectrum; long-run attractor statistics
against the exact flow; figures. Checkpoints to --out and resumes from there.

--authors-models DIR adds the study's own two trained models (DIR holds their .npz
weights, see `load_authors_model`) as reference rows `authors-naive` (naive training,
eps = 0.1) and `authors-fehlberg` (Fehlberg training, eps = 0.1), evaluated with the
same inference rule and every metric above, without training (`--solvers none`
evaluates only them).

    python -m experiments.lorenz63 --iterations 300
    python -m experiments.lorenz63 --solvers none --authors-models DIR
"""

import argparse
import dataclasses
import functools
import hashlib
import json
import pathlib
import time
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

import tadiffeq as td
import tadiffeq.dynamics as tdd
from tadiffeq.data import generate_lorenz63, load_lorenz63

from .common import print_table, workspace_data, write_json


SOLVERS = (
    "naive-0.1", "naive-0.05", "naive-0.01",
    "fehlberg-0.1", "fehlberg-0.05", "fehlberg-0.01",
    "rk4", "dopri5", "tsit5",
)  # fmt: skip
# The study's own trained models (Allauzen, Dardis and Plath): row name -> (file in
# the --authors-models folder, the solver whose training and inference rules they
# were fitted and are used with).
AUTHORS = {
    "authors-naive": ("naive_batch_training_100epochs.npz", "naive-0.1"),
    "authors-fehlberg": ("fehlberg_training_200epochs.npz", "fehlberg-0.1"),
}
# Fields that fix the training run: a checkpoint resumes only if they match.
TRAIN_FIELDS = (
    "solver", "hidden", "depth", "memory_size", "safety", "max_substeps", "rtol",
    "atol", "dt", "data", "n_points", "seed", "rollout",
)  # fmt: skip


@dataclass
class LorenzConfig:
    solver: str = "naive-0.1"
    iterations: int = 300  # L-BFGS iterations (the paper trained for longer)
    hidden: int = 50
    depth: int = 2
    memory_size: int = 100  # the paper's L-BFGS history size
    safety: float = 0.9
    max_substeps: int = 10
    rtol: float = 1e-3  # diffrax solvers (scipy's RK45 defaults)
    atol: float = 1e-6
    dt: float = 0.01  # time units per sample (h = 1 in rescaled time)
    data: str = "shared"  # "shared" (the study's files) or "generated"
    n_points: int = 10000  # generated data: train + test
    num_ics: int = 100  # free-run initial conditions from the test split
    horizon: int = 1000  # free-run steps per initial condition (9 Lyapunov times)
    long_steps: int = 20000  # the long run for attractor statistics
    lyap_steps: int = 10000  # steps averaged for the Lyapunov exponents
    threshold: float = 0.4  # on the normalised error, for the VPT
    seed: int = 0
    # Training loss over this many steps ahead: each step starts from the previous
    # *prediction* (its target, for Fehlberg training, the true next point); 1 is
    # the study's one-step loss.
    rollout: int = 1


def make_steppers(cfg: LorenzConfig):
    """(training stepper, inference stepper) of `cfg.solver` (for an `AUTHORS` row,
    those of the solver its model was trained with)."""
    name = AUTHORS[cfg.solver][1] if cfg.solver in AUTHORS else cfg.solver
    if name.startswith(("naive-", "fehlberg-")):
        mode, eps = name.split("-", 1)
        kw = dict(eps=float(eps), safety=cfg.safety, max_substeps=cfg.max_substeps)
        return (
            tdd.FehlbergStep(mode=mode, shared=True, **kw),
            tdd.FehlbergStep(mode="naive", shared=False, **kw),
        )
    if name == "rk4":
        return tdd.RK4Step(), tdd.RK4Step()
    if name in ("dopri5", "tsit5"):
        kw = dict(rtol=cfg.rtol, atol=cfg.atol, throw=False)
        # Training: the batch is one system (diffrax's usual batching; a per-sample
        # vmapped solve costs ~5x more to differentiate). Inference: per sample, in
        # forward mode (the Lyapunov exponents push tangents through jax.jvp).
        return (
            tdd.DiffraxStep(name, per_sample=False, **kw),
            tdd.DiffraxStep(name, per_sample=True, forward_mode=True, **kw),
        )
    raise ValueError(f"Unknown solver {name!r}; expected one of {SOLVERS}.")


def load_data(cfg: LorenzConfig, data_dir, cache: pathlib.Path):
    """`(train, test, description)`, float64 `(N, 3)` arrays."""
    if cfg.data == "shared":
        if data_dir is None:
            default = td.data.default_lorenz63_dir()
            has = (default / "train.npy").exists()
            data_dir = workspace_data("lorenz63", default if has else None)
        d = load_lorenz63(data_dir)
        return d["train"], d["test"], "the study's Lorenz'63 files (5,000 + 5,000)"
    if cfg.data == "generated":
        x = generate_lorenz63(cfg.n_points, cfg.dt, cache_dir=cache)
        half = cfg.n_points // 2
        return (
            x[:half],
            x[half:],
            f"generated (Dopri8, rtol = atol = 1e-10; {half} + {cfg.n_points - half})",
        )
    raise ValueError(f"--data must be 'shared' or 'generated', got {cfg.data!r}.")


class AutonomousMLP(eqx.Module):
    """dx/ds = MLP(x) on a batch `(batch, 3)`: `depth` hidden layers of `width`
    with ReLU, float64. Initialised as PyTorch's `nn.Linear` (weights and biases
    uniform in +-1/sqrt(fan_in)) from a NumPy generator seeded with `seed`."""

    weights: list[Array]
    biases: list[Array]

    def __init__(self, width: int, depth: int, *, seed: int):
        rng = np.random.default_rng(seed)
        widths = [3] + [width] * depth + [3]
        self.weights, self.biases = [], []
        for a, b in zip(widths[:-1], widths[1:]):
            lim = 1.0 / np.sqrt(a)
            self.weights.append(jnp.asarray(rng.uniform(-lim, lim, (a, b))))
            self.biases.append(jnp.asarray(rng.uniform(-lim, lim, (b,))))

    def __call__(self, x: Array) -> Array:
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            x = jax.nn.relu(x @ w + b)
        return x @ self.weights[-1] + self.biases[-1]


def load_authors_model(path) -> AutonomousMLP:
    """One of the study's trained fields from its `.npz` (PyTorch `nn.Sequential` of
    `nn.Linear` and ReLU: keys `nn_{2k}_weight` of shape (out, in) and
    `nn_{2k}_bias` (out,), k = 0 .. depth, 3 inputs and 3 outputs) as the
    `AutonomousMLP` this script evaluates, float64 (PyTorch's y = x W^T + b is
    `x @ W.T + b`, so the weights are stored transposed). Raises `ValueError`
    naming the file if it is not such a model."""
    path = pathlib.Path(path)

    def bad(why):
        return ValueError(f"{path} is not a 3 -> ... -> 3 MLP in PyTorch layout: {why}")

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except FileNotFoundError:
        raise
    except Exception as e:  # not an .npz (pickle, text, truncated zip, ...)
        raise bad(f"unreadable as .npz ({type(e).__name__}: {e})") from e
    n_layers = len(arrays) // 2
    want = {f"nn_{2 * k}_{p}" for k in range(n_layers) for p in ("weight", "bias")}
    if n_layers < 2 or set(arrays) != want:
        raise bad(
            f"keys {sorted(arrays)}, expected {sorted(want) or 'nn_0_weight, ...'}"
        )
    weights, biases, fan_in = [], [], 3
    for k in range(n_layers):
        w, b = arrays[f"nn_{2 * k}_weight"], arrays[f"nn_{2 * k}_bias"]
        out = 3 if k == n_layers - 1 else w.shape[0] if w.ndim == 2 else -1
        if w.shape != (out, fan_in) or b.shape != (out,):
            raise bad(
                f"nn_{2 * k}_weight {w.shape} / nn_{2 * k}_bias {b.shape}, expected "
                f"({out if out > 0 else 'width'}, {fan_in}) / "
                f"({out if out > 0 else 'width'},)"
            )
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise bad(f"non-finite values in layer nn_{2 * k}")
        weights.append(np.asarray(w.T, dtype=np.float64))
        biases.append(np.asarray(b, dtype=np.float64))
        fan_in = out
    widths = {w.shape[1] for w in weights[:-1]}
    if len(widths) != 1:
        raise bad(f"hidden widths {[w.shape[1] for w in weights[:-1]]} differ")
    with jax.enable_x64(True):
        mlp = AutonomousMLP(widths.pop(), n_layers - 1, seed=0)
        layers = jax.tree.map(jnp.asarray, (weights, biases))
        return eqx.tree_at(lambda m: (m.weights, m.biases), mlp, layers)


def _summary(info: tdd.OneStepInfo) -> dict:
    acc = np.asarray(info.accepted)
    n = np.asarray(info.num_substeps)
    out = dict(
        acceptance=float(acc.mean()),
        mean_substeps=float(n.mean()),
        mean_substeps_rejected=float(n[~acc].mean()) if (~acc).any() else None,
        nfe=float(np.asarray(info.num_fn_evals).mean()),
    )
    if info.proposed_substeps is not None and (~acc).any():
        out["proposed_substeps_rejected"] = float(
            np.asarray(info.proposed_substeps)[~acc].mean()
        )
    return out


@functools.cache
def lbfgs(memory_size: int):
    """optax's L-BFGS (zoom linesearch, strong Wolfe), one object per memory size
    so the jitted iteration below compiles once per configuration."""
    return optax.lbfgs(memory_size=memory_size)


def one_step_loss(params, static, step, x_prev, x_next):
    """The one-step-ahead MSE from the true previous points, and the step's info."""
    pred, info = step(eqx.combine(params, static), x_prev, x_next)
    return jnp.mean((pred - x_next) ** 2), info


def rollout_loss(params, static, step, windows):
    """The mean over k = 1..K of the k-steps-ahead MSE, `windows` (N, K + 1, 3) the
    true points: step k starts from the prediction of step k - 1 (the first from the
    true point), with the true point k as its target; the first step's info. K = 1
    is `one_step_loss`."""
    model = eqx.combine(params, static)
    x, first = windows[:, 0], None
    total = jnp.zeros((), windows.dtype)
    for k in range(1, windows.shape[1]):
        x, info = step(model, x, windows[:, k])
        total = total + jnp.mean((x - windows[:, k]) ** 2)
        first = info if first is None else first
    return total / (windows.shape[1] - 1), first


def rollout_windows(x: np.ndarray, rollout: int) -> np.ndarray:
    """The overlapping windows `(N - rollout, rollout + 1, 3)` of the series `x`."""
    n = len(x) - rollout
    return np.stack([x[k : k + n] for k in range(rollout + 1)], axis=1)


@eqx.filter_jit
def lbfgs_iteration(params, opt_state, static, step, optimizer, windows):
    loss_fn = lambda p: rollout_loss(p, static, step, windows)[0]
    value, grad = optax.value_and_grad_from_state(loss_fn)(params, state=opt_state)
    updates, opt_state = optimizer.update(
        grad, opt_state, params, value=value, grad=grad, value_fn=loss_fn
    )
    evals = optax.tree_utils.tree_get(opt_state, "num_linesearch_steps")
    return optax.apply_updates(params, updates), opt_state, value, evals


diagnostics = eqx.filter_jit(one_step_loss)


def train(
    cfg: LorenzConfig, train_x, out: pathlib.Path, *, checkpoint_every, log_every, log
):
    """L-BFGS on the full-batch one-step loss, resuming from `out`'s checkpoint.
    Returns `(mlp, history)`."""
    train_step, _ = make_steppers(cfg)
    x_prev = jnp.asarray(train_x[:-1])
    x_next = jnp.asarray(train_x[1:])
    windows = jnp.asarray(rollout_windows(np.asarray(train_x), cfg.rollout))
    mlp = AutonomousMLP(cfg.hidden, cfg.depth, seed=cfg.seed)
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    optimizer = lbfgs(cfg.memory_size)
    # Strongly typed leaves, so the state's types do not change after one update
    # (which would compile the iteration twice).
    opt_state = jax.tree.map(
        lambda a: jnp.asarray(a, dtype=jnp.result_type(a)), optimizer.init(params)
    )

    ckpt = td.Checkpointer(out / "checkpoint")
    history = dict(iteration=[], loss=[], evals=[], train=[], seconds=0.0)
    step = 0
    latest = ckpt.latest()  # the config is checked before any array is read
    if latest is not None:
        saved_step, saved = latest[0], latest[1]["config"]
        # (fields added later: a checkpoint without them was written at the default)
        fields = LorenzConfig.__dataclass_fields__
        if any(
            saved.get(k, fields[k].default) != getattr(cfg, k) for k in TRAIN_FIELDS
        ):
            raise ValueError(f"{out} holds a checkpoint of another configuration.")
        if saved_step > cfg.iterations:
            raise ValueError(
                f"{out} holds a checkpoint after {saved_step} iterations, more "
                f"than `--iterations {cfg.iterations}`; ask for at least "
                f"{saved_step} (a run can be extended, not shortened) or choose "
                "another output directory."
            )
    restored = ckpt.restore((params, opt_state))
    if restored is not None:
        step, (params, opt_state), meta = restored
        history = meta["history"]
        log(f"  [{cfg.solver}] resumed from iteration {step}")
    t_start = time.perf_counter() - history["seconds"]

    def record(step, params):
        loss, info = diagnostics(params, static, train_step, x_prev, x_next)
        s = _summary(info)
        history["iteration"].append(step)
        history["loss"].append(float(loss))
        history["train"].append(s)
        log(
            f"  [{cfg.solver}] it {step}/{cfg.iterations} loss {float(loss):.3e} "
            f"accepted {100 * s['acceptance']:.1f}% substeps "
            f"{s['mean_substeps']:.2f} ({time.perf_counter() - t_start:.0f} s)"
        )

    if step == 0 and not history["iteration"]:
        record(0, params)
    while step < cfg.iterations:
        params, opt_state, value, evals = lbfgs_iteration(
            params, opt_state, static, train_step, optimizer, windows
        )
        step += 1
        history["evals"].append(int(evals))
        if not np.isfinite(float(value)):
            raise FloatingPointError(f"[{cfg.solver}] non-finite loss at it {step}.")
        if step % log_every == 0 or step == cfg.iterations:
            record(step, params)
        if step % checkpoint_every == 0 or step == cfg.iterations:
            history["seconds"] = time.perf_counter() - t_start
            meta = dict(config=dataclasses.asdict(cfg), history=history)
            ckpt.save(step, (params, opt_state), meta)
    return eqx.combine(params, static), history


one_step = eqx.filter_jit(lambda step, f, x: step(f, x))
rollout = eqx.filter_jit(tdd.rollout)


@eqx.filter_jit
def lyapunov(step, f, x0, n_steps: int, transient: int, dt: float):
    """The Lyapunov spectrum of the learned map (one inference step)."""
    return tdd.lyapunov_spectrum(
        lambda x: step(f, x[None])[0][0], x0, n_steps, dt, transient=transient
    )


def evaluate(cfg: LorenzConfig, mlp, train_x, test_x, refs, log):
    """Every metric of one trained model (see the module docstring)."""
    _, step = make_steppers(cfg)
    f = mlp
    dt = cfg.dt
    t0 = time.perf_counter()
    row = {}
    # One-step-ahead test error, each transition from the true previous point.
    pred, info = one_step(step, f, jnp.asarray(test_x[:-1]))
    row["test_mse"] = float(jnp.mean((pred - test_x[1:]) ** 2))
    row["inference_one_step"] = _summary(info)
    # Vector-field error on the test points against the rescaled true field.
    true_f = tdd.Lorenz63(time_scale=dt)(jnp.asarray(test_x))
    row["field_rel_error"] = float(
        jnp.sqrt(jnp.mean((f(jnp.asarray(test_x)) - true_f) ** 2))
        / jnp.sqrt(jnp.mean(true_f**2))
    )
    # Free runs from the test initial conditions against the exact flow.
    traj, run_info = rollout(step, f, jnp.asarray(refs["ics"]), cfg.horizon)
    traj = np.asarray(traj)
    vpt = np.asarray(
        tdd.valid_prediction_time(
            traj, refs["truth"], dt=dt, threshold=cfg.threshold, scale=refs["scale"]
        )
    )
    row["vpt"] = dict(
        mean=float(vpt.mean()), median=float(np.median(vpt)), min=float(vpt.min()),
        max=float(vpt.max()), censored=float(np.mean(vpt >= refs["vpt_max"] - 1e-9)),
    )  # fmt: skip
    row["vpt_all"] = vpt.tolist()
    vpt_data = np.asarray(
        tdd.valid_prediction_time(
            traj, refs["data_segments"], dt=dt, threshold=cfg.threshold,
            scale=refs["scale"],
        )
    )  # fmt: skip
    row["vpt_vs_data"] = dict(
        mean=float(vpt_data.mean()), median=float(np.median(vpt_data))
    )
    log(f"  [{cfg.solver}] one-step and free runs: {time.perf_counter() - t0:.0f} s")
    row["inference_free_run"] = _summary(
        jax.tree.map(lambda a: a.reshape(-1), run_info)
    )
    # Lyapunov spectrum of the learned one-step map (the inference solver).
    spectrum = lyapunov(
        step, f, refs["lyap_x0"], cfg.lyap_steps, max(1, cfg.lyap_steps // 10), dt
    )
    row["lyapunov_spectrum"] = [float(v) for v in spectrum]
    row["lyapunov"] = row["lyapunov_spectrum"][0]
    log(f"  [{cfg.solver}] + Lyapunov spectrum: {time.perf_counter() - t0:.0f} s")
    # The long run's attractor statistics.
    long_run, long_info = rollout(
        step, f, jnp.asarray(refs["long_truth"][:1]), cfg.long_steps
    )
    long_run = np.asarray(long_run[0, refs["burn_in"] :])
    stats = tdd.attractor_statistics(long_run, ranges=refs["ranges"])
    row["attractor"] = dict(
        mean=np.asarray(stats.mean).tolist(),
        std=np.asarray(stats.std).tolist(),
        tv=np.asarray(tdd.histogram_distance(stats, refs["stats"])).tolist(),
        finite=stats.finite,
        # the fraction of the long run outside the box of the true attractor
        # (+-10% of its extent): near 1 for a run that blew up
        outside_fraction=float(
            np.mean(
                ~np.all(
                    (long_run >= refs["ranges"][:, 0])
                    & (long_run <= refs["ranges"][:, 1]),
                    axis=-1,
                )
            )
        ),
    )
    row["inference_long_run"] = _summary(
        jax.tree.map(lambda a: a.reshape(-1), long_info)
    )
    log(f"  [{cfg.solver}] + long run: {time.perf_counter() - t0:.0f} s")
    arrays = dict(traj=traj, long_run=long_run, stats=stats)
    return row, arrays


def references(cfg: LorenzConfig, train_x, test_x, cache: pathlib.Path):
    """The exact flow from the test initial conditions, a long exact run, its
    statistics, and the true system's Lyapunov spectrum."""
    n_test = len(test_x)
    if cfg.horizon + 1 > n_test:
        raise ValueError(f"--horizon must be < {n_test}, got {cfg.horizon}.")
    stride = max(1, (n_test - 1 - cfg.horizon) // max(1, cfg.num_ics - 1))
    idx = np.arange(cfg.num_ics) * stride
    if idx[-1] + cfg.horizon >= n_test:
        raise ValueError(
            f"{cfg.num_ics} initial conditions with --horizon {cfg.horizon} do not "
            f"fit in {n_test} test points."
        )
    ics = test_x[idx]
    if cfg.data == "generated":  # the test split is already the exact flow
        truth = np.stack([test_x[i : i + cfg.horizon + 1] for i in idx])
    else:
        truth = generate_lorenz63(cfg.horizon + 1, cfg.dt, ics, cache_dir=cache)
    data_segments = np.stack([test_x[i : i + cfg.horizon + 1] for i in idx])
    long_truth = generate_lorenz63(
        cfg.long_steps + 1, cfg.dt, test_x[0], cache_dir=cache
    )
    burn_in = min(1000, cfg.long_steps // 10)
    attractor = long_truth[burn_in:]
    scale = float(tdd.attractor_scale(attractor))
    lo, hi = attractor.min(0), attractor.max(0)
    ranges = np.stack([lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)], -1)
    stats = tdd.attractor_statistics(attractor, ranges=ranges)
    rk4 = tdd.RK4Step()
    lorenz = tdd.Lorenz63(time_scale=cfg.dt)
    true_spectrum = tdd.lyapunov_spectrum(
        lambda x: rk4(lorenz, x[None])[0][0], jnp.asarray(test_x[0]),
        cfg.lyap_steps, cfg.dt, transient=max(1, cfg.lyap_steps // 10),
    )  # fmt: skip
    data_vpt = np.asarray(
        tdd.valid_prediction_time(
            data_segments, truth, dt=cfg.dt, threshold=cfg.threshold, scale=scale
        )
    )
    refs = dict(
        ics=ics, truth=truth, data_segments=data_segments, scale=scale,
        long_truth=long_truth, burn_in=burn_in,
        ranges=ranges, stats=stats, lyap_x0=jnp.asarray(test_x[0]),
        vpt_max=(cfg.horizon + 1) * cfg.dt * tdd.LORENZ63_LYAPUNOV_EXPONENT,
    )  # fmt: skip
    truth_row = dict(
        attractor_scale=scale,
        lyapunov_spectrum=[float(v) for v in true_spectrum],
        attractor=dict(
            mean=np.asarray(stats.mean).tolist(), std=np.asarray(stats.std).tolist()
        ),
        data_vpt=dict(mean=float(data_vpt.mean()), median=float(np.median(data_vpt))),
        ic_indices=idx.tolist(),
    )
    return refs, truth_row


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
    log=print,
):
    """Trains (resuming from `out`'s checkpoint), evaluates and plots one model.
    `refs`: a callable returning `references(...)` (computed here if `None`). With
    `stop_after`, stops (checkpointed) after that many iterations in total and
    returns `None`."""
    if cfg.solver in AUTHORS:
        raise ValueError(f"{cfg.solver!r} is not trained here: use `run_authors`.")
    cache = out.parent / "cache"
    train_x, test_x, description = load_data(cfg, data_dir, cache)
    result_file = out / "result.json"
    if stop_after is None and result_file.exists():
        saved = json.loads(result_file.read_text())
        if saved.get("config") == dataclasses.asdict(cfg):
            log(f"  [{cfg.solver}] finished earlier: {result_file}")
            return saved
    if stop_after is not None:
        cfg_stop = dataclasses.replace(cfg, iterations=min(stop_after, cfg.iterations))
        train(cfg_stop, train_x, out, checkpoint_every=checkpoint_every,
              log_every=log_every, log=log)  # fmt: skip
        return None
    mlp, history = train(
        cfg, train_x, out, checkpoint_every=checkpoint_every, log_every=log_every,
        log=log,
    )  # fmt: skip
    return _evaluate_and_save(
        cfg, mlp, train_x, test_x, out, refs=refs, figures=figures, log=log,
        train_loss=history["loss"][-1],
        training_final=history["train"][-1],
        training_mean_acceptance=float(
            np.mean([s["acceptance"] for s in history["train"]])
        ),
        train_s=history["seconds"],
        lbfgs_evals=int(np.sum(history["evals"])),
        history=history,
        data=description,
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
    configuration and the file's SHA-256 match."""
    if cfg.solver not in AUTHORS:
        raise ValueError(f"`cfg.solver` must be one of {tuple(AUTHORS)}.")
    model_file = pathlib.Path(model_file)
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    train_x, test_x, description = load_data(cfg, data_dir, out.parent / "cache")
    result_file = out / "result.json"
    if result_file.exists():
        saved = json.loads(result_file.read_text())
        if (
            saved.get("config") == dataclasses.asdict(cfg)
            and saved.get("model_sha256") == digest
        ):
            log(f"  [{cfg.solver}] evaluated earlier: {result_file}")
            return saved
    mlp = load_authors_model(model_file)
    train_step, _ = make_steppers(cfg)
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    loss, info = diagnostics(
        params, static, train_step, jnp.asarray(train_x[:-1]), jnp.asarray(train_x[1:])
    )
    training = _summary(info)
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


def plot_model(cfg, row, arrays, refs, out: pathlib.Path):
    """Attractor (learned vs true), time series of the first initial condition and
    per-coordinate histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    truth = refs["long_truth"][refs["burn_in"] :]
    learned = arrays["long_run"]
    fig = plt.figure(figsize=(10, 5))
    lims = refs["ranges"]
    for i, (data, title) in enumerate(((truth, "true"), (learned, cfg.solver))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        inside = np.all((data >= lims[:, 0]) & (data <= lims[:, 1]), -1)
        d = data[inside][:20000]
        ax.plot(d[:, 0], d[:, 1], d[:, 2], lw=0.2)
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_zlim(*lims[2])
        ax.set_title(f"{title} attractor ({100 * inside.mean():.0f}% in the box)")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_zlabel("x3")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.05, top=0.92, wspace=0.1)
    fig.savefig(out / "attractor.png", dpi=100)
    plt.close(fig)

    lt = np.arange(cfg.horizon + 1) * cfg.dt * tdd.LORENZ63_LYAPUNOV_EXPONENT
    fig, axes = plt.subplots(4, 1, figsize=(9, 8), sharex=True)
    pred, true = arrays["traj"][0], refs["truth"][0]
    for d in range(3):
        axes[d].plot(lt, true[:, d], "k", lw=1, label="exact flow")
        axes[d].plot(lt, pred[:, d], "C1", lw=1, label=cfg.solver)
        axes[d].set_ylabel(f"x{d + 1}")
        axes[d].set_ylim(*refs["ranges"][d])
    err = np.linalg.norm(pred - true, axis=-1) / refs["scale"]
    axes[3].semilogy(lt, err, "C1")
    axes[3].axhline(cfg.threshold, color="k", ls="--", lw=0.8)
    axes[3].set_ylabel("normalised error")
    axes[3].set_xlabel("Lyapunov times")
    vpt = row["vpt_all"][0]
    for ax in axes:
        ax.axvline(vpt, color="C3", lw=0.8)
    axes[0].legend(loc="upper right")
    axes[0].set_title(f"{cfg.solver}: first test initial condition (VPT {vpt:.2f})")
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.07, top=0.95, hspace=0.1)
    fig.savefig(out / "timeseries.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    true_hist = np.asarray(refs["stats"].histograms)
    learned_hist = np.asarray(arrays["stats"].histograms)
    for d in range(3):
        edges = np.asarray(refs["stats"].edges)[d]
        centres = (edges[1:] + edges[:-1]) / 2
        axes[d].step(centres, true_hist[d], "k", where="mid", label="true")
        axes[d].step(centres, learned_hist[d], "C1", where="mid", label=cfg.solver)
        axes[d].set_xlabel(f"x{d + 1} (TV {row['attractor']['tv'][d]:.3f})")
    axes[0].legend()
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.15, top=0.95, wspace=0.2)
    fig.savefig(out / "histograms.png", dpi=100)
    plt.close(fig)


def plot_summary(rows, truth_row, out: pathlib.Path):
    """Training curves (loss, acceptance, substeps) and the VPT of every model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [(i, r) for i, r in enumerate(rows) if r["history"] is not None]
    if trained:  # (the authors' models have no training history here)
        fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
        for i, r in trained:
            h = r["history"]
            it = h["iteration"]
            style = dict(color=f"C{i % 10}", lw=1, label=r["solver"])
            axes[0].semilogy(it, h["loss"], **style)
            axes[1].plot(it, [100 * s["acceptance"] for s in h["train"]], **style)
            axes[2].plot(it, [s["mean_substeps"] for s in h["train"]], **style)
        axes[0].set_ylabel("training MSE")
        axes[1].set_ylabel("accepted A2 (%)")
        axes[2].set_ylabel("mean substeps")
        axes[2].set_xlabel("L-BFGS iteration")
        axes[0].legend(fontsize=7, ncol=3)
        fig.subplots_adjust(left=0.12, right=0.98, bottom=0.06, top=0.98, hspace=0.08)
        fig.savefig(out / "training_curves.png", dpi=100)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.boxplot([r["vpt_all"] for r in rows])
    ax.set_xticks(range(1, len(rows) + 1), [r["solver"] for r in rows], rotation=30)
    ax.set_ylabel("valid prediction time (Lyapunov times)")
    ax.axhline(
        truth_row["data_vpt"]["median"], color="k", ls="--", lw=0.8,
        label="the data themselves vs the exact flow (median)",
    )  # fmt: skip
    ax.legend(loc="upper right", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.25, top=0.97)
    fig.savefig(out / "vpt.png", dpi=100)
    plt.close(fig)


@float64
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        "iterations", "seed", "num_ics", "horizon", "long_steps", "lyap_steps",
        "n_points", "hidden", "rollout",
    ):  # fmt: skip
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    parser.add_argument("--threshold", type=float, default=defaults.threshold)
    parser.add_argument("--data", default="shared", choices=["shared", "generated"])
    parser.add_argument(
        "--data-dir", default=None, help="the study's files (default: shared data)"
    )
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--out", default="results/lorenz63")
    args = parser.parse_args(argv)
    if args.rollout < 1:
        parser.error(f"--rollout must be >= 1, got {args.rollout}")
    names = [] if args.solvers in ("", "none") else args.solvers.split(",")
    for name in names:
        if name not in SOLVERS:
            parser.error(f"unknown solver {name!r}; expected one of {SOLVERS}")
    authors_dir = None
    if args.authors_models is not None:
        authors_dir = pathlib.Path(args.authors_models)
        for file, _ in AUTHORS.values():
            if not (authors_dir / file).is_file():
                parser.error(f"--authors-models: {authors_dir / file} is missing")
    if not names and authors_dir is None:
        parser.error("nothing to do: --solvers none without --authors-models")
    out = pathlib.Path(args.out)
    rows, memo = [], {}

    def make_cfg(name, iterations):
        return LorenzConfig(
            solver=name, iterations=iterations, seed=args.seed,
            num_ics=args.num_ics, horizon=args.horizon, long_steps=args.long_steps,
            lyap_steps=args.lyap_steps, n_points=args.n_points, hidden=args.hidden,
            threshold=args.threshold, data=args.data, rollout=args.rollout,
        )  # fmt: skip

    def refs():  # computed once, when a model is first evaluated (solver-free)
        if not memo:
            cfg = make_cfg(SOLVERS[0], args.iterations)
            train_x, test_x, _ = load_data(cfg, args.data_dir, out / "cache")
            memo["refs"] = references(cfg, train_x, test_x, out / "cache")
        return memo["refs"]

    # The study's own models first: the reference rows (evaluated, not trained).
    for name, (file, _) in AUTHORS.items() if authors_dir is not None else ():
        print(f"\n{name}:")
        rows.append(
            run_authors(
                make_cfg(name, 0), authors_dir / file, out / name,
                data_dir=args.data_dir, refs=refs, figures=not args.no_figures,
            )
        )  # fmt: skip
    suffix = "" if args.rollout == 1 else f"_rollout{args.rollout}"
    for name in names:
        cfg = make_cfg(name, args.iterations)
        print(f"\n{name}:")
        rows.append(
            run(
                cfg, out / f"{name}{suffix}_seed{args.seed}", data_dir=args.data_dir,
                refs=refs, checkpoint_every=args.checkpoint_every,
                log_every=args.log_every,
                figures=not args.no_figures,
            )
        )  # fmt: skip
    truth_row = rows[0]["truth"]
    if not args.no_figures:
        plot_summary(rows, truth_row, out)
    table = [
        dict(
            solver=r["solver"], train_mse=f"{r['train_loss']:.2e}",
            test_mse=f"{r['test_mse']:.2e}",
            train_acc=r["training_final"]["acceptance"],
            train_sub=r["training_final"]["mean_substeps"],
            inf_acc=r["inference_free_run"]["acceptance"],
            inf_sub=r["inference_free_run"]["mean_substeps"],
            vpt_mean=r["vpt"]["mean"], vpt_median=r["vpt"]["median"],
            lyap=r["lyapunov"], tv=float(np.mean(r["attractor"]["tv"])),
        )
        for r in rows
    ]  # fmt: skip
    if names:
        print(f"\nLorenz'63, {args.iterations} L-BFGS iterations, seed {args.seed}:")
    else:
        print("\nLorenz'63:")
    if authors_dir is not None:
        print(f"(authors-*: the study's trained models from {authors_dir}, not trained")
        print(" here; train columns: their loss and steps under the training rule)")
    print_table(
        table,
        [
            ("solver", "solver"), ("train_mse", "train MSE"),
            ("test_mse", "test MSE"), ("train_acc", "train acc"),
            ("train_sub", "train substeps"), ("inf_acc", "inference acc"),
            ("inf_sub", "inference substeps"), ("vpt_mean", "VPT mean"),
            ("vpt_median", "VPT median"), ("lyap", "LLE"), ("tv", "hist TV"),
        ],
    )  # fmt: skip
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
        out / f"lorenz63_seed{args.seed}.json",
        dict(truth=truth_row, rows=rows, paired=comparisons),
    )
    return rows


def paired_vpt(a, b, *, seed: int = 0, draws: int = 20_000) -> dict:
    """Paired comparison of two models' VPTs over the same initial conditions: the
    mean difference `a - b`, its 95% bootstrap interval, the share of initial
    conditions where `a` lasts longer, and the two-sided p-value of a sign-flip
    permutation test of the mean difference (`draws` random sign patterns, seeded)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    boot = rng.choice(d, size=(draws, d.size)).mean(axis=1)
    flips = rng.choice([-1.0, 1.0], size=(draws, d.size)) @ d / d.size
    p = (1 + np.sum(np.abs(flips) >= abs(d.mean()))) / (1 + draws)
    return dict(
        mean_diff=float(d.mean()),
        ci_low=float(np.quantile(boot, 0.025)),
        ci_high=float(np.quantile(boot, 0.975)),
        longer=float(np.mean(d > 0)),
        p=float(p),
    )


def paired_comparisons(rows: list[dict]) -> list[dict]:
    """Fehlberg training against naive training at the same eps, and every trained
    model against the authors' Fehlberg model, where both rows are present."""
    by = {r["solver"]: r for r in rows}
    pairs = [(f"fehlberg-{eps}", f"naive-{eps}") for eps in ("0.1", "0.05", "0.01")] + [
        (r["solver"], "authors-fehlberg") for r in rows if r["solver"] not in AUTHORS
    ]
    return [
        dict(a=a, b=b, **paired_vpt(by[a]["vpt_all"], by[b]["vpt_all"]))
        for a, b in pairs
        if a in by and b in by
    ]


if __name__ == "__main__":
    main()
