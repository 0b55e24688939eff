"""Probes the public API and the experiment scripts with bad inputs, as a new user
would (issue 22), and counts what happens to each:

- **clear**: an exception whose message names the argument (or the flag);
- **unclear**: an exception that does not name it (e.g. from deep inside JAX);
- **silent**: no exception (a bad value accepted, or a NaN/inf result);
- **hang**: no answer within `--timeout` seconds (the probe is then killed).

Three families:

1. *Arguments*: every public constructor and function of `tadiffeq`,
   `tadiffeq.data` and `tadiffeq.dynamics` that takes a scalar argument, called with
   a valid baseline (`BASELINES`) and one argument replaced by a value of the wrong
   kind for its default (`bad_values`): 0, -1, 2.5 and "3" for an int; NaN, inf,
   -1.0 and "1.0" for a float; "bogus" and 3 for a string. A value that the
   argument legitimately accepts is listed in `VALID` with the reason, and not
   probed.
2. *Calls*: the models' and layers' calls with bad inputs, states, times and keys.
3. *Flags*: every experiment script's numeric and choice flags with bad values.

The checkpoint faults (truncate, empty, delete the pointer, flip bytes, kill during
save, restore into another structure) are probed too: *survived* means the newest
intact checkpoint was restored with a warning or the restore refused with an error
that says why, and no finished step was deleted.

Each probe runs in a worker process (spawned once, replaced after a hang). Run from
the repository root:

    python -m benchmarks.probe_bad_inputs [--only NAME] [--timeout 60]

and it prints the counts per family and every probe that was not clear, and writes
them to `results/benchmarks/probe_bad_inputs.json`.
"""

import argparse
import contextlib
import dataclasses
import inspect
import io
import math
import multiprocessing as mp
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import numpy as np

from experiments.common import positive_float
from experiments.reporting import print_table, write_json


ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "benchmarks" / "probe_bad_inputs.json"


@dataclasses.dataclass(frozen=True)
class Probe:
    family: str  # "argument", "call", "flag" or "checkpoint"
    api: str  # what is probed, e.g. "tadiffeq.NeuralODE"
    argument: str  # what a clear message names
    value: str  # the bad value, as text
    run: Callable[[], object]  # raises, returns, or hangs


# --- 1. Arguments -----------------------------------------------------------------


def _baselines():
    """Valid keyword arguments for every probed callable (the required ones); a
    callable not listed here is not probed (see `not_probed` in the output)."""
    import diffrax as dfx
    import jax
    import jax.numpy as jnp

    import tadiffeq as td

    key = jax.random.key(0)
    field = td.MLPField(3, (4,), norm="none", key=key)
    plain = lambda t, y, s: (y, s)
    node = td.NeuralODE(field)
    return {
        "tadiffeq.NeuralODE": dict(field=field),
        "tadiffeq.NeuralSDE": dict(drift=plain, diffusion=plain),
        "tadiffeq.TABatchNorm": dict(num_features=3),
        "tadiffeq.PopTIBatchNorm": dict(num_features=3),
        "tadiffeq.MiniBatchNorm": dict(num_features=3),
        "tadiffeq.NoNorm": dict(num_features=3),
        "tadiffeq.make_norm": dict(name="tabn", num_features=3),
        "tadiffeq.LinearTimeGrid": dict(t0=0.0, t1=1.0, num_intervals=10),
        "tadiffeq.NearestTimeGrid": dict(t0=0.0, t1=1.0, num_intervals=10),
        "tadiffeq.GaussianTimeGrid": dict(t0=0.0, t1=1.0, num_intervals=10),
        "tadiffeq.make_time_grid": dict(interpolation="linear"),
        "tadiffeq.MLPField": dict(features=3, key=key),
        "tadiffeq.ConvField": dict(channels=2, depth=4, width=4, key=key),
        "tadiffeq.UNetField": dict(channels=2, widths=(4, 8), key=key),
        "tadiffeq.TimeConv2d": dict(in_channels=2, out_channels=3, key=key),
        "tadiffeq.TimeLinear": dict(in_features=2, out_features=3, key=key),
        "tadiffeq.AugmentedField": dict(field=field, extra=2),
        "tadiffeq.HeavyBallField": dict(field=field, channels=3),
        "tadiffeq.SecondOrderField": dict(field=field, channels=3),
        "tadiffeq.UnmixedClassifier": dict(
            ode=td.NeuralODE(td.ConvField(1, 4, width=2, norm="none", key=key)),
            image_shape=(4, 4, 1),
            num_classes=3,
            key=key,
        ),
        "tadiffeq.LatentODE": dict(features=3, latent=2, hidden=4, key=key),
        "tadiffeq.LocalRegularizer": dict(),
        "tadiffeq.GlobalRegularizer": dict(),
        "tadiffeq.RNODE": dict(),
        "tadiffeq.TayNODE": dict(),
        "tadiffeq.STEER": dict(b=0.5),
        "tadiffeq.regularization_schedule": dict(initial=1.0, final=0.5, num_steps=10),
        "tadiffeq.StepAccumulator": dict(kind="error"),
        # (Neither needs the folder to hold anything: a path that exists will do.)
        "tadiffeq.Checkpointer": dict(directory=tempfile.gettempdir()),
        "tadiffeq.conv_field_spec": dict(channels=2, depth=4),
        "tadiffeq.conv_geometry": dict(mode="same"),
        "tadiffeq.conv_impl": dict(),
        "tadiffeq.affine_penalty": dict(tree=node),
        "tadiffeq.count_parameters": dict(model=node),
        "tadiffeq.StatefulSolver": dict(solver=dfx.Dopri5()),
        "tadiffeq.data.synthetic_digits": dict(num_train=20, num_test=10),
        "tadiffeq.data.iterate_batches": dict(
            x=np.zeros((10, 2), np.float32), y=np.zeros(10, np.int32), batch_size=4
        ),
        "tadiffeq.data.generate_lorenz63": dict(n=20),
        "tadiffeq.data.generate_pendulum_chain": dict(num_trajectories=2, num_times=5),
        "tadiffeq.data.ImageAugmentation": dict(),
        "tadiffeq.data.image_dataset_info": dict(name="cifar10"),
        "tadiffeq.data.mnist_offline_split": dict(directory=tempfile.gettempdir()),
        "tadiffeq.dynamics.FehlbergStep": dict(),
        "tadiffeq.dynamics.RK4Step": dict(),
        "tadiffeq.dynamics.DiffraxStep": dict(),
        "tadiffeq.dynamics.Lorenz63": dict(),
        "tadiffeq.dynamics.attractor_statistics": dict(x=jnp.ones((50, 3))),
    }


# (api, argument, value text): values the argument accepts, with the reason.
VALID = {
    ("*", "seed", "*"): "any int seeds; -1 and 0 are seeds",
    ("*", "channel_axis", "-1"): "the last axis",
    ("*", "t0", "-1.0"): "an interval may start anywhere",
    ("tadiffeq.HeavyBallField", "gamma", "-1.0"): "the damping before its sigmoid",
    ("tadiffeq.LatentODE", "init_logstd", "-1.0"): "a log standard deviation",
    ("tadiffeq.data.ImageAugmentation", "erasing_value", "-1.0"): "any fill value",
    ("tadiffeq.data.generate_lorenz63", "sigma", "-1.0"): "any real parameter",
    ("tadiffeq.data.generate_lorenz63", "rho", "-1.0"): "any real parameter",
    ("tadiffeq.data.generate_lorenz63", "beta", "-1.0"): "any real parameter",
    ("tadiffeq.dynamics.Lorenz63", "sigma", "-1.0"): "any real parameter",
    ("tadiffeq.dynamics.Lorenz63", "rho", "-1.0"): "any real parameter",
    ("tadiffeq.dynamics.Lorenz63", "beta", "-1.0"): "any real parameter",
    ("tadiffeq.make_time_grid", "width_name", "*"): "a name for messages",
    ("tadiffeq.Checkpointer", "directory", '"bogus"'): "a relative folder",
    ("tadiffeq.data.ImageAugmentation", "crop_padding", "0"): "no padding",
    ("tadiffeq.data.ImageAugmentation", "crop_fill", "-1.0"): "any fill value",
}


def _valid(api: str, argument: str, value: str) -> bool:
    return any(
        (a in ("*", api)) and arg == argument and (v in ("*", value))
        for a, arg, v in VALID
    )


def bad_values(default) -> list[tuple[str, object]]:
    """Values of the wrong kind for an argument whose default is `default`."""
    if isinstance(default, bool):
        return []  # (flags: any truthy value is read as true, as in Python)
    if isinstance(default, int):
        return [("0", 0), ("-1", -1), ("2.5", 2.5), ('"3"', "3")]
    if isinstance(default, float):
        return [("nan", math.nan), ("inf", math.inf), ("-1.0", -1.0), ('"1.0"', "1.0")]
    if isinstance(default, str):
        return [('"bogus"', "bogus"), ("3", 3)]
    return []


def argument_probes() -> list[Probe]:
    import tadiffeq as td
    import tadiffeq.data as tdd
    import tadiffeq.dynamics as tdy

    probes = []
    for api, base in _baselines().items():
        module, _, name = api.rpartition(".")
        fn = getattr(
            {"tadiffeq": td, "tadiffeq.data": tdd, "tadiffeq.dynamics": tdy}[module],
            name,
        )
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            default = base.get(param.name, param.default)
            for text, value in bad_values(default):
                if _valid(api, param.name, text):
                    continue
                kwargs = {**base, param.name: value}
                probes.append(
                    Probe(
                        "argument",
                        api,
                        param.name,
                        text,
                        lambda fn=fn, kwargs=kwargs: fn(**kwargs),
                    )
                )
    return probes


# --- 2. Calls -----------------------------------------------------------------------


def call_probes() -> list[Probe]:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import tadiffeq as td

    key = jax.random.key(0)
    x = jnp.ones((4, 3))

    def tabn_node(hidden=(4,), **kw):
        build = lambda: td.NeuralODE(td.MLPField(3, hidden, norm="tabn", key=key), **kw)
        return eqx.nn.make_with_state(build)()

    node, state = tabn_node()
    jittered, j_state = tabn_node(first_step_jitter=1.0)
    norm, n_state = eqx.nn.make_with_state(td.TABatchNorm)(3)
    sde = td.NeuralSDE(lambda t, y, s: (-y, s), lambda t, y, s: (0.1 * y, s))
    model, m_state = eqx.nn.make_with_state(td.UnmixedClassifier)(
        td.NeuralODE(td.ConvField(1, 4, width=2, norm="tabn", key=key)),
        (4, 4, 1),
        3,
        key=key,
    )
    latent, l_state = eqx.nn.make_with_state(td.LatentODE)(3, 2, 4, key=key)
    times = jnp.linspace(0.0, 1.0, 5)
    obs = jnp.ones((2, 5, 3))
    run = lambda f, *a, **k: lambda: jax.block_until_ready(f(*a, **k))
    P = lambda api, arg, value, fn: Probe("call", api, arg, value, fn)
    return [
        P("NeuralODE()", "x", "NaN entry", run(node, x.at[0, 0].set(jnp.nan), state)),
        P("NeuralODE()", "x", "inf entry", run(node, x.at[0, 0].set(jnp.inf), state)),
        P("NeuralODE()", "x", "int32", run(node, x.astype(jnp.int32), state)),
        P("NeuralODE()", "x", "float16", run(node, x.astype(jnp.float16), state)),
        P("NeuralODE()", "x", "no batch axis", run(node, x[0, 0], state)),
        P("NeuralODE()", "x", "4 features for 3", run(node, jnp.ones((4, 4)), state)),
        P("NeuralODE()", "state", "None", run(node, x, None)),
        P("NeuralODE()", "state", "3", run(node, x, 3)),
        P(
            "NeuralODE()",
            "state",
            "of a deeper model",
            run(node, x, tabn_node((4, 4))[1]),
        ),
        P("NeuralODE()", "state", "of a wider model", run(node, x, tabn_node((5,))[1])),
        P(
            "NeuralODE()",
            "ts",
            "decreasing",
            run(node, x, state, ts=jnp.array([0.8, 0.2])),
        ),
        P(
            "NeuralODE()",
            "ts",
            "NaN",
            run(node, x, state, ts=jnp.array([0.2, jnp.nan])),
        ),
        P(
            "NeuralODE()",
            "ts",
            "outside [t0, t1]",
            run(node, x, state, ts=jnp.array([2.0])),
        ),
        P("NeuralODE()", "ts", "2-D", run(node, x, state, ts=jnp.ones((2, 2)))),
        P("NeuralODE()", "ts", "empty", run(node, x, state, ts=jnp.zeros((0,)))),
        P("NeuralODE()", "regularizer", "3", run(node, x, state, regularizer=3)),
        P(
            "NeuralODE()",
            "key",
            "missing (local regularizer)",
            run(node, x, state, regularizer=td.LocalRegularizer()),
        ),
        P(
            "NeuralODE()",
            "key",
            "missing (first_step_jitter)",
            run(jittered, x, j_state),
        ),
        P("TABatchNorm()", "t", "NaN", run(norm, jnp.nan, x, n_state)),
        P("TABatchNorm()", "t", "a vector", run(norm, jnp.ones(2), x, n_state)),
        P("TABatchNorm()", "x", "unbatched", run(norm, 0.5, x[0], n_state)),
        P("TABatchNorm()", "x", "2 channels for 3", run(norm, 0.5, x[:, :2], n_state)),
        P("TABatchNorm()", "x", "int32", run(norm, 0.5, x.astype(jnp.int32), n_state)),
        P(
            "TABatchNorm()",
            "x",
            "batch of 1 in training",
            run(norm, 0.5, x[:1], n_state),
        ),
        P("NeuralSDE()", "key", "missing", run(sde, x, eqx.nn.State(sde), key=None)),
        P(
            "NeuralSDE()",
            "x",
            "NaN entry",
            run(sde, x.at[0, 0].set(jnp.nan), eqx.nn.State(sde), key=key),
        ),
        P(
            "NeuralSDE()",
            "regularizer",
            "RNODE",
            run(sde, x, eqx.nn.State(sde), key=key, regularizer=td.RNODE()),
        ),
        P(
            "UnmixedClassifier()",
            "images",
            "(batch, 5, 5, 1)",
            run(model, jnp.ones((2, 5, 5, 1)), m_state),
        ),
        P(
            "UnmixedClassifier()",
            "images",
            "uint8",
            run(model, jnp.ones((2, 4, 4, 1), jnp.uint8), m_state),
        ),
        P(
            "UnmixedClassifier()",
            "state",
            "of the bare ODE",
            run(model, jnp.ones((2, 4, 4, 1)), state),
        ),
        P(
            "LatentODE()",
            "times",
            "decreasing",
            run(latent, times[::-1], obs, jnp.ones_like(obs), l_state),
        ),
        P(
            "LatentODE()",
            "mask",
            "of another shape",
            run(latent, times, obs, jnp.ones((2, 4, 3)), l_state),
        ),
        P(
            "LatentODE()",
            "values",
            "NaN where observed",
            run(
                latent, times, obs.at[0, 0, 0].set(jnp.nan), jnp.ones_like(obs), l_state
            ),
        ),
    ]


# --- 3. Flags ----------------------------------------------------------------------


# script: (module, flags each with its bad values); a bad value must stop the script
# before it does any work.
SCRIPT_FLAGS = {
    "main": (
        "experiments.main",
        {
            "--epochs": ["0", "x"],
            "--batch-size": ["0"],
            "--norms": ["bogus"],
            "--noise-std": ["-1", "nan"],
            "--first-step-jitter": ["-1", "nan"],
            "--reg-steps": ["-1"],
            "--train-limit": ["0"],
            "--seed": ["x"],
            "--hidden": ["0"],
        },
    ),
    "tabn_ablations": (
        "experiments.tabn_ablations",
        {
            "--study": ["bogus"],
            "--epochs": ["0"],
            "--batch-size": ["0"],
            "--depths": ["0", "x"],
            "--grids": ["0"],
            "--first-step-jitter": ["-1", "nan"],
            "--noise-std": ["-1"],
            "--train-limit": ["0"],
            "--norms": ["bogus"],
            "--conv-width": ["0"],
            "--num-intervals": ["0"],
        },
    ),
    "tabn_images": (
        "experiments.tabn_images",
        {
            "--preset": ["bogus"],
            "--epochs": ["0"],
            "--batch-size": ["0"],
            "--widths": ["0", "x"],
            "--norm": ["bogus"],
            "--num-intervals": ["0"],
            "--eval-batch": ["0"],
            "--train-limit": ["0"],
        },
    ),
    "regularization_mnist": (
        "experiments.regularization_mnist",
        {
            "--regularizers": ["bogus"],
            "--steps": ["0"],
            "--weight": ["-1", "nan"],
            "--weight-end": ["nan"],
            "--tol": ["0", "-1", "nan"],
            "--lr": ["0", "-1", "nan"],
            "--lr-decay": ["-1"],
            "--model": ["bogus"],
            "--batch-size": ["0"],
            "--hidden": ["0"],
            "--checkpoint-every": ["0"],
            "--time-runs": ["no/such/run"],
        },
    ),
    "regularization_toy": (
        "experiments.regularization_toy",
        {
            "--steps": ["0"],
            "--weights": ["nan", "-1", "x"],
            "--regularizers": ["bogus"],
        },
    ),
    "latent_ode": (
        "experiments.latent_ode",
        {
            "--steps": ["0"],
            "--regularizers": ["bogus"],
            "--data": ["bogus"],
            "--lr": ["-1"],
            "--tol": ["0"],
            "--quantization": ["0", "-1"],
            "--obs-std": ["0", "-1"],
            "--weight": ["nan"],
            "--latent": ["0"],
            "--num-patients": ["0"],
            "--batch-size": ["0"],
        },
    ),
    "node_variants": (
        "experiments.node_variants",
        {
            "--epochs": ["0"],
            "--variants": ["bogus"],
            "--norms": ["bogus"],
            "--test-batches": ["0", "x"],
            "--hidden": ["0"],
        },
    ),
    "physical_system": (
        "experiments.physical_system",
        {
            "--steps": ["0"],
            "--window": ["0"],
            "--norms": ["bogus"],
            "--hidden": ["x", "0"],
            "--lr": ["-1", "nan"],
            "--num-trajectories": ["0"],
            "--num-times": ["1"],
            "--chunk": ["0"],
            "--test-batch": ["0"],
            "--norm-layers": ["-1"],
        },
    ),
    "lorenz63": (
        "experiments.lorenz63",
        {
            "--iterations": ["0"],
            "--solvers": ["bogus"],
            "--rollout": ["0"],
            "--threshold": ["-1", "nan"],
            "--num-ics": ["0"],
            "--horizon": ["0"],
            "--hidden": ["0"],
            "--checkpoint-every": ["0"],
            "--stall-window": ["-1", "7"],
            "--long-runs": ["0"],
            "--input-noise": ["-1", "nan"],
            "--symmetry": ["mirror"],
            "--stability-weight": ["-1", "nan"],
            "--stability-starts": ["0"],
            "--stability-iterations": ["0"],
            "--stability-tolerance": ["0.5", "inf"],
            "--min-improvement": ["0", "1.5", "nan"],
            "--seed": ["-1", "0,0", "x"],
        },
    ),
}


def flag_probes() -> list[Probe]:
    import importlib

    probes = []
    for script, (module, flags) in SCRIPT_FLAGS.items():
        for flag, values in flags.items():
            for value in values:

                def run(module=module, flag=flag, value=value):
                    main = importlib.import_module(module).main
                    with tempfile.TemporaryDirectory() as out:
                        return main([flag, value, "--out", out])

                probes.append(Probe("flag", script, flag, value, run))
    return probes


# --- 4. Checkpoint faults -------------------------------------------------------------


def checkpoint_probes() -> list[Probe]:
    import jax.numpy as jnp

    import tadiffeq as td

    def three_steps():
        folder = pathlib.Path(tempfile.mkdtemp())
        ckpt = td.Checkpointer(folder, keep=3)
        for step in (1, 2, 3):
            ckpt.save(step, (jnp.full(4, float(step)),), {"step": step})
        return folder, ckpt

    def newest_arrays(folder):
        steps = sorted(p for p in folder.iterdir() if p.is_dir())
        return [f for f in steps[-1].iterdir() if f.suffix != ".json"][0]

    def fault(damage, like=None):
        like = (jnp.zeros(4),) if like is None else like

        def run():
            folder, ckpt = three_steps()
            damage(folder)
            before = sorted(p.name for p in folder.iterdir() if p.is_dir())
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    out = ckpt.restore(like)
                finally:
                    after = sorted(p.name for p in folder.iterdir() if p.is_dir())
                    if set(before) - set(after):
                        raise AssertionError(
                            f"finished steps deleted: {before} -> {after}"
                        )
            if out is None:
                return None  # silent: nothing restored, no error
            step = out[0]
            if step != 3 and not caught:
                return None  # an older step, silently
            raise _Survived(
                f"restored step {step}" + (" with a warning" if caught else "")
            )

        return run

    def truncate(folder):
        f = newest_arrays(folder)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    def flip(folder):
        f = newest_arrays(folder)
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))

    def empty_pointer(folder):
        (folder / "latest.json").write_text("")

    def delete_pointer(folder):
        (folder / "latest.json").unlink()

    def truncate_meta(folder):
        steps = sorted(p for p in folder.iterdir() if p.is_dir())
        for f in steps[-1].glob("*.json"):
            f.write_text(f.read_text()[:5])

    def delete_newest(folder):
        shutil.rmtree(sorted(p for p in folder.iterdir() if p.is_dir())[-1])

    P = lambda what, fn: Probe(
        "checkpoint", "Checkpointer.restore", "checkpoint", what, fn
    )
    return [
        P("truncated arrays", fault(truncate)),
        P("flipped byte", fault(flip)),
        P("empty latest.json", fault(empty_pointer)),
        P("deleted latest.json", fault(delete_pointer)),
        P("truncated meta", fault(truncate_meta)),
        P("newest step folder deleted", fault(delete_newest)),
        P("like with one leaf fewer", fault(lambda f: None, like=())),
        P("like of other shapes", fault(lambda f: None, like=(jnp.zeros(5),))),
    ]


class _Survived(Exception):
    """A checkpoint fault survived (restored with a warning, or a clear refusal)."""


# --- Running --------------------------------------------------------------------------


def all_probes(only: str | None = None) -> list[Probe]:
    probes = argument_probes() + call_probes() + flag_probes() + checkpoint_probes()
    return [p for p in probes if only is None or only in p.api]


def _names(text: str, argument: str) -> bool:
    """Whether `text` names `argument` as a word (`channels` is not named by
    `in_channels`, nor `key` by "PRNG key type" unless written `key`)."""
    if argument == "key":  # the word is too common: the argument must be quoted
        return "`key" in text
    return re.search(rf"(?<![\w-]){re.escape(argument)}(?![\w])", text) is not None


def classify(probe: Probe) -> tuple[str, str]:
    """`(outcome, message)` of running `probe` here."""
    import jax

    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            out = probe.run()
            out = jax.block_until_ready(out)
    except _Survived as e:
        return "clear", str(e)
    except SystemExit as e:  # argparse: the message is on stderr
        message = err.getvalue().strip().splitlines()[-1:] or [f"exit {e.code}"]
        text = message[0]
        if "unrecognized arguments" in text:
            raise AssertionError(f"the probe's flag does not exist: {text}") from e
        return ("clear" if _names(text, probe.argument) else "unclear"), text
    except BaseException as e:
        text = f"{type(e).__name__}: {e}".split("\n-----")[0]
        named = _names(text, probe.argument) or (
            probe.family == "checkpoint" and "checkpoint" in text.lower()
        )
        return ("clear" if named else "unclear"), text[:300]
    leaves = [np.asarray(a) for a in jax.tree.leaves(out) if hasattr(a, "dtype")]
    bad = any(
        np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a))
        for a in leaves
    )
    return "silent", "non-finite result" if bad else "accepted"


def _worker(only, start, conn):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    warnings.simplefilter("ignore")
    probes = all_probes(only)
    for i in range(start, len(probes)):
        conn.send(("start", i))
        conn.send(("done", i, *classify(probes[i])))
    conn.send(("end", len(probes)))


def _progress(probe: Probe, result: dict) -> None:
    print(
        f"  {result['outcome']:8s} {probe.api} {probe.argument}={probe.value}",
        file=sys.stderr,
        flush=True,
    )


def run_all(only: str | None, timeout: float) -> list[dict]:
    probes = all_probes(only)
    ctx = mp.get_context("spawn")
    results: dict[int, dict] = {}
    start, total = 0, None
    while total is None or start < total:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(only, start, child), daemon=True)
        proc.start()
        current, deadline = None, None
        while True:
            if parent.poll(1.0):
                msg = parent.recv()
                if msg[0] == "start":
                    current, deadline = msg[1], time.monotonic() + timeout
                elif msg[0] == "done":
                    results[msg[1]] = dict(outcome=msg[2], message=msg[3])
                    current = None
                    _progress(probes[msg[1]], results[msg[1]])
                else:
                    total = msg[1]
                    start = total
                    break
            elif current is not None and time.monotonic() > deadline:
                # A script that takes a bad flag starts working: accepted, not hung.
                flag = probes[current].family == "flag"
                results[current] = dict(
                    outcome="silent" if flag else "hang",
                    message=f"still running after {timeout:g} s",
                )
                _progress(probes[current], results[current])
                start = current + 1
                break
            elif not proc.is_alive():
                i = current if current is not None else start
                results[i] = dict(outcome="unclear", message="worker died")
                start = i + 1
                break
        proc.kill()
        proc.join()
    return [
        dict(
            family=p.family, api=p.api, argument=p.argument, value=p.value, **results[i]
        )
        for i, p in enumerate(probes)
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="probe only APIs containing this")
    parser.add_argument("--timeout", type=positive_float, default=60.0)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    rows = run_all(args.only, args.timeout)
    outcomes = ("clear", "unclear", "silent", "hang")

    def counts(family: str, got: list[dict]) -> dict:
        tally = {o: sum(r["outcome"] == o for r in got) for o in outcomes}
        return dict(family=family, tried=len(got), **tally)

    families = ("argument", "call", "flag", "checkpoint")
    summary = [counts(f, [r for r in rows if r["family"] == f]) for f in families]
    summary.append(counts("all", rows))
    print_table(
        summary, [("family", "family"), ("tried", "tried")] + [(o, o) for o in outcomes]
    )
    for r in rows:
        if r["outcome"] != "clear":
            print(
                f"{r['outcome']:8s} {r['api']} {r['argument']}={r['value']}: "
                f"{r['message'][:160]}"
            )
    write_json(pathlib.Path(args.out), dict(summary=summary, rows=rows))
    return summary


if __name__ == "__main__":
    main()
