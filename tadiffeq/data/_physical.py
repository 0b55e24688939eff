"""A generated physical system: trajectories of a chain of coupled, damped pendulums,
the offline stand-in for the TA-BN paper's 17-dimensional MuJoCo trajectories.

N pendulums (angles theta_i, angular velocities omega_i, i = 1..N) hang side by side;
torsion springs join neighbours; the chain's ends are free:

    d theta_i / dt = omega_i
    d omega_i / dt = -nu^2 sin(theta_i) - gamma omega_i
                     + kappa [(theta_{i-1} - theta_i) + (theta_{i+1} - theta_i)]

where a missing neighbour (i = 1 or N) contributes no spring term; nu is the natural
frequency sqrt(g / L) (rad per time unit), kappa the spring stiffness per unit moment
of inertia, gamma the damping rate. The energy (per unit moment of inertia)

    E = sum_i [omega_i^2 / 2 + nu^2 (1 - cos theta_i)]
        + sum_{i<N} kappa (theta_{i+1} - theta_i)^2 / 2

obeys dE/dt = -gamma sum_i omega_i^2: it is conserved when gamma = 0 and decreases
otherwise. The state is `[theta_1..theta_N, omega_1..omega_N]`, 2N = 16 numbers for
the default N = 8.
"""

import hashlib
import json
import os
import pathlib
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._misc import check_float, check_int


_VERSION = 1  # bump when the generator's output changes for the same arguments


def default_cache_dir() -> pathlib.Path:
    """Where generated data is cached by default: `$TADIFFEQ_CACHE_DIR` if set, else
    `~/.cache/tadiffeq`."""
    if os.environ.get("TADIFFEQ_CACHE_DIR"):
        return pathlib.Path(os.environ["TADIFFEQ_CACHE_DIR"])
    return pathlib.Path.home() / ".cache" / "tadiffeq"


def pendulum_chain_vector_field(
    y: Float[ArrayLike, "*batch state"],
    *,
    frequency: ArrayLike = 1.0,
    stiffness: ArrayLike = 0.5,
    damping: ArrayLike = 0.05,
) -> Float[Array, "*batch state"]:
    """dy/dt of the pendulum chain (see the module docstring) at the states `y`
    `(..., 2N)` = `[angles, angular velocities]`."""
    y = jnp.asarray(y)
    n = y.shape[-1] // 2
    theta, omega = y[..., :n], y[..., n:]
    stretch = theta[..., 1:] - theta[..., :-1]  # (..., N - 1): the springs
    zero = jnp.zeros_like(theta[..., :1])
    coupling = jnp.concatenate([stretch, zero], -1) - jnp.concatenate(
        [zero, stretch], -1
    )
    accel = -(frequency**2) * jnp.sin(theta) - damping * omega + stiffness * coupling
    return jnp.concatenate([omega, accel], axis=-1)


def pendulum_chain_energy(
    y: Float[ArrayLike, "*batch state"],
    *,
    frequency: ArrayLike = 1.0,
    stiffness: ArrayLike = 0.5,
) -> Float[Array, "*batch"]:
    """The chain's energy per unit moment of inertia (see the module docstring) at the
    states `y` `(..., 2N)`."""
    y = jnp.asarray(y)
    n = y.shape[-1] // 2
    theta, omega = y[..., :n], y[..., n:]
    kinetic = 0.5 * jnp.sum(omega**2, -1)
    gravity = frequency**2 * jnp.sum(1.0 - jnp.cos(theta), -1)
    spring = 0.5 * stiffness * jnp.sum((theta[..., 1:] - theta[..., :-1]) ** 2, -1)
    return kinetic + gravity + spring


@eqx.filter_jit
def _integrate(y0, ts, params, rtol: float, atol: float, max_steps: int):
    frequency, stiffness, damping = params

    def field(t, y, args):
        return pendulum_chain_vector_field(
            y, frequency=frequency, stiffness=stiffness, damping=damping
        )

    def solve(y):
        sol = dfx.diffeqsolve(
            dfx.ODETerm(field), dfx.Dopri8(), ts[0], ts[-1], None, y,
            saveat=dfx.SaveAt(ts=ts),
            stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol),
            max_steps=max_steps,
        )  # fmt: skip
        return sol.ys

    return jax.vmap(solve)(y0)


def _check(name: str, value, *, positive: bool = False, integer: bool = False, low=0):
    """An int >= `low` (`integer`), else a finite float >= 0 (> 0 if `positive`)."""
    if integer:
        return check_int(name, value, minimum=low)
    return check_float(name, value, low=0.0, low_open=positive)


def generate_pendulum_chain(
    num_trajectories: int = 128,
    num_times: int = 201,
    dt: float = 0.05,
    *,
    num_pendulums: int = 8,
    frequency: float = 1.0,
    stiffness: float = 0.5,
    damping: float = 0.05,
    max_angle: float = 1.0,
    max_velocity: float = 0.5,
    test_fraction: float = 0.25,
    seed: int = 0,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
) -> dict[str, np.ndarray]:
    """Trajectories of the chain of N coupled, damped pendulums (equations in
    `tadiffeq.data._physical`'s docstring and docs/results.md), integrated in float64
    by diffrax's Dopri8 with a `PIDController(rtol, atol)` from random initial
    conditions, and split into train and test trajectories.

    Initial angles are uniform in `[-max_angle, max_angle]` (rad) and velocities
    uniform in `[-max_velocity, max_velocity]` (rad per time unit), drawn with
    `numpy.random.default_rng(seed)`; the last `round(test_fraction *
    num_trajectories)` trajectories are the test split.

    **Arguments:**

    - `num_trajectories`: trajectories in all (>= 2).
    - `num_times`: samples per trajectory, at t = 0, dt, ..., (num_times - 1) dt
      (>= 2).
    - `dt`: time between samples (default 0.05).
    - `num_pendulums`: N (default 8: a 16-dimensional state).
    - `frequency`, `stiffness`, `damping`: nu, kappa and gamma of the equations
      (default 1, 0.5, 0.05).
    - `max_angle`, `max_velocity`: the initial conditions' ranges (default 1, 0.5).
    - `test_fraction`: the share of test trajectories (default 0.25); both splits
      must be non-empty.
    - `seed`: the initial conditions' seed.
    - `rtol`, `atol`: the solver's tolerances (default 1e-8).
    - `cache_dir`: where the `.npz` cache lives (default
      [`tadiffeq.data.default_cache_dir`][]). The file is named by a hash of all
      the arguments above, which is also stored inside it and checked on reading: a
      call with other arguments regenerates.
    - `cache`: `False` neither reads nor writes the cache.

    **Returns:** `{"ts": (num_times,), "train": (n_train, num_times, 2N), "test":
    (n_test, num_times, 2N)}`, float64; each trajectory's row 0 is its initial state
    `[angles, velocities]`.
    """
    _check("num_trajectories", num_trajectories, integer=True, low=2)
    _check("num_times", num_times, integer=True, low=2)
    _check("num_pendulums", num_pendulums, integer=True, low=1)
    _check("seed", seed, integer=True, low=0)
    params: dict[str, Any] = dict(
        version=_VERSION, solver="Dopri8", num_trajectories=num_trajectories,
        num_times=num_times, num_pendulums=num_pendulums, seed=seed,
        dt=_check("dt", dt, positive=True),
        frequency=_check("frequency", frequency),
        stiffness=_check("stiffness", stiffness),
        damping=_check("damping", damping),
        max_angle=_check("max_angle", max_angle),
        max_velocity=_check("max_velocity", max_velocity),
        test_fraction=_check("test_fraction", test_fraction),
        rtol=_check("rtol", rtol, positive=True),
        atol=_check("atol", atol, positive=True),
    )  # fmt: skip
    num_test = round(test_fraction * num_trajectories)
    if not 1 <= num_test <= num_trajectories - 1:
        raise ValueError(
            f"`test_fraction`={test_fraction} leaves {num_test} of {num_trajectories} "
            "trajectories for testing; both splits must be non-empty."
        )
    key = json.dumps(params, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    file = None
    if cache:
        directory = default_cache_dir() if cache_dir is None else cache_dir
        file = pathlib.Path(directory) / f"pendulum_chain_{digest}.npz"
        if file.exists():
            with np.load(file) as saved:
                if str(saved["params"]) == key:
                    return {k: saved[k] for k in ("ts", "train", "test")}
    rng = np.random.default_rng(seed)
    theta0 = rng.uniform(-max_angle, max_angle, (num_trajectories, num_pendulums))
    omega0 = rng.uniform(-max_velocity, max_velocity, theta0.shape)
    y0 = np.concatenate([theta0, omega0], axis=1)
    with jax.enable_x64(True):
        ts = jnp.arange(num_times, dtype=jnp.float64) * params["dt"]
        args = jnp.asarray(
            [params["frequency"], params["stiffness"], params["damping"]], jnp.float64
        )
        # A step budget far above what the tolerances need.
        max_steps = 64 * num_times + 4096
        ys = np.asarray(
            _integrate(
                jnp.asarray(y0), ts, args, params["rtol"], params["atol"], max_steps
            )
        )
        ts = np.asarray(ts)
    if not np.all(np.isfinite(ys)):
        raise ValueError("The pendulum-chain integration failed (non-finite values).")
    out = dict(ts=ts, train=ys[: num_trajectories - num_test], test=ys[-num_test:])
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            params=np.asarray(key),
            **out,  # pyright: ignore[reportArgumentType]
        )
        os.replace(tmp, file)
    return out
