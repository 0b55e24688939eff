"""Metrics for chaotic forecasts: valid prediction time, Lyapunov exponents by the
Benettin/QR method, and long-run attractor statistics."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._misc import check_float, check_int
from ._lorenz import LORENZ63_LYAPUNOV_EXPONENT


def attractor_scale(x: ArrayLike) -> Float[Array, ""]:
    """sqrt(mean ||x - mean(x)||^2) over every sample of `x` `(..., dim)`: the
    attractor's root-mean-square distance to its mean."""
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"`x` must have shape (..., samples, dim), got {x.shape}.")
    x = x.reshape(-1, x.shape[-1])
    return jnp.sqrt(jnp.mean(jnp.sum((x - x.mean(0)) ** 2, axis=-1)))


def normalised_error(
    pred: ArrayLike, true: ArrayLike, *, scale: ArrayLike | None = None
) -> Float[Array, "*batch time"]:
    """||pred - true|| / scale at every time, for `pred`, `true` of shape
    `(..., time, dim)`; `scale` defaults to [`tadiffeq.dynamics.attractor_scale`][]
    of `true`."""
    pred, true = jnp.asarray(pred), jnp.asarray(true)
    if pred.shape != true.shape or pred.ndim < 2:
        raise ValueError(
            "`pred` and `true` must have the same shape (..., time, dim), got "
            f"{pred.shape} and {true.shape}."
        )
    scale = attractor_scale(true) if scale is None else jnp.asarray(scale)
    return jnp.linalg.norm(pred - true, axis=-1) / scale


def valid_prediction_time(
    pred: ArrayLike,
    true: ArrayLike,
    *,
    dt: float,
    threshold: float = 0.4,
    lyapunov_exponent: float = LORENZ63_LYAPUNOV_EXPONENT,
    scale: ArrayLike | None = None,
) -> Float[Array, "*batch"]:
    r"""The valid prediction time of forecasts, in Lyapunov times.

    `pred` and `true` have shape `(..., time, dim)` and are aligned on the times
    t_k = k dt (usually index 0 is the shared initial condition). The normalised
    error is e_k = ||pred_k - true_k|| / scale, with
    scale = sqrt(mean over the true attractor of ||x - mean||^2) (the common
    definition of Pathak et al. 2018 and Vlachas et al. 2020); by default the
    attractor sample is `true` itself (all its leading axes), else pass `scale`
    (e.g. [`tadiffeq.dynamics.attractor_scale`][] of a long true run).

    The VPT is t_k* lambda, with k* the first index where e_k > `threshold` (a
    non-finite prediction counts as above it); a forecast that never exceeds it gets
    the lower bound k* = time (its length).

    **Arguments:**

    - `pred`, `true`: forecasts and truth, `(..., time, dim)`.
    - `dt`: the time between samples (time units of the system).
    - `threshold`: on the normalised error (default 0.4).
    - `lyapunov_exponent`: lambda, per time unit (default Lorenz'63's 0.9056).
    - `scale`: the normalisation (default: from `true`).

    **Returns:** the VPT in Lyapunov times, shape `(...)`.

    ??? cite "Reference"

        ```bibtex
        @article{vlachas2020backpropagation,
            title={Backpropagation algorithms and Reservoir Computing in Recurrent
                   Neural Networks for the forecasting of complex spatiotemporal
                   dynamics},
            author={Vlachas, P. R. and Pathak, J. and Hunt, B. R. and Sapsis, T. P. and
                    Girvan, M. and Ott, E. and Koumoutsakos, P.},
            journal={Neural Networks},
            volume={126},
            pages={191--217},
            year={2020}
        }
        ```
    """
    for name, value in (
        ("dt", dt),
        ("threshold", threshold),
        ("lyapunov_exponent", lyapunov_exponent),
    ):
        check_float(name, value, owner="valid_prediction_time", low=0.0, low_open=True)
    err = normalised_error(pred, true, scale=scale)
    bad = ~(err <= threshold)  # NaN and inf count as failures
    steps = jnp.where(jnp.any(bad, axis=-1), jnp.argmax(bad, axis=-1), err.shape[-1])
    return steps * dt * lyapunov_exponent


def lyapunov_spectrum(
    step_fn: Callable[[Float[Array, " dim"]], Float[Array, " dim"]],
    x0: ArrayLike,
    n_steps: int,
    dt: float,
    *,
    num_exponents: int | None = None,
    transient: int = 0,
) -> Float[Array, " k"]:
    r"""The leading Lyapunov exponents of the map `x -> step_fn(x)` (one sample step
    of length `dt` time units), by the Benettin/QR method.

    From `x0`, `transient + n_steps` steps are taken; every step pushes `k` tangent
    vectors (initially the first `k` unit vectors) through the map's Jacobian with
    `jax.linearize` (forward mode), re-orthonormalises them by a QR decomposition
    and, after the first `transient` steps, accumulates log |R_ii|. The exponents
    are the sums divided by `n_steps * dt`, per time unit, in decreasing order. A map
    that diverges gives non-finite values.

    **Arguments:**

    - `step_fn`: one step, `(dim,) -> (dim,)`, differentiable.
    - `x0`: the initial state `(dim,)` (best on the attractor).
    - `n_steps`: steps over which the exponents are averaged.
    - `dt`: time per step (time units).
    - `num_exponents`: k (default `dim`: the whole spectrum).
    - `transient`: steps taken first without averaging, to align the vectors
      (default 0).

    ??? cite "Reference"

        ```bibtex
        @article{benettin1980lyapunov,
            title={Lyapunov characteristic exponents for smooth dynamical systems and
                   for Hamiltonian systems; a method for computing all of them},
            author={Benettin, Giancarlo and Galgani, Luigi and Giorgilli, Antonio and
                    Strelcyn, Jean-Marie},
            journal={Meccanica},
            volume={15},
            pages={9--20},
            year={1980}
        }
        ```
    """
    x0 = jnp.asarray(x0)
    if x0.ndim != 1:
        raise ValueError(f"`x0` must have shape (dim,), got {x0.shape}.")
    dim = x0.shape[0]
    k = dim if num_exponents is None else num_exponents
    check_int("n_steps", n_steps, owner="lyapunov_spectrum", minimum=1)
    check_int("transient", transient, owner="lyapunov_spectrum")
    check_int("num_exponents", k, owner="lyapunov_spectrum", minimum=1)
    if k > dim:
        raise ValueError(f"`num_exponents` must be at most dim = {dim}, got {k}.")
    check_float("dt", dt, owner="lyapunov_spectrum", low=0.0, low_open=True)

    def body(carry, i):
        x, q, total = carry
        x_next, jvp = jax.linearize(step_fn, x)
        v = jax.vmap(jvp, in_axes=1, out_axes=1)(q)
        q, r = jnp.linalg.qr(v)
        growth = jnp.log(jnp.abs(jnp.diagonal(r)))
        total = total + jnp.where(i >= transient, growth, 0.0)
        return (x_next, q, total), None

    q0 = jnp.eye(dim, k, dtype=x0.dtype)
    init = (x0, q0, jnp.zeros(k, x0.dtype))
    (_, _, total), _ = jax.lax.scan(body, init, jnp.arange(transient + n_steps))
    return total / (n_steps * dt)


def largest_lyapunov_exponent(
    step_fn: Callable[[Float[Array, " dim"]], Float[Array, " dim"]],
    x0: ArrayLike,
    n_steps: int,
    dt: float,
    *,
    transient: int = 0,
) -> Float[Array, ""]:
    """The largest Lyapunov exponent of `step_fn` (per time unit): the first of
    [`tadiffeq.dynamics.lyapunov_spectrum`][] with one tangent vector (renormalised
    every step)."""
    return lyapunov_spectrum(
        step_fn, x0, n_steps, dt, num_exponents=1, transient=transient
    )[0]


class AttractorStatistics(eqx.Module):
    """Per-coordinate statistics of a long run.

    - `mean`, `std`: `(dim,)`.
    - `histograms`: `(dim, bins)`, the fraction of all samples in each bin (a row
      sums to less than 1 when samples fall outside the range).
    - `edges`: `(dim, bins + 1)`, the bin edges.
    - `finite`: whether every sample was finite (if not, the statistics are over the
      finite samples and the histograms count the others as outside).
    """

    mean: Float[Array, " dim"]
    std: Float[Array, " dim"]
    histograms: Float[Array, "dim bins"]
    edges: Float[Array, "dim bins_plus_1"]
    finite: bool


def attractor_statistics(
    x: ArrayLike,
    *,
    bins: int = 40,
    ranges: ArrayLike | None = None,
) -> AttractorStatistics:
    """Per-coordinate mean, standard deviation and histogram of the samples `x`
    `(..., dim)` (all leading axes pooled). `ranges` `(dim, 2)` fixes the histogram
    ranges (default: the samples' min and max); pass the truth's to compare two
    runs with [`tadiffeq.dynamics.histogram_distance`][]. Non-finite samples (a run
    that blew up) are left out of the statistics and counted outside the ranges.
    Computed with NumPy on the host (not traceable)."""
    check_int("bins", bins, owner="attractor_statistics", minimum=1)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"`x` must have shape (..., samples, dim), got {x.shape}.")
    x = x.reshape(-1, x.shape[-1])
    dim = x.shape[-1]
    finite_rows = np.all(np.isfinite(x), axis=-1)
    good = x[finite_rows]
    if ranges is None:
        if len(good) == 0:
            raise ValueError("`x` has no finite sample; pass `ranges`.")
        ranges = np.stack([good.min(0), good.max(0)], axis=-1)
    ranges = np.asarray(ranges, dtype=np.float64)
    if ranges.shape != (dim, 2) or np.any(ranges[:, 1] <= ranges[:, 0]):
        raise ValueError(
            f"`ranges` must have shape ({dim}, 2) with low < high, got {ranges}."
        )
    hists, edges = [], []
    for d in range(dim):
        counts, e = np.histogram(good[:, d], bins=bins, range=tuple(ranges[d]))
        hists.append(counts / len(x))
        edges.append(e)
    with np.errstate(over="ignore", invalid="ignore"):  # a run that blew up
        mean = good.mean(0) if len(good) else np.full(dim, np.nan)
        std = good.std(0) if len(good) else np.full(dim, np.nan)
    return AttractorStatistics(
        mean=jnp.asarray(mean),
        std=jnp.asarray(std),
        histograms=jnp.asarray(np.stack(hists)),
        edges=jnp.asarray(np.stack(edges)),
        finite=bool(finite_rows.all()),
    )


def histogram_distance(
    a: AttractorStatistics, b: AttractorStatistics
) -> Float[Array, " dim"]:
    """The total-variation distance between the per-coordinate distributions of two
    [`tadiffeq.dynamics.AttractorStatistics`][] binned alike: 0.5 sum |p - q| over
    the bins plus the mass outside the range (0: same histograms, 1: disjoint)."""
    if a.edges.shape != b.edges.shape or not np.allclose(a.edges, b.edges):
        raise ValueError(
            "`a` and `b` must share their bin edges (pass the same `ranges` and "
            "`bins` to attractor_statistics)."
        )
    p, q = a.histograms, b.histograms
    outside = jnp.abs(p.sum(-1) - q.sum(-1))
    return 0.5 * (jnp.sum(jnp.abs(p - q), axis=-1) + outside)
