"""Training and evaluation helpers shared by the experiment scripts."""

import argparse
import hashlib
import math
import pathlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import tadiffeq as td
from tadiffeq.data import iterate_batches, mnist_offline_split, synthetic_digits

from .reporting import print_table as print_table, write_json as write_json
from .training import optimizer_step


#: This workspace's shared data (`../shared/data` beside the checkout): where the
#: experiments, not the library, look for a dataset that no environment variable or
#: cache folder holds (`tadiffeq.data.cache_dir`).
WORKSPACE_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def workspace_data(name: str, library_default: pathlib.Path | None):
    """`library_default` (the library's lookup), else `WORKSPACE_DATA / name` if that
    folder exists, else `None`."""
    if library_default is not None:
        return library_default
    path = WORKSPACE_DATA / name
    return path if path.is_dir() else None


def load_image_data(name: str, seed: int = 0):
    """`("mnist" | "synthetic" | "auto")` -> (data dict, description). `auto` takes the
    offline MNIST split when its IDX files are found ($TADIFFEQ_MNIST_DIR, the cache
    folder or the workspace's shared data), else the generated digits."""
    directory = workspace_data("mnist", td.data.default_mnist_dir())
    if name == "auto":
        name = "mnist" if directory is not None else "synthetic"
    if name == "mnist":
        return (
            mnist_offline_split(directory),
            "MNIST (offline 10k test set: first 8,000 train, last 2,000 test)",
        )
    if name == "synthetic":
        return (
            synthetic_digits(seed=seed),
            "generated digits (14x14, 10 classes, 4,000 train / 1,000 test)",
        )
    raise ValueError(f"Unknown dataset {name!r}; expected mnist, synthetic or auto.")


@dataclass
class ClassifierConfig:
    norm: str = "tabn"
    field: str = "mlp"  # "mlp" or a conv depth "conv4" ... "conv12", or "unet"
    hidden: int = 64
    conv_width: int = 32  # a conv field's first hidden channels (the paper's 32)
    solver: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    num_intervals: int = 100
    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 2e-2
    clip_norm: float = 10.0
    affine_penalty: float = 0.1  # on the field's affine, for TA-BN only (the paper)
    seed: int = 0
    # "node" (plain), "aug<k>" (Aug-NODE, k zero channels appended, e.g. "aug16"),
    # "hbnode" (heavy ball) or "sonode" (second order): see `wrap_variant`.
    variant: str = "node"
    # Training solves multiply their first step by 2**(-a U): td.NeuralODE's
    # `first_step_jitter` (0: the solver's own first step every time).
    first_step_jitter: float = 0.0
    # "authors": the TA-BN authors' conv fields (last conv with norm) and head (BN per
    # channel); "0.1": tadiffeq 0.1's (bare last conv, head BN per flattened feature),
    # which every run recorded before 2026-12-06 used. No effect on MLP fields.
    architecture: str = "authors"


#: Config values that checkpoints written before the key existed were trained with.
LEGACY_CONFIG = {"architecture": "0.1"}


SOLVERS: dict[str, Callable[[], dfx.AbstractSolver]] = {
    "dopri5": dfx.Dopri5,
    "tsit5": dfx.Tsit5,
    "bosh3": dfx.Bosh3,
    "euler": dfx.Euler,
}


def solver_setup(cfg: ClassifierConfig):
    """`(solver, stepsize_controller, dt0, norm_kwargs)` of `cfg`: Euler takes 20
    constant steps on [0, 1], the others a PID controller at `cfg.rtol`/`cfg.atol`;
    TA-BN gets `cfg.num_intervals` grid intervals."""
    solver = SOLVERS[cfg.solver]()
    if cfg.solver == "euler":
        ctrl, dt0 = dfx.ConstantStepSize(), 1.0 / 20
    else:
        ctrl, dt0 = dfx.PIDController(rtol=cfg.rtol, atol=cfg.atol), None
    norm_kwargs = (
        dict(num_intervals=cfg.num_intervals) if cfg.norm.startswith("tabn") else None
    )
    return solver, ctrl, dt0, norm_kwargs


#: The `first_step_jitter` the experiment scripts give TA-BN runs unless told
#: otherwise (`--first-step-jitter`): training solves then cover TA-BN's grid, and the
#: coverage read was within 0.5 point of batch statistics at an inference NFE within
#: 1.1x of training in 9 of 9 runs, 2 of 9 without (docs/results.md, "TA-BN
#: coverage"). The library's default stays 0: jitter needs a key in every call.
TABN_FIRST_STEP_JITTER = 1.0


def adaptive_steps(cfg: ClassifierConfig) -> bool:
    """Whether `cfg`'s solves choose their steps (`solver_setup`'s controller is
    adaptive; Euler's 20 constant steps are not)."""
    return isinstance(solver_setup(cfg)[1], dfx.AbstractAdaptiveStepSizeController)


def with_first_step_jitter(cfg, jitter: float):
    """`cfg` (a `ClassifierConfig`) with `first_step_jitter=jitter` where it acts: a
    TA-BN normalisation (a grid for training to cover) under an adaptive solver;
    `0.0` otherwise (Euler's constant steps have no first step to move, and the
    other normalisations no grid)."""
    acts = cfg.norm.startswith("tabn") and adaptive_steps(cfg)
    return replace(cfg, first_step_jitter=jitter if acts else 0.0)


def add_first_step_jitter_argument(
    parser: argparse.ArgumentParser, default: float = TABN_FIRST_STEP_JITTER
) -> None:
    """The scripts' `--first-step-jitter` option (see `with_first_step_jitter`)."""
    parser.add_argument(
        "--first-step-jitter", type=nonnegative_float, default=default,
        help="TA-BN runs: training solves' first step times 2**(-a U) "
        "(td.NeuralODE's first_step_jitter), so that training covers TA-BN's grid "
        f"(docs/results.md); 0 for the solver's own first step (default {default})",
    )  # fmt: skip


def build_classifier(
    cfg: ClassifierConfig, image_shape, num_classes, key, *, widths=None
):
    """`(model, state)` of the unmixed classifier described by `cfg` (`widths`: a
    U-Net's channels per level, default `td.UNetField`'s)."""
    solver, ctrl, dt0, norm_kwargs = solver_setup(cfg)
    if cfg.architecture not in ("authors", "0.1"):
        raise ValueError(
            f"`architecture` must be 'authors' or '0.1', got {cfg.architecture!r}."
        )
    legacy = cfg.architecture == "0.1"

    def inner(channels, out_channels, key):
        h, w, c = image_shape
        if cfg.field == "mlp":
            return td.MLPField(
                channels, (cfg.hidden,), out_features=out_channels, norm=cfg.norm,
                norm_kwargs=norm_kwargs, key=key,
            )  # fmt: skip
        if cfg.field == "unet":
            if cfg.variant != "node":
                raise ValueError(f"variant {cfg.variant!r} needs an mlp or conv field.")
            return td.UNetField(
                c, *([] if widths is None else [widths]), norm=cfg.norm,
                norm_kwargs=norm_kwargs, bare_last=legacy, key=key,
            )  # fmt: skip
        if cfg.field.startswith("conv"):
            depth = int(cfg.field[4:])
            return td.ConvField(
                channels, depth, out_channels=out_channels, norm=cfg.norm,
                norm_kwargs=norm_kwargs, width=cfg.conv_width, bare_last=legacy,
                key=key,
            )  # fmt: skip
        raise ValueError(f"Unknown field {cfg.field!r}.")

    def build(key):
        k1, k2 = jax.random.split(key)
        h, w, c = image_shape
        # The channels of the ODE state's last axis: flat features for an MLP field.
        channels = h * w * c if cfg.field == "mlp" else c
        field = wrap_variant(cfg.variant, inner, channels, k1)
        node = td.NeuralODE(
            field, solver=solver, stepsize_controller=ctrl, dt0=dt0,
            first_step_jitter=cfg.first_step_jitter,
        )  # fmt: skip
        return td.UnmixedClassifier(
            node, image_shape, num_classes, key=k2,
            head_statistics="features" if legacy else "channels",
        )  # fmt: skip

    return eqx.nn.make_with_state(build)(key)


def wrap_variant(variant: str, inner, channels: int, key):
    """The vector field of a Neural ODE variant around `inner(channels_in,
    channels_out, key)`, where `channels` is the last axis of the lifted input:
    `"node"` the inner field itself; `"aug<k>"` Aug-NODE (`td.AugmentedField`, an
    inner field on `channels + k`); `"hbnode"` the heavy-ball ODE
    (`td.HeavyBallField`, inner on `channels`); `"sonode"` the second-order ODE
    (`td.SecondOrderField`, inner from `2 * channels` to `channels`)."""
    if variant == "node":
        return inner(channels, None, key)
    if variant == "hbnode":
        return td.HeavyBallField(inner(channels, None, key), channels)
    if variant == "sonode":
        return td.SecondOrderField(inner(2 * channels, channels, key), channels)
    if variant.startswith("aug") and variant[3:].isdigit() and int(variant[3:]) > 0:
        extra = int(variant[3:])
        return td.AugmentedField(inner(channels + extra, None, key), extra)
    raise ValueError(
        f"Unknown variant {variant!r}; expected node, aug<k> (e.g. aug16), hbnode "
        "or sonode."
    )


def make_optimizer(cfg: ClassifierConfig, steps: int):
    """AdamW with the learning rate divided by 10 at half the steps (the paper's
    recipe), after global-norm clipping."""
    schedule = optax.piecewise_constant_schedule(cfg.lr, {max(1, steps // 2): 0.1})
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(schedule, weight_decay=cfg.weight_decay),
    )


def make_train_step(optimizer, penalty_weight: float):
    """The classifier's train step: `(model, opt_state, state, x, y, key) -> (model,
    opt_state, state, loss, acc, nfe)`, cross-entropy plus TA-BN's affine penalty."""

    def loss_fn(model, state, x, y, key):
        logits, new_state, stats = model(x, state, key=key)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss = ce
        if penalty_weight:
            loss = loss + td.affine_penalty(model.ode.field, penalty_weight)
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss, (new_state, stats.num_fn_evals, acc)

    step = optimizer_step(loss_fn, optimizer)

    def train_step(model, opt_state, state, x, y, key):
        model, opt_state, loss, (new_state, nfe, acc) = step(
            model, opt_state, state, x, y, key
        )
        return model, opt_state, new_state, loss, acc, nfe

    return train_step


def train_classifier(
    cfg: ClassifierConfig,
    data,
    *,
    log=print,
    label="",
    checkpoint_dir: pathlib.Path | None = None,
    stop_after_epochs: int | None = None,
    build: Callable | None = None,
    augment: Callable | None = None,
    num_classes: int | None = None,
):
    """Trains the unmixed classifier of `cfg` on `data["train"]`. Returns
    `(model, state, history)`.

    Optional hooks: `build(cfg, image_shape, num_classes, key) -> (model, state)`
    replaces `build_classifier`; `augment(key, xb) -> xb` (pure JAX, e.g.
    `tadiffeq.data.ImageAugmentation`) is applied to every training batch with a key
    folded from the seed and the global step, so runs stay deterministic and resume
    exactly; `num_classes` defaults to the largest label + 1.

    Data parallel over all local devices (the batch is sharded, TA-BN's batch
    statistics are reduced across devices). With `checkpoint_dir`, the model,
    optimiser state, normalisation state and history are saved after every epoch
    and a rerun resumes after the last finished epoch. `stop_after_epochs` ends this
    call early (checkpointed) and returns `None`.
    """
    x_train, y_train = data["train"]
    if num_classes is None:
        num_classes = int(max(y_train.max(), data["test"][1].max())) + 1
    key = jax.random.PRNGKey(cfg.seed)
    model_key, drop_key = jax.random.split(key)
    aug_key = jax.random.fold_in(key, 1)
    augment_fn = None if augment is None else eqx.filter_jit(augment)
    model, state = (build or build_classifier)(
        cfg, x_train.shape[1:], num_classes, model_key
    )
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(
            f"`epochs` and `batch_size` must be positive, got {cfg.epochs} and "
            f"{cfg.batch_size}."
        )
    steps_per_epoch = len(x_train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"`batch_size={cfg.batch_size}` is larger than the {len(x_train)} "
            "training samples: no full batch to train on."
        )
    optimizer = make_optimizer(cfg, cfg.epochs * steps_per_epoch)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    penalty = cfg.affine_penalty if cfg.norm.startswith("tabn") else 0.0
    step_fn = make_train_step(optimizer, penalty)
    history = []
    ckpt = None if checkpoint_dir is None else td.Checkpointer(checkpoint_dir)
    fingerprint = data_fingerprint(x_train, y_train)
    if ckpt is not None and (latest := ckpt.latest()) is not None:
        _, meta = latest
        # Keys added to the config since the checkpoint was written count as their
        # defaults (or what those runs used, LEGACY_CONFIG), and a missing data
        # fingerprint as a match, so older checkpoints still resume. Checked before
        # the arrays are read.
        saved = {**asdict(ClassifierConfig()), **LEGACY_CONFIG, **meta["config"]}
        same_config = saved == asdict(cfg)
        if not same_config or meta.get("data", fingerprint) != fingerprint:
            raise ValueError(
                f"{checkpoint_dir} holds a run of another configuration or other "
                "training data; delete it or choose another output directory."
            )
        _, (model, opt_state, state), meta = ckpt.restore((model, opt_state, state))
        history = meta["history"]
        log(f"  {label} resumed after epoch {len(history)}")
    mesh = td.data_parallel_mesh()
    model, opt_state, state = td.replicate((model, opt_state, state), mesh)
    first_epoch = len(history)
    step = first_epoch * steps_per_epoch
    t_start = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    for epoch in range(first_epoch, cfg.epochs):
        if stop_after_epochs is not None and epoch - first_epoch >= stop_after_epochs:
            return None
        losses, accs, nfes = [], [], []
        batches = iterate_batches(
            x_train, y_train, cfg.batch_size, seed=cfg.seed + epoch
        )
        for xb, yb in batches:
            k = jax.random.fold_in(drop_key, step)
            if augment_fn is not None:
                xb = augment_fn(jax.random.fold_in(aug_key, step), xb)
            xb, yb = td.shard_batch((xb, yb), mesh)
            model, opt_state, state, loss, acc, nfe = step_fn(
                model, opt_state, state, xb, yb, k
            )
            losses.append(float(loss))
            accs.append(float(acc))
            nfes.append(int(nfe))
            step += 1
            if step % 10 == 0 or step == steps_per_epoch * cfg.epochs:
                total = steps_per_epoch * cfg.epochs
                log(
                    f"\r  {label} epoch {epoch + 1}/{cfg.epochs} step {step}/{total} "
                    f"loss {np.mean(losses[-10:]):.3f} acc {np.mean(accs[-10:]):.3f} "
                    f"nfe {np.mean(nfes[-10:]):.1f}",
                    end="",
                )
        history.append(
            dict(
                epoch=epoch + 1,
                loss=float(np.mean(losses)),
                train_acc=float(np.mean(accs)),
                train_nfe=float(np.mean(nfes)),
                seconds=time.perf_counter() - t_start,
            )
        )
        if ckpt is not None:
            meta = dict(config=asdict(cfg), history=history, data=fingerprint)
            ckpt.save(epoch + 1, (model, opt_state, state), meta)
    log("")
    return model, state, history


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """An argparse type: a finite float >= 0."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite float > 0."""
    value = _finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def float_list(text: str) -> str:
    """An argparse type: comma-separated finite floats >= 0, kept as the text."""
    for item in text.split(","):
        nonnegative_float(item)
    return text


def positive_int_list(text: str) -> str:
    """An argparse type: comma-separated integers >= 1, kept as the text."""
    for item in text.split(","):
        positive_int(item)
    return text


def nonnegative_int_list(text: str) -> list[int]:
    """An argparse type: comma-separated distinct integers >= 0 (e.g. seeds), as a
    list."""
    values = [nonnegative_int(item) for item in text.split(",")]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"repeated values in {text!r}")
    return values


def name_list(choices) -> Callable[[str], str]:
    """An argparse type: a comma-separated list of names from `choices`, kept as the
    text the scripts split."""
    known = sorted(choices)

    def parse(text: str) -> str:
        unknown = [n for n in text.split(",") if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {known}")
        return text

    return parse


def data_fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """A short hash of a training set (shapes, dtypes, all labels, up to 512 evenly
    spaced images), so that a checkpoint is not resumed on other data."""
    x, y = np.asarray(x), np.asarray(y)
    h = hashlib.sha256(repr((x.shape, x.dtype.str, y.shape, y.dtype.str)).encode())
    h.update(np.ascontiguousarray(y).tobytes())
    h.update(np.ascontiguousarray(x[:: max(1, len(x) // 512)]).tobytes())
    return h.hexdigest()[:16]


@eqx.filter_jit
def _predict(model, state, xb, key, batch_size: int):
    """Predicted classes and NFE per sample of `xb`, solved as independent test
    batches of `batch_size` (vmapped; one batch if `xb` is smaller). One function for
    every call of `evaluate`, so evaluations of the same architecture, batch size and
    shapes (every epoch, or clean and noisy inputs) share one compilation."""

    def one(xg):
        logits, _, stats = model(xg, state, key=key)
        nfe = jnp.broadcast_to(stats.num_fn_evals, (xg.shape[0],))
        return jnp.argmax(logits, -1), nfe

    g = xb.shape[0] // batch_size if xb.shape[0] >= batch_size else 1
    pred, nfe = jax.vmap(one)(xb.reshape(g, -1, *xb.shape[1:]))
    return pred.reshape(-1), nfe.reshape(-1)


def evaluate(
    model,
    state,
    x,
    y,
    batch_size: int,
    *,
    chunk: int = 256,
    noise=None,
    return_predictions: bool = False,
    batch_statistics: bool = False,
):
    """Inference-mode accuracy and mean NFE over all of `x` with test batches of
    `batch_size` (the last batch may be smaller).

    Up to `chunk` samples are processed per call, as `chunk // batch_size`
    independent batches (vmapped), so small test batches stay cheap. `noise`: an
    optional `x -> x` applied to the inputs first. With `return_predictions`, the
    predicted classes come third. With `batch_statistics`, the vector field's
    normalisations use each test batch's own statistics (the Neural ODE in training
    mode, a joint solve of the batch; the head's normalisation and dropout stay in
    inference mode and `state` is not updated): the accuracy the field's weights
    reach without its running statistics.
    """
    model = eqx.nn.inference_mode(model)
    if batch_statistics:
        model = eqx.tree_at(
            lambda m: m.ode, model, eqx.nn.inference_mode(model.ode, value=False)
        )
    groups = max(1, chunk // batch_size)

    # A training-mode solve with `first_step_jitter` draws its first step: a fixed key.
    key = jax.random.PRNGKey(0) if batch_statistics else None
    if noise is not None:
        x = noise(x)
    preds, nfes = [], []
    full = len(x) - len(x) % batch_size
    step = groups * batch_size
    for start in range(0, full, step):
        stop = min(start + step, full)
        pred, nfe = _predict(model, state, jnp.asarray(x[start:stop]), key, batch_size)
        preds.append(np.asarray(pred))
        nfes.append(np.asarray(nfe))
    if full < len(x):  # the remainder, as one smaller batch
        pred, nfe = _predict(model, state, jnp.asarray(x[full:]), key, batch_size)
        preds.append(np.asarray(pred))
        nfes.append(np.asarray(nfe))
    pred = np.concatenate(preds)
    result = float(np.mean(pred == y)), float(np.mean(np.concatenate(nfes)))
    return (*result, pred) if return_predictions else result


def one_in_ten_noisy(
    x: np.ndarray, std: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(x_noisy, noisy)`: `x` with Gaussian noise of `std` (normalised pixel units)
    added to every tenth sample (indices 0, 10, 20, ...), and the boolean mask of
    those samples: the paper's noisy-test setting (Zheng et al. 2024, Fig. 3 middle),
    where the noisy samples share test batches with clean ones."""
    noisy = np.arange(len(x)) % 10 == 0
    rng = np.random.default_rng(seed)
    mask = noisy.reshape(-1, *([1] * (x.ndim - 1)))
    x_noisy = x + std * mask * rng.standard_normal(x.shape).astype(x.dtype)
    return x_noisy, noisy


# Every regularizer the experiments compare, by the name their flags take.
_REGULARIZERS: dict[str, td.AbstractRegularizer | None] = {
    "none": None,
    "local": td.LocalRegularizer(),  # unbiased, error estimate: the paper's choice
    "local_biased": td.LocalRegularizer(sampling="biased"),
    "local_exact": td.LocalRegularizer(stop_first_stage=False),
    "local_stiffness": td.LocalRegularizer(kind="stiffness"),
    "global": td.GlobalRegularizer(),  # ERNODE
    "global_stiffness": td.GlobalRegularizer(kind="stiffness"),  # SRNODE
    "rnode": td.RNODE(),
    "taynode": td.TayNODE(order=2),
    "steer": td.STEER(0.5),
}


def regularizers(*names: str) -> dict[str, td.AbstractRegularizer | None]:
    """The named regularizers (all of them without names), as a script offers them:
    one table of regularizers for every experiment."""
    unknown = sorted(set(names) - set(_REGULARIZERS))
    if unknown:
        raise ValueError(
            f"Unknown regularizers {unknown}; known: {sorted(_REGULARIZERS)}."
        )
    return {k: _REGULARIZERS[k] for k in (names or _REGULARIZERS)}


def regularization_weights(regularizer, cfg) -> Callable:
    """The regularization weight per step: 0 without a regularizer, else `cfg.weight`
    decaying to `cfg.weight_end` over `cfg.steps` (`td.regularization_schedule`)."""
    if regularizer is None:
        return td.regularization_schedule(0.0)
    return td.regularization_schedule(cfg.weight, cfg.weight_end, cfg.steps)


def restore_checked(
    ckpt: td.Checkpointer, like, config: dict, where, data: str | None = None
):
    """`ckpt.restore(like)` (`(step, tree, meta)` or `None`), raising if the checkpoint
    was written by a run of another configuration (`meta["config"] != config`) or on
    other training data (`meta["data"] != data`, a `data_fingerprint`; checkpoints
    without one match). Checked before the arrays are read, so a mismatch gets this
    message and not a deserialisation error. Save `data` in the metadata as `"data"`.
    """
    latest = ckpt.latest()
    if latest is None:
        return None
    meta = latest[1]
    if meta.get("config") != config:
        raise ValueError(f"{where} holds a checkpoint of another configuration.")
    if data is not None and meta.get("data", data) != data:
        raise ValueError(f"{where} holds a checkpoint of a run on other data.")
    return ckpt.restore(like)


def add_baseline_ratios(rows: list[dict], key: str = "regularizer") -> None:
    """Adds `nfe_ratio` (test NFE over the baseline's) and `speedup` (the baseline's
    prediction time over this row's) to each row, in place, when a row with
    `row[key] == "none"` is present."""
    base = next((r for r in rows if r[key] == "none"), None)
    if base is not None:
        for r in rows:
            r["nfe_ratio"] = r["test_nfe"] / base["test_nfe"]
            r["speedup"] = base["predict_s"] / r["predict_s"]
