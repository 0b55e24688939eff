"""Uniform time grids over an integration interval, and how a time t is spread over
their points.

A grid has M intervals (M + 1 points, both ends included) on [t0, t1]. Every grid
maps a time t to a weight vector w(t) of length M + 1 that sums to one. TA-BN reads its
statistics and affine parameters as the weighted sum w(t) @ buffer and updates each
grid point k with momentum eta * w_k(t). The weights are computed densely (no gathers
or scatters), which keeps the lookup a fused multiply-add on every backend.
"""

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from .._misc import check_float, check_scalar_time


def _check_interval(t0: float, t1: float, num_intervals: int) -> None:
    if isinstance(num_intervals, bool) or not isinstance(num_intervals, int):
        raise TypeError(
            f"`num_intervals` (M, the number of grid intervals) must be an int, got "
            f"{num_intervals!r}."
        )
    if num_intervals < 1:
        raise ValueError(
            f"`num_intervals` (M, the number of grid intervals) must be >= 1, got "
            f"{num_intervals}."
        )
    check_float("t0", t0)
    check_float("t1", t1)
    if not t0 < t1:
        raise ValueError(f"Need `t0 < t1` for a time grid, got t0={t0}, t1={t1}.")


class AbstractTimeGrid(eqx.Module):
    """A uniform grid of `num_intervals + 1` points on `[t0, t1]` and a rule that
    spreads a time `t` over the grid points.

    Subclasses implement `weights`. Times outside `[t0, t1]` are clamped to the end
    points.
    """

    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    num_intervals: int = eqx.field(static=True)

    name: ClassVar[str]

    def __check_init__(self):
        _check_interval(self.t0, self.t1, self.num_intervals)

    @property
    def num_points(self) -> int:
        """M + 1, the number of grid points."""
        return self.num_intervals + 1

    @property
    def spacing(self) -> float:
        """h = (t1 - t0) / M, the distance between neighbouring grid points."""
        return (self.t1 - self.t0) / self.num_intervals

    def points(self) -> Float[Array, " points"]:
        """The grid times t_k = t0 + k h, k = 0..M."""
        k = jnp.arange(self.num_points, dtype=jnp.result_type(float))
        return self.t0 + self.spacing * k

    def _position(self, t: ArrayLike) -> Float[Array, ""]:
        """s = (clamp(t) - t0) / h, the time in units of grid spacing, in [0, M]."""
        check_scalar_time(type(self).__name__, t)
        t = jnp.asarray(t)  # a float t keeps its dtype (no float64 in a float32 solve)
        if not jnp.issubdtype(t.dtype, jnp.floating):
            t = t.astype(jnp.result_type(float))
        t = eqx.error_if(t, jnp.isnan(t), f"{type(self).__name__}: `t` is NaN.")
        s = (t - self.t0) / self.spacing
        return jnp.clip(s, 0.0, float(self.num_intervals))

    @abc.abstractmethod
    def weights(self, t: ArrayLike) -> Float[Array, " points"]:
        """The weight of each grid point for time `t` (a scalar). Sums to one."""

    def covered_weights(
        self, t: ArrayLike, covered: Bool[Array, " points"]
    ) -> Float[Array, " points"]:
        """Weights for time `t` that use only the grid points where `covered` is
        true; they sum to one.

        The default masks `weights(t)` and renormalises it; where that leaves nothing
        (every point with weight is uncovered), all weight goes to the nearest covered
        point. With no point covered, or every point, it returns `weights(t)`
        ([`tadiffeq.LinearTimeGrid`][] interpolates between the nearest covered points
        instead).
        """
        s = self._position(t)
        w = self.weights(t)
        masked = jnp.where(covered, w, 0.0)
        total = jnp.sum(masked)
        nearest = _nearest_covered(s, covered)
        out = jnp.where(total > 0, masked / jnp.where(total > 0, total, 1.0), nearest)
        return jnp.where(jnp.any(covered) & ~jnp.all(covered), out, w)


class LinearTimeGrid(AbstractTimeGrid):
    """Linear interpolation between the two grid points around `t` (TA-BN, Eq. 7 of
    Zheng et al. 2024).

    For t_l <= t <= t_{l+1}: w_{l+1} = (t - t_l) / h, w_l = 1 - w_{l+1}; the *nearer*
    grid point gets the larger weight.
    """

    name: ClassVar[str] = "linear"

    def weights(self, t: ArrayLike) -> Float[Array, " points"]:
        s = self._position(t)
        k = jnp.arange(self.num_points, dtype=s.dtype)
        # Hat functions: exactly w_l, w_{l+1} as above and zero elsewhere.
        return jnp.maximum(0.0, 1.0 - jnp.abs(s - k))

    def covered_weights(
        self, t: ArrayLike, covered: Bool[Array, " points"]
    ) -> Float[Array, " points"]:
        """Linear interpolation between the nearest covered grid points on either side
        of `t` (points L <= s <= R in grid units: w_L = 1 - (s - L) / (R - L),
        w_R = 1 - (R - s) / (R - L)); all weight on the outermost covered point beyond
        it; `weights(t)` when no point is covered. With every point covered this is
        `weights(t)` exactly (the same floating-point operations)."""
        s = self._position(t)
        k = jnp.arange(self.num_points, dtype=s.dtype)
        m = self.num_intervals
        left = jnp.max(jnp.where(covered & (k <= s), k, -1.0))
        right = jnp.min(jnp.where(covered & (k >= s), k, m + 1.0))
        has_left, has_right = left >= 0, right <= m
        left = jnp.where(has_left, left, right)  # one side only: both ends on it
        right = jnp.where(has_right, right, left)
        span = right - left
        safe = jnp.where(span > 0, span, 1.0)
        w_left = jnp.where(span > 0, 1.0 - (s - left) / safe, 1.0)
        w_right = jnp.where(span > 0, 1.0 - (right - s) / safe, 0.0)
        w = jnp.where(k == left, w_left, 0.0) + jnp.where(k == right, w_right, 0.0)
        return jnp.where(has_left | has_right, w, self.weights(t))


class NearestTimeGrid(AbstractTimeGrid):
    """All weight on the nearest grid point (the paper's "euler" variant)."""

    name: ClassVar[str] = "nearest"

    def weights(self, t: ArrayLike) -> Float[Array, " points"]:
        s = self._position(t)
        k = jnp.arange(self.num_points, dtype=s.dtype)
        # Round half up, so that t exactly between two points goes to the later one.
        return (k == jnp.floor(s + 0.5)).astype(s.dtype)


class GaussianTimeGrid(AbstractTimeGrid):
    """Gaussian kernel smoothing over all grid points:
    w_k proportional to exp(-(t - t_k)^2 / (2 width^2)), normalised to sum to one.

    `width` is in time units; `None` means one grid spacing h.
    """

    width: float | None = eqx.field(static=True, default=None)

    name: ClassVar[str] = "gaussian"

    def __check_init__(self):
        _check_width(self.width, "width")

    def weights(self, t: ArrayLike) -> Float[Array, " points"]:
        s = self._position(t)
        k = jnp.arange(self.num_points, dtype=s.dtype)
        width = self.spacing if self.width is None else self.width
        z = (s - k) * (self.spacing / width)
        logits = -0.5 * z**2
        w = jnp.exp(logits - jnp.max(logits))
        return w / jnp.sum(w)


def _nearest_covered(
    s: Float[Array, ""], covered: Bool[Array, " points"]
) -> Float[Array, " points"]:
    """One-hot weights on the covered point nearest to position `s` (the earlier one
    on a tie); all zero when no point is covered."""
    k = jnp.arange(covered.shape[0], dtype=s.dtype)
    distance = jnp.where(covered, jnp.abs(s - k), jnp.inf)
    hit = (k == jnp.argmin(distance)) & jnp.any(covered)
    return hit.astype(s.dtype)


def _check_width(width: float | None, name: str) -> None:
    if width is not None and not (width > 0 and math.isfinite(width)):
        raise ValueError(f"`{name}` must be a positive float, got {width}.")


_GRIDS: dict[str, type[AbstractTimeGrid]] = {
    cls.name: cls for cls in (LinearTimeGrid, NearestTimeGrid, GaussianTimeGrid)
}


def make_time_grid(
    interpolation: str,
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    num_intervals: int = 100,
    width: float | None = None,
    width_name: str = "width",
) -> AbstractTimeGrid:
    """Builds a time grid by name: `"linear"`, `"nearest"` or `"gaussian"`.
    `width_name` is what errors call `width` (the caller's argument name)."""
    try:
        cls = _GRIDS[interpolation]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown `interpolation` {interpolation!r}; expected one of "
            f"{sorted(_GRIDS)}."
        ) from None
    _check_interval(t0, t1, num_intervals)
    if cls is GaussianTimeGrid:
        _check_width(width, width_name)
        return GaussianTimeGrid(float(t0), float(t1), num_intervals, width)
    if width is not None:
        raise ValueError(
            f"`{width_name}` only applies to interpolation='gaussian', not "
            f"{interpolation!r}."
        )
    return cls(float(t0), float(t1), num_intervals)
