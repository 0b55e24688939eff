"""The PyTorch reference of benchmarks/ against tadiffeq (skipped without torch)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO


pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")


def test_torch_reference_matches_tadiffeq(tmp_path):
    """Identical weights give the same logits and NFE on both sides, in training and
    inference mode, for the MLP and the 6-conv field (what every timing relies on)."""
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_vs_torch",
         "--model", "mlp", "conv6", "--batch", "4", "--check-only",
         "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["model"] for r in runs] == ["mlp", "conv6"]
    for run in runs:
        assert run["equivalent"], run["checks"]
        for check in run["checks"].values():
            assert check["max_abs_diff"] < 1e-4 and check["nfe_jax"] > 0


def test_profile_conv_times_torchs_kernels_on_the_same_convs(tmp_path):
    """`profile_conv.py --impls ... torch` converts every conv of the 6-conv field to
    torch's layouts correctly (its output matches XLA's conv) and reports each
    implementation's forward/dX/dW per layer and summed."""
    out = tmp_path / "conv.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.profile_conv",
         "--batch", "2", "--repeats", "1", "--loop", "1", "--impls", "im2col", "torch",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["layer"] for r in rows] == [0, 1, 2, 3, 4, 5, "all"]
    assert {r["mode"] for r in rows[:-1]} == {"same", "down", "up"}
    for r in rows[:-1]:
        assert r["torch_max_abs_diff"] < 1e-4 and r["max_abs_diff"] < 1e-4
    total = rows[-1]
    for key in ("im2col_fwd_s", "im2col_dw_s", "torch_dx_s", "torch_dw_s"):
        assert total[key] == pytest.approx(sum(r[key] for r in rows[:-1]))
    assert "| torch fwd s | torch dX s | torch dW s |" in proc.stdout
    assert "xla fwd s" not in proc.stdout
