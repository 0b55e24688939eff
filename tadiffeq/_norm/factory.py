"""Build a normalisation layer by name."""

from collections.abc import Callable

from .._misc import check_choice
from .base import AbstractNorm
from .identity import NoNorm
from .minibatch import MiniBatchNorm
from .popti import PopTIBatchNorm
from .tabn import TABatchNorm


def _tabn(interpolation: str) -> Callable[..., AbstractNorm]:
    def make(num_features, *, t0, t1, num_intervals, kernel_width, momentum, **kw):
        return TABatchNorm(
            num_features,
            t0=t0,
            t1=t1,
            num_intervals=num_intervals,
            interpolation=interpolation,
            kernel_width=kernel_width if interpolation == "gaussian" else None,
            momentum=momentum,
            **kw,
        )

    return make


def _popti(num_features, *, momentum, **kw):
    return PopTIBatchNorm(num_features, momentum=momentum, **kw)


def _minibatch(num_features, **kw):
    return MiniBatchNorm(num_features, **kw)


def _none(num_features, *, channel_axis, **kw):
    return NoNorm(num_features, channel_axis)


_GRID_KEYS = (
    "t0", "t1", "num_intervals", "kernel_width", "coverage_aware", "min_coverage"
)  # fmt: skip
_MAKERS: dict[str, tuple[Callable[..., AbstractNorm], tuple[str, ...]]] = {
    # name: (constructor, the keyword arguments it takes)
    "tabn": (
        _tabn("linear"),
        _GRID_KEYS + ("momentum", "eps", "channel_axis", "dtype"),
    ),
    "tabn_nearest": (
        _tabn("nearest"),
        _GRID_KEYS + ("momentum", "eps", "channel_axis", "dtype"),
    ),
    "tabn_gaussian": (
        _tabn("gaussian"),
        _GRID_KEYS + ("momentum", "eps", "channel_axis", "dtype"),
    ),
    "popti": (_popti, ("momentum", "eps", "channel_axis", "dtype")),
    "minibatch": (_minibatch, ("eps", "channel_axis", "dtype")),
    "none": (_none, ("channel_axis",)),
}

#: The names `make_norm` accepts.
NORM_NAMES: tuple[str, ...] = tuple(_MAKERS)


def make_norm(
    name: str,
    num_features: int,
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    num_intervals: int = 100,
    kernel_width: float | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
    channel_axis: int = -1,
    dtype=None,
    coverage_aware: bool = True,
    min_coverage: float | None = None,
) -> AbstractNorm:
    """Builds a normalisation layer by name.

    **Arguments:**

    - `name`: one of `"tabn"` (TA-BN, linear interpolation), `"tabn_nearest"`
      (nearest grid point), `"tabn_gaussian"` (Gaussian kernel), `"popti"` (Pop-TI
      BN), `"minibatch"` (mini-batch BN) or `"none"` (identity).
    - `num_features`: number of channels C.
    - the remaining keywords configure the layer; those that do not apply to the
      chosen layer (e.g. `num_intervals` for `"popti"`) are ignored;
      `coverage_aware` and `min_coverage` are TA-BN's (see
      [`tadiffeq.TABatchNorm`][]).

    **Returns:** an [`tadiffeq.AbstractNorm`][].
    """
    try:
        maker, keys = _MAKERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown normalisation name {name!r}; expected one of {list(NORM_NAMES)}."
        ) from None
    given = dict(
        t0=t0,
        t1=t1,
        num_intervals=num_intervals,
        kernel_width=kernel_width,
        momentum=momentum,
        eps=eps,
        channel_axis=channel_axis,
        dtype=dtype,
        coverage_aware=coverage_aware,
        min_coverage=min_coverage,
    )
    return maker(num_features, **{k: given[k] for k in keys})


NormSpec = str | Callable[[int], AbstractNorm]


def resolve_norm(
    norm: NormSpec, num_features: int, norm_kwargs: dict | None
) -> AbstractNorm:
    """A layer from a name (with `norm_kwargs` for `make_norm`) or from a callable
    `num_features -> AbstractNorm`."""
    if isinstance(norm, str):
        check_choice("norm", norm, NORM_NAMES)
        return make_norm(norm, num_features, **(norm_kwargs or {}))
    if callable(norm):
        if norm_kwargs:
            raise ValueError("`norm_kwargs` only applies when `norm` is a name.")
        layer = norm(num_features)
        if not isinstance(layer, AbstractNorm):
            raise TypeError(
                f"`norm` must return an AbstractNorm, got {type(layer).__name__}."
            )
        return layer
    raise TypeError(
        f"`norm` must be a name in {list(NORM_NAMES)} or a callable, got {norm!r}."
    )
