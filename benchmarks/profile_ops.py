"""Where a compiled JAX training step spends its time, per XLA operation.

Traces one training step (after a warm-up call) with `jax.profiler` and sums the
duration of every executed XLA thunk (fusions, dots, copies, ...) by name and by
kind (the name without its `.N` suffix: `ynn_fusion` are the matrix products XLA:CPU
hands to YNNPACK, `pad_slice_fusion` / `concatenate` the im2col data movement,
`copy_bitcast_fusion` layout changes, `bitcast_dynamic-update-slice_fusion` the
writes of stored residuals, ...). Use `--hlo` to also save the optimised HLO, where
each name can be looked up.

    python -m benchmarks.profile_ops --model conv6 --batch 32 --adjoint checkpoint
"""

import collections
import gzip
import json
import pathlib
import tempfile

import equinox as eqx
import jax

from . import _common as C


# Trace events that are containers (the whole executable, loops, thread-pool waits)
# rather than operations.
_CONTAINERS = ("ThunkExecutor", "PjitFunction", "$", "CommonPjRt", "SlinkyThreadPool")


def op_times(trace_dir: str) -> collections.Counter:
    """Seconds per XLA operation name in a `jax.profiler` perfetto trace."""
    files = sorted(pathlib.Path(trace_dir).rglob("*.json.gz"))
    if not files:
        raise FileNotFoundError(f"No perfetto trace (*.json.gz) under {trace_dir}.")
    events = json.load(gzip.open(files[-1]))["traceEvents"]
    times = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(_CONTAINERS):
            continue
        if name.startswith("while") or name.startswith("conditional"):
            continue  # containers of the loop bodies' operations
        times[name] += e["dur"] / 1e6
    return times


def main():
    p = C.base_parser(__doc__.splitlines()[0])
    p.set_defaults(batch=[32], model=["conv6"])
    p.add_argument("--adjoint", default="checkpoint", choices=list(C.ADJOINTS))
    p.add_argument("--norm", default="tabn")
    p.add_argument("--top", type=int, default=25, help="operations listed")
    p.add_argument("--hlo", default=None, help="also write the optimised HLO here")
    args = p.parse_args()
    model_name, batch = args.model[0], args.batch[0]
    model, state = C.build_jax(
        model_name, norm=args.norm, adjoint=args.adjoint, **C.solve_options(args)
    )
    x, y = C.to_jnp(*C.make_data(model_name, batch, args.seed))
    opt = C.optimizer()
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    step = C.make_train_step(opt)
    if args.hlo:
        compiled = step.lower(model, opt_state, state, x, y).compile()
        pathlib.Path(args.hlo).write_text(compiled.compiled.as_text())
    C.block(step(model, opt_state, state, x, y))  # compile + warm-up
    untraced, _ = C.timed(lambda: C.block(step(model, opt_state, state, x, y)))
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        traced, _ = C.timed(lambda: C.block(step(model, opt_state, state, x, y)))
        jax.profiler.stop_trace()
        times = op_times(d)
    kinds = collections.Counter()
    for name, s in times.items():
        kinds[name.split(".")[0]] += s
    total = sum(times.values())
    print(
        f"{model_name} batch {batch} {args.norm} {args.adjoint}: step {untraced:.3f} s "
        f"(traced {traced:.3f} s), XLA operations {total:.3f} s"
    )
    rows = [
        dict(kind=k, seconds=s, share=s / total) for k, s in kinds.most_common(args.top)
    ]
    C.print_table(rows, [("kind", "operation kind"), ("seconds", "s"),
                         ("share", "share")])  # fmt: skip
    top = [dict(op=k, seconds=s) for k, s in times.most_common(args.top)]
    C.print_table(top, [("op", "operation"), ("seconds", "s")])
    C.write_json(
        f"profile_ops_{model_name}_b{batch}_{args.adjoint}",
        dict(
            environment=C.environment(),
            args=vars(args),
            step_s=untraced,
            traced_step_s=traced,
            ops_s=total,
            kinds=rows,
            ops=top,
        ),  # fmt: skip
        args.out,
    )


if __name__ == "__main__":
    main()
