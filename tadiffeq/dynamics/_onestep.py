"""One-step-ahead integrators: the solver between two consecutive samples of a
trajectory, its per-sample record, the fixed-step RK4 baseline and free runs."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._misc import check_float, check_positive_int


#: A batched autonomous vector field: `(batch, dim) -> (batch, dim)`.
BatchField = Callable[[Float[Array, "batch dim"]], Float[Array, "batch dim"]]


class OneStepInfo(eqx.Module):
    """What a one-step integrator did for each sample of the batch.

    - `accepted`: the first attempt (one step of size h) was kept.
    - `num_substeps`: integration steps taken over [0, h] (1 when accepted).
    - `num_rejected`: attempts thrown away.
    - `num_fn_evals`: vector-field evaluations the method needs for this sample.
    - `error_rate`: Fehlberg's error rate r of the first attempt (`None` for methods
      without one).
    - `proposed_substeps`: h / h' before rounding and capping (Fehlberg only; below
      1 / safety for accepted samples).
    """

    accepted: Bool[Array, " batch"]
    num_substeps: Int[Array, " batch"]
    num_rejected: Int[Array, " batch"]
    num_fn_evals: Int[Array, " batch"]
    error_rate: Float[Array, " batch"] | None = None
    proposed_substeps: Float[Array, " batch"] | None = None


class AbstractOneStep(eqx.Module):
    """Integrates an autonomous field over one sample step [0, h] for a batch of
    states: `step(f, x, target=None) -> (x_next, info)`.

    `f` maps `(batch, dim) -> (batch, dim)`; `x` has shape `(batch, dim)`; `info` is
    a [`tadiffeq.dynamics.OneStepInfo`][]. `target` (the true next state, shape of
    `x`) is used only by methods that read it in training (Fehlberg training).
    """

    h: eqx.AbstractVar[float]

    @abc.abstractmethod
    def __call__(
        self,
        f: BatchField,
        x: Float[Array, "batch dim"],
        target: Float[Array, "batch dim"] | None = None,
    ) -> tuple[Float[Array, "batch dim"], OneStepInfo]:
        """The state after one step of size `h`, and what the method did."""


def check_batch(x: Array, target: Array | None, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name}: `x` must have shape (batch, dim), got {x.shape}.")
    if target is not None and target.shape != x.shape:
        raise ValueError(
            f"{name}: `target` must have the shape of `x` {x.shape}, got "
            f"{target.shape}."
        )


def rk4_update(f: BatchField, x: Array, h) -> Array:
    """One classical fourth-order Runge--Kutta step of size `h` (scalar or per
    sample, shape `(batch, 1)`)."""
    k1 = f(x)
    k2 = f(x + h / 2 * k1)
    k3 = f(x + h / 2 * k2)
    k4 = f(x + h * k3)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


class RK4Step(AbstractOneStep):
    """The fixed-step classical RK4 method: `num_substeps` uniform steps of size
    `h / num_substeps` (4 evaluations each).

    **Arguments:**

    - `h`: the sample step (default 1).
    - `num_substeps`: steps per sample step (default 1).
    """

    h: float = eqx.field(static=True, default=1.0)
    num_substeps: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        check_float("h", self.h, owner="RK4Step", low=0.0, low_open=True)
        check_positive_int("num_substeps", self.num_substeps)

    def __call__(
        self,
        f: BatchField,
        x: Float[Array, "batch dim"],
        target: Float[Array, "batch dim"] | None = None,
    ) -> tuple[Float[Array, "batch dim"], OneStepInfo]:
        check_batch(x, target, "RK4Step")
        hs = self.h / self.num_substeps
        for _ in range(self.num_substeps):
            x = rk4_update(f, x, hs)
        batch = x.shape[0]
        info = OneStepInfo(
            accepted=jnp.ones(batch, bool),
            num_substeps=jnp.full(batch, self.num_substeps, jnp.int32),
            num_rejected=jnp.zeros(batch, jnp.int32),
            num_fn_evals=jnp.full(batch, 4 * self.num_substeps, jnp.int32),
        )
        return x, info


def rollout(
    step: AbstractOneStep,
    f: BatchField,
    x0: Float[Array, "batch dim"],
    num_steps: int,
) -> tuple[Float[Array, "batch steps_plus_1 dim"], OneStepInfo]:
    """A free run: `num_steps` applications of `step` from `x0`, each from the
    previous prediction (no target).

    Returns the trajectory `(batch, num_steps + 1, dim)` (index 0 is `x0`) and the
    steps' [`tadiffeq.dynamics.OneStepInfo`][] with leaves of shape
    `(num_steps, batch)`.
    """
    check_batch(x0, None, "rollout")
    check_positive_int("num_steps", num_steps)

    def body(x, _):
        x_next, info = step(f, x)
        return x_next, (x_next, info)

    _, (xs, infos) = jax.lax.scan(body, x0, None, length=num_steps)
    traj = jnp.concatenate([x0[None], xs], axis=0)
    return jnp.swapaxes(traj, 0, 1), infos
