"""Fast smoke tests of every experiment script (the full runs are marked slow)."""

import dataclasses
import json

import equinox as eqx
import jax
import numpy as np
import pytest

import tadiffeq as td


@pytest.mark.heavy
def test_main_job_smoke(tmp_path, capsys):
    from experiments import main

    rows = main.main(
        ["--data", "synthetic", "--norms", "tabn", "--epochs", "1",
         "--train-limit", "256", "--test-limit", "64", "--hidden", "16",
         "--batch-size", "64", "--reg-steps", "3", "--out", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "test NFE x" in out and (tmp_path / "main.png").stat().st_size > 0
    assert "acc@batch2" in out and "tabn" in out
    saved = json.loads((tmp_path / "main.json").read_text())
    assert [r["norm"] for r in saved["rows"]] == ["tabn"]
    assert [r["regularizer"] for r in saved["regularization"]] == [
        "none",
        "local",
        "global",
    ]
    for r in rows:
        assert 0.0 <= r["acc_b256"] <= 1.0 and r["test_nfe"] > 0
        assert 0.0 <= r["acc_noisy"] <= 1.0
    assert "1-in-10 noisy" in out


@pytest.mark.heavy
def test_training_is_deterministic_and_resumes_exactly(tmp_path):
    """Same seed, same numbers; a run stopped after one epoch and resumed from its
    checkpoint ends with exactly the model, TA-BN statistics and history of an
    uninterrupted run."""
    import equinox as eqx
    import numpy as np

    from experiments.common import ClassifierConfig, train_classifier
    from tadiffeq.data import synthetic_digits

    data = synthetic_digits(seed=0)
    data = {k: (x[:96], y[:96]) for k, (x, y) in data.items()}
    cfg = ClassifierConfig(norm="tabn", hidden=8, epochs=2, batch_size=32)
    log = lambda *a, **k: None
    full = train_classifier(cfg, data, log=log, checkpoint_dir=tmp_path / "a")
    stopped = train_classifier(
        cfg, data, log=log, checkpoint_dir=tmp_path / "b", stop_after_epochs=1
    )
    assert stopped is None
    assert td.Checkpointer(tmp_path / "b").latest()[0] == 1
    resumed = train_classifier(cfg, data, log=log, checkpoint_dir=tmp_path / "b")
    assert [h["loss"] for h in full[2]] == [h["loss"] for h in resumed[2]]
    leaves = lambda run: jax.tree.leaves(eqx.filter(run[:2], eqx.is_array))
    for a, b in zip(leaves(full), leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="another configuration"):
        train_classifier(
            ClassifierConfig(norm="tabn", hidden=8, epochs=3, batch_size=32),
            data, log=log, checkpoint_dir=tmp_path / "b",
        )  # fmt: skip
    # The same configuration on other training data is another run, too.
    fewer = {**data, "train": (data["train"][0][:64], data["train"][1][:64])}
    with pytest.raises(ValueError, match="other training data"):
        train_classifier(cfg, fewer, log=log, checkpoint_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="`batch_size=128` is larger than the 96"):
        train_classifier(ClassifierConfig(hidden=8, epochs=1), data, log=log)


def test_main_job_rejects_bad_sizes(capsys):
    from experiments import main

    for flag, value in [("--train-limit", "0"), ("--batch-size", "-5")]:
        with pytest.raises(SystemExit):
            main.main([flag, value])
        assert "must be a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_main_job_full(tmp_path):
    from experiments import main

    rows = main.main(["--out", str(tmp_path)])
    by = {r["norm"]: r for r in rows}
    # Fig. 3 (left) of the paper: mini-batch BN loses accuracy at test batch 2,
    # TA-BN keeps it.
    assert by["minibatch"]["acc_b2"] < by["minibatch"]["acc_b256"] - 0.05
    assert abs(by["tabn"]["acc_b2"] - by["tabn"]["acc_b256"]) < 1e-9
    # Fig. 3 (middle): noisy neighbours (std 10) cost mini-batch BN's clean samples
    # accuracy; TA-BN solves each sample with its running statistics.
    assert by["minibatch"]["acc_noisy"] < by["minibatch"]["acc_b256"] - 0.02
    assert by["tabn"]["acc_noisy"] > by["tabn"]["acc_b256"] - 0.01


def test_param_counts_smoke(capsys):
    from experiments import param_counts

    table = param_counts.main(["--num-intervals", "10"])
    by = {r["field"]: r for r in table}
    assert set(by) == set(param_counts.FIELDS)
    assert by["unet"]["without_grid"] == 2_190_196  # the paper's "2.2M"
    assert by["unet"]["popti"] == by["unet"]["minibatch"] == 2_190_196
    assert by["unet"]["none"] == 2_186_926
    # Grid affine adds 2 * M * C per TA-BN layer (M = 10 here; every layer has one).
    spec = [cout for _, cout, _ in __import__("tadiffeq").conv_field_spec(3, 6)]
    assert by["conv6"]["with_grid"] - by["conv6"]["without_grid"] == 2 * 10 * sum(spec)
    assert "| unet |" in capsys.readouterr().out


@pytest.mark.heavy
def test_regularized_toy_model_is_cheaper_to_solve(tmp_path):
    """Same seed: the local regularizer with the exact gradient through its step and
    the global one give a model that takes fewer function evaluations (at each of
    seeds 0-4, docs/results.md; the paper's first-stage `local` only at some)."""
    from experiments import regularization_toy

    rows = regularization_toy.main(
        ["--regularizers", "none,local_exact,global", "--weights", "0,1e4,10",
         "--out", str(tmp_path)]
    )  # fmt: skip
    by = {r["regularizer"]: r for r in rows}
    for name in ("local_exact", "global"):
        assert by[name]["test_nfe"] < by["none"]["test_nfe"], by
        assert by[name]["test_acc"] > 0.8, by


@pytest.mark.heavy
def test_regularization_mnist_smoke_and_exact_resume(tmp_path, capsys):
    """Every regularizer of the MNIST script runs (generated data, a few steps), and
    a run interrupted and resumed from its checkpoint ends exactly where an
    uninterrupted run ends."""
    from experiments import regularization_mnist as rm

    rows = rm.main(
        ["--data", "synthetic", "--regularizers", "none,local_biased",
         "--steps", "3", "--batch-size", "64", "--hidden", "16", "--eval-batch", "250",
         "--out", str(tmp_path / "smoke"), "--timing-repeats", "1"]
    )  # fmt: skip
    assert [r["regularizer"] for r in rows] == ["none", "local_biased"]
    assert "NFE ratio" in capsys.readouterr().out
    sde = rm.main(
        ["--model", "sde", "--data", "synthetic", "--regularizers", "local",
         "--steps", "2", "--batch-size", "32", "--eval-batch", "500",
         "--out", str(tmp_path / "sde"), "--timing-repeats", "1"]
    )  # fmt: skip
    assert all(r["test_nfe"] > 0 for r in sde)
    # The paper's protocol (its SDE: autonomous fields, Glorot init, lr decay).
    paper = rm.main(
        ["--model", "sde", "--protocol", "paper", "--data", "synthetic",
         "--regularizers", "none", "--steps", "2", "--batch-size", "32",
         "--out", str(tmp_path / "paper"), "--timing-repeats", "1"]
    )  # fmt: skip
    assert paper[0]["config"]["weight"] == 1000.0 and paper[0]["sample_nfe"] > 0
    # Finished rows timed interleaved in one process (trains nothing).
    timed = rm.main(
        ["--data", "synthetic", "--regularizers", "none,local_biased",
         "--steps", "3", "--batch-size", "64", "--hidden", "16", "--eval-batch", "250",
         "--out", str(tmp_path / "smoke"), "--time-only", "--timing-repeats", "1"]
    )  # fmt: skip
    assert [r["regularizer"] for r in timed] == ["none", "local_biased"]
    assert timed[0]["speedup"] == 1.0 and all(r["predict_s"] > 0 for r in timed)
    assert "interleaved (median of 1 after" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no finished run"):
        rm.main(
            ["--data", "synthetic", "--regularizers", "local", "--steps", "3",
             "--out", str(tmp_path / "smoke"), "--time-only"]
        )  # fmt: skip
    # Runs of other folders and settings side by side, each restored with the
    # configuration its result.json records (here the smoke rows and the SDE row).
    smoke, sde_dir = tmp_path / "smoke", tmp_path / "sde"
    timed = rm.main(
        ["--time-runs", f"{smoke / 'ode_none_seed0'},{sde_dir / 'sde_local_seed0'}",
         "--out", str(tmp_path / "timing"), "--timing-repeats", "1"]
    )  # fmt: skip
    assert [(r["run"], r["regularizer"]) for r in timed] == [
        ("ode_none_seed0", "none"),
        ("sde_local_seed0", "local"),
    ]
    assert timed[0]["speedup"] == 1.0 and (tmp_path / "timing/timing.json").exists()
    with pytest.raises(ValueError, match="no finished run"):
        rm.main(["--time-runs", str(tmp_path / "nothing")])

    cfg = rm.RegConfig(
        regularizer="local", steps=6, batch_size=64, hidden=8, data="synthetic"
    )
    full = rm.run(cfg, tmp_path / "full", checkpoint_every=100, timing_repeats=1)
    assert rm.run(cfg, tmp_path / "split", stop_after=4) is None
    resumed = rm.run(cfg, tmp_path / "split", timing_repeats=1)
    assert resumed["test_acc"] == full["test_acc"]
    assert resumed["train_nfe"] == full["train_nfe"]
    _, h_full = td.Checkpointer(tmp_path / "full/checkpoint").latest()
    _, h_split = td.Checkpointer(tmp_path / "split/checkpoint").latest()
    assert h_full["history"]["ce"] == h_split["history"]["ce"]
    with pytest.raises(ValueError, match="another configuration"):
        rm.run(dataclasses.replace(cfg, steps=5), tmp_path / "split")
    assert h_split["data"] == h_full["data"]  # the training data's fingerprint


def test_glorot_init_is_luxs_dense(getkey):
    """`glorot_init` draws every weight uniformly within sqrt(6 / (fan_in +
    fan_out)) (the time input counted in a TimeLinear's fan_in) with that limit's
    variance, lim^2 / 3, and zeros every bias."""
    from experiments import regularization_mnist as rm

    cfg = rm.RegConfig(hidden=100)
    model, _ = eqx.nn.make_with_state(rm.ODEClassifier)(cfg, 784, getkey())
    model = rm.glorot_init(model, getkey())
    layers = [*model.node.field.layers, model.head]
    for layer, (fan_in, fan_out) in zip(layers, [(785, 100), (101, 784), (784, 10)]):
        w = np.asarray(layer.weight)
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(w).max() <= lim and np.abs(w).max() > 0.95 * lim
        np.testing.assert_allclose(w.var(), lim**2 / 3, rtol=0.05)
        assert not np.any(np.asarray(layer.bias))


def test_restore_checked_refuses_other_config_or_data(tmp_path):
    import jax.numpy as jnp

    from experiments.common import restore_checked

    ckpt = td.Checkpointer(tmp_path)
    like = {"w": jnp.zeros(2)}
    assert restore_checked(ckpt, like, {"a": 1}, "here", "f1") is None
    ckpt.save(3, {"w": jnp.ones(2)}, {"config": {"a": 1}, "data": "f1"})
    step, tree, _ = restore_checked(ckpt, like, {"a": 1}, "here", "f1")
    assert step == 3 and float(tree["w"][0]) == 1.0
    with pytest.raises(ValueError, match="here holds a checkpoint of another conf"):
        restore_checked(ckpt, like, {"a": 2}, "here", "f1")
    with pytest.raises(ValueError, match="here holds a checkpoint of a run on other"):
        restore_checked(ckpt, like, {"a": 1}, "here", "f2")
    # Checked before the arrays are read: a differently shaped tree gets the message.
    with pytest.raises(ValueError, match="another configuration"):
        restore_checked(ckpt, {"w": jnp.zeros(5), "v": 0.0}, {"a": 2}, "here")


def _ablations(tmp_path, studies, norms):
    from experiments import tabn_ablations

    return tabn_ablations.main(
        ["--data", "synthetic", "--study", studies, "--norms", norms,
         "--depths", "4", "--conv-width", "4", "--epochs", "1", "--train-limit", "64",
         "--test-limit", "40", "--hidden", "8", "--batch-size", "32",
         "--out", str(tmp_path)]
    )  # fmt: skip


@pytest.mark.heavy
def test_tabn_ablations_smoke(tmp_path):
    """The TA-BN ablation script runs (noise and statistics studies; all studies in
    the slow test) on a few generated batches and writes its tables and figures."""
    from experiments import tabn_ablations

    res = _ablations(tmp_path, "noise,stats", "tabn")  # one model, reused
    # TA-BN solves each sample on its own: noisy neighbours cannot change a clean
    # sample's prediction.
    tabn = res["noise"][0]
    assert tabn["acc_clean_batches"] == tabn["acc_clean_in_noisy_batches"]
    assert len(res["stats"]) == 101
    for name in ("noise.json", "noise.png", "stats.png"):
        assert (tmp_path / name).exists()
    with pytest.raises(ValueError, match="--study"):
        tabn_ablations.main(["--study", "bogus", "--data", "synthetic"])


def test_evaluate_with_batch_statistics_ignores_running_statistics():
    """`evaluate(..., batch_statistics=True)` normalises the vector field with each
    test batch's own statistics and keeps the head's normalisation on its running
    statistics (dropout off): its predictions are those of a training-mode solve of
    each batch through an inference-mode head, and do not depend on the field's
    running statistics."""
    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np

    from experiments.common import build_classifier, ClassifierConfig, evaluate

    cfg = ClassifierConfig(hidden=8, num_intervals=4)
    model, state = build_classifier(cfg, (6, 6, 1), 3, jax.random.PRNGKey(0))
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (24, 6, 6, 1)))
    y = np.zeros(24, dtype=np.int32)
    _, nfe, pred = evaluate(
        model, state, x, y, 8, batch_statistics=True, return_predictions=True
    )
    assert pred.shape == (24,) and nfe > 0
    ode = eqx.nn.inference_mode(model.ode, value=False)  # joint, batch statistics

    def by_hand(xb):
        ys, _, _ = ode(jnp.asarray(xb), state)
        feats, _ = model.head_norm(0.0, ys.reshape(len(xb), -1), state, inference=True)
        return jnp.argmax(feats @ model.linear.weight.T + model.linear.bias, -1)

    expected = [by_hand(x[i : i + 8]) for i in range(0, 24, 8)]
    np.testing.assert_array_equal(pred, np.concatenate(expected))
    # The head reads its running statistics: shifting them changes the predictions.
    hm, hv = state.get(model.head_norm.state_index)
    head_shifted = td.clone_state(state).set(
        model.head_norm.state_index, (hm + 3.0 * jnp.sign(jnp.sin(hm + 1)), hv * 4)
    )
    _, _, pred_head = evaluate(
        model, head_shifted, x, y, 8, batch_statistics=True, return_predictions=True
    )
    assert not np.array_equal(pred, pred_head)
    # Shifted running statistics change inference-mode predictions, not these.
    norm = model.ode.field.norms[0]
    mean, var = state.get(norm.state_index)
    shifted = state.set(norm.state_index, (mean + 5.0, var * 9.0))
    _, _, pred_shifted = evaluate(
        model, shifted, x, y, 8, batch_statistics=True, return_predictions=True
    )
    np.testing.assert_array_equal(pred, pred_shifted)


@pytest.mark.slow
def test_tabn_ablations_all_studies(tmp_path):
    res = _ablations(tmp_path, "depth,noise,solver,grid,stats", "tabn,minibatch")
    # The depth study trains the --norms asked for.
    assert [(r["depth"], r["norm"]) for r in res["depth"]] == [
        (4, "tabn"), (4, "minibatch")
    ]  # fmt: skip
    tabn_row, minibatch_row = res["depth"]
    assert 0.0 <= tabn_row["test_acc_batch_stats"] <= 1.0
    assert minibatch_row["test_acc_batch_stats"] is None
    assert [r["grid"] for r in res["grid"]] == [10, 50, 100, 500]
    assert {(r["norm"], r["solver"]) for r in res["solver"]} == {
        ("tabn", "euler"), ("tabn", "dopri5"), ("none", "euler"), ("none", "dopri5")
    }  # fmt: skip


def test_evaluate_a_classifier_trained_with_first_step_jitter():
    """A model whose training solves jitter their first step evaluates in both
    modes (the batch-statistics solve is a training-mode solve: it gets a fixed key)."""
    import numpy as np

    from experiments.common import build_classifier, ClassifierConfig, evaluate

    cfg = ClassifierConfig(hidden=8, num_intervals=4, first_step_jitter=1.0)
    model, state = build_classifier(cfg, (6, 6, 1), 3, jax.random.PRNGKey(0))
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (16, 6, 6, 1)))
    y = np.zeros(16, dtype=np.int32)
    for batch_statistics in (False, True):
        acc, nfe = evaluate(model, state, x, y, 8, batch_statistics=batch_statistics)
        assert 0 <= acc <= 1 and nfe > 0
    twice = [evaluate(model, state, x, y, 8, batch_statistics=True) for _ in range(2)]
    assert twice[0] == twice[1]


def test_scripts_jitter_tabn_training_solves_only_where_it_acts(capsys):
    """The scripts' TA-BN runs train with `TABN_FIRST_STEP_JITTER` by default (what
    made training cover the grid, docs/results.md); other normalisations and Euler's
    constant steps get none (the library refuses jitter with constant steps)."""
    import argparse

    from experiments.common import (
        adaptive_steps,
        add_first_step_jitter_argument,
        ClassifierConfig,
        TABN_FIRST_STEP_JITTER,
        with_first_step_jitter,
    )
    from experiments.tabn_images import preset_config

    assert TABN_FIRST_STEP_JITTER == 1.0
    assert not adaptive_steps(ClassifierConfig(solver="euler"))
    assert all(adaptive_steps(ClassifierConfig(solver=s)) for s in ("dopri5", "tsit5"))
    cases = [
        (ClassifierConfig(norm="tabn"), 0.5),
        (ClassifierConfig(norm="tabn_gaussian", solver="tsit5"), 0.5),
        (ClassifierConfig(norm="tabn", solver="euler"), 0.0),
        (ClassifierConfig(norm="popti"), 0.0),
        (ClassifierConfig(norm="none"), 0.0),
        (preset_config("cifar10"), 0.5),  # the GPU script's config (a subclass)
    ]
    for cfg, expected in cases:
        jittered = with_first_step_jitter(cfg, 0.5)
        assert jittered.first_step_jitter == expected, cfg
        assert type(jittered) is type(cfg) and jittered.norm == cfg.norm
    parser = argparse.ArgumentParser()
    add_first_step_jitter_argument(parser)
    assert parser.parse_args([]).first_step_jitter == TABN_FIRST_STEP_JITTER
    assert parser.parse_args(["--first-step-jitter", "0"]).first_step_jitter == 0.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--first-step-jitter", "-1"])
    assert "--first-step-jitter" in capsys.readouterr().err


def test_classifier_architecture_authors_or_legacy():
    """`ClassifierConfig.architecture`: the authors' conv field and head by default,
    tadiffeq 0.1's with "0.1" (what the runs recorded before it used), checked."""
    from experiments.common import build_classifier, ClassifierConfig, LEGACY_CONFIG

    def build(architecture):
        cfg = ClassifierConfig(
            field="conv4", conv_width=2, norm="popti", architecture=architecture
        )
        return build_classifier(cfg, (8, 8, 1), 3, jax.random.PRNGKey(0))[0]

    authors, legacy = build("authors"), build("0.1")
    assert authors.ode.field.blocks[-1].norm is not None
    assert authors.head_norm.num_features == 1  # per channel of the 8x8x1 output
    assert legacy.ode.field.blocks[-1].norm is None
    assert legacy.head_norm.num_features == 64  # per flattened feature
    assert LEGACY_CONFIG["architecture"] == "0.1"
    with pytest.raises(ValueError, match="architecture"):
        build("2.0")
