import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tadiffeq as td


def _np_norm(x, mean, var, eps, gamma, beta):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _make(cls, *args, **kwargs):
    return eqx.nn.make_with_state(cls)(*args, **kwargs)


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 6, 5)])
def test_tabn_training_matches_hand_computation(shape, getkey):
    norm, state = _make(td.TABatchNorm, 5, num_intervals=4, momentum=0.3)
    # Non-trivial affine on the grid.
    gamma = jax.random.normal(getkey(), (5, 5))
    beta = jax.random.normal(getkey(), (5, 5))
    norm = eqx.tree_at(lambda n: (n.weight, n.bias), norm, (gamma, beta))
    x = jax.random.normal(getkey(), shape) * 2 + 1
    t = 0.6  # between grid points 2 (t=0.5) and 3 (t=0.75): w_2 = 0.6, w_3 = 0.4
    out, new_state = norm(t, x, state)

    xn = np.asarray(x).reshape(-1, 5)
    mean, var = xn.mean(0), xn.var(0)
    g = 0.6 * np.asarray(gamma[2]) + 0.4 * np.asarray(gamma[3])
    b = 0.6 * np.asarray(beta[2]) + 0.4 * np.asarray(beta[3])
    expected = _np_norm(np.asarray(x), mean, var, 1e-5, g, b)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)

    rm, rv = new_state.get(norm.state_index)
    n = xn.shape[0]
    exp_rm = np.zeros((5, 5))
    exp_rv = np.ones((5, 5))
    for k, w in [(2, 0.6), (3, 0.4)]:
        exp_rm[k] = 0.3 * w * mean
        exp_rv[k] = (1 - 0.3 * w) + 0.3 * w * var * n / (n - 1)
    np.testing.assert_allclose(rm, exp_rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, exp_rv, rtol=1e-5, atol=1e-6)


def test_tabn_inference_uses_interpolated_statistics(getkey):
    norm, state = _make(td.TABatchNorm, 3, num_intervals=2, t0=1.0, t1=2.0)
    gamma = jax.random.normal(getkey(), (3, 3))
    beta = jax.random.normal(getkey(), (3, 3))
    norm = eqx.tree_at(lambda n: (n.weight, n.bias), norm, (gamma, beta))
    rm = jax.random.normal(getkey(), (3, 3))
    rv = jax.random.uniform(getkey(), (3, 3), minval=0.5, maxval=2.0)
    state = state.set(norm.state_index, (rm, rv))
    x = jax.random.normal(getkey(), (4, 3))
    out, same = eqx.nn.inference_mode(norm)(1.25, x, state)
    # t = 1.25 is halfway between grid points 0 (t = 1) and 1 (t = 1.5): statistics
    # and affine are both the mean of the two points.
    m, v = 0.5 * (rm[0] + rm[1]), 0.5 * (rv[0] + rv[1])
    g, b = 0.5 * (gamma[0] + gamma[1]), 0.5 * (beta[0] + beta[1])
    np.testing.assert_allclose(
        out, _np_norm(np.asarray(x), m, v, 1e-5, g, b), rtol=1e-5, atol=1e-6
    )
    assert same is state
    # Per-sample: the first row alone gives the same output.
    out1, _ = norm(1.25, x[:1], state, inference=True)
    np.testing.assert_allclose(out1, out[:1], rtol=1e-6)


def test_tabn_time_dependent_affine_gradient(getkey):
    norm, state = _make(td.TABatchNorm, 2, num_intervals=4)
    x = jax.random.normal(getkey(), (6, 2))

    def loss(weight, t):
        n = eqx.tree_at(lambda n: n.weight, norm, weight)
        out, _ = n(t, x, td.clone_state(state))
        return jnp.sum(jnp.sin(out) * jnp.arange(1.0, 3.0))

    weight = norm.weight + jax.random.normal(getkey(), norm.weight.shape) * 0.1
    g = jax.grad(loss)(weight, 0.3)
    # Only the two neighbours of t = 0.3 (points 1 at 0.25 and 2 at 0.5) get gradient,
    # with ratio w_1 : w_2 = 0.8 : 0.2.
    assert np.all(np.asarray(g)[[0, 3, 4]] == 0)
    np.testing.assert_allclose(g[1] / 0.8, g[2] / 0.2, rtol=1e-5)
    # Finite differences on one entry.
    eps = 1e-2
    e = jnp.zeros_like(weight).at[1, 0].set(eps)
    fd = (loss(weight + e, 0.3) - loss(weight - e, 0.3)) / (2 * eps)
    np.testing.assert_allclose(g[1, 0], fd, rtol=1e-3)


@pytest.mark.parametrize("cls", [td.TABatchNorm, td.PopTIBatchNorm])
def test_statistics_carry_no_gradient(cls, getkey):
    norm, state = _make(cls, 3)
    x = jax.random.normal(getkey(), (5, 3))

    def running(x):
        _, s = norm(0.3, x, td.clone_state(state))
        rm, rv = s.get(norm.state_index)
        return rm.sum() + rv.sum()

    assert np.all(np.asarray(jax.grad(running)(x)) == 0)


def test_popti_matches_hand_computation(getkey):
    norm, state = _make(td.PopTIBatchNorm, 4, momentum=0.2)
    x = jax.random.normal(getkey(), (3, 5, 4)) + 2
    out, state2 = norm(0.7, x, td.clone_state(state))
    xn = np.asarray(x).reshape(-1, 4)
    np.testing.assert_allclose(
        out,
        _np_norm(np.asarray(x), xn.mean(0), xn.var(0), 1e-5, 1, 0),
        rtol=1e-4,
        atol=1e-5,
    )
    rm, rv = state2.get(norm.state_index)
    np.testing.assert_allclose(rm, 0.2 * xn.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rv, 0.8 + 0.2 * xn.var(0, ddof=1), rtol=1e-5)
    # Time independent: the same at any t, in both modes.
    out_b, _ = norm(0.1, x, td.clone_state(state))
    np.testing.assert_allclose(out, out_b, rtol=1e-6)
    inf = eqx.nn.inference_mode(norm)
    a, _ = inf(0.1, x, state2)
    b, _ = inf(0.9, x, state2)
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(
        a, _np_norm(np.asarray(x), rm, rv, 1e-5, 1, 0), rtol=1e-5, atol=1e-6
    )


def test_popti_is_tabn_on_one_point(getkey):
    """Pop-TI BN is TA-BN whose every time weighs one grid point fully: a TA-BN with
    nearest-point weights (coverage off), evaluated only at times nearest its first
    point, gives Pop-TI's outputs and, on that point, its running statistics, in
    both modes; trained affine parameters included."""
    popti, p_state = _make(td.PopTIBatchNorm, 4, momentum=0.3)
    tabn, t_state = _make(
        td.TABatchNorm, 4, momentum=0.3, num_intervals=1, interpolation="nearest",
        coverage_aware=False,
    )  # fmt: skip
    gamma = jax.random.normal(getkey(), (4,))
    beta = jax.random.normal(getkey(), (4,))
    popti = eqx.tree_at(lambda n: (n.weight, n.bias), popti, (gamma, beta))
    tabn = eqx.tree_at(
        lambda n: (n.weight, n.bias), tabn,
        (jnp.stack([gamma, 3 * gamma]), jnp.stack([beta, beta - 1])),
    )  # fmt: skip
    for t in (0.0, 0.2, 0.45, 0.3):
        x = jax.random.normal(getkey(), (6, 4)) * 2 + 1
        a, p_state = popti(t, x, p_state)
        b, t_state = tabn(t, x, t_state)
        np.testing.assert_array_equal(a, b)
    pm, pv = p_state.get(popti.state_index)
    tm, tv = t_state.get(tabn.state_index)
    np.testing.assert_array_equal(pm, tm[0])
    np.testing.assert_array_equal(pv, tv[0])
    np.testing.assert_array_equal(tm[1], 0)  # the other point never updated
    x = jax.random.normal(getkey(), (2, 4))
    a, _ = eqx.nn.inference_mode(popti)(0.1, x, p_state)
    b, _ = eqx.nn.inference_mode(tabn)(0.1, x, t_state)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert isinstance(popti, td.AbstractBatchNorm) and popti.grid is None
    with pytest.raises(ValueError, match="does not track coverage"):
        popti.coverage(p_state)
    with pytest.raises(ValueError, match="keeps no running statistics"):
        td.MiniBatchNorm(4).statistics_at(0.0, p_state)


def test_minibatch_uses_batch_statistics_in_inference(getkey):
    norm, state = _make(td.MiniBatchNorm, 3)
    x = jax.random.normal(getkey(), (7, 3))
    a, _ = norm(0.5, x, state)
    b, _ = eqx.nn.inference_mode(norm)(0.5, x, state)
    np.testing.assert_allclose(a, b)
    xn = np.asarray(x)
    np.testing.assert_allclose(
        a, _np_norm(xn, xn.mean(0), xn.var(0), 1e-5, 1, 0), rtol=1e-5, atol=1e-6
    )
    # ... so one sample's output depends on the rest of the batch.
    c, _ = eqx.nn.inference_mode(norm)(0.5, x[:2], state)
    assert not np.allclose(c[:2], b[:2])


def test_nonorm_is_identity(getkey):
    norm, state = _make(td.NoNorm, 3)
    x = jax.random.normal(getkey(), (2, 4, 3))
    out, s = norm(0.1, x, state)
    assert out is x and s is state


@pytest.mark.parametrize("name", td.NORM_NAMES)
def test_channel_axis_first_equals_last(name, getkey):
    last, state = eqx.nn.make_with_state(td.make_norm)(name, 4, num_intervals=5)
    first, state_f = eqx.nn.make_with_state(td.make_norm)(
        name, 4, num_intervals=5, channel_axis=1
    )
    x = jax.random.normal(getkey(), (3, 4, 5, 4))
    a, sa = last(0.35, x, state)
    b, sb = first(0.35, jnp.moveaxis(x, -1, 1), state_f)
    np.testing.assert_allclose(a, jnp.moveaxis(b, 1, -1), rtol=1e-5, atol=1e-6)
    for u, v in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
        np.testing.assert_allclose(u, v, rtol=1e-6)


def test_grid_variants_update_by_their_weights(getkey):
    for interp in ["nearest", "gaussian"]:
        norm, state = _make(
            td.TABatchNorm, 2, num_intervals=4, interpolation=interp, momentum=0.5
        )
        x = jax.random.normal(getkey(), (6, 2))
        _, s = norm(0.3, x, state)
        rm, _ = s.get(norm.state_index)
        w = np.asarray(norm.grid.weights(0.3))
        np.testing.assert_allclose(
            rm, 0.5 * w[:, None] * np.asarray(x).mean(0)[None], rtol=1e-5, atol=1e-7
        )


def test_affine_penalty_matches_hand_computation(getkey):
    tabn = td.TABatchNorm(3, num_intervals=2)
    pop = td.PopTIBatchNorm(3)
    gw = jax.random.normal(getkey(), (3, 3))
    gb = jax.random.normal(getkey(), (3, 3))
    pw = jax.random.normal(getkey(), (3,))
    tabn = eqx.tree_at(lambda n: (n.weight, n.bias), tabn, (gw, gb))
    pop = eqx.tree_at(lambda n: n.weight, pop, pw)
    tree = [tabn, td.NoNorm(3), pop, td.MiniBatchNorm(3)]
    expected = (
        np.sum(np.mean((np.asarray(gw) - 1) ** 2, -1))
        + np.sum(np.mean(np.asarray(gb) ** 2, -1))
        + np.mean((np.asarray(pw) - 1) ** 2)
    )
    np.testing.assert_allclose(td.affine_penalty(tree, 0.1), 0.1 * expected, rtol=1e-5)
    assert float(td.affine_penalty([td.TABatchNorm(3)])) == 0.0


def test_norm_errors():
    norm, state = _make(td.TABatchNorm, 3)
    with pytest.raises(ValueError, match="batched"):
        norm(0.0, jnp.ones(3), state)
    with pytest.raises(ValueError, match="expected num_features=3"):
        norm(0.0, jnp.ones((2, 4)), state)
    with pytest.raises(TypeError, match="floating-point"):
        norm(0.0, jnp.ones((2, 3), jnp.int32), state)
    with pytest.raises(ValueError, match="more than one value per channel"):
        norm(0.0, jnp.ones((1, 3)), state)
    with pytest.raises(ValueError, match="Unknown normalisation name 'batchnorm'"):
        td.make_norm("batchnorm", 3)
    with pytest.raises(ValueError, match="num_intervals"):
        td.TABatchNorm(3, num_intervals=0)
    with pytest.raises(ValueError, match="t0 < t1"):
        td.TABatchNorm(3, t0=1.0, t1=0.0)
    with pytest.raises(ValueError, match="num_features"):
        td.PopTIBatchNorm(0)
    with pytest.raises(ValueError, match="momentum"):
        td.PopTIBatchNorm(3, momentum=1.5)
    # Batch of one is fine in inference mode.
    out, _ = norm(0.0, jnp.ones((1, 3)), state, inference=True)
    assert out.shape == (1, 3)
    for axis in (2, -3, 5):
        bad, bad_state = _make(td.TABatchNorm, 3, channel_axis=axis)
        with pytest.raises(ValueError, match=f"channel_axis={axis}` is out of range"):
            bad(0.0, jnp.ones((2, 3)), bad_state)
    with pytest.raises(ValueError, match="`t` must be a scalar time, got shape"):
        norm(jnp.linspace(0, 1, 101), jnp.ones((2, 3)), state)
    with pytest.raises(ValueError, match="`kernel_width` only applies"):
        td.TABatchNorm(3, kernel_width=0.1)
    with pytest.raises(ValueError, match="`kernel_width` must be a positive float"):
        td.TABatchNorm(3, interpolation="gaussian", kernel_width=-1.0)
    # Batch statistics of one value per channel would return the bias for any input.
    mini, mini_state = _make(td.MiniBatchNorm, 3)
    with pytest.raises(ValueError, match="MiniBatchNorm: needs more than one value"):
        mini(0.0, jnp.ones((1, 3)), mini_state)
    field = td.MLPField(3, (8,), norm="minibatch", key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="per_sample_inference=True.*MiniBatchNorm"):
        td.NeuralODE(field, per_sample_inference=True)


def test_tabn_non_finite_batch_leaves_other_points(getkey):
    norm, state = _make(td.TABatchNorm, 2, num_intervals=4)
    x = jax.random.normal(getkey(), (5, 2)).at[0, 1].set(jnp.inf)
    _, new = norm(0.3, x, state)  # between points 1 (t = 0.25) and 2 (t = 0.5)
    rm, rv = new.get(norm.state_index)
    untouched = np.array([0, 3, 4])
    np.testing.assert_array_equal(rm[untouched], 0.0)
    np.testing.assert_array_equal(rv[untouched], 1.0)
    assert np.isfinite(rm[1:3, 0]).all() and not np.isfinite(rm[1:3, 1]).any()


def test_jit_and_vmap_over_independent_batches(getkey):
    norm, state = _make(td.TABatchNorm, 3, num_intervals=8)
    xs = jax.random.normal(getkey(), (4, 6, 3))
    ts = jnp.linspace(0.0, 1.0, 4)
    outs, states = jax.jit(jax.vmap(norm, in_axes=(0, 0, None)))(ts, xs, state)
    for i in range(4):
        o, s = norm(ts[i], xs[i], td.clone_state(state))
        np.testing.assert_allclose(outs[i], o, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            states.get(norm.state_index)[0][i], s.get(norm.state_index)[0], rtol=1e-5
        )
