"""The FLOP counter behind bench_vs_torch.py's achieved-FLOP/s columns."""

import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

import tadiffeq as td
from benchmarks import _flops


def _count(f, *args):
    return _flops.jaxpr_flops(jax.make_jaxpr(f)(*args).jaxpr)


def test_conv_flops_by_hand():
    """3x3 "same" conv on 5x5, 2 -> 3 channels: per axis 3 interior outputs see 3
    taps and the 2 border outputs 2 (13); the stride-2 transposed conv of a 4-pixel
    axis (ConvTranspose2d k=3, s=2, p=1, output_padding=1) scatters every input pixel
    to 3 outputs but the first to 2 (11)."""
    x = jnp.ones((1, 5, 5, 2))
    w = jnp.ones((3, 3, 2, 3))
    same = lambda x, w: td.conv2d(x, w, *td.conv_geometry("same"), impl="xla")
    assert _count(same, x, w) == {"conv": 2 * 2 * 3 * 13 * 13, "dot": 0}
    up = lambda x, w: td.conv2d(x, w, *td.conv_geometry("up"), impl="xla")
    assert _count(up, jnp.ones((1, 4, 4, 2)), w)["conv"] == 2 * 2 * 3 * 11 * 11


@pytest.mark.parametrize("mode", ["same", "down", "up"])
@pytest.mark.parametrize("size", [(6, 6), (7, 4)])
def test_conv_flops_count_the_taps_on_real_pixels(mode, size):
    """With one channel in and out, a conv of ones by ones sums, over the output, the
    taps that read a real pixel: the count times 2 B C_in C_out."""
    stride, pad, dil = td.conv_geometry(mode)
    x1, w1 = jnp.ones((1, *size, 1)), jnp.ones((3, 3, 1, 1))
    taps = float(jnp.sum(td.conv2d(x1, w1, stride, pad, dil, impl="xla")))
    x, w = jnp.ones((2, *size, 3)), jnp.ones((3, 3, 3, 4))
    conv = lambda x, w: td.conv2d(x, w, stride, pad, dil, impl="xla")
    assert _count(conv, x, w)["conv"] == 2 * 2 * 3 * 4 * taps


def test_dot_scan_cond_and_while():
    a, b = jnp.ones((3, 4, 5)), jnp.ones((3, 5, 6))
    assert _count(lambda a, b: a @ b, a, b) == {"conv": 0, "dot": 2 * 3 * 4 * 5 * 6}

    def scanned(a, b):
        return jax.lax.scan(lambda c, _: (c, c @ b), a, None, length=7)[1]

    assert _count(scanned, a, b)["dot"] == 7 * 2 * 3 * 4 * 5 * 6

    def branches(p, a, b):
        return jax.lax.cond(p, lambda: (a @ b).sum(), lambda: (a[:1] @ b[:1]).sum())

    assert _count(branches, True, a, b)["dot"] == 2 * 3 * 4 * 5 * 6
    looped = lambda a: jax.lax.while_loop(lambda c: c.sum() < 0, lambda c: c @ c, a)
    with pytest.raises(ValueError, match="while"):
        _count(looped, jnp.ones((2, 2)))


def test_field_flops_of_the_six_conv_field(getkey, monkeypatch):
    """The 6-conv field's conv count is the sum of its layers', the same whatever
    conv implementation the environment asks for."""
    field, state = eqx.nn.make_with_state(td.ConvField)(3, 6, key=getkey())
    y = jnp.ones((2, 8, 8, 3))
    counted = _flops.field_flops(field, state, y)
    expected, h = 0, 8
    for cin, cout, mode in td.conv_field_spec(3, 6):
        stride, pad, dil = td.conv_geometry(mode)
        x1 = jnp.ones((1, h, h, 1))
        out = td.conv2d(x1, jnp.ones((3, 3, 1, 1)), stride, pad, dil, impl="xla")
        expected += 2 * 2 * cin * cout * float(jnp.sum(out))
        h = out.shape[1]
    assert counted["conv"] == expected
    # The only products besides the convs are the time maps' einsums, which do not
    # depend on the batch.
    twice = _flops.field_flops(field, state, jnp.ones((4, 8, 8, 3)))
    assert twice["conv"] == 2 * expected and twice["dot"] == counted["dot"] > 0
    assert counted["total"] == counted["conv"] + counted["dot"]
    monkeypatch.setenv("TADIFFEQ_CONV_IMPL", "im2col")
    assert _flops.field_flops(field, state, y) == counted
    # The state passed in stays usable.
    field(0.0, y, state)


def test_matmul_rate_is_positive():
    rate = _flops.matmul_gflops(n=64, repeats=1)
    assert rate["n"] == 64 and np.isfinite(rate["gflops"]) and rate["gflops"] > 0


def test_bench_vs_torch_without_torch(tmp_path):
    """The benchmark runs its JAX side when torch is missing (a stand-in `torch`
    module that fails to import) and reports the rates from the FLOP count."""
    import json
    import os
    import subprocess

    (tmp_path / "torch.py").write_text("raise ImportError('torch hidden by the test')")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "benchmarks.bench_vs_torch",
           "--model", "mlp", "--batch", "2", "--repeats", "1", "--warmup", "0",
           "--jax-adjoints", "backsolve", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch side skipped: torch hidden by the test" in proc.stderr
    result = json.loads(out.read_text())
    assert result["environment"]["matmul"]["gflops"] > 0
    (run,) = result["runs"]
    flops = run["field_flops"]
    assert flops["conv"] == 0 and flops["total"] == flops["dot"] > 0
    (train,) = run["train"]
    (infer,) = run["infer"]
    assert train["side"] == infer["side"] == "jax" and train["nfe"] > 0
    for row, factor in ((train, 3), (infer, 1)):
        expected = factor * row["nfe"] * flops["total"] / row["median_s"] / 1e9
        np.testing.assert_allclose(row["gflops"], expected, rtol=1e-12)


def test_profile_conv_table_has_the_columns_of_the_timed_implementations():
    from benchmarks import _common as C

    rows = [
        dict(layer=0, mode="same", x="(2, 4, 4, 3)", cout=8, im2col_fwd_s=0.1),
        dict(layer="all", im2col_fwd_s=0.1, im2col_dw_s=0.2, torch_dx_s=0.3),
    ]
    assert [h for _, h in C.profile_conv_columns(rows)] == [
        "layer", "mode", "input", "cout", "im2col fwd s", "im2col dW s", "torch dX s"
    ]  # fmt: skip


def test_bench_inference_modes_compares_the_two_modes_on_the_same_weights():
    """Per-sample inference solves the same ODEs as joint inference (same weights and
    running statistics), to the solver's tolerance, each sample with its own NFE."""
    import argparse

    from benchmarks import bench_inference_modes as B

    args = argparse.Namespace(
        seed=0, rtol=1e-3, atol=1e-3, max_steps=100, hidden=8, repeats=1, warmup=1,
        norms=["tabn"], steps=None,
    )  # fmt: skip
    joint, per_sample = B.run(args, "mlp", 3)
    assert (joint["mode"], per_sample["mode"]) == ("joint", "per-sample")
    assert joint["max_abs_logit_diff"] == 0.0 and joint["vs_joint"] == 1.0
    assert 0.0 < per_sample["max_abs_logit_diff"] < 1e-2
    assert per_sample["nfe_max"] >= per_sample["nfe_mean"] > 0
    assert per_sample["vs_joint"] == per_sample["median_s"] / joint["median_s"]


def test_bench_inference_modes_times_tabn_with_and_without_coverage():
    """With constant steps, TA-BN with the coverage read and with the paper's read
    take the same evaluations, so their times compare the reads alone."""
    import argparse

    from benchmarks import bench_inference_modes as B

    args = argparse.Namespace(
        seed=0, rtol=1e-3, atol=1e-3, max_steps=100, hidden=8, repeats=1, warmup=1,
        norms=["tabn", "tabn-paper"], steps=3,
    )  # fmt: skip
    rows = B.run(args, "mlp", 2)
    assert [(r["norm"], r["mode"]) for r in rows] == [
        (n, m) for n in ("tabn", "tabn-paper") for m in ("joint", "per-sample")
    ]
    # dopri5: the FSAL first evaluation, then 6 per step.
    assert {r["nfe_max"] for r in rows} == {r["nfe_mean"] for r in rows} == {1 + 6 * 3}


def test_bench_regularizers_counts_the_local_step(tmp_path):
    """The regularizer benchmark times the paper protocol's training step per
    regularizer; the local regularizer's step adds exactly its 9 evaluations (tsit5:
    2 for the initial-step heuristic, 7 stages) to the same initial model's solve."""
    from benchmarks import bench_regularizers

    rows = bench_regularizers.main(
        ["--data", "synthetic", "--batch", "16", "--repeats", "1", "--warmup", "0",
         "--regularizers", "none,local", "--out", str(tmp_path / "r.json")]
    )  # fmt: skip
    none, local = rows
    assert local["nfe"] == none["nfe"] + 9
    assert none["ratio"] == 1.0 and local["step_s"] > 0
    assert (tmp_path / "r.json").exists()
