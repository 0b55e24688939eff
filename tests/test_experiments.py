"""Fast smoke tests of every experiment script (the full runs are marked slow)."""

import json
import pathlib
import sys

import pytest


EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))


def test_main_job_smoke(tmp_path, capsys):
    import main

    rows = main.main(
        ["--data", "synthetic", "--norms", "tabn,minibatch", "--epochs", "1",
         "--train-limit", "256", "--test-limit", "64", "--hidden", "16",
         "--batch-size", "64", "--out", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "acc@batch2" in out and "tabn" in out and "minibatch" in out
    saved = json.loads((tmp_path / "main.json").read_text())
    assert [r["norm"] for r in saved["rows"]] == ["tabn", "minibatch"]
    for r in rows:
        assert 0.0 <= r["acc_b256"] <= 1.0 and r["test_nfe"] > 0


def test_main_job_is_deterministic(tmp_path):
    import main

    args = ["--data", "synthetic", "--norms", "popti", "--epochs", "1",
            "--train-limit", "128", "--test-limit", "32", "--hidden", "8",
            "--batch-size", "32"]  # fmt: skip
    a = main.main(args + ["--out", str(tmp_path / "a")])
    b = main.main(args + ["--out", str(tmp_path / "b")])
    assert a[0]["acc_b256"] == b[0]["acc_b256"]
    assert a[0]["history"][0]["loss"] == b[0]["history"][0]["loss"]


@pytest.mark.slow
def test_main_job_full(tmp_path):
    import main

    rows = main.main(["--out", str(tmp_path)])
    by = {r["norm"]: r for r in rows}
    # Fig. 3 (left) of the paper: mini-batch BN loses accuracy at test batch 2,
    # TA-BN keeps it.
    assert by["minibatch"]["acc_b2"] < by["minibatch"]["acc_b256"] - 0.05
    assert abs(by["tabn"]["acc_b2"] - by["tabn"]["acc_b256"]) < 1e-9


def test_param_counts_smoke(capsys):
    import param_counts

    table = param_counts.main(["--num-intervals", "10"])
    by = {r["field"]: r for r in table}
    assert set(by) == set(param_counts.FIELDS)
    assert by["unet"]["without_grid"] == 2_196_328  # the paper's "2.2M"
    # Grid affine adds 2 * M * C per TA-BN layer (M = 10 here).
    spec = [cout for _, cout, _ in __import__("tadiffeq").conv_field_spec(3, 6)[:-1]]
    assert by["conv6"]["with_grid"] - by["conv6"]["without_grid"] == 2 * 10 * sum(spec)
    assert "| unet |" in capsys.readouterr().out


def test_regularized_toy_model_is_cheaper_to_solve(tmp_path):
    """Same seed: the local (paper's frozen first stage and exact gradient) and
    global regularizers give a model that takes fewer function evaluations."""
    import regularization_toy

    rows = regularization_toy.main(
        ["--regularizers", "none,local,local_exact,global",
         "--weights", "0,3,1e4,10", "--out", str(tmp_path)]
    )  # fmt: skip
    by = {r["regularizer"]: r for r in rows}
    for name in ("local", "local_exact", "global"):
        assert by[name]["test_nfe"] < by["none"]["test_nfe"], by
        assert by[name]["test_acc"] > 0.8, by
