"""Peak memory of one training step (forward + backward + AdamW update).

Two figures, which measure different things:

- JAX, `compiled`: XLA's memory analysis of the compiled training step
  (`jax.jit(...).lower(...).compile().memory_analysis()`): arguments + outputs +
  temporaries - aliased bytes. This is the buffer memory the step needs, computed
  by XLA's buffer assignment without running it; it excludes the Python process and
  the compiler itself.
- JAX and torch, `rss`: the process's resident-set high-water mark (VmHWM) during
  one step, minus the resident size just before it, after resetting the mark
  (`/proc/self/clear_refs`). Each configuration runs in a fresh subprocess, after
  building the model (and, for JAX, compiling), so the figure is the step's own
  growth, allocator overhead included. Linux only.

    python -m benchmarks.bench_memory --model conv6 --batch 256
"""

import json
import os
import subprocess
import sys


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
MB = 2**20


def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(side: str, mode: str, model: str, batch: int, seed: int, solve: dict) -> dict:
    """One configuration, run in this (fresh) process. `solve`: rtol, atol,
    max_steps and hidden, as the command line gave them."""
    import time

    from . import _common as C

    x, y = C.make_data(model, batch, seed)
    if side == "jax":
        import equinox as eqx

        m, s = C.build_jax(model, seed=seed, adjoint=mode, **solve)
        opt = C.optimizer()
        o = opt.init(eqx.filter(m, eqx.is_inexact_array))
        xj, yj = C.to_jnp(x, y)
        step = C.make_train_step(opt)
        compiled = step.lower(m, o, s, xj, yj).compile()
        ma = compiled.compiled.memory_analysis()
        out = dict(
            argument_bytes=ma.argument_size_in_bytes,
            output_bytes=ma.output_size_in_bytes,
            alias_bytes=ma.alias_size_in_bytes,
            temp_bytes=ma.temp_size_in_bytes,
        )
        out["compiled_peak_bytes"] = (
            out["argument_bytes"]
            + out["output_bytes"]
            + out["temp_bytes"]
            - out["alias_bytes"]
        )

        def run():
            return C.block(compiled(m, o, s, xj, yj))[-1]

    else:
        import numpy as np
        import torch
        import torch.nn.functional as F

        from . import torch_reference as R

        torch.set_num_threads(os.cpu_count())
        jm, js = C.build_jax(model, seed=seed, **solve)
        tm = R.build(
            model,
            adjoint=mode == "adjoint",
            hidden=solve["hidden"],
            rtol=solve["rtol"],
            atol=solve["atol"],
        )
        R.copy_from_jax(jm, js, tm)
        del jm, js
        xt = R.to_torch_images(x, model)
        yt = torch.from_numpy(y.astype(np.int64))
        opt = torch.optim.AdamW(tm.parameters(), lr=C.LR, weight_decay=C.WEIGHT_DECAY)
        out = {}

        def run():
            opt.zero_grad()
            tm.func.nfe = 0
            loss = F.cross_entropy(tm(xt), yt)
            out["nfe_backward"] = -tm.func.nfe
            loss.backward()
            opt.step()
            out["nfe_backward"] += tm.func.nfe
            return tm.func.nfe - out["nfe_backward"]

    _reset_hwm()
    before = _rss_now()
    start = time.perf_counter()
    nfe = run()
    out.update(
        rss_before_bytes=before,
        rss_peak_bytes=_hwm(),
        rss_step_bytes=_hwm() - before,
        step_s=time.perf_counter() - start,
        nfe_forward=int(nfe),
    )
    return out


def main():
    from . import _common as C

    p = C.base_parser(__doc__.splitlines()[0])
    p.set_defaults(batch=[256], model=["conv6", "mlp"])
    p.add_argument("--jax-adjoints", nargs="+", default=["checkpoint", "backsolve"])
    p.add_argument("--torch-modes", nargs="+", default=["adjoint", "direct"])
    p.add_argument("--child", nargs=6, help=argparse_hidden())
    args = p.parse_args()
    if args.child:
        side, mode, model, batch, seed, solve = args.child
        result = child(side, mode, model, int(batch), int(seed), json.loads(solve))
        print("RESULT " + json.dumps(result))
        return
    try:
        import torch  # noqa: F401
        import torchdiffeq  # noqa: F401

        torch_modes = args.torch_modes
    except ImportError as e:
        print(f"torch side skipped: {e}", file=sys.stderr)
        torch_modes = []
    results = dict(environment=C.environment(), args=vars(args), rows=[])
    solve = dict(
        rtol=args.rtol, atol=args.atol, max_steps=args.max_steps, hidden=args.hidden
    )
    for model in args.model:
        for batch in args.batch:
            configs = [("jax", a) for a in args.jax_adjoints]
            configs += [("torch", m) for m in torch_modes]
            for side, mode in configs:
                cmd = [sys.executable, "-m", __spec__.name, "--child", side, mode]
                cmd += [model]
                cmd += [str(batch), str(args.seed), json.dumps(solve)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=C.ROOT)
                lines = [
                    ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")
                ]
                if proc.returncode or not lines:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise RuntimeError(f"{side}/{mode} {model} b{batch} failed")
                row = dict(model=model, batch=batch, side=side, mode=mode)
                row.update(json.loads(lines[-1][len("RESULT ") :]))
                for k in list(row):
                    if k.endswith("_bytes"):
                        row[k[: -len("_bytes")] + "_mib"] = row[k] / MB
                print(f"{row}", flush=True)
                results["rows"].append(row)
                C.write_json(
                    "memory_"
                    + "_".join(args.model)
                    + "_b"
                    + "_".join(map(str, args.batch)),
                    results,
                    args.out,
                )
    print()
    C.print_table(results["rows"], "memory")


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
