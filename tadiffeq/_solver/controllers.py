"""diffrax step-size controllers as tadiffeq reads them: the PID controller inside
wrappers (e.g. `ClipStepSizeController`), and its tolerances checked."""

from collections.abc import Callable
from typing import cast

import diffrax as dfx
import equinox as eqx
import jax.core
import optimistix as optx

from .._misc import check_float


def pid_controller(controller) -> dfx.PIDController | None:
    """The `PIDController` that `controller` is or wraps (through `.controller`
    attributes), else `None`."""
    while not isinstance(controller, dfx.PIDController):
        controller = getattr(controller, "controller", None)
        if controller is None:
            return None
    return controller


def with_error_norm(controller, restrict):
    """`controller` whose PID error norm is `restrict(norm)` (rebuilt through any
    wrappers); a controller without one is returned as it is."""
    if isinstance(controller, dfx.PIDController):
        return eqx.tree_at(lambda c: c.norm, controller, restrict(controller.norm))
    inner = getattr(controller, "controller", None)
    if inner is None:
        return controller  # Not adaptive: no error norm to restrict.
    rebuilt = with_error_norm(inner, restrict)
    return eqx.tree_at(lambda c: c.controller, controller, rebuilt)


def check_tolerances(owner: str, rtol, atol) -> None:
    """A `ValueError` naming `owner` unless the given tolerances are finite and
    `>= 0` and not both zero (an error scale of zero makes every step fail; a
    negative one is meaningless). `None` (not given) and array-valued tolerances (per
    component, diffrax's to check) are skipped."""
    given = {}
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is None or getattr(value, "ndim", 0) != 0:
            continue
        v = check_float(name, value, owner=owner, low=0.0)  # (0-d arrays: their value)
        if isinstance(v, jax.core.Tracer):
            continue  # traced (a tolerance under jit): diffrax's to check
        given[name] = v
    if given.get("rtol") == 0 and given.get("atol") == 0:
        raise ValueError(
            f"{owner}: `rtol` and `atol` are both 0, so no step can ever be accepted."
        )


def controller_norm(controller: dfx.AbstractStepSizeController) -> Callable:
    """The error norm of the `PIDController` that `controller` is or wraps; RMS
    without one."""
    pid = pid_controller(controller)
    return optx.rms_norm if pid is None else pid.norm


def controller_tolerances(
    controller: dfx.AbstractStepSizeController,
    rtol: float | None,
    atol: float | None,
) -> tuple[float, float, Callable]:
    """`(rtol, atol, norm)`: the given tolerances, else those of the `PIDController`
    that `controller` is or wraps (the scaling its step-size control uses), with its
    error norm (RMS without one)."""
    pid = pid_controller(controller)
    if pid is not None:
        return (  # (diffrax types them RealScalarLike; tadiffeq's are floats)
            cast(float, pid.rtol) if rtol is None else rtol,
            cast(float, pid.atol) if atol is None else atol,
            pid.norm,
        )
    if rtol is None or atol is None:
        raise ValueError(
            "The solve has no PIDController to take `rtol` and `atol` from; pass "
            "them to the regularizer."
        )
    return rtol, atol, controller_norm(controller)
