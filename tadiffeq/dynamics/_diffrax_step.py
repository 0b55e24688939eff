"""A one-sample-step integrator that is diffrax's own adaptive path: an embedded
Runge--Kutta pair with a PID step-size controller over [0, h]."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._misc import check_float, check_positive_int
from ._onestep import AbstractOneStep, BatchField, check_batch, OneStepInfo


# name -> (solver, new evaluations per attempted step; one more to start: FSAL)
_SOLVERS = {
    "dopri5": (dfx.Dopri5, 6),
    "tsit5": (dfx.Tsit5, 6),
    "bosh3": (dfx.Bosh3, 3),
}


class DiffraxStep(AbstractOneStep):
    """One sample step with `diffrax.diffeqsolve`: `solver` with a
    `diffrax.PIDController(rtol, atol)` over [0, h], first step `dt0`.

    With `per_sample=True` each sample is its own solve (vmapped), so each gets its
    own step sizes, as a per-example adaptive solver would. With `per_sample=False`
    the batch is one system `y` of shape `(batch, dim)` (diffrax's usual way to
    batch, and much cheaper to differentiate): one sequence of steps for the whole
    batch, accepted on the RMS norm of the scaled error over every sample and
    coordinate.

    `info.accepted` is "solved in one step of size h" (one attempt, kept),
    `num_substeps` the accepted steps, `num_rejected` the rejected ones and
    `num_fn_evals` 1 + (evaluations per step) x (all attempts) (FSAL).

    **Arguments:**

    - `solver`: `"dopri5"` (default), `"tsit5"` or `"bosh3"`.
    - `rtol`, `atol`: the controller's tolerances (default 1e-3, 1e-6: scipy's
      defaults).
    - `h`: the sample step (default 1).
    - `dt0`: the first step tried (default `None`: `h`).
    - `max_steps`: per sample step (default 64); reverse-mode differentiation goes
      through `diffrax.RecursiveCheckpointAdjoint` (which has no forward mode).
    - `per_sample`: a solve per sample (default `True`) or one for the batch.
    - `forward_mode`: differentiate in forward mode (`jax.jvp`, e.g. for Lyapunov
      exponents) through `diffrax.ForwardMode` instead of reverse mode (default
      `False`).
    - `throw`: raise if a solve fails (default `True`); with `False` a failed sample
      returns non-finite values (diffrax's behaviour), which a loss will show.
    """

    solver: str = eqx.field(static=True, default="dopri5")
    rtol: float = eqx.field(static=True, default=1e-3)
    atol: float = eqx.field(static=True, default=1e-6)
    h: float = eqx.field(static=True, default=1.0)
    dt0: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=64)
    per_sample: bool = eqx.field(static=True, default=True)
    forward_mode: bool = eqx.field(static=True, default=False)
    throw: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if self.solver not in _SOLVERS:
            raise ValueError(
                f"`solver` must be one of {sorted(_SOLVERS)}, got {self.solver!r}."
            )
        for name in ("rtol", "atol", "h"):
            check_float(name, getattr(self, name), owner="DiffraxStep", low=0.0,
                        low_open=True)  # fmt: skip
        if self.dt0 is not None:
            check_float("dt0", self.dt0, owner="DiffraxStep", low=0.0, low_open=True)
        check_positive_int("max_steps", self.max_steps, owner="DiffraxStep")

    def __call__(
        self,
        f: BatchField,
        x: Float[Array, "batch dim"],
        target: Float[Array, "batch dim"] | None = None,
    ) -> tuple[Float[Array, "batch dim"], OneStepInfo]:
        check_batch(x, target, "DiffraxStep")
        cls, evals = _SOLVERS[self.solver]
        controller = dfx.PIDController(rtol=self.rtol, atol=self.atol)
        adjoint = dict(adjoint=dfx.ForwardMode()) if self.forward_mode else {}

        def solve(field, y0):
            sol = dfx.diffeqsolve(
                dfx.ODETerm(lambda t, y, args: field(y)),
                cls(),
                0.0,
                self.h,
                self.h if self.dt0 is None else self.dt0,
                y0,
                saveat=dfx.SaveAt(t1=True),
                stepsize_controller=controller,
                max_steps=self.max_steps,
                throw=self.throw,
                **adjoint,  # pyright: ignore[reportArgumentType]
            )
            n_acc = sol.stats["num_accepted_steps"]
            n_rej = sol.stats["num_rejected_steps"]
            assert sol.ys is not None  # SaveAt(t1=True)
            return sol.ys[-1], n_acc, n_rej

        if self.per_sample:
            single = lambda y: f(y[None])[0]
            y1, n_acc, n_rej = jax.vmap(lambda y0: solve(single, y0))(x)
        else:
            y1, n_acc, n_rej = solve(f, x)
            n_acc = jnp.broadcast_to(n_acc, x.shape[:1])
            n_rej = jnp.broadcast_to(n_rej, x.shape[:1])
        n_acc = n_acc.astype(jnp.int32)
        n_rej = n_rej.astype(jnp.int32)
        info = OneStepInfo(
            accepted=(n_acc == 1) & (n_rej == 0),
            num_substeps=n_acc,
            num_rejected=n_rej,
            num_fn_evals=1 + evals * (n_acc + n_rej),
        )
        return y1, info
