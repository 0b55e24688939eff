"""STEER: stochastic end times (Ghosh et al., 2020)."""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Scalar
from .._misc import check_float
from .._solver.stateful import time_dtype
from .base import AbstractRegularizer, Plan, SolveResult, SolveSpec


class STEER(AbstractRegularizer):
    """STEER (Ghosh et al., NeurIPS 2020): each training solve integrates to a random
    end time `t1 + U(-b, b)` instead of `t1`. It adds no penalty
    (`stats.regularization` is 0); evaluation integrates to `t1` as usual. TA-BN
    layers clamp times past their grid to its end point.

    **Arguments:**

    - `b`: the half-width of the end-time perturbation, `0 < b < t1 - t0`.

    ??? cite "Reference"

        ```bibtex
        @inproceedings{ghosh2020steer,
            title={{STEER}: Simple Temporal Regularization For Neural {ODE}},
            author={Ghosh, Arnab and Behl, Harkirat and Dupont, Emilien and Torr,
                    Philip and Namboodiri, Vinay},
            booktitle={Advances in Neural Information Processing Systems},
            year={2020}
        }
        ```
    """

    b: float = eqx.field(static=True)

    def __check_init__(self):
        check_float("b", self.b, owner="STEER", low=0.0, low_open=True)

    def plan(self, *, spec: SolveSpec, y0, key) -> Plan:
        del y0
        if not self.b < spec.t1 - spec.t0:
            raise ValueError(
                f"STEER: `b` must be smaller than t1 - t0 = {spec.t1 - spec.t0}, got "
                f"{self.b}."
            )
        assert key is not None  # needs_key: the solve passes one
        t1 = spec.t1 + jax.random.uniform(key, (), minval=-self.b, maxval=self.b)
        return Plan(t1=t1)

    def finish(self, *, spec: SolveSpec, result: SolveResult) -> tuple[Scalar, int]:
        return jnp.zeros((), time_dtype(result.y1)), 0
