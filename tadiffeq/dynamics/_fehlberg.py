"""Fehlberg's embedded 3(2) step with the study's step-size rule, and its training
variant that reads the target in the error estimate (Allauzen, Dardis and Plath,
2022)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._misc import check_float, check_positive_int
from ._onestep import AbstractOneStep, BatchField, check_batch, OneStepInfo


_MODES = ("naive", "fehlberg")


def heun_rk3(f: BatchField, x: Array, h) -> tuple[Array, Array]:
    """`(A1, A2)`: Heun's (RK2) and the RK3 result of one step of size `h` (scalar or
    `(batch, 1)`), from the three evaluations f1 = f(x), f2 = f(x + h f1),
    f3 = f(x + h/4 (f1 + f2))."""
    f1 = f(x)
    f2 = f(x + h * f1)
    f3 = f(x + h / 4 * (f1 + f2))
    a1 = x + h / 2 * (f1 + f2)
    a2 = x + h / 6 * (f1 + f2 + 4 * f3)
    return a1, a2


class FehlbergStep(AbstractOneStep):
    r"""One sample step of Fehlberg's 3(2) method with the study's step-size rule.

    From f1 = f(x), f2 = f(x + h f1), f3 = f(x + h/4 (f1 + f2)):
    A1 = x + h/2 (f1 + f2) (Heun) and A2 = x + h/6 (f1 + f2 + 4 f3) (RK3). The error
    rate is the L1 norm r = sum_i |A1_i - A2_i| / h. A sample with r < eps returns
    A2. Otherwise the step is redone with n = ceil(h / h') uniform RK3 substeps of
    size h / n, where h' = safety * h * sqrt(eps / r), capped at `max_substeps`;
    with `shared=True` the rejected samples of the batch share the smallest h' (the
    study's batch rule), else each sample has its own (a batch of independent
    single-sample solves, as in inference).

    `mode="naive"` is the standard rule (training through the solver as is, and
    inference). `mode="fehlberg"` is the study's "Fehlberg training": A1 is replaced
    by the target (the true next state) in the error estimate,
    r = sum_i |target_i - A2_i| / h, so the examples the model still gets wrong are
    integrated with substeps. It needs `target` and is meant for training only.

    r decides only the discrete accept/substep choices, so its gradient is stopped
    (in both modes): the gradient flows through the RK3 evaluations actually used,
    never into `target`. The substeps run as a `fori_loop` of `max_substeps`
    iterations with per-sample masking, each iteration under a `lax.cond` (skipped
    past the largest n) and `jax.checkpoint`: a step compiles once whatever the
    substep counts, and forward and reverse passes cost only the substeps run.

    **Arguments:**

    - `eps`: the tolerance on r (default 0.1).
    - `mode`: `"naive"` (default) or `"fehlberg"`.
    - `h`: the sample step (default 1: time rescaled so one sample is one unit).
    - `safety`: the safety factor S (default 0.9).
    - `max_substeps`: the cap on n (default 10, i.e. h' >= h / 10).
    - `shared`: rejected samples share the smallest h' (default `True`).

    **Returns:** `(x_next, info)`, `x_next` of the shape of `x` `(batch, dim)` and a
    [`tadiffeq.dynamics.OneStepInfo`][] with the per-sample `error_rate` r,
    `accepted`, `num_substeps` (1 if accepted, else n), `proposed_substeps`
    (h / h' = sqrt(r / eps) / safety, before rounding) and `num_fn_evals`
    (3, plus 3 n when rejected).

    ??? cite "Reference"

        ```bibtex
        @inproceedings{allauzen2022experimental,
            title={Experimental study of Neural {ODE} training with adaptive solver
                   for dynamical systems modeling},
            author={Allauzen, Alexandre and Dardis, Thiago Petrilli Maffei and
                    Plath, Hannah},
            booktitle={NeurIPS 2022 Workshop on Deep Learning and Differential
                       Equations},
            year={2022}
        }
        @techreport{fehlberg1969low,
            title={Low-order classical {Runge-Kutta} formulas with stepsize control
                   and their application to some heat transfer problems},
            author={Fehlberg, Erwin},
            institution={NASA},
            number={TR R-315},
            year={1969}
        }
        ```
    """

    eps: float = eqx.field(static=True, default=0.1)
    mode: str = eqx.field(static=True, default="naive")
    h: float = eqx.field(static=True, default=1.0)
    safety: float = eqx.field(static=True, default=0.9)
    max_substeps: int = eqx.field(static=True, default=10)
    shared: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}, got {self.mode!r}.")
        for name in ("eps", "h", "safety"):
            check_float(name, getattr(self, name), owner="FehlbergStep", low=0.0,
                        low_open=True)  # fmt: skip
        check_positive_int("max_substeps", self.max_substeps)

    def __call__(
        self,
        f: BatchField,
        x: Float[Array, "batch dim"],
        target: Float[Array, "batch dim"] | None = None,
    ) -> tuple[Float[Array, "batch dim"], OneStepInfo]:
        check_batch(x, target, "FehlbergStep")
        if self.mode == "fehlberg" and target is None:
            raise ValueError(
                "FehlbergStep(mode='fehlberg') reads the true next state in its error "
                "estimate: pass `target` (training only; infer with mode='naive')."
            )
        h = self.h
        a1, a2 = heun_rk3(f, x, h)
        # (mode="fehlberg" has a target, checked above)
        reference = target if self.mode == "fehlberg" and target is not None else a1
        r = jax.lax.stop_gradient(jnp.sum(jnp.abs(reference - a2), axis=-1) / h)
        accepted = r < self.eps
        # h / h' = sqrt(r / eps) / S; a non-finite r (a diverged model) takes the cap.
        proposed = jnp.sqrt(r / self.eps) / self.safety
        n = jnp.where(
            jnp.isfinite(proposed),
            jnp.clip(jnp.ceil(proposed), 1, self.max_substeps),
            self.max_substeps,
        ).astype(jnp.int32)
        n = jnp.where(accepted, 0, n)  # substeps to run: 0 for accepted samples
        if self.shared:  # the smallest h' among the rejected samples
            n = jnp.where(accepted, 0, jnp.max(n))
        hs = (h / jnp.maximum(n, 1))[:, None].astype(x.dtype)
        n_max = jnp.max(n)

        # One substep for the samples that still need it. Each substep of the loop
        # runs under `lax.cond` (skipped past the largest n) and `jax.checkpoint`, so
        # reverse mode keeps only the state per substep and costs only the substeps
        # actually run, while the loop has a static length (it compiles once).
        @jax.checkpoint
        def substep(i, y):
            _, y_next = heun_rk3(f, y, hs)
            return jnp.where((i < n)[:, None], y_next, y)

        def body(i, y):
            return jax.lax.cond(i < n_max, substep, lambda i, y: y, i, y)

        y = jax.lax.fori_loop(0, self.max_substeps, body, x)
        x_next = jnp.where(accepted[:, None], a2, y)
        info = OneStepInfo(
            accepted=accepted,
            num_substeps=jnp.where(accepted, 1, n),
            num_rejected=(~accepted).astype(jnp.int32),
            num_fn_evals=3 + 3 * n,
            error_rate=r,
            proposed_substeps=proposed,
        )
        return x_next, info
