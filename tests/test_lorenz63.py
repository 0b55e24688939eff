"""The Lorenz'63 adaptive-solver study: Fehlberg's step, chaos metrics, the data
generator and loader, and a smoke test of experiments/lorenz63/."""

import dataclasses
import functools
import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED

import tadiffeq as td
import tadiffeq.dynamics as tdd
from tadiffeq.data import generate_lorenz63, load_lorenz63
from tadiffeq.dynamics import LORENZ63_LYAPUNOV_EXPONENT


A = np.array([[-0.5, 1.0, 0.0], [-1.0, -0.3, 0.2], [0.1, 0.0, -0.8]])


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def linear_field(a):
    return lambda x: x @ jnp.asarray(a).T


def rk3_matrix(a, h):
    """One RK3 step of dx/dt = a x is x -> (I + ha + (ha)^2/2 + (ha)^3/6) x."""
    ha = h * a
    return np.eye(3) + ha + ha @ ha / 2 + ha @ ha @ ha / 6


def test_fehlberg_step_matches_hand_computation_on_a_linear_field():
    h = 0.5
    x = np.array([[1.0, -2.0, 0.5], [0.3, 0.1, -1.0]])
    step = tdd.FehlbergStep(eps=1e3, h=h)  # everything accepted
    y, info = step(linear_field(A), jnp.asarray(x))
    f1 = x @ A.T
    f2 = (x + h * f1) @ A.T
    f3 = (x + h / 4 * (f1 + f2)) @ A.T
    a1 = x + h / 2 * (f1 + f2)
    a2 = x + h / 6 * (f1 + f2 + 4 * f3)
    np.testing.assert_allclose(y, a2, rtol=1e-13)
    np.testing.assert_allclose(y, x @ rk3_matrix(A, h).T, rtol=1e-13)
    # For a linear field A1 - A2 = -h^3/6 A^3 x, so r = h^2/6 |A^3 x|_1.
    r = np.abs(a1 - a2).sum(-1) / h
    np.testing.assert_allclose(info.error_rate, r, rtol=1e-12)
    a3x = x @ np.linalg.matrix_power(A, 3).T
    np.testing.assert_allclose(r, h**2 / 6 * np.abs(a3x).sum(-1), rtol=1e-12)
    assert info.accepted.all() and (info.num_substeps == 1).all()
    assert (info.num_fn_evals == 3).all() and (info.num_rejected == 0).all()


@pytest.mark.parametrize("shared", [False, True])
def test_substeps_exactly_when_r_reaches_eps(shared):
    """r scales with |x| on a linear field: samples at 0.5, 1, 3, 20 and 1000 times
    the reference, with eps the reference's own r (so r == eps there)."""
    scales = np.array([0.5, 1.0, 3.0, 20.0, 1000.0])
    x = jnp.asarray(scales[:, None] * np.array([1.0, -2.0, 0.5]))
    f = linear_field(A)
    _, probe = tdd.FehlbergStep(eps=1e9)(f, x)
    r = np.asarray(probe.error_rate)
    eps = float(r[1])
    step = tdd.FehlbergStep(eps=eps, shared=shared)
    y, info = step(f, x)
    np.testing.assert_array_equal(info.error_rate, r)
    assert info.accepted.tolist() == [True, False, False, False, False]
    want = [min(math.ceil(math.sqrt(ri / eps) / 0.9), 10) for ri in r]
    assert want[1:] == [2, 2, 5, 10]  # r == eps: rejected, h' = 0.9 h, n = 2
    np.testing.assert_allclose(info.proposed_substeps, np.sqrt(r / eps) / 0.9)
    n = [1] + ([max(want[1:])] * 4 if shared else want[1:])
    assert info.num_substeps.tolist() == n
    assert info.num_fn_evals.tolist() == [3] + [3 + 3 * k for k in n[1:]]
    for i, k in enumerate(n):
        m = np.linalg.matrix_power(rk3_matrix(A, 1.0 / k), k)
        np.testing.assert_allclose(y[i], m @ np.asarray(x[i]), rtol=1e-12)


def test_fehlberg_training_reads_the_target_with_stopped_gradient():
    x = jnp.asarray([[0.1, -0.2, 0.05], [0.05, 0.05, 0.05]])
    f = linear_field(A)
    exact = x @ jnp.asarray(rk3_matrix(A, 1.0)).T  # A2 of every sample
    target = exact.at[0].add(jnp.array([0.3, -0.2, 0.1]))  # r_0 = 0.6, r_1 = 0
    step = tdd.FehlbergStep(eps=0.1, mode="fehlberg")
    y, info = step(f, x, target)
    np.testing.assert_allclose(info.error_rate, [0.6, 0.0], atol=1e-12)
    assert info.accepted.tolist() == [False, True]
    n = math.ceil(math.sqrt(0.6 / 0.1) / 0.9)  # 3
    assert info.num_substeps.tolist() == [n, 1]
    # The naive rule ignores the target: A1 - A2 is small here, so all accepted.
    y_naive, naive = tdd.FehlbergStep(eps=0.1)(f, x, target)
    assert naive.accepted.all()
    np.testing.assert_array_equal(y_naive, tdd.FehlbergStep(eps=0.1)(f, x)[0])

    @jax.jit
    def loss(a, target):
        y, _ = step(linear_field(a), x, target)
        return jnp.sum((y - target) ** 2)

    a = jnp.asarray(A)
    grad_a, grad_target = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, target)

    def by_hand(a, target):  # sample 0: n substeps of RK3; sample 1: one step
        h = 1.0 / n
        ha = h * a
        m = jnp.eye(3) + ha + ha @ ha / 2 + ha @ ha @ ha / 6
        y0 = jnp.linalg.matrix_power(m, n) @ x[0]
        ha = a
        m1 = jnp.eye(3) + ha + ha @ ha / 2 + ha @ ha @ ha / 6
        y1 = m1 @ x[1]
        return jnp.sum((jnp.stack([y0, y1]) - target) ** 2)

    want_a, want_target = jax.jit(jax.grad(by_hand, argnums=(0, 1)))(a, target)
    np.testing.assert_allclose(grad_a, want_a, rtol=1e-10)
    # The target reaches the loss only through the MSE, never through r.
    np.testing.assert_allclose(grad_target, want_target, rtol=1e-10, atol=1e-15)
    # A central finite difference agrees (the substep count is locally constant).
    e = jnp.zeros((3, 3)).at[1, 2].set(1e-6)
    fd = (loss(a + e, target) - loss(a - e, target)) / 2e-6
    np.testing.assert_allclose(grad_a[1, 2], fd, rtol=1e-6)


def test_one_step_errors():
    f = linear_field(A)
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="pass `target`"):
        tdd.FehlbergStep(mode="fehlberg")(f, x)
    # (the jaxtyping hook of the test run raises its TypeError first)
    with pytest.raises((ValueError, TypeError), match="target"):
        tdd.FehlbergStep(mode="fehlberg")(f, x, jnp.ones((3, 3)))
    with pytest.raises((ValueError, TypeError), match="x"):
        tdd.FehlbergStep()(f, jnp.ones(3))
    with pytest.raises(ValueError, match="`mode`"):
        tdd.FehlbergStep(mode="adaptive")
    with pytest.raises(ValueError, match="`eps`"):
        tdd.FehlbergStep(eps=0.0)
    with pytest.raises(ValueError, match="`max_substeps`"):
        tdd.FehlbergStep(max_substeps=0)
    with pytest.raises(ValueError, match="`solver`"):
        tdd.DiffraxStep("euler")
    with pytest.raises(ValueError, match="`num_substeps`"):
        tdd.RK4Step(num_substeps=0)


def test_rk4_and_diffrax_steps_on_a_linear_field():
    x = jnp.asarray([[1.0, -2.0, 0.5], [0.2, 0.1, 0.0]])
    exact = x @ jnp.asarray(_expm(A * 0.1)).T
    y, info = tdd.RK4Step(h=0.1, num_substeps=2)(linear_field(A), x)
    np.testing.assert_allclose(y, exact, atol=1e-8)
    assert info.num_fn_evals.tolist() == [8, 8]
    # A solve per sample: the tiny state passes in one step of h = 1 (the error
    # scales with the state, the tolerance does not below atol), the other not.
    x = x.at[1].multiply(1e-9)
    y, info = tdd.DiffraxStep(rtol=1e-8, atol=1e-8)(linear_field(A), x)
    np.testing.assert_allclose(y, x @ jnp.asarray(_expm(A)).T, atol=1e-7)
    assert info.accepted.tolist() == [False, True]
    assert info.num_substeps[0] > 1 and info.num_fn_evals[1] == 7


@pytest.mark.slow
def test_diffrax_step_as_one_system():
    x = jnp.asarray([[1.0, -2.0, 0.5], [1e-9, 0.0, 0.0]])
    y, info = tdd.DiffraxStep(rtol=1e-8, atol=1e-8, per_sample=False)(
        linear_field(A), x
    )
    np.testing.assert_allclose(y, x @ jnp.asarray(_expm(A)).T, atol=1e-7)
    assert not info.accepted.any() and (info.num_substeps > 1).all()
    assert info.num_substeps[0] == info.num_substeps[1]


def _expm(a, terms=30):
    out, term = np.eye(3), np.eye(3)
    for k in range(1, terms):
        term = term @ a / k
        out = out + term
    return out


def test_lyapunov_exponents_of_the_true_lorenz_system():
    lorenz = tdd.Lorenz63(time_scale=0.01)
    rk4 = tdd.RK4Step()
    step = lambda x: rk4(lorenz, x[None])[0][0]
    x0 = jnp.array([1.0, 1.0, 20.0])
    spectrum = jax.jit(
        lambda x0: tdd.lyapunov_spectrum(step, x0, 10000, 0.01, transient=1000)
    )(x0)
    assert abs(spectrum[0] - 0.906) < 0.09, spectrum
    assert abs(spectrum[1]) < 0.05, spectrum
    # The flow contracts volume at the rate sigma + 1 + beta.
    np.testing.assert_allclose(spectrum.sum(), -(10 + 1 + 8 / 3), rtol=1e-3)
    lle = tdd.largest_lyapunov_exponent(step, x0, 2000, 0.01, transient=200)
    assert 0.7 < lle < 1.1
    with pytest.raises(ValueError, match="`num_exponents`"):
        tdd.lyapunov_spectrum(step, x0, 10, 0.01, num_exponents=4)
    for kw, match in [
        (dict(n_steps=0), "`n_steps` must be a positive int"),
        (dict(transient=-1), "`transient` must be an int >= 0"),
        (dict(num_exponents=0), "`num_exponents` must be a positive int"),
        (dict(dt=math.inf), "`dt` must be"),
        (dict(dt=0.0), "`dt` must be"),
    ]:
        args = dict(n_steps=10, dt=0.01) | kw
        with pytest.raises(ValueError, match=f"lyapunov_spectrum: {match}"):
            tdd.lyapunov_spectrum(step, x0, **args)


def test_equilibria_of_the_lorenz_system_by_hand():
    sigma, rho, beta = 10.0, 28.0, 8.0 / 3.0
    lorenz = tdd.Lorenz63(time_scale=0.01)
    c = math.sqrt(beta * (rho - 1))
    # Starts near C+, C-, the origin, and a linear field's only equilibrium.
    starts = jnp.array(
        [[c + 1.0, c - 1.0, 25.0], [-c, -c + 2.0, 29.0], [0.3, -0.2, 0.1]]
    )
    eq = tdd.equilibria(lorenz, starts)
    assert bool(eq.converged.all()), eq
    want = np.array([[c, c, rho - 1], [-c, -c, rho - 1], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(eq.points, want, atol=1e-9)
    np.testing.assert_allclose(lorenz.equilibria(), want)
    assert float(eq.residuals.max()) < 1e-12
    # The Jacobian is the field's (time_scale 0.01), by hand at the origin, and at C+-
    # its eigenvalues (per time unit) are the roots of the characteristic polynomial
    # l^3 + (sigma + beta + 1) l^2 + beta (sigma + rho) l + 2 sigma beta (rho - 1).
    np.testing.assert_allclose(
        eq.jacobians[2] / 0.01,
        [[-sigma, sigma, 0], [rho, -1, 0], [0, 0, -beta]],
        atol=1e-12,
    )
    roots = np.roots(
        [1, sigma + beta + 1, beta * (sigma + rho), 2 * sigma * beta * (rho - 1)]
    )
    for j in eq.jacobians[:2]:
        ev = np.linalg.eigvals(np.asarray(j) / 0.01)
        np.testing.assert_allclose(
            np.sort_complex(ev), np.sort_complex(roots), atol=1e-8
        )
    # The saddle-foci C+- repel weakly: real part 0.094 per time unit against 10.19
    # for the rotation, the margin a learned field must get right for its long runs.
    assert 0.09 < np.max(roots.real) < 0.1 and 10.1 < np.max(roots.imag) < 10.3
    # A linear field: one equilibrium, found in one Newton step from anywhere.
    b = np.array([1.0, -2.0, 0.5])
    eq = tdd.equilibria(
        lambda x: x @ jnp.asarray(A).T + jnp.asarray(b), jnp.ones((2, 3))
    )
    np.testing.assert_allclose(eq.points, np.tile(np.linalg.solve(A, -b), (2, 1)))
    np.testing.assert_allclose(eq.jacobians, np.tile(A, (2, 1, 1)))
    # No equilibrium to find: not converged, no error.
    eq = tdd.equilibria(lambda x: x**2 + 1.0, jnp.ones((1, 3)), max_steps=20)
    assert not bool(eq.converged[0])
    with pytest.raises(ValueError, match="`x0` must have shape"):
        tdd.equilibria(lorenz, jnp.ones(3))
    with pytest.raises(ValueError, match="`max_steps`"):
        tdd.equilibria(lorenz, jnp.ones((1, 3)), max_steps=0)


def test_valid_prediction_time_on_a_hand_made_example():
    t = np.arange(10)
    true = np.zeros((3, 10, 3))
    true[..., 0] = t
    pred = true.copy()
    pred[0, :, 1] = 0.25 * t  # error 0.25 k: above 0.4 * 2 = 0.8 from k = 4
    pred[1, :, 1] = 0.01  # never above: the lower bound, the whole run
    pred[2, 2:, :] = np.nan  # a blown-up run fails at k = 2
    vpt = tdd.valid_prediction_time(
        pred, true, dt=0.5, threshold=0.4, lyapunov_exponent=0.9, scale=2.0
    )
    np.testing.assert_allclose(vpt, np.array([4, 10, 2]) * 0.5 * 0.9)
    # The default scale is sqrt(mean ||x - mean||^2) over `true`: here std of t.
    np.testing.assert_allclose(tdd.attractor_scale(true), np.std(t))
    err = tdd.normalised_error(pred[:1], true[:1])
    np.testing.assert_allclose(err[0], 0.25 * t / np.std(t))
    with pytest.raises(ValueError, match="same shape"):
        tdd.valid_prediction_time(pred, true[:2], dt=0.5)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="valid_prediction_time: `dt`"):
            tdd.valid_prediction_time(pred, true, dt=bad)
    with pytest.raises(ValueError, match="`threshold` must be"):
        tdd.valid_prediction_time(pred, true, dt=0.5, threshold=-0.4)
    with pytest.raises(ValueError, match="`lyapunov_exponent` must be"):
        tdd.valid_prediction_time(pred, true, dt=0.5, lyapunov_exponent=math.inf)
    # A NumPy float counts as its number.
    np.testing.assert_array_equal(
        tdd.valid_prediction_time(pred, true, dt=np.float64(0.5), threshold=0.4,
                                  lyapunov_exponent=0.9, scale=2.0),
        vpt,
    )  # fmt: skip


def test_attractor_statistics_and_histogram_distance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 3)) * [1.0, 2.0, 3.0] + [0.0, 1.0, 20.0]
    ranges = np.array([[-5.0, 5.0], [-9.0, 11.0], [5.0, 35.0]])
    a = tdd.attractor_statistics(x, bins=30, ranges=ranges)
    np.testing.assert_allclose(a.mean, [0, 1, 20], atol=0.1)
    np.testing.assert_allclose(a.std, [1, 2, 3], rtol=0.05)
    np.testing.assert_allclose(a.histograms.sum(-1), 1.0, atol=1e-3)
    b = tdd.attractor_statistics(x + [0.0, 0.0, 50.0], bins=30, ranges=ranges)
    d = tdd.histogram_distance(a, b)
    assert d[0] == d[1] == 0.0 and d[2] > 0.99  # moved out of the range
    blown = np.concatenate([x, np.full((10, 3), np.inf)])
    assert not tdd.attractor_statistics(blown, ranges=ranges).finite
    with pytest.raises(ValueError, match="bin edges"):
        tdd.histogram_distance(a, tdd.attractor_statistics(x, bins=10))
    with pytest.raises(ValueError, match="attractor_statistics: `bins` must be a pos"):
        tdd.attractor_statistics(x, bins=0)


def test_generator_matches_the_flow_and_caches(tmp_path):
    from scipy.integrate import solve_ivp  # a dependency of jax

    x0 = np.array([1.0, 1.0, 20.0])
    y = generate_lorenz63(200, 0.01, x0, cache_dir=tmp_path)
    assert y.shape == (200, 3) and y.dtype == np.float64
    np.testing.assert_array_equal(y[0], x0)

    # scipy's DOP853 at rtol = atol = 1e-12 over the same 2 time units.
    def lorenz(t, v):
        return [
            10 * (v[1] - v[0]),
            v[0] * (28 - v[2]) - v[1],
            v[0] * v[1] - 8 / 3 * v[2],
        ]

    ref = solve_ivp(
        lorenz, (0.0, 1.99), x0,
        method="DOP853", t_eval=np.arange(200) * 0.01, rtol=1e-12, atol=1e-12,
    ).y.T  # fmt: skip
    np.testing.assert_allclose(y, ref, atol=1e-7)
    (cached,) = tmp_path.glob("lorenz63_*.npy")
    # The second call reads the cache: a marked cache file comes back as it is.
    np.save(cached, y + 1.0)
    np.testing.assert_array_equal(
        generate_lorenz63(200, 0.01, x0, cache_dir=tmp_path), y + 1.0
    )
    with pytest.raises(ValueError, match="`n`"):
        generate_lorenz63(1)
    with pytest.raises(ValueError, match="`x0`"):
        generate_lorenz63(10, x0=np.ones(4))


def test_loader_errors_and_env(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train.npy")):
        load_lorenz63(tmp_path)
    np.save(tmp_path / "train.npy", np.zeros((4, 3)))
    np.save(tmp_path / "test.npy", np.ones((5, 3)))
    monkeypatch.setenv("TADIFFEQ_LORENZ63_DIR", str(tmp_path))
    d = load_lorenz63()
    assert d["train"].shape == (4, 3) and d["test"].shape == (5, 3)
    np.save(tmp_path / "test.npy", np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        load_lorenz63(tmp_path)
    poisoned = np.ones((5, 3))
    poisoned[3, 1], poisoned[4, 0] = np.nan, np.inf
    np.save(tmp_path / "test.npy", poisoned)
    with pytest.raises(ValueError, match=r"test.npy: 2 rows hold NaN or inf .* row 3"):
        load_lorenz63(tmp_path)


def test_shared_lorenz63_files():
    path = SHARED / "lorenz63"
    if not (path / "train.npy").exists():
        pytest.skip("the study's Lorenz'63 files are absent")
    d = load_lorenz63(path)
    assert d["train"].shape == d["test"].shape == (5000, 3)
    np.testing.assert_array_equal(d["train"][0], [0.01, 0.0, 0.0])
    # test continues train: one sample step (0.01) of the exact flow, up to the
    # files' loose tolerances.
    step = generate_lorenz63(200, 0.01, d["train"][-1])[1]  # one compiled size
    np.testing.assert_allclose(step, d["test"][0], atol=2e-2)


@pytest.mark.heavy
def test_experiment_smoke_and_resume(tmp_path, capsys):
    from experiments import lorenz63

    # Sizes chosen so the generator and the free runs compile once each.
    args = ["--data", "generated", "--n-points", "250", "--solvers", "rk4",
            "--iterations", "4", "--num-ics", "50", "--horizon", "40",
            "--long-steps", "40", "--lyap-steps", "50", "--hidden", "8",
            "--log-every", "2", "--out", str(tmp_path)]  # fmt: skip
    rows = lorenz63.main(args)
    out = capsys.readouterr().out
    assert "VPT mean" in out and "rk4" in out
    saved = json.loads((tmp_path / "lorenz63_seed0.json").read_text())
    row = saved["rows"][0]
    assert row["solver"] == "rk4" and len(row["vpt_all"]) == 50
    # VPT is censored at the horizon: (40 + 1) samples of 0.01, in Lyapunov times.
    vpt_max = (40 + 1) * 0.01 * LORENZ63_LYAPUNOV_EXPONENT
    assert np.isfinite(row["test_mse"]) and 0 <= row["vpt"]["max"] <= vpt_max + 1e-12
    # Generated test data is the exact flow, so the data's own VPT is the horizon.
    assert saved["truth"]["data_vpt"]["median"] == pytest.approx(vpt_max)
    assert row["inference_one_step"]["acceptance"] == 1.0
    assert saved["truth"]["lyapunov_spectrum"][2] < -10
    # Ten long runs and orbits (the default), pooled, with their spread.
    assert len(row["lyapunov_orbits"]["all"]) == 10
    assert row["attractor"]["tv_per_run"].keys() == {"median", "min", "max", "diverged"}
    run_dir = tmp_path / "rk4_seed0"
    for name in ("result.json", "attractor.png", "timeseries.png", "histograms.png"):
        assert (run_dir / name).exists(), name
    assert (tmp_path / "vpt.png").exists() and (
        tmp_path / "training_curves.png"
    ).exists()
    # The equilibria: the truth's C+ repels at 0.094 per time unit.
    assert "C+ growth (dist)" in out
    assert saved["truth"]["equilibria"]["C+"]["growth"] == pytest.approx(
        0.094, abs=1e-3
    )
    assert row["equilibria"].keys() == {"C+", "C-", "origin"}
    # A rerun reads the finished result.
    again = lorenz63.main(args)
    assert "finished earlier" in capsys.readouterr().out
    assert again[0]["test_mse"] == rows[0]["test_mse"]
    # ... unless it was written by an evaluation of another version: evaluated again
    # from the checkpoint, with every metric of this one.
    result = run_dir / "result.json"
    old = json.loads(result.read_text())
    del old["equilibria"], old["metrics_version"]
    result.write_text(json.dumps(old))
    again = lorenz63.main(args)
    assert "finished earlier" not in capsys.readouterr().out
    assert again[0]["test_mse"] == rows[0]["test_mse"] and "equilibria" in again[0]
    # Several seeds: each trained in turn (seed 0 read back), then one table across
    # them, the test-free choice marking one seed per solver.
    both = lorenz63.main([*args, "--seed", "0,1"])
    out = capsys.readouterr().out
    assert "Across seeds 0,1" in out and len(both) == 2
    summary = json.loads((tmp_path / "lorenz63_seeds.json").read_text())["rows"]
    assert [r["seed"] for r in summary] == [0, 1]
    assert sum(r["selected"] for r in summary) == 1
    chosen = min(summary, key=lambda r: r["train_tv"])
    assert (
        chosen["selected"]
        and both[chosen["seed"]]["attractor_train"]["tv"] == (chosen["train_tv"])
    )
    with pytest.raises(SystemExit):
        lorenz63.main([*args, "--seed", "0,0"])
    # Interrupted after 2 iterations, then resumed: the same model as straight.
    cfg = lorenz63.LorenzConfig(
        solver="rk4", iterations=4, hidden=8, data="generated", n_points=250,
        num_ics=50, horizon=40, long_steps=40, lyap_steps=50,
    )  # fmt: skip
    out_dir = tmp_path / "interrupted" / "rk4_seed0"
    kw = dict(figures=False, log_every=2)
    assert lorenz63.run(cfg, out_dir, stop_after=2, **kw) is None
    resumed = lorenz63.run(cfg, out_dir, **kw)
    assert "resumed from iteration 2" in capsys.readouterr().out
    assert resumed["train_loss"] == rows[0]["train_loss"]
    assert resumed["test_mse"] == rows[0]["test_mse"]
    # A checkpoint is never read back as a shorter run.
    with pytest.raises(ValueError, match="after 4 iterations.*--iterations 2"):
        lorenz63.run(dataclasses.replace(cfg, iterations=2), out_dir, **kw)
    # Another model size: the config is refused before its arrays are read (the
    # script's message, not a deserialisation error).
    with pytest.raises(ValueError, match="another configuration"):
        lorenz63.run(dataclasses.replace(cfg, hidden=16), out_dir, **kw)
    # With the stability repair: the L-BFGS phase is read from the run without it
    # (nothing trained again, no checkpoint of its own), then the repair, whose kept
    # model is the one evaluated.
    stable_args = ["--stability-weight", "1", "--stability-starts", "4",
                   "--stability-iterations", "10", "--no-figures"]  # fmt: skip
    (repaired,) = lorenz63.main([*args, *stable_args])
    assert "resumed from iteration 4" in capsys.readouterr().out
    assert not (tmp_path / "rk4_stability1_seed0" / "checkpoint").exists()
    assert (tmp_path / "rk4_stability1_seed0" / "repaired").is_dir()
    rec = repaired["repair"]
    assert rec["prior"][rec["iteration"].index(rec["kept"])] == 0
    assert repaired["train_loss"] == rec["mse"][rec["iteration"].index(rec["kept"])]
    assert rec["mse"][0] == rows[0]["train_loss"]  # repaired from the trained model


@pytest.mark.heavy
def test_experiment_smoke_adaptive_solvers(tmp_path, capsys):
    """The naive and Fehlberg-trained embedded pairs and a diffrax solver run end
    to end (training, free runs, Lyapunov exponents through their steppers)."""
    from experiments import lorenz63

    # Stand-ins for the study's trained models (--authors-models): PyTorch layout.
    authors = tmp_path / "authors"
    authors.mkdir()
    rng = np.random.default_rng(0)
    for file, _ in lorenz63.AUTHORS.values():
        shapes = dict(nn_0=(8, 3), nn_2=(8, 8), nn_4=(3, 8))
        layers = {f"{k}_weight": 0.3 * rng.normal(size=s) for k, s in shapes.items()}
        layers.update({f"{k}_bias": np.zeros(s[0]) for k, s in shapes.items()})
        np.savez(authors / file, **layers)
    args = ["--data", "generated", "--n-points", "250",
            "--solvers", "naive-0.1,fehlberg-0.1,dopri5", "--iterations", "2",
            "--num-ics", "20", "--horizon", "40", "--long-steps", "40",
            "--lyap-steps", "50", "--hidden", "8", "--log-every", "2",
            "--authors-models", str(authors), "--no-figures",
            "--out", str(tmp_path), "--input-noise", "0.01"]  # fmt: skip
    rows = lorenz63.main(args)
    assert [r["solver"] for r in rows] == [
        "authors-naive", "authors-fehlberg", "naive-0.1", "fehlberg-0.1", "dopri5",
    ]  # fmt: skip
    # The trained rows are named by their training variant, the authors' (evaluated
    # under the same flags) by themselves, so they still pair with the trained ones.
    assert [lorenz63.model_name(r) for r in rows] == [
        "authors-naive", "authors-fehlberg", "naive-0.1_noise0.01",
        "fehlberg-0.1_noise0.01", "dopri5_noise0.01",
    ]  # fmt: skip
    assert (tmp_path / "fehlberg-0.1_noise0.01_seed0" / "result.json").exists()
    for r in rows:
        assert np.isfinite(r["test_mse"]) and np.isfinite(r["lyapunov_spectrum"][0])
        assert 0 < r["inference_one_step"]["acceptance"] <= 1
        assert len(r["vpt_all"]) == 20 and len(r["attractor"]["tv"]) == 3
        assert np.isfinite(r["train_loss"])
    assert rows[0]["history"] is None and rows[0]["train_s"] == 0.0
    assert "authors-fehlberg" in capsys.readouterr().out
    # Only the stand-ins, read back (no training, nothing recomputed).
    again = lorenz63.main([*args[:5], "none", *args[6:]])
    assert [r["test_mse"] for r in again] == [r["test_mse"] for r in rows[:2]]
    assert capsys.readouterr().out.count("evaluated earlier") == 2


AUTHORS_DIR = SHARED / "lorenz63" / "authors_models"


def _numpy_field(p, z):
    """The 3 -> 50 -> 50 -> 3 ReLU MLP from PyTorch's layout (y = x W^T + b)."""
    h = np.maximum(z @ p["nn_0_weight"].T + p["nn_0_bias"], 0.0)
    h = np.maximum(h @ p["nn_2_weight"].T + p["nn_2_bias"], 0.0)
    return h @ p["nn_4_weight"].T + p["nn_4_bias"]


def _numpy_fehlberg_step(f, x, eps=0.1, safety=0.9, max_substeps=10):
    """The study's inference rule, one sample at a time: Heun A1 and RK3 A2 of one
    step h = 1; r = |A1 - A2|_1 / h; A2 if r < eps, else n = ceil(sqrt(r / eps) / S)
    (at most 10) RK3 steps of h / n. Returns (next states, substeps)."""

    def heun_rk3(y, h):
        f1 = f(y)
        f2 = f(y + h * f1)
        f3 = f(y + h / 4 * (f1 + f2))
        return y + h / 2 * (f1 + f2), y + h / 6 * (f1 + f2 + 4 * f3)

    out, substeps = np.empty_like(x), np.ones(len(x), dtype=int)
    for i, xi in enumerate(x):
        a1, a2 = heun_rk3(xi, 1.0)
        r = np.abs(a1 - a2).sum()
        if r < eps:
            out[i] = a2
            continue
        n = min(math.ceil(math.sqrt(r / eps) / safety), max_substeps)
        for _ in range(n):
            xi = heun_rk3(xi, 1.0 / n)[1]
        out[i], substeps[i] = xi, n
    return out, substeps


def test_authors_models_against_numpy():
    """The study's two trained models loaded into the script's model and one-step
    rule give the same field and the same one-step predictions (and substep counts)
    as a NumPy forward pass and Fehlberg step written from the files and the paper
    alone, on every test transition; their one-step test error is 100x below that
    of predicting no motion."""
    from experiments import lorenz63

    if not AUTHORS_DIR.is_dir() or not (SHARED / "lorenz63" / "test.npy").exists():
        pytest.skip("the study's trained models or data are absent")
    test = load_lorenz63(SHARED / "lorenz63")["test"]
    x_prev, x_next = test[:-1], test[1:]
    persistence = np.mean((x_next - x_prev) ** 2)
    mse, rejected = {}, 0
    for name, (file, _) in lorenz63.AUTHORS.items():
        p = dict(np.load(AUTHORS_DIR / file))
        mlp = lorenz63.load_authors_model(AUTHORS_DIR / file)
        assert isinstance(mlp, lorenz63.AutonomousMLP)
        assert all(w.dtype == jnp.float64 for w in mlp.weights + mlp.biases)
        np.testing.assert_allclose(
            mlp(jnp.asarray(test[:200])), _numpy_field(p, test[:200]),
            rtol=1e-12, atol=1e-12,
        )  # fmt: skip
        cfg = lorenz63.LorenzConfig(solver=name)
        _, step = lorenz63.make_steppers(cfg)
        pred, info = lorenz63.one_step(step, mlp, jnp.asarray(x_prev))
        want, substeps = _numpy_fehlberg_step(
            functools.partial(_numpy_field, p), x_prev
        )
        np.testing.assert_allclose(pred, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(info.num_substeps, substeps)
        rejected += int((substeps > 1).sum())
        mse[name] = float(np.mean((want - x_next) ** 2))
        assert mse[name] < 1e-2 * persistence, (name, mse[name], persistence)
    assert rejected > 0  # the substep branch was compared too
    # The paper's finding, as shipped: Fehlberg training fits better than naive.
    assert mse["authors-fehlberg"] < mse["authors-naive"], mse


def test_authors_model_loader_errors(tmp_path):
    from experiments import lorenz63

    rng = np.random.default_rng(0)
    good = dict(
        nn_0_weight=rng.normal(size=(5, 3)), nn_0_bias=rng.normal(size=5),
        nn_2_weight=rng.normal(size=(5, 5)), nn_2_bias=rng.normal(size=5),
        nn_4_weight=rng.normal(size=(3, 5)), nn_4_bias=rng.normal(size=3),
    )  # fmt: skip
    np.savez(tmp_path / "good.npz", **good)
    mlp = lorenz63.load_authors_model(tmp_path / "good.npz")
    z = rng.normal(size=(4, 3))
    np.testing.assert_allclose(mlp(jnp.asarray(z)), _numpy_field(good, z), rtol=1e-12)
    cases = {
        "key": ({**good, "nn_1_weight": good["nn_2_weight"]}, "keys"),
        "missing": ({k: v for k, v in good.items() if k != "nn_4_bias"}, "keys"),
        # the JAX layout (in, out) instead of PyTorch's (out, in)
        "transposed": ({**good, "nn_0_weight": good["nn_0_weight"].T}, "nn_0_weight"),
        "out": ({**good, "nn_4_weight": rng.normal(size=(2, 5))}, "nn_4_weight"),
        "bias": ({**good, "nn_2_bias": rng.normal(size=4)}, "nn_2_bias"),
        "nan": ({**good, "nn_2_bias": np.full(5, np.nan)}, "non-finite"),
    }
    for case, (arrays, match) in cases.items():
        path = tmp_path / f"{case}.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=match) as e:
            lorenz63.load_authors_model(path)
        assert str(path) in str(e.value), case
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz.*unreadable"):
        lorenz63.load_authors_model(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        lorenz63.load_authors_model(tmp_path / "absent.npz")


def test_paired_vpt_by_hand():
    from experiments import lorenz63

    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    same = lorenz63.paired_vpt(a, a)
    assert same["mean_diff"] == 0 and same["longer"] == 0 and same["p"] == 1.0
    up = lorenz63.paired_vpt(a + 0.5, a)
    assert up["mean_diff"] == 0.5 and up["longer"] == 1.0
    assert up["ci_low"] == up["ci_high"] == 0.5  # a constant difference
    # 8 same-sign differences: 2 of the 2**8 sign patterns are as extreme.
    assert abs(up["p"] - 2 / 256) < 0.005
    mixed = lorenz63.paired_vpt(a + np.array([1, -1] * 4), a)
    assert mixed["mean_diff"] == 0 and mixed["longer"] == 0.5 and mixed["p"] == 1.0
    rows = [
        dict(solver="naive-0.1", vpt_all=list(a)),
        dict(solver="fehlberg-0.1", vpt_all=list(a + 0.5)),
        dict(solver="authors-fehlberg", vpt_all=list(a)),
    ]
    pairs = [(c["a"], c["b"]) for c in lorenz63.paired_comparisons(rows)]
    assert pairs == [
        ("fehlberg-0.1", "naive-0.1"),
        ("naive-0.1", "authors-fehlberg"),
        ("fehlberg-0.1", "authors-fehlberg"),
    ]
    # Rows of a training variant are named by it, and paired within it.
    sym = [dict(r, model=r["solver"] + "_lorenzsym") for r in rows[:2]] + rows[2:]
    pairs = [(c["a"], c["b"]) for c in lorenz63.paired_comparisons(sym)]
    assert pairs == [
        ("fehlberg-0.1_lorenzsym", "naive-0.1_lorenzsym"),
        ("naive-0.1_lorenzsym", "authors-fehlberg"),
        ("fehlberg-0.1_lorenzsym", "authors-fehlberg"),
    ]


def test_variant_names_the_run():
    """The folder suffix of a training variant: empty for the study's training, each
    option in a fixed order, and the repair only where asked (the L-BFGS phase's
    folder is the unrepaired run's)."""
    from experiments import lorenz63

    cfg = lorenz63.LorenzConfig()
    assert lorenz63.variant(cfg) == ""
    cfg = dataclasses.replace(
        cfg, rollout=5, input_noise=0.05, symmetry="lorenz", stability_weight=10.0
    )
    assert lorenz63.variant(cfg) == "_rollout5_noise0.05_lorenzsym_stability10"
    assert lorenz63.variant(cfg, repair=False) == "_rollout5_noise0.05_lorenzsym"


@pytest.mark.parametrize("solver", ["rk4", "fehlberg-0.1"])
def test_rollout_loss_by_hand(solver):
    """K = 1 is the one-step loss; K = 3 is the mean of the 1-, 2- and 3-steps-ahead
    MSEs of the model composed with itself (each step from the previous prediction,
    targeted at the true point for Fehlberg training)."""
    from experiments import lorenz63

    x = np.asarray(generate_lorenz63(40, 0.01, np.array([1.0, 1.0, 20.0])))
    cfg = lorenz63.LorenzConfig(solver=solver, hidden=8)
    step, _ = lorenz63.make_steppers(cfg)
    mlp = lorenz63.AutonomousMLP(8, 2, seed=0)
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    w1 = jnp.asarray(lorenz63.rollout_windows(x, 1))
    one, _ = lorenz63.rollout_loss(params, static, step, w1)
    ref, _ = lorenz63.one_step_loss(params, static, step, w1[:, 0], w1[:, 1])
    assert float(one) == float(ref)
    w3 = lorenz63.rollout_windows(x, 3)
    assert w3.shape == (37, 4, 3)
    np.testing.assert_array_equal(w3[:, 2], x[2:39])
    three, _ = lorenz63.rollout_loss(params, static, step, jnp.asarray(w3))
    y, errors = jnp.asarray(w3[:, 0]), []
    for k in (1, 2, 3):
        y, _ = step(mlp, y, jnp.asarray(w3[:, k]))
        errors.append(float(jnp.mean((y - w3[:, k]) ** 2)))
    np.testing.assert_allclose(float(three), np.mean(errors), rtol=1e-12)
    assert errors[2] > errors[0]  # errors compound along the rollout


def test_stopping_rule_by_hand():
    """`stop_iteration` is the first recorded multiple of the window where the loss
    fell by less than the fraction asked for over the window."""
    from experiments import lorenz63

    h = dict(iteration=[0, 100, 200, 300], loss=[1.0, 0.5, 0.496, 0.4])
    rule = functools.partial(lorenz63.stop_iteration, min_improvement=0.01)
    assert rule(h, 0) is None  # off
    assert rule(h, 100) == 200  # 0.5 -> 0.496: 0.8% better (0.4 at 300 comes later)
    assert rule(h, 200) is None  # 1.0 -> 0.496
    assert rule(dict(iteration=[0, 100, 200], loss=[1.0, 0.5, 0.3]), 100) is None
    assert rule(dict(iteration=[0, 100], loss=[1.0, 1.0]), 200) is None  # too early
    assert rule(dict(iteration=[0, 100, 200], loss=[1.0, 1.0, 0.995]), 200) == 200
    with pytest.raises(ValueError, match="MSE at iteration 150"):
        rule(h, 150)  # 300 is a multiple of 150, and 150 was not recorded


def test_stopping_rule_ends_and_resumes_a_run(tmp_path, capsys):
    """A run the rule stops ends checkpointed at that iteration; run again, it
    trains no further, and reports where it ended."""
    from experiments import lorenz63

    x = np.asarray(generate_lorenz63(60, 0.01, np.array([1.0, 1.0, 20.0])))
    cfg = lorenz63.LorenzConfig(
        solver="rk4", iterations=50, hidden=8, stall_window=2, min_improvement=0.999
    )
    kw = dict(checkpoint_every=10, log_every=2, log=print)
    mlp, history = lorenz63.train(cfg, x, tmp_path, **kw)
    assert history["iteration"] == [0, 2]
    assert "stopped at iteration 2" in capsys.readouterr().out
    assert td.Checkpointer(tmp_path / "checkpoint").latest()[0] == 2
    again, history2 = lorenz63.train(cfg, x, tmp_path, **kw)
    assert history2["iteration"] == [0, 2] and len(history2["evals"]) == 2
    assert eqx.tree_equal(again, mlp)
    with pytest.raises(ValueError, match="`log_every` .* must divide `stall_window`"):
        lorenz63.train(cfg, x, tmp_path / "b", **{**kw, "log_every": 3})
    with pytest.raises(ValueError, match="`min_improvement` in"):
        lorenz63.train(dataclasses.replace(cfg, min_improvement=1.0), x, tmp_path, **kw)
    # A run trained past where the rule would have stopped it is refused, not
    # reported as stopped by the rule.
    free = dataclasses.replace(cfg, iterations=4, stall_window=0)
    lorenz63.train(free, x, tmp_path / "c", **kw)
    with pytest.raises(ValueError, match="stops this run at iteration 2"):
        lorenz63.train(cfg, x, tmp_path / "c", **kw)


def test_training_windows_with_input_noise():
    """`input_noise = 0` is the study's windows; a positive value adds a second copy
    whose first points (only) carry noise of that size, the same for the same seed."""
    from experiments import lorenz63

    x = np.asarray(generate_lorenz63(30, 0.01, np.array([1.0, 1.0, 20.0])))
    cfg = lorenz63.LorenzConfig(rollout=2)
    clean = lorenz63.training_windows(x, cfg)
    np.testing.assert_array_equal(clean, lorenz63.rollout_windows(x, 2))
    noisy_cfg = dataclasses.replace(cfg, input_noise=0.5)
    both = lorenz63.training_windows(x, noisy_cfg)
    assert both.shape == (2 * 28, 3, 3)
    np.testing.assert_array_equal(both[:28], clean)
    np.testing.assert_array_equal(both[28:, 1:], clean[:, 1:])  # targets untouched
    delta = both[28:, 0] - clean[:, 0]
    assert 0.4 < delta.std() < 0.6 and abs(delta.mean()) < 0.15
    np.testing.assert_array_equal(both, lorenz63.training_windows(x, noisy_cfg))
    other = lorenz63.training_windows(x, dataclasses.replace(noisy_cfg, seed=1))
    assert not np.array_equal(other, both)


class AffineField(eqx.Module):
    """f(x) = a x + b (one state `(3,)`), an equilibrium at -a^-1 b."""

    a: jax.Array
    b: jax.Array

    def __call__(self, x):
        return self.a @ x + self.b


def test_stability_prior_by_hand():
    """The prior is weight x mean over starts of relu(-growth)^2 at the equilibria
    Newton reaches inside the box, growth = max Re(eig) / dt; 0 for an unstable or
    outside equilibrium; its gradient, by hand, reaches only the eigenvalue that sets
    the growth (d lambda_max / d a = e1 e1^T for a diagonal a)."""
    from experiments import lorenz63

    dt, weight = 0.5, 3.0
    x_star = np.array([1.0, 2.0, 3.0])
    a = jnp.diag(jnp.array([-0.1, -0.2, -0.3]))
    field = AffineField(a, -a @ x_star)
    starts = jnp.array([[0.0, 0.0, 0.0], [5.0, -1.0, 2.0]])
    box = jnp.array([[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]])
    prior = lorenz63.StabilityPrior(starts=starts, box=box, dt=dt, weight=weight)
    growth, valid = prior.growth(field)
    np.testing.assert_allclose(np.asarray(growth), [-0.2, -0.2], rtol=1e-12)
    assert bool(valid.all())
    np.testing.assert_allclose(float(prior(field)), weight * 0.04, rtol=1e-12)
    grad = jax.grad(lambda m: prior(m))(field)
    want = np.zeros((3, 3))
    want[0, 0] = weight * 2 * (0.1 / dt) * (-1 / dt)  # d/da00 of (-a00 / dt)^2
    np.testing.assert_allclose(np.asarray(grad.a), want, atol=1e-12)
    np.testing.assert_allclose(np.asarray(grad.b), 0.0, atol=1e-12)  # point held
    # An unstable direction (growth > 0), or the equilibrium outside the box: 0.
    unstable = AffineField(a.at[2, 2].set(0.05), -a.at[2, 2].set(0.05) @ x_star)
    assert float(prior(unstable)) == 0.0
    outside = eqx.tree_at(lambda p: p.box, prior, box.at[1, 2].set(2.5))
    assert float(outside(field)) == 0.0
    assert not bool(outside.growth(field)[1].any())


def test_stability_prior_of_a_config():
    """Off at weight 0; otherwise its starts are evenly spaced training points and its
    box their bounding box, and the training loss is the rollout loss plus it."""
    from experiments import lorenz63

    x = np.asarray(generate_lorenz63(41, 0.01, np.array([1.0, 1.0, 20.0])))
    cfg = lorenz63.LorenzConfig(solver="rk4", hidden=8)
    assert lorenz63.stability_prior(x, cfg) is None
    cfg = dataclasses.replace(cfg, stability_weight=2.0, stability_starts=5)
    prior = lorenz63.stability_prior(x, cfg)
    np.testing.assert_array_equal(np.asarray(prior.starts), x[[0, 10, 20, 30, 40]])
    np.testing.assert_array_equal(np.asarray(prior.box), [x.min(0), x.max(0)])
    assert (prior.dt, prior.weight) == (cfg.dt, 2.0)
    step, _ = lorenz63.make_steppers(cfg)
    params, static = eqx.partition(
        lorenz63.AutonomousMLP(8, 2, seed=0), eqx.is_inexact_array
    )
    w = jnp.asarray(lorenz63.rollout_windows(x, 1))
    total = lorenz63.training_loss(params, static, step, w, prior)
    plain = lorenz63.rollout_loss(params, static, step, w)[0]
    np.testing.assert_allclose(
        float(total), float(plain) + float(prior(eqx.combine(params, static))),
        rtol=1e-12,
    )  # fmt: skip
    assert float(lorenz63.training_loss(params, static, step, w, None)) == float(plain)


@pytest.mark.heavy
def test_repair_removes_an_attracting_equilibrium(tmp_path):
    """A ReLU field that is f(x) = -0.1 (x - c) on the data (every unit active), c
    the data's mean, attracts every start; the repair ends with no start attracted,
    its record says what it did, a second call reads it back, and a repair of another
    configuration in the same folder is refused."""
    from experiments import lorenz63

    x = np.asarray(generate_lorenz63(41, 0.01, np.array([1.0, 1.0, 20.0])))
    cfg = lorenz63.LorenzConfig(
        solver="rk4", hidden=8, iterations=0, stability_weight=1.0,
        stability_starts=5, stability_iterations=20,
    )  # fmt: skip
    c = x.mean(0)
    w1 = np.zeros((3, 8))
    w1[:, :3] = np.eye(3)
    w2 = np.eye(8)
    w3 = np.zeros((8, 3))
    w3[:3] = -0.1 * np.eye(3)
    mlp = eqx.tree_at(
        lambda m: (m.weights, m.biases),
        lorenz63.AutonomousMLP(8, 2, seed=0),
        ([jnp.asarray(w) for w in (w1, w2, w3)],
         [jnp.full(8, 100.0), jnp.zeros(8), jnp.asarray(0.1 * (c + 100.0))]),
    )  # fmt: skip
    prior = lorenz63.stability_prior(x, cfg)
    growth, valid = prior.growth(mlp)
    np.testing.assert_allclose(np.asarray(growth), -0.1 / cfg.dt, rtol=1e-9)
    assert bool(valid.all())
    repaired, record = lorenz63.repair(cfg, mlp, x, tmp_path, log=print)
    assert record["attracting_starts"][0] == 5 and record["prior"][0] > 0
    assert record["projection_steps"] >= 1
    kept = record["iteration"].index(record["kept"])
    assert record["prior"][kept] == 0 and record["attracting_starts"][kept] == 0
    assert float(prior(repaired)) == 0.0
    again, record2 = lorenz63.repair(cfg, mlp, x, tmp_path, log=print)
    assert eqx.tree_equal(again, repaired) and record2 == record
    with pytest.raises(ValueError, match="repair of another run"):
        lorenz63.repair(
            dataclasses.replace(cfg, stability_weight=2.0), mlp, x, tmp_path, log=print
        )
    with pytest.raises(ValueError, match="positive `stability_weight`"):
        lorenz63.repair(
            dataclasses.replace(cfg, stability_weight=0.0), mlp, x, tmp_path, log=print
        )


def test_spread_counts_diverged_runs_as_infinite():
    """One diverged orbit (NaN) neither hides the median nor the range: it counts as
    +inf and is counted."""
    from experiments.lorenz63.evaluation import spread

    s = spread([1.0, float("nan"), 3.0, 2.0])
    assert s == dict(median=2.5, min=1.0, max=math.inf, diverged=1)
    assert spread([0.5])["median"] == 0.5


def test_capture_fractions_of_a_sink_a_source_and_a_bounded_basin():
    """A sink captures every start, a source none, and the radial field
    r' = -r (1 - r) about the point (attracting within r < 1, repelling beyond)
    captures the starts inside its basin only."""
    from experiments.lorenz63.evaluation import capture_fractions

    rk4 = tdd.RK4Step()
    point = np.array([1.0, -2.0, 0.5])
    sink = lambda x: -0.01 * (x - point)
    source = lambda x: 0.01 * (x - point)
    assert capture_fractions(rk4, sink, point, (1.0, 4.0), n_steps=200) == {
        "1.00": 1.0, "4.00": 1.0,
    }  # fmt: skip
    assert capture_fractions(rk4, source, point, (1.0,), n_steps=200) == {"1.00": 0.0}

    def bounded(x):  # the radial field r' = -r (1 - r) about `point`
        y = x - point
        r = jnp.linalg.norm(y, axis=-1, keepdims=True)
        return -0.05 * y * (1.0 - r)

    got = capture_fractions(rk4, bounded, point, (0.5, 1.5), n_steps=400)
    assert got == {"0.50": 1.0, "1.50": 0.0}


def test_long_runs_must_fit_the_test_split(tmp_path):
    from experiments import lorenz63
    from experiments.lorenz63.evaluation import references

    x = np.asarray(generate_lorenz63(40, 0.01, np.array([1.0, 1.0, 20.0])))
    cfg = lorenz63.LorenzConfig(data="generated", num_ics=2, horizon=5, long_runs=21)
    with pytest.raises(ValueError, match="--long-runs must be between 1 and the 20"):
        references(cfg, x[:20], x[20:], tmp_path)


def test_symmetrized_field_by_hand(tmp_path):
    """Over {I, S}, a linear field x -> a x becomes x -> (a + S a S) / 2 x; the result
    is equivariant (f(S x) = S f(x)) whatever the field, Lorenz'63 (equivariant
    already) is unchanged, a learned field's equilibria come in mirror pairs with the
    same linearisation, and the group is static: only the field's parameters train."""
    from experiments import lorenz63

    s = np.diag([-1.0, -1.0, 1.0])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)) * 5)
    sym = tdd.Symmetrized(linear_field(A), tdd.LORENZ63_SYMMETRY)
    np.testing.assert_allclose(
        np.asarray(sym(x)), np.asarray(x) @ ((A + s @ A @ s) / 2).T, rtol=1e-14
    )
    lorenz = tdd.Lorenz63()
    assert float(jnp.max(jnp.abs(tdd.Symmetrized(lorenz, tdd.LORENZ63_SYMMETRY)(x) -
                                 lorenz(x)))) == 0.0  # fmt: skip
    cfg = lorenz63.LorenzConfig(hidden=8, symmetry="lorenz")
    field = lorenz63.make_field(cfg)
    plain = lorenz63.make_field(dataclasses.replace(cfg, symmetry="none"))
    assert isinstance(field, tdd.Symmetrized) and eqx.tree_equal(field.field, plain)
    assert td.count_parameters(field) == td.count_parameters(plain)
    np.testing.assert_allclose(
        np.asarray(field(x @ s)), np.asarray(field(x)) @ s, rtol=1e-12, atol=1e-12
    )
    assert not np.allclose(np.asarray(plain(x @ s)), np.asarray(plain(x)) @ s)
    assert field(x[0]).shape == (3,)  # one state, as equilibria calls it
    # (a start from which Newton reaches an equilibrium off the x3 axis, and its
    # mirror image: Newton on an equivariant field is equivariant)
    starts = jnp.asarray([[-12.65, -6.23, 20.41], [12.65, 6.23, 20.41]])
    eq = tdd.equilibria(field, starts)
    assert bool(eq.converged.all()) and float(jnp.abs(eq.points[0, 0])) > 1.0
    np.testing.assert_allclose(
        np.asarray(eq.points[1]), s @ np.asarray(eq.points[0]), atol=1e-9
    )
    np.testing.assert_allclose(
        np.asarray(eq.jacobians[1]), s @ np.asarray(eq.jacobians[0]) @ s, atol=1e-9
    )
    params, _ = eqx.partition(field, eqx.is_inexact_array)
    assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(plain))
    grad = eqx.filter_grad(lambda f: jnp.sum(f(x) ** 2))(field)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))
    with pytest.raises(ValueError, match="`symmetry` must be one of"):
        lorenz63.make_field(dataclasses.replace(cfg, symmetry="mirror"))
    # Training builds the symmetric field, and its checkpoint is not the study's.
    data = np.asarray(generate_lorenz63(30, 0.01, np.array([1.0, 1.0, 20.0])))
    cfg = dataclasses.replace(cfg, solver="rk4", iterations=2)
    kw = dict(checkpoint_every=1, log_every=1, log=lambda _: None)
    trained, _ = lorenz63.train(cfg, data, tmp_path, **kw)
    assert isinstance(trained, tdd.Symmetrized)
    with pytest.raises(ValueError, match="checkpoint of another configuration"):
        lorenz63.train(dataclasses.replace(cfg, symmetry="none"), data, tmp_path, **kw)


def test_equivariance_defect_by_hand():
    """For x -> a x under {I, S}: |a S x - S a x| / |a x| per point; 0 for Lorenz'63
    and for any symmetrized field."""
    s = np.diag([-1.0, -1.0, 1.0])
    x = np.random.default_rng(1).normal(size=(7, 3))
    want = np.linalg.norm(x @ (A @ s - s @ A).T, axis=1) / np.linalg.norm(
        x @ A.T, axis=1
    )
    got = tdd.equivariance_defect(linear_field(A), tdd.LORENZ63_SYMMETRY, x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
    assert (
        float(
            jnp.max(tdd.equivariance_defect(tdd.Lorenz63(), tdd.LORENZ63_SYMMETRY, x))
        )
        == 0.0
    )
    sym = tdd.Symmetrized(linear_field(A), tdd.LORENZ63_SYMMETRY)
    assert (
        float(jnp.max(tdd.equivariance_defect(sym, tdd.LORENZ63_SYMMETRY, x))) < 1e-15
    )
    with pytest.raises(ValueError, match=r"equivariance_defect: `x` must have shape"):
        tdd.equivariance_defect(sym, tdd.LORENZ63_SYMMETRY, x[0])
    with pytest.raises(ValueError, match="equivariance_defect: `group` must contain"):
        tdd.equivariance_defect(sym, [-np.eye(3)], x)


def test_symmetrized_field_errors():
    f = tdd.Lorenz63()
    with pytest.raises(ValueError, match=r"`group\[1\]` is not orthogonal"):
        tdd.Symmetrized(f, [np.eye(3), 2 * np.eye(3)])
    with pytest.raises(ValueError, match="must contain the identity"):
        tdd.Symmetrized(f, [-np.eye(3)])
    with pytest.raises(ValueError, match="is not closed"):
        rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        tdd.Symmetrized(f, [np.eye(3), rot])  # a quarter turn without its powers
    with pytest.raises(ValueError, match="differ in size"):
        tdd.Symmetrized(f, [np.eye(3), np.eye(2)])
    with pytest.raises(ValueError, match="non-empty sequence of square matrices"):
        tdd.Symmetrized(f, [np.ones((3, 2))])
    with pytest.raises(ValueError, match=r"`x` must have shape \(\.\.\., 3\)"):
        tdd.Symmetrized(f, tdd.LORENZ63_SYMMETRY)(jnp.ones((2, 4)))
    # The quarter turn with its powers is a group: accepted.
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    quarter = [np.linalg.matrix_power(rot, k) for k in range(4)]
    assert len(tdd.Symmetrized(f, quarter).group) == 4
