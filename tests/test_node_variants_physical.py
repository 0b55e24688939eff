"""The pendulum-chain generator, the Neural ODE variants' classifiers, and smoke runs
of `experiments/node_variants.py` and `experiments/physical_system.py`."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tadiffeq as td
from tadiffeq.data import (
    generate_pendulum_chain,
    pendulum_chain_energy,
    pendulum_chain_vector_field,
)


# One shape and tolerance for every generated set here, so Dopri8 compiles once.
SMALL = dict(num_trajectories=4, num_times=21, dt=0.05)


def test_pendulum_chain_vector_field_by_hand():
    """Three pendulums: accelerations -nu^2 sin(theta) - gamma omega + spring terms
    with free ends, written out."""
    theta = np.array([0.3, -0.2, 0.5])
    omega = np.array([0.1, 0.4, -0.3])
    nu, kappa, gamma = 1.5, 0.7, 0.2
    with jax.enable_x64(True):
        dy = np.asarray(
            pendulum_chain_vector_field(
                np.concatenate([theta, omega]),
                frequency=nu, stiffness=kappa, damping=gamma,
            )
        )  # fmt: skip
        energy = float(
            pendulum_chain_energy(
                np.concatenate([theta, omega]), frequency=nu, stiffness=kappa
            )
        )
    springs = [
        kappa * (theta[1] - theta[0]),
        kappa * ((theta[0] - theta[1]) + (theta[2] - theta[1])),
        kappa * (theta[1] - theta[2]),
    ]
    accel = -(nu**2) * np.sin(theta) - gamma * omega + np.array(springs)
    np.testing.assert_allclose(dy, np.concatenate([omega, accel]), rtol=1e-14)
    expected = (
        0.5 * np.sum(omega**2)
        + nu**2 * np.sum(1 - np.cos(theta))
        + 0.5 * kappa * ((theta[1] - theta[0]) ** 2 + (theta[2] - theta[1]) ** 2)
    )
    assert energy == pytest.approx(expected, rel=1e-14)


def test_pendulum_chain_shapes_energy_and_damping(tmp_path):
    conserved = generate_pendulum_chain(**SMALL, damping=0.0, cache_dir=tmp_path)
    damped = generate_pendulum_chain(**SMALL, damping=0.3, cache_dir=tmp_path)
    # shapes, dtypes, split (round(0.25 * 4) = 1 test trajectory), times
    assert conserved["train"].shape == (3, 21, 16)
    assert conserved["test"].shape == (1, 21, 16)
    assert all(v.dtype == np.float64 for v in conserved.values())
    np.testing.assert_allclose(conserved["ts"], 0.05 * np.arange(21), atol=1e-15)
    # same seed, same initial conditions; inside the requested ranges
    y0 = np.concatenate([conserved["train"], conserved["test"]])[:, 0]
    y0_damped = np.concatenate([damped["train"], damped["test"]])[:, 0]
    np.testing.assert_array_equal(y0, y0_damped)
    assert np.all(np.abs(y0[:, :8]) <= 1.0) and np.all(np.abs(y0[:, 8:]) <= 0.5)
    with jax.enable_x64(True):
        e0 = np.asarray(pendulum_chain_energy(conserved["train"]))
        e1 = np.asarray(pendulum_chain_energy(damped["train"]))
    # gamma = 0: energy conserved to the solver's tolerance
    assert np.max(np.abs(e0 - e0[:, :1]) / e0[:, :1]) < 1e-6
    # gamma > 0: dE/dt = -gamma sum omega^2 < 0 (Simpson's rule over two samples)
    assert np.all(np.diff(e1, axis=1) < 0)
    power = -0.3 * np.sum(damped["train"][..., 8:] ** 2, -1)
    simpson = 0.05 / 3 * (power[:, :-2] + 4 * power[:, 1:-1] + power[:, 2:])
    np.testing.assert_allclose(e1[:, 2:] - e1[:, :-2], simpson, rtol=1e-4)


def test_pendulum_chain_cache(tmp_path):
    first = generate_pendulum_chain(**SMALL, cache_dir=tmp_path)
    files = list(tmp_path.glob("pendulum_chain_*.npz"))
    assert len(files) == 1
    # A marked cache file: what a second call returns comes from it, not from a
    # new integration.
    with np.load(files[0]) as cached:
        marked = {k: cached[k] for k in cached.files}
    marked["train"] = marked["train"] + 1.0
    np.savez(files[0], **marked)
    hit = generate_pendulum_chain(**SMALL, cache_dir=tmp_path)
    np.testing.assert_array_equal(hit["train"], first["train"] + 1.0)
    for k in first:
        if k != "train":
            np.testing.assert_array_equal(hit[k], first[k])
    # another parameter: another hash, regenerated, different data
    other = generate_pendulum_chain(**SMALL, stiffness=0.1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("pendulum_chain_*.npz"))) == 2
    np.testing.assert_array_equal(other["train"][:, 0], first["train"][:, 0])
    assert not np.allclose(other["train"][:, -1], first["train"][:, -1])
    # a file whose stored parameters do not match its name is regenerated
    with np.load(files[0]) as saved:
        arrays = {k: saved[k] for k in ("ts", "train", "test")}
    arrays["train"] = arrays["train"] + 1.0
    np.savez(files[0], params=np.asarray("{}"), **arrays)
    again = generate_pendulum_chain(**SMALL, cache_dir=tmp_path)
    np.testing.assert_array_equal(again["train"], first["train"])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_trajectories=1), "num_trajectories"),
        (dict(num_times=1), "num_times"),
        (dict(num_pendulums=0), "num_pendulums"),
        (dict(dt=0.0), "dt"),
        (dict(damping=-0.1), "damping"),
        (dict(stiffness=float("nan")), "stiffness"),
        (dict(test_fraction=0.01), "test_fraction"),
        (dict(rtol=0.0), "rtol"),
        (dict(seed=-1), "seed"),
    ],
)
def test_pendulum_chain_bad_arguments(kwargs, name, tmp_path):
    with pytest.raises(ValueError, match=f"`{name}`"):
        generate_pendulum_chain(**{**SMALL, **kwargs}, cache_dir=tmp_path)


@pytest.mark.parametrize("variant", ["node", "aug6", "hbnode", "sonode"])
def test_variant_classifiers_by_hand(variant):
    """Parameters of each variant's MLP field, counted by hand (TimeLinear: (in + 1)
    x out weights + out biases), the lifted state and the head's width."""
    from experiments.common import build_classifier, ClassifierConfig

    d, h = 7 * 7, 5
    cfg = ClassifierConfig(norm="none", variant=variant, hidden=h)
    model, _ = build_classifier(cfg, (7, 7, 1), 10, jax.random.PRNGKey(0))
    mlp = lambda fin, fout: (fin + 1) * h + h + (h + 1) * fout + fout
    field, width, state_width = {
        "node": (mlp(d, d), d, d),
        "aug6": (mlp(d + 6, d + 6), d + 6, d + 6),
        "hbnode": (mlp(d, d) + 1, d, 2 * d),  # + the damping gamma
        "sonode": (mlp(2 * d, d), d, 2 * d),
    }[variant]
    head = td.count_parameters((model.head_norm, model.linear))
    assert td.count_parameters(model) == field + head
    assert model.num_features == width
    lifted = jax.eval_shape(model.ode.field.lift, jnp.zeros((3, 7, 7, 1)))
    assert lifted.shape == (3, state_width)


def test_unknown_variant_is_named():
    from experiments.common import build_classifier, ClassifierConfig

    with pytest.raises(ValueError, match="'aug'"):
        build_classifier(
            ClassifierConfig(variant="aug"), (7, 7, 1), 10, jax.random.PRNGKey(0)
        )


def test_node_variants_smoke(tmp_path):
    """One tiny run; TA-BN solves each test sample alone in inference, so the
    accuracy and NFE at test batch 2 equal those at batch 4."""
    from experiments import node_variants

    rows = node_variants.main(
        ["--data", "synthetic", "--variants", "sonode", "--norms", "tabn",
         "--epochs", "1", "--train-limit", "64", "--test-limit", "8",
         "--hidden", "4", "--batch-size", "32", "--test-batches", "4,2",
         "--solver", "euler", "--out", str(tmp_path)]
    )  # fmt: skip
    saved = json.loads((tmp_path / "node_variants.json").read_text())
    assert [(r["variant"], r["norm"]) for r in saved["rows"]] == [("sonode", "tabn")]
    assert (tmp_path / "node_variants.png").stat().st_size > 0
    (row,) = rows
    assert row["acc_b4"] == row["acc_b2"] and row["test_nfe_b4"] == row["test_nfe_b2"]
    assert row["test_nfe_b4"] == 20  # Euler, 20 steps
    assert row["params"] > row["params_ti_affine"]  # TA-BN's per-grid-point affine


@pytest.mark.heavy
def test_physical_system_smoke_and_exact_resume(tmp_path):
    """A tiny run of the script; then the same training stopped after one chunk and
    resumed from its checkpoint ends with exactly the script's model and history."""
    import equinox as eqx

    from experiments import physical_system as ps

    args = ["--norms", "tabn", "--steps", "4", "--chunk", "2", "--num-trajectories",
            "4", "--num-times", "21", "--window", "10", "--hidden", "8",
            "--test-batch", "4", "--cache-dir", str(tmp_path / "data"),
            "--out", str(tmp_path)]  # fmt: skip
    (row,) = ps.main(args)
    saved = json.loads((tmp_path / "physical_system.json").read_text())
    assert saved["rows"][0]["norm"] == "tabn"
    assert (tmp_path / "physical_system.png").stat().st_size > 0
    # TA-BN in inference: per-sample solves, independent of the test batch
    assert row["window_mae_big"] == pytest.approx(row["window_mae_b2"], rel=1e-5)
    assert row["window_nfe_big"] == row["window_nfe_b2"] > 0
    assert 0 < row["window_mae_big"] < 10 and 0 < row["rollout_mae_big"] < 10

    cfg = ps.PhysicalConfig(
        norm="tabn", steps=4, chunk=2, num_trajectories=4, num_times=21, window=10,
        hidden=(8,),
    )  # fmt: skip
    data = ps.load_data(cfg, tmp_path / "data")
    assert (
        ps.train(cfg, data, checkpoint_dir=tmp_path / "b", stop_after_chunks=1) is None
    )
    model, state, history = ps.train(cfg, data, checkpoint_dir=tmp_path / "b")
    assert [h["loss"] for h in history] == [
        h["loss"] for h in saved["rows"][0]["history"]
    ]
    reference = td.Checkpointer(tmp_path / "checkpoints" / "tabn_seed0")
    _, (ref_model, _, ref_state), _ = reference.restore(
        (model, ps.make_optimizer(cfg).init(eqx.filter(model, eqx.is_inexact_array)),
         state)
    )  # fmt: skip
    leaves = lambda tree: jax.tree.leaves(eqx.filter(tree, eqx.is_array))
    for a, b in zip(leaves((model, state)), leaves((ref_model, ref_state))):
        np.testing.assert_array_equal(a, b)
    # Another configuration gets a clear error before any array is read.
    with pytest.raises(ValueError, match="another configuration"):
        ps.train(
            dataclasses.replace(cfg, hidden=(8, 8)), data,
            checkpoint_dir=tmp_path / "b",
        )  # fmt: skip
