"""Matrix FLOPs of one vector-field evaluation, and the matrix-product rate the
device reaches, for the achieved-FLOP/s columns of `bench_vs_torch.py`.

Counted: the multiply-adds (2 FLOPs each) of every convolution and every matrix
product (`dot_general`) of one field evaluation at a given batch; elementwise work
(normalisation, ReLU, the Runge--Kutta sums) is not. A convolution counts only the
kernel taps that read a real input pixel: not the zero padding, nor the holes of an
input dilation (so a stride-2 transposed conv counts what `ConvTranspose2d` does,
not 4x that). The field is traced once at top level with `impl="xla"`, so its convs
appear as `conv_general_dilated` whatever implementation a backend runs; the count
is the model's, the same for JAX (any impl) and the torch reference.
"""

import math
import os
import statistics

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

import tadiffeq as td

from . import _common as C


def conv_flops(lhs_shape, rhs_shape, out_shape, params) -> int:
    """FLOPs of one `conv_general_dilated` (its jaxpr parameters)."""
    dn = params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    batch = lhs_shape[lhs_spec[0]] // params.get("batch_group_count", 1)
    groups = params["feature_group_count"]
    cin = lhs_shape[lhs_spec[1]] // groups
    cout = rhs_shape[rhs_spec[0]]
    ndim = len(lhs_spec) - 2
    lhs_dil = params["lhs_dilation"] or (1,) * ndim
    rhs_dil = params["rhs_dilation"] or (1,) * ndim
    taps = 1
    for d in range(ndim):
        taps *= int(
            td.tap_mask(
                lhs_shape[lhs_spec[2 + d]],
                rhs_shape[rhs_spec[2 + d]],
                params["window_strides"][d],
                params["padding"][d][0],
                lhs_dil[d],
                out_shape[out_spec[2 + d]],
                kernel_dilation=rhs_dil[d],
            ).sum()
        )
    return 2 * batch * cin * cout * taps


def dot_flops(lhs_shape, rhs_shape, params) -> int:
    """FLOPs of one `dot_general`: 2 x batch x free(lhs) x free(rhs) x contracted."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    contracted = math.prod(lhs_shape[d] for d in lc)
    batch = math.prod(lhs_shape[d] for d in lb)
    free_l = math.prod(s for d, s in enumerate(lhs_shape) if d not in (*lc, *lb))
    free_r = math.prod(s for d, s in enumerate(rhs_shape) if d not in (*rc, *rb))
    return 2 * batch * free_l * free_r * contracted


def _sub_jaxprs(params):
    for v in params.values():
        for item in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(item, jex_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex_core.Jaxpr):
                yield item


def jaxpr_flops(jaxpr) -> dict[str, int]:
    """`{"conv": ..., "dot": ...}` FLOPs of a jaxpr, sub-jaxprs included (a `scan`
    body counted `length` times, a `cond` by its costliest branch). Raises on a
    `while` loop, whose trip count is not static."""
    total = {"conv": 0, "dot": 0}
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        shapes = [v.aval.shape for v in eqn.invars]
        if name == "conv_general_dilated":
            total["conv"] += conv_flops(*shapes, eqn.outvars[0].aval.shape, eqn.params)
        elif name == "dot_general":
            total["dot"] += dot_flops(*shapes, eqn.params)
        elif name == "while":
            raise ValueError("jaxpr_flops: a `while` loop has no static trip count.")
        elif name == "cond":  # the costliest branch
            branch = [jaxpr_flops(b.jaxpr) for b in eqn.params["branches"]]
            best = max(branch, key=lambda d: d["conv"] + d["dot"])
            for k, v in best.items():
                total[k] += v
        else:
            times = eqn.params["length"] if name == "scan" else 1
            for sub in _sub_jaxprs(eqn.params):
                for k, v in jaxpr_flops(sub).items():
                    total[k] += times * v
    return total


def field_flops(field, state, y) -> dict[str, int]:
    """Matrix FLOPs of one evaluation `field(t, y, state)` on the batched state `y`
    (`{"conv", "dot", "total"}`). The field is traced with the XLA convolution
    (`TADIFFEQ_CONV_IMPL=xla`) so that every conv is counted as one."""
    state = td.clone_state(state)  # the caller's `state` stays usable
    old = os.environ.get("TADIFFEQ_CONV_IMPL")
    os.environ["TADIFFEQ_CONV_IMPL"] = "xla"
    try:
        closed = jax.make_jaxpr(lambda t, y: field(t, y, state)[0])(0.5, y)
    finally:
        if old is None:
            del os.environ["TADIFFEQ_CONV_IMPL"]
        else:
            os.environ["TADIFFEQ_CONV_IMPL"] = old
    out = jaxpr_flops(closed.jaxpr)
    out["total"] = out["conv"] + out["dot"]
    return out


def matmul_gflops(n: int | None = None, repeats: int = 10) -> dict:
    """The float32 matrix-product rate JAX reaches on its default device, from
    `repeats` timed `(n, n) @ (n, n)` products (n = 2048 on CPU, 8192 on
    accelerators): `{"n", "gflops"}` from the median time and `"best_gflops"` from
    the fastest (the practical ceiling the field's rate is compared with)."""
    if n is None:
        n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    C.block(f(a))
    times = [C.timed(lambda: C.block(f(a)))[0] for _ in range(repeats)]
    flop = 2 * n**3
    return dict(
        n=n,
        gflops=flop / statistics.median(times) / 1e9,
        best_gflops=flop / min(times) / 1e9,
    )
