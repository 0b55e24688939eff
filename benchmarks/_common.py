"""Shared helpers of the benchmark scripts: the JAX models, the jitted steps, timing,
tables and JSON output. Not part of the library."""

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import tadiffeq as td
from experiments import reporting
from experiments.training import optimizer_step


ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "benchmarks"

#: (height, width, channels) of each model's input.
IMAGE_SHAPES = {"conv6": (32, 32, 3), "unet": (32, 32, 3), "mlp": (28, 28, 1)}
NUM_CLASSES = 10
LR, WEIGHT_DECAY = 1e-3, 2e-2

ADJOINTS: dict[str, Callable[[], dfx.AbstractAdjoint]] = {
    "checkpoint": dfx.RecursiveCheckpointAdjoint,
    "backsolve": dfx.BacksolveAdjoint,
}


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=20, help="timed repeats (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    p.add_argument(
        "--model", nargs="+", default=["conv6", "unet", "mlp"], choices=IMAGE_SHAPES
    )
    p.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--atol", type=float, default=1e-3)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=64, help="MLP hidden width")
    p.add_argument("--out", type=str, default=None, help="JSON path (optional)")
    return p


def solve_options(args: argparse.Namespace) -> dict:
    """`build_jax`'s keywords set by `base_parser`'s options (seed, tolerances,
    `max_steps`, the MLP's width)."""
    return dict(
        seed=args.seed,
        rtol=args.rtol,
        atol=args.atol,
        max_steps=args.max_steps,
        hidden=args.hidden,
    )


#: Benchmark names beyond `td.make_norm`'s: name -> (make_norm name, its keywords).
NORM_ALIASES = {"tabn-paper": ("tabn", {"coverage_aware": False})}


def norm_args(name: str) -> tuple[str, dict]:
    """`(make_norm name, keywords)` of a benchmark's normalisation name
    (`"tabn-paper"`: TA-BN with the paper's read, no coverage bookkeeping)."""
    return NORM_ALIASES.get(name, (name, {}))


def build_jax(
    model: str,
    *,
    seed: int = 0,
    norm: str = "tabn",
    adjoint: str = "checkpoint",
    rtol: float = 1e-3,
    atol: float = 1e-3,
    max_steps: int = 1000,
    hidden: int = 64,
    steps: int | None = None,
    per_sample_inference: bool = False,
):
    """`(classifier, state)`: tadiffeq's unmixed classifier for `model`, dopri5 with
    a PID controller (or `steps` constant steps), dropout 0 (for timing)."""
    h, w, c = IMAGE_SHAPES[model]
    norm, extra = norm_args(norm)
    nk = dict(num_intervals=100, **extra)

    def make(key):
        k1, k2 = jax.random.split(key)
        # tadiffeq 0.1's fields and head, which torch_reference.py mirrors and the
        # figures in docs/benchmarks.md were measured with.
        if model == "conv6":
            field = td.ConvField(
                c, 6, norm=norm, norm_kwargs=nk, bare_last=True, key=k1
            )
        elif model == "unet":
            field = td.UNetField(c, norm=norm, norm_kwargs=nk, bare_last=True, key=k1)
        else:
            field = td.MLPField(h * w * c, (hidden,), norm=norm, norm_kwargs=nk, key=k1)
        if steps is None:
            ctrl, dt0 = dfx.PIDController(rtol=rtol, atol=atol), None
        else:
            ctrl, dt0 = dfx.ConstantStepSize(), 1.0 / steps
        node = td.NeuralODE(
            field,
            solver=dfx.Dopri5(),
            stepsize_controller=ctrl,
            dt0=dt0,
            adjoint=ADJOINTS[adjoint](),
            max_steps=max_steps,
            per_sample_inference=per_sample_inference,
        )
        return td.UnmixedClassifier(
            node, (h, w, c), NUM_CLASSES, dropout=0.0, head_statistics="features",
            key=k2,
        )  # fmt: skip

    return eqx.nn.make_with_state(make)(jax.random.PRNGKey(seed))


def make_data(model: str, batch: int, seed: int = 0):
    """Random channels-last images N(0, 1) and labels (numpy)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *IMAGE_SHAPES[model])).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
    return x, y


def optimizer():
    return optax.adamw(LR, weight_decay=WEIGHT_DECAY)


def make_train_step(opt):
    """A jitted training step (the experiments' `optimizer_step`): forward + backward +
    AdamW update. Returns `(model, opt_state, state, loss, nfe)`."""

    def loss_fn(model, state, x, y):
        logits, new_state, stats = model(x, state)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (new_state, stats.num_fn_evals)

    step = optimizer_step(loss_fn, opt)

    def train_step(model, opt_state, state, x, y):
        model, opt_state, loss, (new_state, nfe) = step(model, opt_state, state, x, y)
        return model, opt_state, new_state, loss, nfe

    return train_step


@eqx.filter_jit
def predict(model, state, x):
    """Inference-mode logits and the forward NFE (pass an inference-mode model)."""
    logits, _, stats = model(x, state)
    return logits, stats.num_fn_evals


@eqx.filter_jit
def forward_train(model, state, x):
    """Training-mode logits, new state and NFE (no gradient)."""
    logits, new_state, stats = model(x, state)
    return logits, new_state, stats.num_fn_evals


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """`(seconds, result)` of `fn()`, which must block until its result is ready."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median_time(fn: Callable, args: tuple, repeats: int) -> float:
    """Median seconds of `fn(*args)` over `repeats` calls, after one untimed call
    (compilation)."""
    block(fn(*args))
    return float(
        statistics.median(timed(lambda: block(fn(*args)))[0] for _ in range(repeats))
    )


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, label: str
) -> tuple[dict[str, object], dict[str, list[float]]]:
    """`warmup` untimed calls of each function, then `repeats` rounds of one timed call
    of each in turn (so load from other processes hits them alike), with progress
    lines. Returns `(last result, seconds per call)` by name."""
    info = {name: None for name in fns}
    for name, fn in fns.items():
        for _ in range(warmup):
            t, info[name] = timed(fn)
            print(f"[{label}] warm-up {name}: {t:.2f} s {info[name]}", flush=True)
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            t, info[name] = timed(fn)
            times[name].append(t)
        print(
            f"[{label}] repeat {r + 1}/{repeats}: "
            + ", ".join(f"{n} {ts[-1]:.3f}s" for n, ts in times.items()),
            flush=True,
        )
    return info, times


def summary(times: list[float]) -> dict:
    return dict(
        median_s=statistics.median(times),
        min_s=min(times),
        max_s=max(times),
        repeats=len(times),
        times_s=[round(t, 4) for t in times],
    )


def environment() -> dict:
    env = dict(
        python=platform.python_version(),
        machine=platform.machine(),
        cpu_count=os.cpu_count(),
        jax=jax.__version__,
        jax_backend=jax.default_backend(),
        jax_device=jax.devices()[0].device_kind,
        # None: XLA's default (on recent NVIDIA GPUs float32 products and convs
        # then run in TF32).
        jax_default_matmul_precision=jax.config.jax_default_matmul_precision,
        equinox=eqx.__version__,
        diffrax=dfx.__version__ if hasattr(dfx, "__version__") else _version("diffrax"),
        optax=optax.__version__,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        conv_impl=td.conv_impl(),  # TADIFFEQ_CONV_IMPL overrides
    )
    try:
        with open("/proc/loadavg") as f:
            env["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        pass
    return env


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def write_json(name: str, obj, out: str | None = None) -> pathlib.Path:
    """Writes `obj` to `out`, else `results/benchmarks/<name>.json`, and says where."""
    path = pathlib.Path(out) if out else RESULTS / f"{name}.json"
    reporting.write_json(path, obj)
    print(f"wrote {path}", file=sys.stderr)
    return path


#: The columns `[(key, header)]` of each result table, shared by the scripts that
#: print a table as they run and `report.py`, which prints it again from the JSON.
TABLES: dict[str, list[tuple[str, str]]] = {
    "vs_torch": [
        ("name", "side, adjoint"),
        ("nfe", "NFE fwd"),
        ("nfe_backward", "NFE bwd"),
        ("loss", "loss"),
        ("median_s", "median s"),
        ("min_s", "min s"),
        ("repeats", "n"),
        ("ratio", "torch / JAX"),
        ("gflops", "GFLOP/s"),
        ("peak_share", "of peak"),
    ],
    "norm_layers": [
        ("model", "model"),
        ("batch", "batch"),
        ("norm", "norm"),
        ("median_s", "evals in loop s"),
        ("min_s", "min s"),
        ("repeats", "n"),
        ("ms_per_eval", "ms / eval (fwd + VJP)"),
        ("ratio_vs_minibatch", "time / mini-batch BN"),
    ],
    "norm_steps": [
        ("model", "model"),
        ("batch", "batch"),
        ("control", "step size"),
        ("norm", "norm"),
        ("nfe", "NFE"),
        ("median_s", "median s"),
        ("min_s", "min s"),
        ("repeats", "n"),
        ("ms_per_nfe", "ms / NFE"),
        ("ratio_vs_minibatch", "time / mini-batch BN"),
    ],
    "compile": [
        ("model", "model"),
        ("phase", "call"),
        ("wall_s", "wall s"),
        ("trace_s", "trace s"),
        ("lower_s", "lower s"),
        ("compile_s", "XLA compile s"),
        ("xla_compiles", "XLA compiles"),
        ("train_traces", "train traces"),
        ("eval_traces", "eval traces"),
    ],
    "memory": [
        ("model", "model"),
        ("batch", "batch"),
        ("side", "side"),
        ("mode", "adjoint"),
        ("compiled_peak_mib", "XLA buffers MiB"),
        ("temp_mib", "of which temp MiB"),
        ("rss_step_mib", "RSS growth in step MiB"),
        ("rss_peak_mib", "peak RSS MiB"),
        ("nfe_forward", "NFE fwd"),
        ("nfe_backward", "NFE bwd"),
        ("step_s", "step s (n=1)"),
    ],
    "inference_modes": [
        ("model", "model"),
        ("batch", "batch"),
        ("norm", "norm"),
        ("mode", "inference"),
        ("nfe_mean", "NFE mean"),
        ("nfe_max", "NFE max"),
        ("max_abs_logit_diff", "max abs logit diff vs joint"),
        ("median_s", "median s"),
        ("min_s", "min s"),
        ("repeats", "n"),
        ("vs_joint", "time / joint"),
    ],
}


def profile_conv_columns(rows: list[dict]) -> list[tuple[str, str]]:
    """`profile_conv.py`'s table: the layer, then forward/dX/dW seconds of each
    implementation its rows hold."""
    columns = [("layer", "layer"), ("mode", "mode"), ("x", "input"), ("cout", "cout")]
    for impl in ("xla", "im2col", "torch"):
        for part, name in (("fwd", "fwd"), ("dx", "dX"), ("dw", "dW")):
            if any(f"{impl}_{part}_s" in r for r in rows):
                columns.append((f"{impl}_{part}_s", f"{impl} {name} s"))
    return columns


def vs_torch_rows(rows: list[dict]) -> list[dict]:
    """`bench_vs_torch.py`'s timing rows with a display name and the ratio torch /
    JAX: for a torch row against the fastest JAX row, for a JAX row against each
    torch row."""
    jax_rows = [r for r in rows if r["side"] == "jax"]
    torch_rows = [r for r in rows if r["side"] == "torch"]
    out = []
    for r in rows:
        row = dict(r, name=f"{r['side']} {r['mode']}".replace(" -", ""))
        if r["side"] == "torch" and jax_rows:
            best = min(j["median_s"] for j in jax_rows)
            row["ratio"] = f"{r['median_s'] / best:.2f}"
        elif r["side"] == "jax" and torch_rows:
            row["ratio"] = " / ".join(
                f"{t['median_s'] / r['median_s']:.2f}" for t in torch_rows
            )
        out.append(row)
    return out


def print_table(rows: list[dict], columns: str | list[tuple[str, str]]) -> None:
    """A markdown table of `rows` (3 significant digits); `columns` is
    `[(key, header)]` or the name of one of `TABLES`."""
    if isinstance(columns, str):
        columns = TABLES[columns]
    reporting.print_table(rows, columns, markdown=True, fmt=reporting.significant3)


def block(tree):
    return jax.block_until_ready(tree)


def to_jnp(*arrays):
    return tuple(jnp.asarray(a) for a in arrays)
