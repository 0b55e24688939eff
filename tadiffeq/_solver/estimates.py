"""The error and stiffness estimates of one explicit Runge--Kutta step."""

from collections.abc import Callable

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx

from .._custom_types import Scalar, Y
from .tableau import RKTableau, stage_sum


def scaled_error(
    y0: Y,
    y1: Y,
    y_error: Y,
    rtol: float,
    atol: float,
    norm: Callable = optx.rms_norm,
) -> Scalar:
    """The step-size controller's scaled error of a step,
    `norm(y_error / (atol + rtol * max(|y0|, |y1|)))`, exactly as
    `diffrax.PIDController` computes it (a step is accepted when it is below 1).
    Differentiable."""
    if y_error is None:
        raise ValueError("The solver gives no error estimate (`y_error` is None).")

    def scale(a, b, e):
        b = jnp.where(jnp.isnan(b).any(), a, b)
        return e / (atol + jnp.maximum(jnp.abs(a), jnp.abs(b)) * rtol)

    return norm(jtu.tree_map(scale, y0, y1, y_error))


def check_stiffness_tableau(tableau: RKTableau) -> None:
    """Stiffness needs the last two stages at the step's end time (dopri5, tsit5)."""
    c = tableau.c
    if tableau.num_stages < 3 or not (c[-1] == 1.0 and c[-2] == 1.0):
        raise ValueError(
            "The stiffness estimate needs a method whose last two stages are both at "
            "the end of the step (c_{s-1} = c_s = 1), such as diffrax.Dopri5 or "
            f"diffrax.Tsit5; got stage times c = {tuple(float(x) for x in c)}."
        )


def stiffness_estimate(
    tableau: RKTableau,
    ks: Y,
    dt,
    norm: Callable = optx.rms_norm,
    eps: float = 1e-6,
) -> Scalar:
    """Shampine's estimate of the dominant eigenvalue magnitude of the Jacobian from
    one step: `norm(f_s - f_{s-1}) / (norm(y1 - z_{s-1}) + eps)`, from the stage
    increments `ks` (k_i = f_i dt, stacked) of a step of size `dt`, with f_i the stage
    derivatives and z_{s-1} the input of the second-to-last stage (for dopri5 in the
    1-based notation of the papers: |k7 - k6| / |y1 - g6|). Both stages are at the
    end of the step, so the quotient is a difference quotient of f in y.

    `y1 - z_{s-1}` is computed as `sum_j (b_j - a_{s-1,j}) k_j` from the stage
    increments: the same value without subtracting two nearly equal states. Both
    differences are O(dt^2), so in float32 the estimate is reliable for steps of the
    size the step-size heuristic proposes (dt ~ 0.1 in our tests: under 1% off a
    float64 reference) and degrades below dt ~ 1e-2.
    """
    check_stiffness_tableau(tableau)
    coeffs = np.asarray(tableau.b) - np.asarray(tableau.a[-2])
    # dt = 0 (a step from t1, where the local regularizer clamps dt to t1 - t): every
    # k is 0, and so is the estimate, not 0 / 0.
    safe_dt = jnp.where(dt > 0, dt, 1.0)
    df = jtu.tree_map(lambda k: (k[-1] - k[-2]) / safe_dt, ks)
    return norm(df) / (norm(stage_sum(coeffs, ks)) + eps)


def real_stability_boundary(tableau: RKTableau, *, upper: float = 20.0) -> float:
    """The size of an explicit Runge--Kutta method's stability region along the
    negative real axis: the largest x with |R(-s)| <= 1 for all s in (0, x], where
    R(z) = 1 + z b^T (I - z A)^{-1} 1 = 1 + sum_k z^k b^T A^{k-1} 1 is its stability
    function (a polynomial: A is nilpotent). Computed from the tableau: dopri5
    3.3066, tsit5 3.5068, bosh3 2.5127."""
    a, b = np.asarray(tableau.a, float), np.asarray(tableau.b, float)
    coeffs, v = [1.0], np.ones(len(b))
    for _ in range(len(b)):
        coeffs.append(float(b @ v))
        v = a @ v
    poly = np.polynomial.Polynomial(coeffs)
    xs = np.linspace(0.0, upper, 400_001)[1:]
    bad = np.nonzero(np.abs(poly(-xs)) > 1.0 + 1e-12)[0]
    if len(bad) == 0:
        return upper
    lo, hi = (xs[bad[0] - 1] if bad[0] else 0.0), xs[bad[0]]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if abs(poly(-mid)) <= 1.0 else (lo, mid)
    return float(lo)
