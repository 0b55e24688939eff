"""TA-BN's coverage bookkeeping and its inference read (issue 18)."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tadiffeq as td


def _make(*args, **kwargs):
    return eqx.nn.make_with_state(td.TABatchNorm)(*args, **kwargs)


def _set_stats(norm, state, mean, var, coverage=None):
    state = state.set(norm.state_index, (jnp.asarray(mean), jnp.asarray(var)))
    if coverage is not None:
        state = state.set(norm.coverage_index, 1.0 - jnp.asarray(coverage))
    return state


def test_buffers_and_coverage_after_known_evaluations(getkey):
    # Grid 0, 0.25, ..., 1 (M = 4), momentum 0.5. Two training evaluations:
    # t = 0.3 (w_1 = 0.8, w_2 = 0.2), then t = 0.5 (w_2 = 1).
    norm, state = _make(3, num_intervals=4, momentum=0.5)
    x1 = jax.random.normal(getkey(), (6, 3)) * 2 + 1
    x2 = jax.random.normal(getkey(), (6, 3)) - 3
    _, state = norm(0.3, x1, state)
    _, state = norm(0.5, x2, state)
    m1, v1 = np.mean(x1, 0), np.var(x1, 0, ddof=1)
    m2, v2 = np.mean(x2, 0), np.var(x2, 0, ddof=1)
    exp_u = np.ones(5)
    exp_m, exp_v = np.zeros((5, 3)), np.ones((5, 3))
    for k, r, m, v in [(1, 0.4, m1, v1), (2, 0.1, m1, v1), (2, 0.5, m2, v2)]:
        exp_m[k] += r * (m - exp_m[k])
        exp_v[k] += r * (v - exp_v[k])
        exp_u[k] *= 1 - r
    rm, rv = state.get(norm.state_index)
    np.testing.assert_allclose(rm, exp_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, exp_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.coverage(state), 1 - exp_u, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(norm.coverage(state))[[0, 3, 4]], 0.0)
    # Bias-corrected estimates: point 1 saw only x1, so it reads x1's statistics; point
    # 2 the momentum average of x1 (rate 0.1) then x2 (rate 0.5), without the init.
    inf = eqx.nn.inference_mode(norm)
    mean1, var1 = inf.statistics_at(0.25, state)
    np.testing.assert_allclose(mean1, m1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var1, v1, rtol=1e-5)
    mean2, var2 = inf.statistics_at(0.5, state)
    c2 = 1 - 0.9 * 0.5
    np.testing.assert_allclose(
        mean2, (0.9 * 0.5 * 0 + 0.1 * 0.5 * m1 + 0.5 * m2) / c2, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(var2, (0.1 * 0.5 * v1 + 0.5 * v2) / c2, rtol=1e-5)


def test_linear_covered_weights_by_hand():
    grid = td.LinearTimeGrid(0.0, 1.0, 4)  # points at s = 0..4
    covered = jnp.array([True, False, False, True, True])
    # t = 0.375 is s = 1.5: between covered 0 and 3, w_0 = 1 - 1.5/3, w_3 = 1 - 1.5/3.
    np.testing.assert_allclose(
        grid.covered_weights(0.375, covered), [0.5, 0, 0, 0.5, 0], atol=1e-7
    )
    np.testing.assert_allclose(
        grid.covered_weights(0.2, covered), [0.7333333, 0, 0, 0.2666667, 0], rtol=1e-6
    )
    # Beyond the outermost covered point: flat.
    edge = jnp.array([False, True, True, False, False])
    np.testing.assert_array_equal(grid.covered_weights(0.9, edge), [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(grid.covered_weights(0.0, edge), [0, 1, 0, 0, 0])
    # Nothing covered: the plain weights.
    none = jnp.zeros(5, bool)
    np.testing.assert_array_equal(grid.covered_weights(0.3, none), grid.weights(0.3))


@pytest.mark.parametrize(
    "grid",
    [td.NearestTimeGrid(0.0, 1.0, 4), td.GaussianTimeGrid(0.0, 1.0, 4, 0.1)],
)
def test_other_grids_read_covered_points_only(grid):
    covered = jnp.array([True, False, False, True, True])
    for t in np.linspace(0, 1, 17):
        w = np.asarray(grid.covered_weights(t, covered))
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
        assert np.all(w[[1, 2]] == 0)
    # t = 0.3 (s = 1.2): nearest covered point is 0.
    if isinstance(grid, td.NearestTimeGrid):
        np.testing.assert_array_equal(
            grid.covered_weights(0.3, covered), [1, 0, 0, 0, 0]
        )


@pytest.mark.parametrize("interpolation", ["linear", "nearest", "gaussian"])
def test_full_coverage_is_the_papers_read_exactly(interpolation, getkey):
    kw = dict(
        num_intervals=10, t0=0.5, t1=2.0, momentum=0.3, interpolation=interpolation
    )
    paper, state_p = _make(4, coverage_aware=False, **kw)
    ours, state_o = _make(4, **kw)
    gamma = jax.random.normal(getkey(), (11, 4))
    beta = jax.random.normal(getkey(), (11, 4))
    mean = jax.random.normal(getkey(), (11, 4))
    var = jax.random.uniform(getkey(), (11, 4), minval=0.1, maxval=3.0)
    paper, ours = (
        eqx.tree_at(lambda n: (n.weight, n.bias), n, (gamma, beta))
        for n in (paper, ours)
    )
    state_p = _set_stats(paper, state_p, mean, var)
    state_o = _set_stats(ours, state_o, mean, var, coverage=jnp.ones(11))
    x = jax.random.normal(getkey(), (5, 4))
    for t in [0.5, 0.61, 0.65, 1.0, 1.234567, 1.99, 2.0, 3.0]:
        a, _ = paper(t, x, state_p, inference=True)
        b, _ = ours(t, x, state_o, inference=True)
        np.testing.assert_array_equal(a, b)


def test_bias_corrected_variance_of_a_constant_channel_is_not_negative(getkey):
    # A constant channel: running_var and u both decay as prod(1 - eta w), and their
    # rounding differs (a float32 run reached -1.8e-7, bfloat16 -0.016). Here the
    # buffer is 1e-6 below u: the unclamped estimate is -2e-6, NaN with eps 1e-7.
    norm, state = _make(2, num_intervals=4, eps=1e-7)
    u = jnp.full((5,), 0.5, jnp.float32)
    var = jnp.stack([u - 1e-6, jnp.full((5,), 0.7, jnp.float32)], axis=1)
    state = _set_stats(norm, state, jnp.zeros((5, 2)), var, coverage=1.0 - u)
    inf = eqx.nn.inference_mode(norm)
    _, v = inf.statistics_at(0.3, state)
    np.testing.assert_array_equal(v[0], 0.0)
    np.testing.assert_allclose(v[1], (0.7 - 0.5) / 0.5, rtol=1e-6)
    y, _ = inf(0.3, jax.random.normal(getkey(), (3, 2)), state)
    assert np.all(np.isfinite(y))


def test_low_precision_layer_keeps_float32_coverage(getkey):
    norm, state = _make(3, num_intervals=4, momentum=0.1, dtype=jnp.bfloat16)
    x = jax.random.normal(getkey(), (8, 3)).astype(jnp.bfloat16)
    for _ in range(5):
        _, state = norm(0.5, x, state)
    assert state.get(norm.coverage_index).dtype == jnp.float32
    np.testing.assert_allclose(norm.coverage(state)[2], 1 - 0.9**5, rtol=1e-6)


def test_uncovered_points_never_contribute(getkey):
    norm, state = _make(2, num_intervals=4)
    cov = jnp.array([0.9, 0.0, 0.01, 0.5, 1.0])  # 1 and 2 below momentum / 2 = 0.05
    mean = jax.random.normal(getkey(), (5, 2))
    var = jax.random.uniform(getkey(), (5, 2), minval=0.5, maxval=2.0)
    state = _set_stats(norm, state, mean, var, coverage=cov)
    x = jax.random.normal(getkey(), (3, 2))
    inf = eqx.nn.inference_mode(norm)
    poisoned_mean = mean.at[1:3].set(1e6)
    poisoned_var = var.at[1:3].set(1e6)
    poisoned_norm = eqx.tree_at(
        lambda n: (n.weight, n.bias),
        norm,
        (norm.weight.at[1:3].set(1e6), norm.bias.at[1:3].set(-1e6)),
    )
    poisoned = _set_stats(
        norm, td.clone_state(state), poisoned_mean, poisoned_var, coverage=cov
    )
    for t in np.linspace(0, 1, 9):
        a, _ = inf(t, x, state)
        b, _ = eqx.nn.inference_mode(poisoned_norm)(t, x, poisoned)
        np.testing.assert_array_equal(a, b)
    # t = 0.375 (s = 1.5) reads points 0 and 3, bias-corrected, weights 1 - 1.5/3.
    m, v = inf.statistics_at(0.375, state)
    est_m = mean / cov[:, None].clip(1e-9)
    est_v = (var - (1 - cov[:, None])) / cov[:, None].clip(1e-9)
    np.testing.assert_allclose(m, 0.5 * est_m[0] + 0.5 * est_m[3], rtol=1e-5)
    np.testing.assert_allclose(v, 0.5 * est_v[0] + 0.5 * est_v[3], rtol=1e-5)


def test_training_mode_is_unchanged_by_coverage(getkey):
    paper, state_p = _make(3, num_intervals=8, coverage_aware=False)
    ours, state_o = _make(3, num_intervals=8)
    x = jax.random.normal(getkey(), (7, 3))

    def loss(norm, state):
        out, state = norm(0.37, x, state)
        return jnp.sum(jnp.sin(out)), state

    (la, sa), ga = eqx.filter_value_and_grad(loss, has_aux=True)(paper, state_p)
    (lb, sb), gb = eqx.filter_value_and_grad(loss, has_aux=True)(ours, state_o)
    assert la == lb
    np.testing.assert_array_equal(ga.weight, gb.weight)
    for a, b in zip(sa.get(paper.state_index), sb.get(ours.state_index)):
        np.testing.assert_array_equal(a, b)


def test_inference_read_carries_no_gradient_into_statistics(getkey):
    norm, state = _make(3, num_intervals=4)
    x = jax.random.normal(getkey(), (5, 3))
    _, state = norm(0.3, x, state)
    inf = eqx.nn.inference_mode(norm)
    mean, var = state.get(norm.state_index)
    u = state.get(norm.coverage_index)

    def read(mean, var, u):
        s = td.clone_state(state).set(norm.state_index, (mean, var))
        s = s.set(norm.coverage_index, u)
        out, _ = inf(0.3, x, s)
        return jnp.sum(out**2)

    grads = jax.grad(read, argnums=(0, 1, 2))(mean, var, u)
    for g in grads:
        assert np.all(np.asarray(g) == 0)
    assert float(read(mean, var, u)) > 0


def test_batch_independent_at_inference_with_coverage(getkey):
    norm, state = _make(3, num_intervals=6)
    for t in (0.1, 0.5):
        _, state = norm(t, jax.random.normal(getkey(), (8, 3)), state)
    x = jax.random.normal(getkey(), (4, 3))
    inf = eqx.nn.inference_mode(norm)
    whole, _ = inf(0.42, x, state)
    for i in range(4):
        one, _ = inf(0.42, x[i : i + 1], state)
        np.testing.assert_allclose(one, whole[i : i + 1], rtol=1e-6)


def test_coverage_helper_and_errors(getkey):
    node, state = eqx.nn.make_with_state(
        lambda key: td.NeuralODE(td.MLPField(3, (4, 4), norm="tabn", key=key))
    )(getkey())
    _, state, _ = node(jax.random.normal(getkey(), (6, 3)), state)
    per_layer = td.tabn_coverage(node, state)
    assert len(per_layer) == 2 and per_layer[0].shape == (101,)
    assert 0 < int(jnp.sum(per_layer[0] > 0)) < 101
    paper, s = _make(3, coverage_aware=False)
    with pytest.raises(ValueError, match="coverage_aware=False"):
        paper.coverage(s)
    with pytest.raises(ValueError, match="min_coverage"):
        _make(3, min_coverage=0.0)
    with pytest.raises(ValueError, match="min_coverage"):
        _make(3, coverage_aware=False, min_coverage=0.1)
    with pytest.raises(TypeError, match="coverage_aware"):
        _make(3, coverage_aware="yes")


@pytest.mark.parametrize("hidden", [(4,), (4, 4)])
def test_state_written_before_coverage_loads_into_papers_rule(hidden, tmp_path, getkey):
    # A checkpoint of the 0.1 layout (no coverage arrays) loads into
    # coverage_aware=False; the default layout refuses it with a message saying so
    # (with two layers the first difference is a shape, not the number of arrays).
    def build(coverage_aware):
        return eqx.nn.make_with_state(
            lambda key: td.NeuralODE(
                td.MLPField(
                    3,
                    hidden,
                    norm=lambda n, **kw: td.TABatchNorm(
                        n, coverage_aware=coverage_aware
                    ),
                    key=key,
                )
            )
        )(jax.random.PRNGKey(0))

    old, old_state = build(False)
    _, old_state, _ = old(jax.random.normal(getkey(), (6, 3)), old_state)
    ckpt = td.Checkpointer(tmp_path)
    ckpt.save(1, (old, old_state))
    _, (_, restored) = ckpt.restore(build(False))[:2]
    np.testing.assert_array_equal(
        restored.get(old.field.norms[0].state_index)[0],
        old_state.get(old.field.norms[0].state_index)[0],
    )
    new = build(True)
    with pytest.raises(ValueError, match="coverage_aware=False"):
        ckpt.restore(new)
    # The old state itself, given to the new model, is refused with the same hint.
    with pytest.raises(ValueError, match="coverage.*coverage_aware=False"):
        new[0](jax.random.normal(getkey(), (6, 3)), old_state)


def _mlp_node(key, **kw):
    return eqx.nn.make_with_state(
        lambda key: td.NeuralODE(td.MLPField(3, (8,), norm="tabn", key=key), **kw)
    )(key)


def test_first_step_jitter_covers_more_of_the_grid(getkey):
    x = jax.random.normal(getkey(), (16, 3))
    plain, state_plain = _mlp_node(jax.random.PRNGKey(0))
    jittered, state_jit = _mlp_node(jax.random.PRNGKey(0), first_step_jitter=1.0)
    step_plain = eqx.filter_jit(lambda n, s, k: n(x, s, key=k)[1])
    for i in range(6):
        k = jax.random.PRNGKey(i)
        state_plain = step_plain(plain, state_plain, k)
        state_jit = step_plain(jittered, state_jit, k)
    (cov_plain,) = td.tabn_coverage(plain, state_plain)
    (cov_jit,) = td.tabn_coverage(jittered, state_jit)
    # Without jitter every solve steps at the same times: the same points, again.
    assert int(jnp.sum(cov_jit > 0)) > int(jnp.sum(cov_plain > 0))


def test_first_step_jitter_draws_from_the_key(getkey):
    x = jax.random.normal(getkey(), (4, 3))
    node, state = _mlp_node(getkey(), first_step_jitter=2.0)
    with pytest.raises(ValueError, match="first_step_jitter.*key="):
        node(x, state)
    a = node(x, td.clone_state(state), key=jax.random.PRNGKey(1))
    b = node(x, td.clone_state(state), key=jax.random.PRNGKey(1))
    c = node(x, td.clone_state(state), key=jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])  # other first step, other rounding
    # Inference solves are never jittered and need no key.
    y, _, _ = eqx.nn.inference_mode(node)(x, state)
    assert y.shape == x.shape
    # Without jitter the key changes nothing.
    plain, state = _mlp_node(jax.random.PRNGKey(3))
    p1 = plain(x, td.clone_state(state), key=jax.random.PRNGKey(1))
    p2 = plain(x, td.clone_state(state))
    np.testing.assert_array_equal(p1[0], p2[0])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="first_step_jitter"):
            td.NeuralODE(lambda t, y, s: (y, s), first_step_jitter=bad)


def test_first_step_jitter_needs_an_adaptive_controller():
    """With constant steps every step is dt0, so jittering it would change the
    number of steps of every training solve: refused at construction."""
    field = lambda t, y, s: (y, s)
    const = dict(solver=dfx.Euler(), stepsize_controller=dfx.ConstantStepSize())
    with pytest.raises(ValueError, match="first_step_jitter.*ConstantStepSize"):
        td.NeuralODE(field, dt0=0.05, first_step_jitter=1.0, **const)
    td.NeuralODE(field, dt0=0.05, first_step_jitter=0.0, **const)
    clipped = dfx.ClipStepSizeController(dfx.PIDController(rtol=1e-3, atol=1e-3))
    td.NeuralODE(field, stepsize_controller=clipped, first_step_jitter=1.0)
