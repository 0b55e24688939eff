"""The cost of the library's default inference mode: a batch of the TA-BN classifier
in inference mode, each sample solved on its own (`per_sample_inference=True`, the
default for batch-independent norms: a sample's prediction does not depend on the
rest of the batch, nor do its step sizes) against the whole batch solved jointly
(`False`, one step size for the batch, as torchdiffeq and the other tables here do).

Same weights and running statistics (one training-mode forward pass) for both;
timed interleaved (one repeat of each in turn), median over `--repeats`.

    python -m benchmarks.bench_inference_modes --model conv6 mlp --batch 32 256
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _common as C


MODES = {"joint": False, "per-sample": True}


def run(args, model_name: str, batch: int) -> list[dict]:
    x, _ = C.to_jnp(*C.make_data(model_name, batch, args.seed))
    calls, outs = {}, {}
    for norm in args.norms:
        for mode, per_sample in MODES.items():
            model, state = C.build_jax(
                model_name, norm=norm, per_sample_inference=per_sample,
                steps=args.steps, **C.solve_options(args),
            )  # fmt: skip
            calls[norm, mode] = _inference_call(model, state, x, outs, (norm, mode))
    _, times = C.interleaved(
        calls, args.repeats, args.warmup, f"{model_name} b{batch} infer"
    )
    rows = []
    for (norm, mode), (logits, nfe) in outs.items():
        nfe = np.asarray(nfe)
        reference = outs[norm, "joint"][0]
        rows.append(
            dict(
                model=model_name,
                batch=batch,
                norm=norm,
                mode=mode,
                nfe_mean=float(nfe.mean()),
                nfe_max=int(nfe.max()),
                max_abs_logit_diff=float(jnp.max(jnp.abs(logits - reference))),
                **C.summary(times[norm, mode]),
            )
        )
    joint = {r["norm"]: r["median_s"] for r in rows if r["mode"] == "joint"}
    for row in rows:
        row["vs_joint"] = row["median_s"] / joint[row["norm"]]
    return rows


def _inference_call(model, state, x, outs, name):
    """One training-mode pass for the statistics, then a timed inference call that
    stores `(logits, nfe)` in `outs[name]`."""
    _, state, _ = C.block(C.forward_train(model, state, x))
    model = eqx.nn.inference_mode(model)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @jax.jit
    def infer(params, state, x, static=static):
        logits, _, stats = eqx.combine(params, static)(x, state)
        return logits, stats.num_fn_evals

    def call(f=infer, p=params, s=state):
        outs[name] = C.block(f(p, s, x))
        return dict(nfe=int(np.max(outs[name][1])))

    return call


def main():
    p = C.base_parser(__doc__.splitlines()[0])
    p.set_defaults(model=["conv6", "mlp"], batch=[32, 256])
    p.add_argument(
        "--norms", nargs="+", default=["tabn"],
        help="make_norm names, or tabn-paper (TA-BN with the paper's read)",
    )  # fmt: skip
    p.add_argument(
        "--steps", type=int, default=None,
        help="constant steps instead of the PID controller (equal NFE for every norm)",
    )  # fmt: skip
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
