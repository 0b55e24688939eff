"""L-BFGS on the one-step (or K-steps-ahead rollout) loss, checkpointed."""

import dataclasses
import functools
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float

import tadiffeq as td
import tadiffeq.dynamics as tdd

from .config import LorenzConfig, REPAIR_FIELDS, TRAIN_FIELDS
from .model import make_field, make_steppers


def step_summary(info: tdd.OneStepInfo) -> dict:
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


def init_lbfgs(memory_size: int, params):
    """`(optimizer, opt_state)`: `lbfgs(memory_size)` and its fresh state for
    `params`, with strongly typed leaves, so the state's types do not change after one
    update (which would compile the iteration twice)."""
    optimizer = lbfgs(memory_size)
    opt_state = jax.tree.map(
        lambda a: jnp.asarray(a, dtype=jnp.result_type(a)), optimizer.init(params)
    )
    return optimizer, opt_state


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


def training_windows(train_x: np.ndarray, cfg: LorenzConfig) -> np.ndarray:
    """The training set `(N', rollout + 1, 3)`: the windows of `train_x`, and with
    `cfg.input_noise > 0` a second copy whose first points carry Gaussian noise of
    that standard deviation (seeded by `cfg.seed`; the targets stay the data)."""
    windows = rollout_windows(np.asarray(train_x), cfg.rollout)
    if cfg.input_noise == 0:
        return windows
    rng = np.random.default_rng([cfg.seed % 2**32, 20])
    noisy = windows.copy()
    noisy[:, 0] += cfg.input_noise * rng.standard_normal(noisy[:, 0].shape)
    return np.concatenate([windows, noisy])


class StabilityPrior(eqx.Module):
    """A penalty on attracting equilibria of the learned field inside the data's box.

    The training trajectories never settle on a point, so a field with an equilibrium
    that attracts nearby states, inside the region the data cover, contradicts them;
    a one-step loss barely sees it (free runs that pass close are captured:
    docs/lorenz63.md, section 6). Each evaluation runs Newton
    (`tadiffeq.dynamics.equilibria`) from `starts`, keeps the points it converged to
    inside `box`, and returns `weight` times the mean over starts of
    `relu(-growth)^2`, `growth` the largest real part of the Jacobian's eigenvalues
    there, per time unit (the field is in rescaled time, so divided by `dt`). A
    start whose Newton fails, or lands outside `box`, adds 0.

    The points are held fixed under differentiation (`stop_gradient`): for a
    piecewise-linear (ReLU) field the Jacobian is constant near a point, so moving
    the point changes nothing almost everywhere.
    """

    starts: Float[Array, "n 3"]  # Newton's starting points (training points)
    box: Float[Array, "2 3"]  # lower and upper corner
    dt: float = eqx.field(static=True)
    weight: float = eqx.field(static=True)

    def growth(self, model) -> tuple[Float[Array, " n"], Bool[Array, " n"]]:
        """`(growth, valid)`, both `(n,)`: per start, the growth rate (per time unit)
        at the equilibrium Newton reached, and whether it counts."""
        # (from the frozen model, the points carry no gradient)
        eq = tdd.equilibria(jax.lax.stop_gradient(model), self.starts, max_steps=50)
        points = eq.points
        inside = jnp.all((points >= self.box[0]) & (points <= self.box[1]), axis=1)
        valid = eq.converged & inside
        # (an invalid row is evaluated at its start, so nothing non-finite reaches
        # the eigenvalues' gradient)
        points = jnp.where(valid[:, None], points, self.starts)
        jac = jax.vmap(jax.jacfwd(model))(points)
        return jnp.max(jnp.linalg.eigvals(jac).real, axis=1) / self.dt, valid

    def penalty(
        self, growth: Float[Array, " n"], valid: Bool[Array, " n"]
    ) -> Float[Array, ""]:
        """The prior's value from `growth(model)`'s output."""
        return self.weight * jnp.mean(jnp.where(valid, jax.nn.relu(-growth) ** 2, 0.0))

    def __call__(self, model) -> Float[Array, ""]:
        return self.penalty(*self.growth(model))


def stability_prior(train_x: np.ndarray, cfg: LorenzConfig) -> StabilityPrior | None:
    """The `StabilityPrior` of `cfg` (`None` when `cfg.stability_weight` is 0): its
    starts `cfg.stability_starts` training points evenly spaced along the series,
    its box the training points' bounding box. Used by `repair`, not inside L-BFGS:
    the prior jumps where an equilibrium appears, leaves the box or crosses a ReLU
    kink, and L-BFGS's strong-Wolfe line search fails on such jumps (measured:
    docs/lorenz63.md)."""
    if cfg.stability_weight == 0:
        return None
    x = np.asarray(train_x)
    idx = np.linspace(0, len(x) - 1, cfg.stability_starts).round().astype(int)
    return StabilityPrior(
        starts=jnp.asarray(x[idx]),
        box=jnp.asarray(np.stack([x.min(0), x.max(0)])),
        dt=cfg.dt,
        weight=cfg.stability_weight,
    )


def training_loss(params, static, step, windows, prior: StabilityPrior | None):
    """The training objective: `rollout_loss`, plus `prior` if given."""
    loss = rollout_loss(params, static, step, windows)[0]
    if prior is not None:
        loss = loss + prior(eqx.combine(params, static))
    return loss


@eqx.filter_jit
def lbfgs_iteration(params, opt_state, static, step, optimizer, windows, prior=None):
    """One L-BFGS iteration on `training_loss`: `(params, opt_state, loss, line-search
    evaluations)`."""
    loss_fn = lambda p: training_loss(p, static, step, windows, prior)
    value, grad = optax.value_and_grad_from_state(loss_fn)(params, state=opt_state)
    updates, opt_state = optimizer.update(
        grad, opt_state, params, value=value, grad=grad, value_fn=loss_fn
    )
    evals = optax.tree_utils.tree_get(opt_state, "num_linesearch_steps")
    return optax.apply_updates(params, updates), opt_state, value, evals


diagnostics = eqx.filter_jit(one_step_loss)
attracting = eqx.filter_jit(StabilityPrior.growth)


def kept_mse(record: dict) -> float:
    """The training MSE of the model `repair` kept, from its `record`."""
    return record["mse"][record["iteration"].index(record["kept"])]


prior_value_and_grad = eqx.filter_jit(
    lambda params, static, prior: jax.value_and_grad(
        lambda p: prior(eqx.combine(p, static))
    )(params)
)


REPAIR_CHECK_EVERY = 10  # repair: L-BFGS iterations between two checks
PROJECTION_STEPS = 50  # repair: Gauss-Newton steps at most


def repair(cfg: LorenzConfig, mlp, train_x, out: pathlib.Path, *, log):
    """The stability repair of a trained model: the prior
    (`stability_prior(train_x, cfg)`) brought to 0, then the fit recovered.

    1. Projection: Gauss-Newton steps on r = sqrt(prior), p <- p - 2 P grad P /
       |grad P|^2 (the minimal-norm step that zeroes r's linearisation), until the
       prior is 0 (at most `PROJECTION_STEPS`). It removes the attracting points but,
       measured, raises the training MSE many times: the minimal change in
       parameters is not the minimal change in fit.
    2. Recovery: L-BFGS (fresh memory) on the training loss plus the prior, checked
       every `REPAIR_CHECK_EVERY` iterations; it stops at the first check where the
       prior is 0 and the training MSE is at most `cfg.stability_tolerance` times the
       trained model's, at most `cfg.stability_iterations` iterations. If no check
       qualifies, the checked model with prior 0 and the lowest MSE is kept (the
       projection's, if none later). The prior jumps (an equilibrium appears, leaves
       the box, crosses a ReLU kink), which L-BFGS's line search handles badly over
       long runs (docs/lorenz63.md), hence the early stop.

    Uses the training data only. Written to (and read back from) `out / "repaired"`.
    Returns `(mlp, record)`, `record` with the projection's steps, and per check the
    iteration, prior, training MSE and starts that reach an attracting point."""
    prior = stability_prior(train_x, cfg)
    if prior is None:
        raise ValueError("`repair` needs a positive `stability_weight`.")
    ckpt = td.Checkpointer(out / "repaired")
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    latest = ckpt.latest()
    if latest is not None:
        saved = latest[1]["config"]
        if any(saved.get(k) != getattr(cfg, k) for k in REPAIR_FIELDS):
            raise ValueError(f"{out / 'repaired'} holds a repair of another run.")
        _, params, meta = ckpt.restore(params)
        log(f"  [{cfg.solver}] repaired earlier: {out / 'repaired'}")
        return eqx.combine(params, static), meta["record"]
    train_step, _ = make_steppers(cfg)
    windows = jnp.asarray(training_windows(train_x, cfg))
    x_prev, x_next = jnp.asarray(train_x[:-1]), jnp.asarray(train_x[1:])
    record = dict(iteration=[], prior=[], mse=[], attracting_starts=[])
    t_start = time.perf_counter()

    def check(it, params):
        model = eqx.combine(params, static)
        growth, valid = attracting(prior, model)
        record["iteration"].append(it)
        record["prior"].append(float(prior.penalty(growth, valid)))
        # (the one-step MSE from the true points, as `train` records)
        mse, _ = diagnostics(params, static, train_step, x_prev, x_next)
        record["mse"].append(float(mse))
        record["attracting_starts"].append(
            int(np.sum(np.asarray(valid & (growth < 0))))
        )

    check(None, params)  # the trained model
    steps = 0
    while steps < PROJECTION_STEPS:
        value, grad = prior_value_and_grad(params, static, prior)
        if float(value) == 0:
            break
        norm2 = sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grad))
        scale = 2 * float(value) / norm2
        params = jax.tree.map(lambda p, g: p - scale * g, params, grad)  # noqa: B023
        steps += 1
    record["projection_steps"] = steps
    check(0, params)
    limit = cfg.stability_tolerance * record["mse"][0]
    best, kept, best_mse = (
        (params, 0, record["mse"][-1])
        if record["prior"][-1] == 0
        else (None, None, None)
    )
    optimizer, opt_state = init_lbfgs(cfg.memory_size, params)
    evals = []
    for it in range(1, cfg.stability_iterations + 1):
        params, opt_state, _, e = lbfgs_iteration(
            params, opt_state, static, train_step, optimizer, windows, prior
        )
        evals.append(int(e))
        if it % REPAIR_CHECK_EVERY and it != cfg.stability_iterations:
            continue
        check(it, params)
        if record["prior"][-1] == 0 and (best is None or record["mse"][-1] < best_mse):
            best, kept, best_mse = params, it, record["mse"][-1]
        if record["prior"][-1] == 0 and record["mse"][-1] <= limit:
            break
    if best is None:
        raise FloatingPointError(
            f"[{cfg.solver}] the repair found no model without an attracting point."
        )
    record.update(lbfgs_evals=evals, kept=kept, seconds=time.perf_counter() - t_start)
    log(
        f"  [{cfg.solver}] repair: projection {steps} steps (training MSE "
        f"{record['mse'][0]:.3e} -> {record['mse'][1]:.3e}), then L-BFGS with the "
        f"prior, kept iteration {record['kept']} (MSE {best_mse:.3e}, prior 0; "
        f"{np.mean(evals):.1f} evaluations per iteration; "
        f"{record['seconds']:.0f} s)"
    )
    ckpt.save(len(evals), best, dict(config=dataclasses.asdict(cfg), record=record))
    return eqx.combine(best, static), record


def stop_iteration(history: dict, window: int, min_improvement: float) -> int | None:
    """The stopping rule of `LorenzConfig` applied to `history`: the first recorded
    iteration that is a positive multiple of `window` and whose training MSE is above
    `(1 - min_improvement)` times the one `window` iterations before; `None` if there
    is none (or `window = 0`). Raises if a loss the rule needs was not recorded."""
    if window == 0:
        return None
    loss = dict(zip(history["iteration"], history["loss"]))
    for it in sorted(loss):
        if it < window or it % window:
            continue
        if it - window not in loss:
            raise ValueError(
                f"The stopping rule needs the training MSE at iteration {it - window}, "
                "which this run did not record (--log-every must divide "
                "--stall-window from the run's start)."
            )
        if loss[it] > (1.0 - min_improvement) * loss[it - window]:
            return it
    return None


def train(
    cfg: LorenzConfig, train_x, out: pathlib.Path, *, checkpoint_every, log_every, log
):
    """L-BFGS on the full-batch one-step (or rollout) loss, resuming from `out`'s
    checkpoint, for `cfg.iterations` or until `stop_iteration` (checked where the
    loss is recorded, so `log_every` must divide `cfg.stall_window`; a checkpoint
    past the iteration where the rule stops the run is refused). Returns `(mlp,
    history)`; the last entry of `history["iteration"]` is where training ended."""
    if cfg.stall_window < 0 or not 0 < cfg.min_improvement < 1:
        raise ValueError(
            "`stall_window` must be >= 0 and `min_improvement` in (0, 1), got "
            f"{cfg.stall_window} and {cfg.min_improvement}."
        )
    if cfg.stall_window and cfg.stall_window % log_every:
        raise ValueError(
            f"`log_every` ({log_every}) must divide `stall_window` "
            f"({cfg.stall_window}): the stopping rule reads the recorded losses."
        )
    rule = functools.partial(
        stop_iteration, window=cfg.stall_window, min_improvement=cfg.min_improvement
    )
    train_step, _ = make_steppers(cfg)
    x_prev = jnp.asarray(train_x[:-1])
    x_next = jnp.asarray(train_x[1:])
    windows = jnp.asarray(training_windows(train_x, cfg))
    mlp = make_field(cfg)
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    optimizer, opt_state = init_lbfgs(cfg.memory_size, params)

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
        stop = rule(latest[1]["history"])
        if stop is not None and stop < saved_step:
            raise ValueError(
                f"{out} holds a checkpoint after {saved_step} iterations, but the "
                f"stopping rule (--stall-window {cfg.stall_window}, --min-improvement "
                f"{cfg.min_improvement}) stops this run at iteration {stop}: a run "
                "cannot be stopped where it has already gone past; choose another "
                "rule or output directory."
            )
    restored = ckpt.restore((params, opt_state))
    if restored is not None:
        step, (params, opt_state), meta = restored
        history = meta["history"]
        log(f"  [{cfg.solver}] resumed from iteration {step}")
    t_start = time.perf_counter() - history["seconds"]

    def record(step, params):
        loss, info = diagnostics(params, static, train_step, x_prev, x_next)
        s = step_summary(info)
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
    stop = rule(history)  # the rule changes only where a loss is recorded
    while step < cfg.iterations and stop is None:
        params, opt_state, value, evals = lbfgs_iteration(
            params, opt_state, static, train_step, optimizer, windows
        )
        step += 1
        history["evals"].append(int(evals))
        if not np.isfinite(float(value)):
            raise FloatingPointError(f"[{cfg.solver}] non-finite loss at it {step}.")
        if step % log_every == 0 or step == cfg.iterations:
            record(step, params)
            stop = rule(history)
        if stop is not None and step < cfg.iterations:
            log(f"  [{cfg.solver}] stopped at iteration {step}: the stopping rule")
        if step % checkpoint_every == 0 or step == cfg.iterations or stop is not None:
            history["seconds"] = time.perf_counter() - t_start
            meta = dict(config=dataclasses.asdict(cfg), history=history)
            ckpt.save(step, (params, opt_state), meta)
    return eqx.combine(params, static), history
