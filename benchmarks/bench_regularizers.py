"""The cost of each regularizer (issue 19): training-step time and evaluations per step
of the MNIST Neural ODE of the paper's protocol (`experiments.regularization_mnist
--protocol paper`: 785 -> 100 tanh -> 784 field, tsit5 at rtol = atol = 1.4e-8,
float32, batch 512 of the offline MNIST split, Adam), with and without each
regularizer, timed interleaved in one process.

Every round each regularizer's step starts from the same initial model, optimiser
state, batch and key (the update is discarded), so the rounds repeat the same work
and the NFE is that of the initial model; what differs between the rows is the
regularizer's own cost (the local step's evaluations, the global integrals, the
Taylor terms) and, for regularizers whose gradient is differentiated through the
solve, the backward pass that comes with it. The training loop of the experiment
script compiles the same step (`regularization_mnist.make_train_step`).

    python -m benchmarks.bench_regularizers --repeats 5
"""

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from experiments import regularization_mnist as rm
from experiments.common import (
    name_list,
    nonnegative_int,
    positive_int,
    regularization_weights,
)

from . import _common as C


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--warmup", type=nonnegative_int, default=1)
    parser.add_argument("--batch", type=positive_int, default=512)
    parser.add_argument(
        "--regularizers",
        default="none,local,local_biased,global,steer,taynode,rnode",
        type=name_list(rm.REGULARIZERS),
        help="the first row is the baseline of the ratio column",
    )  # fmt: skip
    parser.add_argument(
        "--data", default="auto", choices=["auto", "mnist", "synthetic"]
    )
    parser.add_argument(
        "--steps", type=positive_int, default=2000,
        help="the weight schedule's length (the weight is that of step 0)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="JSON path (optional)")
    args = parser.parse_args(argv)
    preset = rm.PROTOCOLS["paper"]["ode"]
    steps, infos = {}, {}
    for name in args.regularizers.split(","):
        cfg = rm.RegConfig(
            model="ode", regularizer=name, **{**preset, "seed": args.seed,
            "steps": args.steps, "data": args.data, "batch_size": args.batch},
        )  # fmt: skip
        s = rm._setup(cfg)
        step = rm.make_train_step(cfg, s)
        x = jnp.asarray(s.train[0][: cfg.batch_size])
        y = jnp.asarray(s.train[1][: cfg.batch_size])
        weight = jnp.asarray(regularization_weights(rm.REGULARIZERS[name], cfg)(0))
        key = jax.random.fold_in(s.key, 0)

        def call(step=step, s=s, x=x, y=y, weight=weight, key=key):
            _, _, loss, (ce, nfe, reg) = step(s.model, s.opt_state, x, y, key, weight)
            return dict(loss=float(loss), nfe=int(nfe), reg=float(reg))

        steps[name] = call
        infos[name] = dataclasses.asdict(cfg)
    last, times = C.interleaved(steps, args.repeats, args.warmup, "regularizers")
    base = float(np.median(times[args.regularizers.split(",")[0]]))
    rows = [
        dict(
            regularizer=name,
            nfe=last[name]["nfe"],
            step_s=float(np.median(t)),
            min_s=min(t),
            ratio=float(np.median(t)) / base,
        )  # fmt: skip
        for name, t in times.items()
    ]
    print(f"\nTraining step at initialisation, batch {args.batch}, interleaved:")
    C.print_table(
        rows,
        [("regularizer", "regularizer"), ("nfe", "NFE / step (forward + reg.)"),
         ("step_s", "s / step (median)"), ("min_s", "min s"),
         ("ratio", "vs first row")],
    )  # fmt: skip
    C.write_json(
        "bench_regularizers",
        dict(environment=C.environment(), args=vars(args), configs=infos,
             rows=rows, times={n: C.summary(t) for n, t in times.items()}),
        args.out,
    )  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
