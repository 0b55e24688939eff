"""The Lorenz'63 vector field."""

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._misc import check_float


#: Largest Lyapunov exponent of Lorenz'63 at sigma = 10, rho = 28, beta = 8/3, per
#: unit of time (Sprott, "Chaos and Time-Series Analysis", 2003: 0.9056).
LORENZ63_LYAPUNOV_EXPONENT = 0.9056


class Lorenz63(eqx.Module):
    r"""The Lorenz'63 vector field, autonomous:

    $\dot x_1 = \sigma (x_2 - x_1)$, $\dot x_2 = x_1 (\rho - x_3) - x_2$,
    $\dot x_3 = x_1 x_2 - \beta x_3$, all multiplied by `time_scale`.

    With `time_scale = dt` the field is the one in rescaled time s = t / dt, where one
    sample step `dt` of a trajectory is a step h = 1 (the setting of a Neural ODE
    trained on the samples with h = 1).

    **Arguments:**

    - `sigma`, `rho`, `beta`: the parameters (default 10, 28, 8/3: chaotic).
    - `time_scale`: multiplies the field (default 1).

    Called on `x` of shape `(..., 3)`, returns dx/dt of the same shape.

    ??? cite "Reference"

        ```bibtex
        @article{lorenz1963deterministic,
            title={Deterministic Nonperiodic Flow},
            author={Lorenz, Edward N.},
            journal={Journal of the Atmospheric Sciences},
            volume={20},
            number={2},
            pages={130--141},
            year={1963}
        }
        ```
    """

    sigma: float | Array = 10.0
    rho: float | Array = 28.0
    beta: float | Array = 8.0 / 3.0
    time_scale: float | Array = 1.0

    def __check_init__(self):
        # Python numbers are checked; arrays (traced or trained parameters) are not.
        for name in ("sigma", "rho", "beta", "time_scale"):
            value = getattr(self, name)
            if not hasattr(value, "shape"):
                low = 0.0 if name == "time_scale" else -math.inf
                check_float(name, value, owner="Lorenz63", low=low, low_open=True)

    def equilibria(self) -> Float[Array, "3 3"]:
        """The three equilibria, rows C+, C-, origin: C+- =
        (+-sqrt(beta (rho - 1)), +-sqrt(beta (rho - 1)), rho - 1) (real for
        rho >= 1; at the default parameters saddle-foci that repel at 0.094 per time
        unit while turning at 10.19), the origin a saddle."""
        c = jnp.sqrt(self.beta * (self.rho - 1.0))
        z = self.rho - 1.0
        return jnp.array([[c, c, z], [-c, -c, z], [0.0 * c, 0.0 * c, 0.0 * z]])

    def __call__(self, x: Float[Array, "*batch 3"]) -> Float[Array, "*batch 3"]:
        if x.shape[-1:] != (3,):
            raise ValueError(f"Lorenz63: `x` must have shape (..., 3), got {x.shape}.")
        x1, x2, x3 = x[..., 0], x[..., 1], x[..., 2]
        dx = jnp.stack(
            [
                self.sigma * (x2 - x1),
                x1 * (self.rho - x3) - x2,
                x1 * x2 - self.beta * x3,
            ],
            axis=-1,
        )
        return self.time_scale * dx
