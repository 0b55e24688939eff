"""The cost of the library's default inference mode: a batch of the TA-BN classifier
in inference mode, each sample solved on its own (`per_sample_inference=True`, the
default for batch-independent norms: a sample's prediction does not depend on the
rest of the batch, nor do its step sizes) against the whole batch solved jointly
(`False`, one step size for the batch, as torchdiffeq and the other tables here do).

Same weights and running statistics (one training-mode forward pass) for both;
timed interleaved (one repeat of each in turn), median over `--repeats`.

    python benchmarks/bench_inference_modes.py --model conv6 mlp --batch 32 256
"""

import _common as C
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


MODES = {"joint": False, "per-sample": True}


def run(args, model_name: str, batch: int) -> list[dict]:
    x, _ = C.to_jnp(*C.make_data(model_name, batch, args.seed))
    calls, outs = {}, {}
    for mode, per_sample in MODES.items():
        model, state = C.build_jax(
            model_name, per_sample_inference=per_sample, **C.solve_options(args)
        )
        _, state, _ = C.block(C.forward_train(model, state, x))
        model = eqx.nn.inference_mode(model)
        params, static = eqx.partition(model, eqx.is_inexact_array)

        @jax.jit
        def infer(params, state, x, static=static):
            logits, _, stats = eqx.combine(params, static)(x, state)
            return logits, stats.num_fn_evals

        def call(mode=mode, f=infer, p=params, s=state):
            outs[mode] = C.block(f(p, s, x))
            return dict(nfe=int(np.max(outs[mode][1])))

        calls[mode] = call
    _, times = C.interleaved(
        calls, args.repeats, args.warmup, f"{model_name} b{batch} infer"
    )
    reference = outs["joint"][0]
    rows = []
    for mode, (logits, nfe) in outs.items():
        nfe = np.asarray(nfe)
        rows.append(
            dict(
                model=model_name,
                batch=batch,
                mode=mode,
                nfe_mean=float(nfe.mean()),
                nfe_max=int(nfe.max()),
                max_abs_logit_diff=float(jnp.max(jnp.abs(logits - reference))),
                **C.summary(times[mode]),
            )
        )
    joint = rows[0]["median_s"]
    for row in rows:
        row["vs_joint"] = row["median_s"] / joint
    return rows


def main():
    p = C.base_parser(__doc__.splitlines()[0])
    p.set_defaults(model=["conv6", "mlp"], batch=[32, 256])
    args = p.parse_args()
    rows = [r for m in args.model for b in args.batch for r in run(args, m, b)]
    C.print_table(rows, "inference_modes")
    C.write_json(
        "inference_modes",
        dict(environment=C.environment(), args=vars(args), rows=rows),
        args.out,
    )


if __name__ == "__main__":
    main()
