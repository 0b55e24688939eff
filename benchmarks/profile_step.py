"""Where the time of a JAX training step goes: a breakdown for `bench_vs_torch.py`.

Times (median of `--repeats`, after compilation, with `jax.block_until_ready`):

- the whole training step and the training-mode forward solve alone;
- one evaluation of the vector field and its VJP, at top level and `--loop` times
  inside a `lax.fori_loop` (every diffrax solve is a loop; XLA:CPU compiles loop
  bodies differently);
- each conv layer of the field on its own (forward, VJP w.r.t. the input, VJP
  w.r.t. the kernel), inside the loop; for the 6-conv field only (for the U-Net
  see `profile_conv.py`, `profile_ops.py`).

    python -m benchmarks.profile_step --model conv6 --batch 32
"""

import functools
import itertools
import os

import equinox as eqx
import jax
import jax.numpy as jnp

import tadiffeq as td

from . import _common as C


def in_loop(f, n):
    """`n` sequential applications y <- y + 1e-3 f(y) inside a fori_loop."""

    def run(y, *rest):
        def body(_, y):
            out = f(y, *rest)
            return jax.tree.map(lambda a, b: a + 1e-3 * b.astype(a.dtype), y, out)

        return jax.lax.fori_loop(0, n, body, y)

    return jax.jit(run)


def unrolled(f, n):
    def run(y, *rest):
        for _ in range(n):
            out = f(y, *rest)
            y = jax.tree.map(lambda a, b: a + 1e-3 * b.astype(a.dtype), y, out)
        return y

    return jax.jit(run)


def field_breakdown(args, model, state, x) -> list[dict]:
    field = model.ode.field
    y0 = field.lift(x)
    params, static = eqx.partition(field, eqx.is_inexact_array)
    rows = []

    def f(y, params):  # field evaluation, training mode, state dropped
        dy, _ = eqx.combine(params, static)(0.5, y, td.clone_state(state))
        return dy

    def vjp_x(y, params):
        _, pull = jax.vjp(lambda y: f(y, params), y)
        return pull(y)[0]

    def vjp_all(y, params):
        _, pull = jax.vjp(f, y, params)
        gy, gp = pull(y)
        # Fold the parameter cotangent into the carry so it is not dead code.
        leaves = jax.tree.leaves(gp)
        return gy + sum(jnp.sum(g) for g in leaves) * 0.0

    parts = {"field": f, "field VJP (y)": vjp_x, "field VJP": vjp_all}
    for name in args.parts:
        g = parts[name]
        one = C.median_time(jax.jit(g), (y0, params), args.repeats)
        unr = C.median_time(unrolled(g, args.loop), (y0, params), args.repeats)
        loop = C.median_time(in_loop(g, args.loop), (y0, params), args.repeats)
        rows.append(
            dict(
                what=name,
                once_s=one,
                unrolled_s=unr,
                loop_s=loop,
                loop_over_unrolled=loop / unr,
            )
        )
        print(rows[-1], flush=True)
    return rows


def conv_breakdown(args, model, x) -> list[dict]:
    """Each TimeConv2d of the field alone, inside the loop: forward, dX, dW."""

    field = model.ode.field
    convs = []
    if isinstance(field, td.ConvField):
        convs = [b.conv for b in field.blocks]
    elif isinstance(field, td.UNetField):
        convs = [b.conv for pair in field.down for b in pair]
        convs += [b.conv for trip in field.up for b in trip] + [field.final.conv]
    rows = []
    y = field.lift(x)
    shapes = []
    h = y
    # Shapes of each conv's input, following the field's forward pass.
    for conv in convs if isinstance(field, td.ConvField) else []:
        shapes.append(h.shape)
        ho, wo = conv.output_shape(h.shape[1], h.shape[2])
        h = jnp.zeros((h.shape[0], ho, wo, conv.out_channels), h.dtype)
    for i, (conv, shape) in enumerate(zip(convs, shapes)):
        stride, padding, dilation = td.conv_geometry(conv.mode)
        w = conv.weight[:, :, :-1, :]
        xin = jax.random.normal(jax.random.PRNGKey(i), shape)
        fwd = functools.partial(_positional, conv2d, stride, padding, dilation)
        out = jax.eval_shape(fwd, xin, w)
        g = jnp.ones(out.shape, out.dtype)

        def dx(xin, w, g=g, fwd=fwd):
            return jax.vjp(lambda a: fwd(a, w), xin)[1](g)[0]

        def dw(w, xin, g=g, fwd=fwd):
            return jax.vjp(lambda b: fwd(xin, b), w)[1](g)[0]

        def fw(xin, w, fwd=fwd, out=out):
            y = fwd(xin, w)
            return jnp.zeros_like(xin) + jnp.mean(y)

        row = dict(layer=i, mode=conv.mode, shape=str(shape), cout=conv.out_channels)
        loop, n = args.loop, args.repeats
        row["fwd_loop_s"] = C.median_time(in_loop(fw, loop), (xin, w), n)
        row["dx_loop_s"] = C.median_time(in_loop(dx, loop), (xin, w), n)
        row["dw_loop_s"] = C.median_time(in_loop(dw, loop), (w, xin), n)
        row["dx_unrolled_s"] = C.median_time(unrolled(dx, loop), (xin, w), 3)
        print(row, flush=True)
        rows.append(row)
    return rows


def _positional(conv2d, stride, padding, dilation, x, w):
    return td.conv2d(x, w, stride, padding, dilation)


def main():
    p = C.base_parser(__doc__.splitlines()[0])
    p.set_defaults(model=["conv6"], batch=[32], repeats=5)
    p.add_argument("--loop", type=int, default=8, help="evaluations per loop")
    p.add_argument("--adjoint", default="checkpoint", choices=list(C.ADJOINTS))
    p.add_argument("--skip-step", action="store_true")
    p.add_argument("--skip-convs", action="store_true")
    p.add_argument(
        "--conv-impl",
        default="auto",
        choices=["auto", "xla", "im2col"],
        help="tadiffeq.conv2d's implementation for the model (auto: im2col on CPU)",
    )
    p.add_argument("--norm", nargs="+", default=["tabn"])
    p.add_argument(
        "--parts", nargs="+", default=["field", "field VJP (y)", "field VJP"]
    )
    args = p.parse_args()
    if args.conv_impl != "auto":
        os.environ["TADIFFEQ_CONV_IMPL"] = args.conv_impl  # read at trace time
    results = dict(environment=C.environment(), args=vars(args), runs=[])
    for model_name, batch, norm in itertools.product(args.model, args.batch, args.norm):
        model, state = C.build_jax(
            model_name, adjoint=args.adjoint, norm=norm, **C.solve_options(args)
        )
        x, y = C.to_jnp(*C.make_data(model_name, batch, args.seed))
        rec = dict(model=model_name, batch=batch, norm=norm, conv_impl=args.conv_impl)
        if not args.skip_step:
            opt = C.optimizer()
            o = opt.init(eqx.filter(model, eqx.is_inexact_array))
            step = C.make_train_step(opt)
            rec["train_step_s"] = C.median_time(
                step, (model, o, state, x, y), args.repeats
            )
            rec["forward_train_s"] = C.median_time(
                C.forward_train, (model, state, x), args.repeats
            )
            print(rec, flush=True)
        rec["field"] = field_breakdown(args, model, state, x)
        rec["convs"] = [] if args.skip_convs else conv_breakdown(args, model, x)
        results["runs"].append(rec)
        print(f"\n{model_name} batch {batch}, norm {norm}:")
        C.print_table(
            rec["field"],
            [
                ("what", "what"),
                ("once_s", "1 eval s"),
                ("unrolled_s", f"{args.loop} unrolled s"),
                ("loop_s", f"{args.loop} in fori_loop s"),
                ("loop_over_unrolled", "loop / unrolled"),
            ],
        )
        C.print_table(
            rec["convs"],
            [
                ("layer", "layer"),
                ("mode", "mode"),
                ("shape", "input"),
                ("cout", "cout"),
                ("fwd_loop_s", "fwd (loop) s"),
                ("dx_loop_s", "dX (loop) s"),
                ("dx_unrolled_s", "dX (unrolled) s"),
                ("dw_loop_s", "dW (loop) s"),
            ],
        )
        C.write_json(
            f"profile_{model_name}_b{batch}_{norm}_{args.conv_impl}",
            results,
            args.out,
        )


if __name__ == "__main__":
    main()
