"""The autonomous MLP field, the study's trained models, the one-step rules and the
data."""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

import tadiffeq as td
import tadiffeq.dynamics as tdd
from tadiffeq.data import generate_lorenz63, load_lorenz63

from ..common import workspace_data
from .config import AUTHORS, LorenzConfig, SOLVERS, SYMMETRIES


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


def make_field(cfg: LorenzConfig):
    """The untrained field of `cfg`: the `AutonomousMLP`, wrapped in
    `tadiffeq.dynamics.Symmetrized` if `cfg.symmetry` asks for it."""
    mlp = AutonomousMLP(cfg.hidden, cfg.depth, seed=cfg.seed)
    if cfg.symmetry == "none":
        return mlp
    if cfg.symmetry == "lorenz":
        return tdd.Symmetrized(mlp, tdd.LORENZ63_SYMMETRY)
    raise ValueError(f"`symmetry` must be one of {SYMMETRIES}, got {cfg.symmetry!r}.")


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
