"""The cost of TA-BN: training-step time of the same model with TA-BN, mini-batch BN
and no normalisation (same JAX code, same weights for the shared layers).

Different normalisations give different dynamics, hence a different number of steps
under an adaptive controller. So the step is timed twice:

- `fixed`: dopri5 with `--steps` constant steps (the same NFE for every
  normalisation): the per-evaluation cost of the layer, what the target
  (TA-BN <= 1.10x mini-batch BN) is about;
- `adaptive`: dopri5 with the PID controller (rtol = atol = 1e-3), as trained; the
  time then also reflects the NFE each normalisation leads to.

The normalisations are timed interleaved (one repeat of each in turn).

    python -m benchmarks.bench_norm_overhead --model conv6 --batch 32 --repeats 20
"""

import equinox as eqx
import jax
import jax.numpy as jnp

import tadiffeq as td

from . import _common as C


#: (height, width, channels) of the normalised activations of each field.
LAYER_SHAPES = {
    "conv6": [(32, 32, 32), (16, 16, 64), (8, 8, 128), (16, 16, 64), (32, 32, 32)],
    "unet": [(32, 32, 32), (16, 16, 64), (8, 8, 128), (4, 4, 256)],
    "mlp": [(64,)],
}


def layers(args, model: str, batch: int) -> list[dict]:
    """The normalisation layers alone: `--loop` sequential evaluations, each the
    layer's forward and VJP (w.r.t. input and affine parameters) at a new time t,
    with the state carried, inside a fori_loop, on every normalised activation
    shape of `model` (all layers in one loop body)."""
    fns = {}
    for norm in args.norms:
        mods = []
        for shape in LAYER_SHAPES[model]:
            name, extra = C.norm_args(norm)
            layer, state = eqx.nn.make_with_state(td.make_norm)(
                name, shape[-1], **extra
            )
            x = jax.random.normal(jax.random.PRNGKey(0), (batch, *shape))
            mods.append((layer, state, x))
        params, static = eqx.partition([m[0] for m in mods], eqx.is_inexact_array)
        states = [m[1] for m in mods]
        xs = [m[2] for m in mods]

        @jax.jit
        def run(params, states, xs, static=static):
            def body(i, carry):
                xs, states = carry
                t = i.astype(jnp.float32) / args.loop
                new_xs, new_states = [], []
                for layer_p, layer_s, x, st in zip(params, static, xs, states):

                    def f(x, p, layer_s=layer_s, st=st):
                        return eqx.combine(p, layer_s)(t, x, st)

                    y, vjp, st = jax.vjp(f, x, layer_p, has_aux=True)
                    gx, gp = vjp(y)
                    # Keep the parameter gradients alive (no dead-code removal).
                    gsum = sum(jnp.sum(g) for g in jax.tree.leaves(gp))
                    new_xs.append(x + 1e-3 * gx + 0.0 * gsum)
                    new_states.append(st)
                return new_xs, new_states

            return jax.lax.fori_loop(0, args.loop, body, (xs, states))

        fns[norm] = (run, (params, states, xs))
    times = {norm: [] for norm in fns}
    for fn, a in fns.values():
        C.block(fn(*a))
    for _ in range(args.layer_repeats):
        for norm, (fn, a) in fns.items():
            times[norm].append(C.timed(lambda fn=fn, a=a: C.block(fn(*a)))[0])
    rows = [
        dict(model=model, batch=batch, norm=n, loop=args.loop, **C.summary(times[n]))
        for n in fns
    ]
    ref = next(r for r in rows if r["norm"] == "minibatch")
    for r in rows:
        r["ms_per_eval"] = 1e3 * r["median_s"] / args.loop
        r["ratio_vs_minibatch"] = r["median_s"] / ref["median_s"]
    return rows


def run(args, model: str, batch: int, control: str) -> list[dict]:
    steps = args.steps if control == "fixed" else None
    x, y = C.make_data(model, batch, args.seed)
    xj, yj = C.to_jnp(x, y)
    step = C.make_train_step(C.optimizer())
    fns = {}
    for norm in args.norms:
        m, s = C.build_jax(
            model, norm=norm, adjoint=args.adjoint, steps=steps, **C.solve_options(args)
        )
        opt_state = C.optimizer().init(eqx.filter(m, eqx.is_inexact_array))

        def fn(m=m, s=s, o=opt_state):
            _, _, _, loss, nfe = C.block(step(m, o, s, xj, yj))
            return int(nfe)

        fns[norm] = fn
    nfe, times = C.interleaved(
        fns, args.repeats, args.warmup, f"{model} b{batch} {control}"
    )
    rows = []
    for norm in fns:
        rows.append(
            dict(
                model=model,
                batch=batch,
                control=control,
                norm=norm,
                nfe=nfe[norm],
                **C.summary(times[norm]),
            )
        )
    ref = next(r for r in rows if r["norm"] == "minibatch")
    for r in rows:
        r["ratio_vs_minibatch"] = r["median_s"] / ref["median_s"]
        r["ms_per_nfe"] = 1e3 * r["median_s"] / r["nfe"]
    return rows


def main():
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--norms", nargs="+", default=["tabn", "minibatch", "none"],
        help="make_norm names, or tabn-paper (TA-BN without coverage bookkeeping)",
    )  # fmt: skip
    p.add_argument("--control", nargs="+", default=["fixed", "adaptive"])
    p.add_argument("--steps", type=int, default=4, help="steps of the fixed mode")
    p.add_argument("--adjoint", default="checkpoint", choices=list(C.ADJOINTS))
    p.add_argument(
        "--layers-only",
        action="store_true",
        help="only the layer micro-benchmark (the normalisations alone)",
    )
    p.add_argument("--loop", type=int, default=8, help="evaluations per layer loop")
    p.add_argument("--layer-repeats", type=int, default=20)
    args = p.parse_args()
    if "minibatch" not in args.norms:
        p.error("--norms must include minibatch, the reference of the ratio column")
    results = dict(environment=C.environment(), args=vars(args), rows=[])
    name = "norm_overhead_" + "_".join(args.model) + "_b"
    name += "_".join(map(str, args.batch))
    if args.layers_only:
        name += "_layers"
    for model in args.model:
        for batch in args.batch:
            rows = layers(args, model, batch)
            results.setdefault("layers", []).extend(rows)
            print(f"\n{model} batch {batch}, the normalisation layers alone:")
            C.print_table(rows, "norm_layers")
            C.write_json(name, results, args.out)
            if args.layers_only:
                continue
            for control in args.control:
                rows = run(args, model, batch, control)
                results["rows"].extend(rows)
                print(f"\n{model} batch {batch}, {control} step size:")
                C.print_table(rows, "norm_steps")
                C.write_json(name, results, args.out)


if __name__ == "__main__":
    main()
