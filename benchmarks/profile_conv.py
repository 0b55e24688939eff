"""The backward pass of the field's convolutions inside a loop, with alternatives.

For each conv of the 6-conv field (its geometry at the given batch), `--loop`
sequential gradients inside a `lax.fori_loop`, median of `--repeats`:

- `lib dX` / `lib dW`: VJPs of tadiffeq's `conv2d` (custom JVP; dX is JAX's
  transpose of the conv, dW the transpose of the im2col weight tangent built with
  `lax.conv_general_dilated_patches`);
- `slices dX` / `slices dW`: the same products written as an im2col built from 9
  static (strided) slices of the padded input and one dot; JAX transposes the
  slices into pads and adds, so the backward pass holds no convolution at all;
- `proto`: `benchmarks/prototype_fastconv.py`'s `fast_conv2d` (im2col + dot for
  stride 1 and 2, the sub-pixel decomposition for the transposed convs);
- `hwio dX` (stride-1 convs only): dX as an explicit NHWC/HWIO conv of the
  cotangent with the flipped, in/out-swapped kernel (what a custom VJP would do).

    python benchmarks/profile_conv.py --batch 32
"""

import _common as C
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np

from tadiffeq._models.conv import _GEOMETRY, conv2d


SPEC = [
    (32, 3, 32, "same"),
    (32, 32, 64, "down"),
    (16, 64, 128, "down"),
    (8, 128, 64, "up"),
    (16, 64, 32, "up"),
    (32, 32, 3, "same"),
]  # (input size, cin, cout, mode) of the 6-conv field on 32x32 images


def lib_conv(mode):
    stride, padding, dilation = _GEOMETRY[mode]
    return lambda x, w: conv2d(x, w, stride, padding, dilation)


def im2col(x, mode, k=3):
    """(B, Ho, Wo, k*k*cin) patches from static slices; feature order (i, j, c)."""
    stride, (lo, hi), dilation = _GEOMETRY[mode]
    cfg = [(0, 0, 0), (lo, hi, dilation - 1), (lo, hi, dilation - 1), (0, 0, 0)]
    xp = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    hp, wp = xp.shape[1], xp.shape[2]
    ho, wo = (hp - k) // stride + 1, (wp - k) // stride + 1
    cols = []
    for i in range(k):
        for j in range(k):
            cols.append(
                lax.slice(
                    xp,
                    (0, i, j, 0),
                    (xp.shape[0], i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1,
                     xp.shape[3]),
                    (1, stride, stride, 1),
                )
            )  # fmt: skip
    return jnp.concatenate(cols, axis=-1)


def slices_conv(mode):
    def f(x, w):
        kh, kw, cin, cout = w.shape
        return im2col(x, mode) @ w.reshape(kh * kw * cin, cout)

    return f


def proto_conv(mode):
    """`prototype_fastconv.fast_conv2d`: im2col + dot, sub-pixel "up" convs."""
    from prototype_fastconv import fast_conv2d

    stride, padding, dilation = _GEOMETRY[mode]
    return lambda x, w: fast_conv2d(x, w, stride, padding, dilation)


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


def med(fn, args, repeats):
    C.block(fn(*args))
    return float(
        np.median([C.timed(lambda: C.block(fn(*args)))[0] for _ in range(repeats)])
    )


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
            y = lib_conv(mode)(x, w)
            ys = slices_conv(mode)(x, w)
            err = float(jnp.max(jnp.abs(y - ys)))
            ct = jnp.ones_like(y)
            row = dict(batch=batch, layer=idx, mode=mode, x=str(x.shape), cout=cout)
            row["slices_vs_lib_max_err"] = err
            makers = (("lib", lib_conv), ("slices", slices_conv), ("proto", proto_conv))
            for name, make in makers:
                f = make(mode)

                def dx(a, b, ct, f=f):
                    return jax.vjp(lambda a: f(a, b), a)[1](ct)[0]

                def dw(a, b, ct, f=f):
                    return jax.vjp(lambda b: f(a, b), b)[1](ct)[0]

                row[f"{name}_fwd_s"] = med(
                    in_loop(lambda a, b, ct, f=f: a + jnp.mean(f(a, b)), args.loop),
                    (x, w, ct),
                    args.repeats,
                )
                row[f"{name}_dx_s"] = med(
                    in_loop(dx, args.loop), (x, w, ct), args.repeats
                )
                row[f"{name}_dw_s"] = med(
                    loop_w(dw, args.loop), (x, w, ct), args.repeats
                )
            if mode == "same":

                def hwio_dx(a, b, ct):
                    wt = jnp.transpose(b[::-1, ::-1], (0, 1, 3, 2))
                    return lax.conv_general_dilated(
                        ct, wt, (1, 1), ((1, 1), (1, 1)),
                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                    )  # fmt: skip

                ref = jax.vjp(lib_conv(mode), x, w)[1](ct)[0]
                err = float(jnp.max(jnp.abs(hwio_dx(x, w, ct) - ref)))
                row["hwio_dx_err"] = err
                row["hwio_dx_s"] = med(
                    in_loop(hwio_dx, args.loop), (x, w, ct), args.repeats
                )
            print(row, flush=True)
            rows.append(row)
    C.print_table(
        rows,
        [
            ("layer", "layer"),
            ("mode", "mode"),
            ("x", "input"),
            ("cout", "cout"),
            ("lib_fwd_s", "lib fwd"),
            ("lib_dx_s", "lib dX"),
            ("lib_dw_s", "lib dW"),
            ("slices_fwd_s", "slices fwd"),
            ("slices_dx_s", "slices dX"),
            ("slices_dw_s", "slices dW"),
            ("proto_fwd_s", "proto fwd"),
            ("proto_dx_s", "proto dX"),
            ("proto_dw_s", "proto dW"),
            ("hwio_dx_s", "hwio dX"),
        ],
    )
    C.write_json(
        "profile_conv_b" + "_".join(map(str, args.batch)),
        dict(environment=C.environment(), args=vars(args), rows=rows),
        args.out,
    )


if __name__ == "__main__":
    main()
