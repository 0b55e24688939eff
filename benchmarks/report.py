"""Markdown tables from the JSON files in `results/benchmarks/` (for
`docs/benchmarks.md`).

    python benchmarks/report.py
"""

import json
import pathlib

import _common as C


def _load(path: pathlib.Path):
    return json.loads(path.read_text())


def vs_torch(path):
    d = _load(path)
    for run in d["runs"]:
        model, batch = run["model"], run["batch"]
        for what in ("train_forward", "infer_forward"):
            c = run["checks"].get(what)
            if c:
                print(
                    f"- {model} b{batch} {what}: max |logit diff| "
                    f"{c['max_abs_diff']:.1e} (max |logit| {c['max_abs_logit']:.2f}), "
                    f"NFE JAX {c['nfe_jax']} / torch {c['nfe_torch']}"
                )
        print()
        for what in ("train", "infer"):
            rows = run[what]
            if not rows:
                continue
            jax_rows = [r for r in rows if r["side"] == "jax"]
            torch_rows = [r for r in rows if r["side"] == "torch"]
            out = []
            for r in rows:
                row = dict(r)
                row["name"] = f"{r['side']} {r['mode']}".replace(" -", "")
                if r["side"] == "torch" and jax_rows:
                    best = min(jax_rows, key=lambda j: j["median_s"])
                    row["ratio"] = f"{r['median_s'] / best['median_s']:.2f}"
                elif r["side"] == "jax" and torch_rows:
                    row["ratio"] = " / ".join(
                        f"{t['median_s'] / r['median_s']:.2f}" for t in torch_rows
                    )
                out.append(row)
            print(f"{model}, batch {batch}, {what}:\n")
            C.print_table(
                out,
                [
                    ("name", "side, adjoint"),
                    ("nfe", "NFE fwd"),
                    ("nfe_backward", "NFE bwd"),
                    ("loss", "loss"),
                    ("median_s", "median s"),
                    ("min_s", "min s"),
                    ("repeats", "n"),
                    ("ratio", "torch / JAX"),
                ],
            )
            print()


def norm(path):
    d = _load(path)
    if d.get("layers"):
        C.print_table(
            d["layers"],
            [
                ("model", "model"),
                ("batch", "batch"),
                ("norm", "norm"),
                ("median_s", "8 evals s"),
                ("min_s", "min s"),
                ("repeats", "n"),
                ("ms_per_eval", "ms / eval (fwd + VJP)"),
                ("ratio_vs_minibatch", "time / mini-batch BN"),
            ],
        )
        print()
    if not d["rows"]:
        return
    C.print_table(
        d["rows"],
        [
            ("model", "model"),
            ("batch", "batch"),
            ("control", "step size"),
            ("norm", "norm"),
            ("nfe", "NFE"),
            ("median_s", "median s"),
            ("min_s", "min s"),
            ("repeats", "n"),
            ("ms_per_nfe", "ms / NFE"),
            ("ratio_vs_minibatch", "time / mini-batch BN"),
        ],
    )
    print()


def compile_(path):
    d = _load(path)
    rows = [dict(model=r["model"], **p) for r in d["runs"] for p in r["phases"]]
    C.print_table(
        rows,
        [
            ("model", "model"),
            ("phase", "call"),
            ("wall_s", "wall s"),
            ("trace_s", "trace s"),
            ("lower_s", "lower s"),
            ("compile_s", "XLA compile s"),
            ("xla_compiles", "XLA compiles"),
            ("train_traces", "train traces"),
            ("eval_traces", "eval traces"),
        ],
    )
    print()


def memory(path):
    d = _load(path)
    C.print_table(
        d["rows"],
        [
            ("model", "model"),
            ("batch", "batch"),
            ("side", "side"),
            ("mode", "adjoint"),
            ("compiled_peak_mib", "XLA buffers MiB"),
            ("temp_mib", "of which temp MiB"),
            ("rss_step_mib", "RSS growth in step MiB"),
            ("rss_peak_mib", "peak RSS MiB"),
            ("nfe_forward", "NFE fwd"),
            ("nfe_backward", "NFE bwd"),
            ("step_s", "step s (n=1)"),
        ],
    )
    print()


def prototype(path):
    d = _load(path)
    print(f"fast_conv2d vs conv2d max abs error: {d['errors']}\n")
    for run in d["runs"]:
        diffs = {k: v for k, v in run.items() if k.startswith("logits_max")}
        print(f"{run['model']} b{run['batch']}: training-mode logits vs lib {diffs}\n")
        C.print_table(
            run["rows"],
            [
                ("config", "config"),
                ("nfe", "NFE fwd"),
                ("loss", "loss"),
                ("median_s", "median s"),
                ("min_s", "min s"),
                ("repeats", "n"),
                ("ratio_vs_lib", "time / library JAX"),
            ],
        )
        print()


def profile_conv(path):
    d = _load(path)
    C.print_table(
        d["rows"],
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
    print()


def main():
    for path in sorted(C.RESULTS.glob("*.json")):
        print(f"### {path.name}\n")
        name = path.name
        if name.startswith("vs_torch"):
            vs_torch(path)
        elif name.startswith("norm_overhead"):
            norm(path)
        elif name.startswith("compile"):
            compile_(path)
        elif name.startswith("memory"):
            memory(path)
        elif name.startswith("prototype"):
            prototype(path)
        elif name.startswith("profile_conv"):
            profile_conv(path)


if __name__ == "__main__":
    main()
