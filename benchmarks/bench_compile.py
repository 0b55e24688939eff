"""Compile behaviour of the training and inference steps.

Measures the time to trace, lower and compile a training step (from jax's own
monitoring events) and asserts, with trace counters and
`eqx.debug.assert_max_traces`, that

1. repeated training steps (feeding each step's model, optimizer state and
   normalisation state into the next) trace and compile once;
2. inference after training traces its own function once, and training after
   inference does not retrace;
3. a different batch size traces and compiles the training step once more, and its
   repeats do not.

The script exits with an AssertionError if any of these fails.

    python -m benchmarks.bench_compile --model conv6 --batch 32 64
"""

import collections
import time

import equinox as eqx
import jax
import jax.monitoring
import optax

from experiments.training import optimizer_step

from . import _common as C


EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}


class Monitor:
    """Sums jax's compile-event durations and counts XLA compilations."""

    def __init__(self):
        self.reset()
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if event in EVENTS:
            self.totals[EVENTS[event]] += duration
            if event.endswith("backend_compile_duration"):
                self.compiles += 1

    def reset(self):
        self.totals = collections.Counter()
        self.compiles = 0

    def take(self) -> dict:
        out = dict(self.totals, xla_compiles=self.compiles)
        self.reset()
        return out


def make_steps(opt, max_traces: int):
    traces = collections.Counter()

    def loss_fn(model, state, x, y):
        traces["train"] += 1  # once per trace of the step
        logits, new_state, _ = model(x, state)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, new_state

    step = optimizer_step(loss_fn, opt, max_traces=max_traces)

    def train_step(model, opt_state, state, x, y):
        model, opt_state, loss, new_state = step(model, opt_state, state, x, y)
        return model, opt_state, new_state, loss

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=max_traces)
    def eval_step(model, state, x):
        traces["eval"] += 1
        logits, _, _ = model(x, state)
        return logits

    return train_step, eval_step, traces


def run(args, model_name: str) -> dict:
    monitor = Monitor()
    model, state = C.build_jax(
        model_name, adjoint=args.adjoint, **C.solve_options(args)
    )
    opt = C.optimizer()
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    train_step, eval_step, traces = make_steps(opt, max_traces=len(args.batch))
    phases = []

    def phase(name, fn, fn_args, expect_train, expect_eval):
        start = time.perf_counter()
        out = C.block(fn(*fn_args))
        wall = time.perf_counter() - start
        info = dict(
            phase=name,
            wall_s=wall,
            train_traces=traces["train"],
            eval_traces=traces["eval"],
            **monitor.take(),
        )
        phases.append(info)
        print(f"[{model_name}] {info}", flush=True)
        assert traces["train"] == expect_train, (name, dict(traces))
        assert traces["eval"] == expect_eval, (name, dict(traces))
        if "repeat" in name or "after eval" in name:  # no XLA compilation either
            assert info["xla_compiles"] == 0, (name, info)
        return out

    for i, batch in enumerate(args.batch):
        x, y = C.to_jnp(*C.make_data(model_name, batch, args.seed))
        monitor.reset()
        n = i + 1  # training traces expected: one per batch size so far
        carry = (model, opt_state, state)
        for r in range(1 + args.repeats):
            label = f"train b{batch} " + ("first" if r == 0 else f"repeat {r}")
            m, o, s, _ = phase(label, train_step, (*carry, x, y), n, i)
            carry = (m, o, s)  # each step's outputs feed the next
        inf_model = eqx.nn.inference_mode(carry[0])
        for r in range(2):
            label = f"eval b{batch} after train " + ("first" if r == 0 else "repeat")
            phase(label, eval_step, (inf_model, carry[2], x), n, n)
        phase(f"train b{batch} after eval", train_step, (*carry, x, y), n, n)
    firsts = [p for p in phases if p["phase"].endswith("first")]
    steady = [
        p["wall_s"]
        for p in phases
        if p["phase"].startswith("train") and "repeat" in p["phase"]
    ]
    return dict(
        model=model_name, phases=phases, first_calls=firsts, train_repeat_s=steady
    )


def main():
    p = C.base_parser(__doc__.splitlines()[0])
    p.set_defaults(batch=[32, 64], repeats=3, model=["mlp", "conv6"])
    p.add_argument("--adjoint", default="checkpoint", choices=list(C.ADJOINTS))
    args = p.parse_args()
    results = dict(environment=C.environment(), args=vars(args), runs=[])
    rows = []
    for model in args.model:
        rec = run(args, model)
        results["runs"].append(rec)
        for ph in rec["phases"]:
            rows.append(dict(model=model, **ph))
        C.write_json("compile_" + "_".join(args.model), results, args.out)
    print()
    C.print_table(rows, "compile")
    print("\nAll trace-count assertions passed.")


if __name__ == "__main__":
    main()
