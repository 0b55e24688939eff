"""A synthetic task in seconds: does regularizing the solver's heuristics make a
Neural ODE cheaper to solve?

Binary classification of points in [-2, 2]^2 by the sign of sin(2 x) cos(2 y) with an
augmented Neural ODE (2 + 2 zero channels, tanh MLP field 4 -> 32 -> 4, tsit5 with
rtol = atol = 1e-4, then a linear layer), trained full batch with Adam. Compares the
test NFE and accuracy of the unregularized model with regularized ones, same seed.

    python -m experiments.regularization_toy --seed 0
"""

import argparse
import pathlib
import time
from dataclasses import dataclass

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import tadiffeq as td

from .common import (
    float_list,
    name_list,
    positive_int,
    print_table,
    regularizers,
    write_json,
)
from .training import optimizer_step


@dataclass
class ToyConfig:
    regularizer: str = "none"  # none | local | local_biased | local_exact | global
    weight: float = 10.0
    steps: int = 200
    lr: float = 1e-2
    num_points: int = 512
    tol: float = 1e-4
    seed: int = 0


REGULARIZERS = regularizers("none", "local", "local_biased", "local_exact", "global")


def toy_data(key, n):
    x = jax.random.uniform(key, (n, 2), minval=-2.0, maxval=2.0)
    y = (jnp.sin(2 * x[:, 0]) * jnp.cos(2 * x[:, 1]) > 0).astype(jnp.int32)
    return x, y


class ToyModel(eqx.Module):
    node: td.NeuralODE
    head: eqx.nn.Linear

    def __init__(self, tol, key):
        k1, k2 = jax.random.split(key)
        inner = td.MLPField(4, (32,), norm="none", activation="tanh", key=k1)
        self.node = td.NeuralODE(
            td.AugmentedField(inner, 2),
            solver=dfx.Tsit5(),
            stepsize_controller=dfx.PIDController(rtol=tol, atol=tol),
        )
        self.head = eqx.nn.Linear(4, 2, key=k2)

    def __call__(self, x, state, **kwargs):
        y, state, stats = self.node(x, state, **kwargs)
        return jax.vmap(self.head)(y), state, stats


def run(cfg: ToyConfig) -> dict:
    if cfg.regularizer not in REGULARIZERS:
        raise ValueError(f"Unknown regularizer {cfg.regularizer!r}.")
    reg = REGULARIZERS[cfg.regularizer]
    key = jax.random.PRNGKey(cfg.seed)
    k_model, k_train, k_test, k_reg = jax.random.split(key, 4)
    model, state = eqx.nn.make_with_state(ToyModel)(cfg.tol, k_model)
    x, y = toy_data(k_train, cfg.num_points)
    x_test, y_test = toy_data(k_test, cfg.num_points)
    opt = optax.adam(cfg.lr)
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    weight = cfg.weight if reg is not None else 0.0

    def loss_fn(model, key):
        logits, _, stats = model(x, state, regularizer=reg, key=key)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + weight * stats.regularization, stats

    step = optimizer_step(loss_fn, opt)

    t0 = time.perf_counter()
    train_nfe = 0
    for i in range(cfg.steps):
        model, opt_state, loss, stats = step(
            model, opt_state, jax.random.fold_in(k_reg, i)
        )
        train_nfe += int(stats.num_fn_evals) + int(stats.num_regularizer_evals)
    train_s = time.perf_counter() - t0
    logits, _, test_stats = eqx.filter_jit(lambda m, x: m(x, state))(model, x_test)
    return dict(
        regularizer=cfg.regularizer,
        weight=weight,
        test_acc=float(jnp.mean(jnp.argmax(logits, -1) == y_test)),
        test_nfe=int(test_stats.num_fn_evals),
        train_nfe=train_nfe / cfg.steps,
        final_loss=float(loss),
        train_s=train_s,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--regularizers", default="none,local,local_biased,local_exact,global",
        type=name_list(REGULARIZERS),
    )  # fmt: skip
    parser.add_argument(
        "--weights",
        default="0,3,3,1e4,10",
        type=float_list,
        help="one weight per regularizer (comma-separated)",
    )
    parser.add_argument("--steps", type=positive_int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/regularization_toy")
    args = parser.parse_args(argv)
    names = args.regularizers.split(",")
    weights = [float(w) for w in args.weights.split(",")]
    if len(weights) != len(names):
        raise ValueError("--weights needs one weight per regularizer.")
    configs = [
        ToyConfig(regularizer=n, weight=w, steps=args.steps, seed=args.seed)
        for n, w in zip(names, weights)
    ]
    return run_all(configs, pathlib.Path(args.out))


def run_all(configs: list[ToyConfig], out: pathlib.Path) -> list[dict]:
    """Runs every config (one row each), prints the table and writes
    `out/toy.json`. The configs share `steps` and `seed`."""
    rows = [run(cfg) for cfg in configs]
    steps, seed = configs[0].steps, configs[0].seed
    print(f"Toy task, {steps} full-batch Adam steps, seed {seed}:")
    print_table(
        rows,
        [
            ("regularizer", "regularizer"), ("weight", "weight"),
            ("test_acc", "test acc"), ("test_nfe", "test NFE"),
            ("train_nfe", "train NFE/step"), ("train_s", "train s"),
        ],
    )  # fmt: skip
    write_json(out / "toy.json", dict(seed=seed, rows=rows))
    return rows


if __name__ == "__main__":
    main()
