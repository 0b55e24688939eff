"""Lorenz'63 trajectories: the adaptive-solver study's offline files and a generator
of fresh, tightly integrated ones."""

import hashlib
import json
import os
import pathlib

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._misc import check_float
from ..dynamics._lorenz import Lorenz63
from ._paths import cache_dir, dataset_dir


_SPLITS = ("train", "test")


def default_lorenz63_dir() -> pathlib.Path:
    """Where [`tadiffeq.data.load_lorenz63`][] looks by default:
    `$TADIFFEQ_LORENZ63_DIR` (an error if it holds no `train.npy`), else
    `~/.cache/tadiffeq/lorenz63` (see [`tadiffeq.data.cache_dir`][])."""
    found = dataset_dir("lorenz63", "TADIFFEQ_LORENZ63_DIR", ("train.npy",))
    return cache_dir() / "lorenz63" if found is None else found


def load_lorenz63(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The Lorenz'63 trajectories of Allauzen, Dardis and Plath (2022):
    `{"train": (5000, 3), "test": (5000, 3)}` float64, sampled every 0.01 time units
    (sigma 10, rho 28, beta 8/3; `test` continues `train`).

    `path`: the directory holding `train.npy` and `test.npy` (default:
    [`tadiffeq.data.default_lorenz63_dir`][]). Raises `FileNotFoundError` naming the
    missing file, and a ValueError naming a file of another shape or with
    non-finite values.
    """
    directory = default_lorenz63_dir() if path is None else pathlib.Path(path)
    out = {}
    for split in _SPLITS:
        file = directory / f"{split}.npy"
        if not file.exists():
            raise FileNotFoundError(
                f"No Lorenz'63 data file {file}; set TADIFFEQ_LORENZ63_DIR or pass "
                "`path` (or make data with tadiffeq.data.generate_lorenz63)."
            )
        x = np.load(file)
        if x.ndim != 2 or x.shape[1] != 3 or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{file}: expected a float (N, 3) array, got {x.shape}.")
        bad = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
        if bad.size:
            raise ValueError(
                f"{file}: {bad.size} rows hold NaN or inf (the first at row "
                f"{bad[0]}); the trajectories must be finite."
            )
        out[split] = x.astype(np.float64)
    return out


@eqx.filter_jit
def _integrate(y0, ts, params, rtol: float, atol: float, max_steps: int):
    field = Lorenz63(*params)
    term = dfx.ODETerm(lambda t, y, args: field(y))
    controller = dfx.PIDController(rtol=rtol, atol=atol)
    sol = dfx.diffeqsolve(
        term, dfx.Dopri8(), ts[0], ts[-1], None, y0, saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=controller, max_steps=max_steps,
    )  # fmt: skip
    return sol.ys


def generate_lorenz63(
    n: int,
    dt: float = 0.01,
    x0=(0.01, 0.0, 0.0),
    *,
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """A Lorenz'63 trajectory sampled at t = 0, dt, ..., (n - 1) dt, integrated in
    float64 by diffrax's Dopri8 with a `PIDController(rtol, atol)`.

    **Arguments:**

    - `n`: samples per trajectory (>= 2).
    - `dt`: time between samples (default 0.01, the study's).
    - `x0`: the initial state `(3,)` (default (0.01, 0, 0), the study's), or a batch
      `(batch, 3)` of them.
    - `sigma`, `rho`, `beta`: the parameters (default 10, 28, 8/3).
    - `rtol`, `atol`: the tolerances (default 1e-10).
    - `cache_dir`: if given, the result is stored there as `.npy`, keyed by all the
      arguments, and read back on the next call.

    **Returns:** float64 `(n, 3)`, or `(batch, n, 3)` for a batch of `x0`; row 0 is
    `x0`.
    """
    if isinstance(n, bool) or not (isinstance(n, int) and n >= 2):
        raise ValueError(f"`n` must be an int >= 2, got {n!r}.")
    for name, value in (("dt", dt), ("rtol", rtol), ("atol", atol)):
        check_float(name, value, low=0.0, low_open=True)
    for name, value in (("sigma", sigma), ("rho", rho), ("beta", beta)):
        check_float(name, value)
    x0 = np.asarray(x0, dtype=np.float64)
    if x0.shape[-1:] != (3,) or x0.ndim > 2:
        raise ValueError(f"`x0` must have shape (3,) or (batch, 3), got {x0.shape}.")
    if not np.all(np.isfinite(x0)):
        raise ValueError("`x0` must be finite.")
    file = None
    if cache_dir is not None:
        key = json.dumps(
            dict(
                n=n, dt=float(dt), x0=x0.tolist(), sigma=float(sigma), rho=float(rho),
                beta=float(beta), rtol=float(rtol), atol=float(atol), solver="Dopri8",
            ),
            sort_keys=True,
        )  # fmt: skip
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        file = pathlib.Path(cache_dir) / f"lorenz63_{digest}.npy"
        if file.exists():
            return np.load(file)
    # The time grid is padded to a power of two (at least 256) and cut back, so
    # lengths within a factor of two share one compilation.
    padded = max(256, 1 << (n - 1).bit_length())
    with jax.enable_x64(True):
        ts = jnp.arange(padded, dtype=jnp.float64) * dt
        params = jnp.asarray([sigma, rho, beta], dtype=jnp.float64)
        # A step budget far above what the tolerances need on the attractor.
        max_steps = 64 * padded
        ys = np.stack(
            [
                np.asarray(
                    _integrate(
                        jnp.asarray(y0), ts, params, float(rtol), float(atol),
                        max_steps,
                    )
                )[:n]
                for y0 in x0.reshape(-1, 3)
            ]
        )  # fmt: skip
    if not np.all(np.isfinite(ys)):
        raise ValueError("The Lorenz'63 integration failed (non-finite values).")
    ys = ys[0] if x0.ndim == 1 else ys
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + ".tmp.npy")
        np.save(tmp, ys)
        os.replace(tmp, file)
    return ys
