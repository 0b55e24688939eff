"""The PhysioNet 2012 loader and generator, `tadiffeq.LatentODE`, and
experiments/latent_ode.py (fast checks here; the training runs are marked slow)."""

import dataclasses
import json
import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tadiffeq as td
from tadiffeq.data import (
    generate_physionet,
    load_physionet,
    PHYSIONET_FEATURES,
    read_physionet_record,
)


HR, TEMP, WEIGHT = (PHYSIONET_FEATURES.index(n) for n in ("HR", "Temp", "Weight"))


def _write(folder, record_id, rows):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["Time,Parameter,Value", f"00:00,RecordID,{record_id}", "00:00,Age,54"]
    lines += [f"{t},{p},{v}" for t, p, v in rows]
    (folder / f"{record_id}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def small_folder(tmp_path):
    root = tmp_path / "physionet"
    _write(root / "set-a", 1, [
        ("00:00", "Weight", "-1"), ("00:07", "HR", "80"), ("00:07", "Temp", "36.5"),
        ("01:00", "HR", "90"), ("01:00", "HR", "100"), ("48:00", "Weight", "70.25"),
    ])  # fmt: skip
    _write(root / "set-a", 2, [("00:30", "HR", "60"), ("12:00", "Temp", "38.5")])
    _write(root / "set-b", 3, [("02:00", "HR", "120"), ("03:59", "Temp", "37")])
    return root


def test_read_record_parses_values_times_and_mask_exactly(small_folder):
    rid, hours, values, mask = read_physionet_record(small_folder / "set-a/1.txt")
    assert rid == 1
    np.testing.assert_array_equal(hours, [0.0, 7 / 60, 1.0, 48.0])
    assert values.shape == mask.shape == (4, 37)
    assert mask[0].sum() == 0  # only descriptors and the "unknown" Weight -1
    assert values[1, HR] == 80.0 and values[1, TEMP] == 36.5
    assert values[2, HR] == 95.0  # two values at one time are averaged
    assert values[3, WEIGHT] == 70.25
    assert mask.sum() == 4 and mask[1, HR] == mask[2, HR] == mask[3, WEIGHT] == 1
    # Quantised to 0.1 h: 00:07 -> 0.1 h.
    _, hours, _, _ = read_physionet_record(
        small_folder / "set-a/1.txt", quantization=0.1
    )
    np.testing.assert_allclose(hours, [0.0, 0.1, 1.0, 48.0])


def test_load_physionet_grid_split_and_normalisation(small_folder):
    data = load_physionet(small_folder, quantization=None, test_fraction=0.34)
    grid_hours = [0, 7 / 60, 0.5, 1, 2, 3 + 59 / 60, 12, 48]
    np.testing.assert_allclose(data["times"], np.array(grid_hours) / 48, rtol=1e-6)
    train, test = data["train"], data["test"]
    assert len(train["record_ids"]) == 2 and len(test["record_ids"]) == 1
    assert sorted([*train["record_ids"], *test["record_ids"]]) == [1, 2, 3]
    # Min-max on the training split: raw = min + normalised * (max - min).
    lo, hi = data["feature_min"], data["feature_max"]
    for split in (train, test):
        assert (
            split["values"].shape == split["mask"].shape == (len(split["mask"]), 8, 37)
        )
        assert np.all(split["values"][split["mask"] == 0] == 0)
    raw = {
        1: {(1, HR): 80, (1, TEMP): 36.5, (3, HR): 95, (7, WEIGHT): 70.25},
        2: {(2, HR): 60, (6, TEMP): 38.5},
        3: {(4, HR): 120, (5, TEMP): 37},
    }
    # fmt: skip
    for split in (train, test):
        for i, rid in enumerate(split["record_ids"]):
            for (t, f), value in raw[int(rid)].items():
                assert split["mask"][i, t, f] == 1
                back = lo[f] + split["values"][i, t, f] * (hi[f] - lo[f])
                assert back == pytest.approx(value, rel=1e-6)
            assert split["mask"][i].sum() == len(raw[int(rid)])
    observed = train["values"][train["mask"] > 0]
    assert observed.min() == 0.0 and observed.max() == 1.0


def test_loader_errors_name_the_problem(tmp_path, small_folder):
    bad = tmp_path / "bad"
    _write(bad, 9, [("1:5", "HR", "80")])
    with pytest.raises(ValueError, match="HH:MM"):
        read_physionet_record(bad / "9.txt")
    _write(bad, 9, [("01:05", "Heart", "80")])
    with pytest.raises(ValueError, match="unknown parameter 'Heart'"):
        read_physionet_record(bad / "9.txt")
    for value in ("nan", "inf"):
        _write(bad, 9, [("01:05", "HR", value)])
        message = f"9.txt:4: the value '{value}' is not finite"
        with pytest.raises(ValueError, match=message):
            read_physionet_record(bad / "9.txt")
    with pytest.raises(FileNotFoundError, match="No PhysioNet"):
        load_physionet(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="test_fraction"):
        load_physionet(small_folder, test_fraction=1.0)


def test_generator_is_deterministic_cached_and_in_the_file_format(tmp_path):
    a = generate_physionet(tmp_path / "a", 6, seed=3, mean_events=5.0)
    b = generate_physionet(tmp_path / "b", 6, seed=3, mean_events=5.0)
    files = sorted(p.name for p in (a / "set-a").glob("*.txt"))
    assert len(files) == 6
    for name in files:
        assert (a / "set-a" / name).read_text() == (b / "set-a" / name).read_text()
    c = generate_physionet(tmp_path / "c", 6, seed=4, mean_events=5.0)
    assert (c / "set-a" / files[0]).read_text() != (a / "set-a" / files[0]).read_text()
    stamp = (a / "set-a" / files[0]).stat().st_mtime_ns
    generate_physionet(tmp_path / "a", 6, seed=3, mean_events=5.0)  # cached
    assert (a / "set-a" / files[0]).stat().st_mtime_ns == stamp
    assert json.loads((a / "generator.json").read_text())["seed"] == 3
    data = load_physionet(a, test_fraction=0.5)
    assert data["train"]["values"].shape[1:] == (len(data["times"]), 37)
    assert data["times"][0] == 0 and data["times"][-1] <= 1
    assert data["train"]["mask"].sum() > 0
    with pytest.raises(ValueError, match="latent_dim"):
        generate_physionet(tmp_path / "d", 2, latent_dim=3)


def _small_model(**kwargs):
    return eqx.nn.make_with_state(td.LatentODE)(
        3, 2, 4, (4,), key=jax.random.PRNGKey(0), **kwargs
    )


def test_latent_ode_shapes_and_argument_errors():
    model, _ = _small_model()
    times = jnp.linspace(0, 1, 5)
    x = jnp.zeros((2, 5, 3))
    mean, logstd = eqx.filter_eval_shape(model.encode, times, x, x)
    assert mean.shape == logstd.shape == (2, 2)  # the full call: the slow test
    # ValueErrors without the jaxtyping hook; the hook's TypeError (shape
    # annotations) comes first when the tests run with it.
    with pytest.raises((ValueError, TypeError)):
        eqx.filter_eval_shape(
            model.encode, times, jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3))
        )
    with pytest.raises(ValueError, match="`values` must have shape"):
        model.check_inputs(times, jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="`mask` must have the shape"):
        model.check_inputs(times, x, jnp.zeros((2, 5, 2)))
    with pytest.raises(ValueError, match="`obs_std`"):
        _small_model(obs_std=0.0)
    with pytest.raises(ValueError, match="`latent`"):
        eqx.nn.make_with_state(td.LatentODE)(3, 0, key=jax.random.PRNGKey(0))


def test_kl_and_nll_match_hand_computations():
    mean = jnp.array([[0.5, -1.0]])
    logstd = jnp.array([[math.log(2.0), 0.0]])
    # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1) / 2 - log s per dimension.
    hand = (0.25 + 4 - 1) / 2 - math.log(2.0) + (1.0 + 1 - 1) / 2
    assert td.LatentODE.kl_normal(mean, logstd)[0] == pytest.approx(hand, rel=1e-6)
    assert td.LatentODE.kl_normal(jnp.zeros((1, 3)), jnp.zeros((1, 3)))[0] == 0
    pred = jnp.array([[[1.0, 2.0], [3.0, 4.0]]])
    values = jnp.array([[[1.5, 0.0], [3.0, 9.0]]])
    mask = jnp.array([[[1.0, 0.0], [1.0, 0.0]]])
    mse = td.LatentODE.masked_mse(pred, values, mask)
    assert mse[0] == pytest.approx(0.25 / 2)
    sigma = 0.1
    nll = td.LatentODE.gaussian_nll(pred, values, mask, sigma)
    hand = 0.5 * 0.25 / sigma**2 + 2 * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    assert nll[0] == pytest.approx(hand / 2, rel=1e-6)
    # A series without observations contributes 0.
    assert td.LatentODE.gaussian_nll(pred, values, 0 * mask, sigma)[0] == 0


def test_masked_entries_do_not_matter_and_nll_gradient_is_the_hand_one():
    model, _ = _small_model()
    key = jax.random.PRNGKey(2)
    times = jnp.linspace(0, 1, 5)
    values = jax.random.normal(key, (2, 5, 3))
    mask = (jax.random.uniform(jax.random.PRNGKey(3), (2, 5, 3)) < 0.5).astype(float)
    mask = mask.at[:, 4].set(0.0)  # one grid time without any observation
    changed = jnp.where(mask > 0, values, 1e3)  # garbage wherever unobserved
    both = jnp.concatenate([values, changed]), jnp.concatenate([mask, mask])
    for q in eqx.filter_jit(model.encode)(times, *both):  # one compilation
        np.testing.assert_array_equal(q[:2], q[2:])
    pred = values + 0.3
    for fn in (td.LatentODE.masked_mse, td.LatentODE.gaussian_nll):
        args = (0.01,) if fn is td.LatentODE.gaussian_nll else ()
        np.testing.assert_array_equal(
            fn(pred, values, mask, *args), fn(pred, changed, mask, *args)
        )
    # d nll / d pred = mask (pred - x) / (sigma^2 * count) per series.
    grad = jax.grad(lambda p: td.LatentODE.gaussian_nll(p, values, mask, 0.5).sum())(
        pred
    )
    count = mask.sum((1, 2), keepdims=True)
    np.testing.assert_allclose(grad, mask * 0.3 / (0.25 * count), rtol=1e-5)


@pytest.mark.slow
def test_latent_ode_gradient_matches_finite_differences():
    """Through the encoder, the solve (Euler, fixed steps, float64) and the decoder."""
    with jax.enable_x64(True):
        model, state = eqx.nn.make_with_state(td.LatentODE)(
            3, 2, 4, (4,), solver=dfx.Euler(), dt0=0.25,
            stepsize_controller=dfx.ConstantStepSize(), key=jax.random.PRNGKey(0),
        )  # fmt: skip
        model = jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model
        )
        times = jnp.linspace(0, 1, 5)
        values = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
        mask = jnp.ones_like(values).at[0, 2].set(0)
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def loss(p):
            m = eqx.combine(p, static)
            return m.loss(times, values, mask, state, key=jax.random.PRNGKey(4))[0]

        pred, (mean, _), _, stats = eqx.combine(params, static)(
            times, values, mask, state
        )
        assert pred.shape == (2, 5, 3) and mean.shape == (2, 2)
        assert int(stats.num_fn_evals) == 4  # 4 Euler steps of 0.25
        grad = jax.grad(loss)(params)
        direction = jax.tree.map(
            lambda a: jax.random.normal(jax.random.PRNGKey(5), a.shape, a.dtype), params
        )
        eps = 1e-6
        plus = jax.tree.map(lambda a, d: a + eps * d, params, direction)
        minus = jax.tree.map(lambda a, d: a - eps * d, params, direction)
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        analytic = sum(
            jnp.vdot(g, d)
            for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction))
        )
        assert float(analytic) == pytest.approx(float(fd), rel=1e-5)


def test_experiment_rejects_bad_arguments_by_name(tmp_path, capsys):
    """Each bad setting stops the script before any work, with an error naming the
    flag: argparse's (exit 2, on stderr) or the configuration check's ValueError."""
    from experiments import latent_ode

    out = ["--out", str(tmp_path)]
    for argv, flag in [
        (["--regularizers", "none,bogus"], "--regularizers"),
        (["--data", "physionet"], "--physionet-dir"),
        (["--data", "mnist"], "--data"),
        (["--steps", "0"], "--steps"),
        (["--tol", "-1"], "--tol"),
        (["--obs-std", "0"], "--obs-std"),
        (["--lr", "nan"], "--lr"),
    ]:
        with pytest.raises((ValueError, SystemExit)) as e:
            latent_ode.main([*argv, *out])
        text = (
            str(e.value) if isinstance(e.value, ValueError) else capsys.readouterr().err
        )
        assert flag in text, (argv, text)
    with pytest.raises(SystemExit):
        latent_ode.main(["--help"])
    assert not any(tmp_path.iterdir())  # nothing trained or written


@pytest.mark.slow
def test_experiment_smoke_and_exact_resume(tmp_path, capsys, monkeypatch):
    """All three regularizers train a few steps on a tiny generated set and write
    their table, JSON and figure; a run stopped and resumed from its checkpoint ends
    exactly where an uninterrupted run ends."""
    from experiments import latent_ode

    tiny = ["--num-patients", "24", "--batch-size", "8", "--latent", "3",
            "--hidden", "6", "--eval-batch", "6", "--no-progress",
            "--data-dir", str(tmp_path / "data")]  # fmt: skip
    rows = latent_ode.main(
        ["--regularizers", "none,local,global", "--steps", "3",
         "--out", str(tmp_path / "smoke"), *tiny]
    )  # fmt: skip
    assert [r["regularizer"] for r in rows] == ["none", "local", "global"]
    assert "NFE ratio" in capsys.readouterr().out
    assert (tmp_path / "smoke/latent_ode_seed0.png").stat().st_size > 0
    for r in rows:
        assert r["test_nfe"] > 0 and r["test_mse"] > 0 and r["predict_s"] > 0
    by = {r["regularizer"]: r for r in rows}
    assert by["local"]["train_nfe"] > by["none"]["train_nfe"]  # the extra step

    cfg = latent_ode.LatentODEConfig(
        regularizer="local", num_patients=24, batch_size=8, latent=3, hidden=6,
        eval_batch=6, steps=5,
    )  # fmt: skip
    kw = dict(data_dir=tmp_path / "data", progress=False)
    full = latent_ode.run(cfg, tmp_path / "full", **kw)
    assert latent_ode.run(cfg, tmp_path / "split", stop_after=3, **kw) is None
    resumed = latent_ode.run(cfg, tmp_path / "split", **kw)
    assert resumed["test_mse"] == full["test_mse"]
    assert resumed["history"] == full["history"]
    # A checkpoint is refused for another configuration (a shorter run) ...
    with pytest.raises(ValueError, match="another configuration"):
        latent_ode.run(dataclasses.replace(cfg, steps=3), tmp_path / "split", **kw)
    # ... and for other training data under the same configuration.
    real_load = latent_ode.load_data

    def shifted(cfg, data_dir):
        data, what = real_load(cfg, data_dir)
        data["train"]["values"] = data["train"]["values"] + 1.0
        return data, what

    monkeypatch.setattr(latent_ode, "load_data", shifted)
    with pytest.raises(ValueError, match="a run on other data"):
        latent_ode.run(cfg, tmp_path / "split", **kw)
