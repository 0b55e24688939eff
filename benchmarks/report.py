"""Markdown tables from the JSON files in `results/benchmarks/` (for
`docs/benchmarks.md`).

    python -m benchmarks.report
"""

import json
import pathlib

from . import _common as C


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
            if run[what]:
                print(f"{model}, batch {batch}, {what}:\n")
                C.print_table(C.vs_torch_rows(run[what]), "vs_torch")
                print()


def norm(path):
    d = _load(path)
    if d.get("layers"):
        C.print_table(d["layers"], "norm_layers")
        print()
    if d["rows"]:
        C.print_table(d["rows"], "norm_steps")
        print()


def compile_(path):
    d = _load(path)
    rows = [dict(model=r["model"], **p) for r in d["runs"] for p in r["phases"]]
    C.print_table(rows, "compile")
    print()


def memory(path):
    C.print_table(_load(path)["rows"], "memory")
    print()


def inference_modes(path):
    C.print_table(_load(path)["rows"], "inference_modes")
    print()


def profile_conv(path):
    rows = _load(path)["rows"]
    C.print_table(rows, C.profile_conv_columns(rows))
    print()


REPORTS = {
    "vs_torch": vs_torch,
    "norm_overhead": norm,
    "compile": compile_,
    "memory": memory,
    "inference_modes": inference_modes,
    "profile_conv_b": profile_conv,  # not profile_step's profile_conv6_...
}


def main():
    for path in sorted(C.RESULTS.glob("*.json")):
        for prefix, report in REPORTS.items():
            if path.name.startswith(prefix):
                print(f"### {path.name}\n")
                report(path)
                break


if __name__ == "__main__":
    main()
