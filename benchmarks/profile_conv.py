"""Each convolution of the 6-conv field alone, inside a loop: the library's two
implementations side by side.

For each conv of the 6-conv field (its geometry at the given batch), `--loop`
sequential forward passes, input gradients (dX) and weight gradients (dW) inside a
`lax.fori_loop`, median of `--repeats`, with `tadiffeq.conv2d`'s

- `impl="xla"`: `lax.conv_general_dilated`, channels-last (the GPU/TPU path);
- `impl="im2col"`: the CPU path, slices + one dot (sub-pixel decomposition for the
  stride-2 transposed convs), whose dX and dW are dots too.

    python benchmarks/profile_conv.py --batch 32
"""

import _common as C
import jax
import jax.lax as lax
import jax.numpy as jnp

from tadiffeq._models.conv import _GEOMETRY, conv2d


SPEC = [
    (32, 3, 32, "same"),
    (32, 32, 64, "down"),
    (16, 64, 128, "down"),
    (8, 128, 64, "up"),
    (16, 64, 32, "up"),
    (32, 32, 3, "same"),
]  # (input size, cin, cout, mode) of the 6-conv field on 32x32 images
IMPLS = ("xla", "im2col")


def make_conv(mode, impl):
    stride, padding, dilation = _GEOMETRY[mode]
    return lambda x, w: conv2d(x, w, stride, padding, dilation, impl=impl)


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


def main():
    p = C.base_parser(__doc__.splitlines()[0])
    p.set_defaults(batch=[32], repeats=3, model=["conv6"])
    p.add_argument("--loop", type=int, default=8)
    args = p.parse_args()
    rows = []
    for batch in args.batch:
        for idx, (size, cin, cout, mode) in enumerate(SPEC):
            key = jax.random.PRNGKey(idx)
            x = jax.random.normal(key, (batch, size, size, cin))
            w = 0.1 * jax.random.normal(key, (3, 3, cin, cout))
            ct = jnp.ones_like(make_conv(mode, "xla")(x, w))
            row = dict(batch=batch, layer=idx, mode=mode, x=str(x.shape), cout=cout)
            for impl in IMPLS:
                f = make_conv(mode, impl)

                def dx(a, b, ct, f=f):
                    return jax.vjp(lambda a: f(a, b), a)[1](ct)[0]

                def dw(a, b, ct, f=f):
                    return jax.vjp(lambda b: f(a, b), b)[1](ct)[0]

                row[f"{impl}_fwd_s"] = C.median_time(
                    in_loop(lambda a, b, ct, f=f: a + jnp.mean(f(a, b)), args.loop),
                    (x, w, ct),
                    args.repeats,
                )
                row[f"{impl}_dx_s"] = C.median_time(
                    in_loop(dx, args.loop), (x, w, ct), args.repeats
                )
                row[f"{impl}_dw_s"] = C.median_time(
                    loop_w(dw, args.loop), (x, w, ct), args.repeats
                )
            row["max_abs_diff"] = float(
                jnp.max(
                    jnp.abs(
                        make_conv(mode, "xla")(x, w) - make_conv(mode, "im2col")(x, w)
                    )
                )
            )
            print(row, flush=True)
            rows.append(row)
    C.print_table(rows, "profile_conv")
    C.write_json(
        "profile_conv_b" + "_".join(map(str, args.batch)),
        dict(environment=C.environment(), args=vars(args), rows=rows),
        args.out,
    )


if __name__ == "__main__":
    main()
