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
        [sys.executable, str(REPO / "benchmarks" / "bench_vs_torch.py"),
         "--model", "mlp", "conv6", "--batch", "4", "--check-only",
         "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["model"] for r in runs] == ["mlp", "conv6"]
    for run in runs:
        assert run["equivalent"], run["checks"]
        for check in run["checks"].values():
            assert check["max_abs_diff"] < 1e-4 and check["nfe_jax"] > 0
