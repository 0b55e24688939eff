"""Each convolution of the 6-conv field alone, inside a loop: the library's two
implementations side by side.

For each conv of the 6-conv field (its geometry at the given batch), `--loop`
sequential forward passes, input gradients (dX) and weight gradients (dW) inside a
`lax.fori_loop`, median of `--repeats`, with `tadiffeq.conv2d`'s

- `impl="xla"`: `lax.conv_general_dilated`, channels-last (the GPU/TPU path);
- `impl="im2col"`: the CPU path, slices + one dot (sub-pixel decomposition for the
  stride-2 transposed convs), whose dX and dW are dots too;
- `torch` (with `--impls xla im2col torch`, when torch is installed): torch's own
  kernels for the same conv (`aten.convolution` and `aten.convolution_backward`,
  NCHW, oneDNN on CPU), `--loop` calls from Python: what a native conv would give.

All implementations of a layer are timed interleaved (one call of each in turn).

    python -m benchmarks.profile_conv --batch 32
    python -m benchmarks.profile_conv --batch 32 256 --repeats 5 --impls im2col torch
"""

import os
import statistics

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np

import tadiffeq as td

from . import _common as C


SPEC = [
    (32, 3, 32, "same"),
    (32, 32, 64, "down"),
    (16, 64, 128, "down"),
    (8, 128, 64, "up"),
    (16, 64, 32, "up"),
    (32, 32, 3, "same"),
]  # (input size, cin, cout, mode) of the 6-conv field on 32x32 images
IMPLS = ("xla", "im2col", "torch")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_vs_torch.py


def make_conv(mode, impl):
    stride, padding, dilation = td.conv_geometry(mode)
    return lambda x, w: td.conv2d(x, w, stride, padding, dilation, impl=impl)


def in_loop(g, n, *, update="a"):
    """`n` sequential calls of `g(a, b, ct)` inside a fori_loop. The carry feeds
    every input (x, w and the cotangent are rescaled by a carried scalar), so XLA
    cannot hoist any part of `g` out of the loop."""

    def run(a, b, ct):
        def body(_, carry):
            a, b, s = carry
            scale = 1.0 + 1e-6 * s
            out = g(a * scale, b * scale, ct * scale)
            s = s + jnp.mean(out)
            if update == "a":
                a = a + 1e-3 * out.astype(a.dtype)
            else:
                b = b + 1e-3 * out.astype(b.dtype)
            return a, b, s

        return lax.fori_loop(0, n, body, (a, b, jnp.zeros((), a.dtype)))

    return jax.jit(run)


def loop_w(g, n):
    return in_loop(g, n, update="b")


def torch_layer(x, w, ct, mode: str, n: int) -> tuple[dict, np.ndarray]:
    """`n` calls of torch's forward, dX and dW kernels for the conv `(x, w)` of `mode`
    (JAX layouts in, converted to torch's: NCHW, OIHW or, for the up conv,
    ConvTranspose2d's IOHW flipped in space), and torch's output in NHWC."""
    import torch

    torch.set_num_threads(os.cpu_count())
    aten = torch.ops.aten

    def nchw(a):
        return torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy())

    x, ct, w = nchw(x), nchw(ct), np.asarray(w)
    if mode == "up":
        w, stride, transposed, out_pad = w[::-1, ::-1].transpose(2, 3, 0, 1), 2, True, 1
    else:
        w, transposed, out_pad = w.transpose(3, 2, 0, 1), False, 0
        stride = 2 if mode == "down" else 1
    w = torch.from_numpy(w.copy())
    geometry = ([stride] * 2, [1, 1], [1, 1], transposed, [out_pad] * 2, 1)

    def forward():
        return aten.convolution(x, w, None, *geometry)

    def backward(mask):
        return lambda: aten.convolution_backward(ct, x, w, None, *geometry, mask)

    def repeat(g):
        def run():
            for _ in range(n):
                g()

        return run

    calls = dict(
        fwd=repeat(forward),
        dx=repeat(backward([True, False, False])),
        dw=repeat(backward([False, True, False])),
    )
    return calls, forward().numpy().transpose(0, 2, 3, 1)


def jax_layer(x, w, ct, mode: str, impl: str, n: int) -> dict:
    f = make_conv(mode, impl)

    def dx(a, b, ct):
        return jax.vjp(lambda a: f(a, b), a)[1](ct)[0]

    def dw(a, b, ct):
        return jax.vjp(lambda b: f(a, b), b)[1](ct)[0]

    loops = dict(
        fwd=in_loop(lambda a, b, ct: a + jnp.mean(f(a, b)), n),
        dx=in_loop(dx, n),
        dw=loop_w(dw, n),
    )

    def blocking(g):
        def run():
            C.block(g(x, w, ct))

        return run

    return {k: blocking(g) for k, g in loops.items()}


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main():
    p = C.base_parser(__doc__.splitlines()[0])
    p.set_defaults(batch=[32], repeats=3, model=["conv6"])
    p.add_argument("--loop", type=int, default=8)
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=["xla", "im2col"])
    args = p.parse_args()
    impls = list(args.impls)
    if "torch" in impls and not have_torch():
        print("torch is not installed: its columns are skipped")
        impls.remove("torch")
    rows = []
    for batch in args.batch:
        for idx, (size, cin, cout, mode) in enumerate(SPEC):
            key = jax.random.PRNGKey(idx)
            x = jax.random.normal(key, (batch, size, size, cin))
            w = 0.1 * jax.random.normal(key, (3, 3, cin, cout))
            y_xla = make_conv(mode, "xla")(x, w)  # the reference output
            ct = jnp.ones_like(y_xla)
            row = dict(batch=batch, layer=idx, mode=mode, x=str(x.shape), cout=cout)
            fns = {}
            for impl in impls:
                if impl == "torch":
                    calls, y_torch = torch_layer(x, w, ct, mode, args.loop)
                    row["torch_max_abs_diff"] = float(np.max(np.abs(y_torch - y_xla)))
                else:
                    calls = jax_layer(x, w, ct, mode, impl, args.loop)
                fns.update({f"{impl}_{k}_s": g for k, g in calls.items()})
            _, times = C.interleaved(
                fns, args.repeats, args.warmup, f"b{batch} layer {idx}"
            )
            row.update({k: statistics.median(ts) for k, ts in times.items()})
            y_im2col = make_conv(mode, "im2col")(x, w)
            row["max_abs_diff"] = float(jnp.max(jnp.abs(y_xla - y_im2col)))
            print(row, flush=True)
            rows.append(row)
        layers = [r for r in rows if r["batch"] == batch]
        rows.append(
            dict(batch=batch, layer="all") | {k: sum(r[k] for r in layers) for k in fns}
        )
    C.print_table(rows, C.profile_conv_columns(rows))
    C.write_json(
        "profile_conv_b" + "_".join(map(str, args.batch)),
        dict(environment=C.environment(), args=vars(args), rows=rows),
        args.out,
    )


if __name__ == "__main__":
    main()
