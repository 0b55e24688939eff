import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tadiffeq as td


class Constant(td.AbstractVectorField):
    """A field returning `value` everywhere (drift 0 or constant diffusion)."""

    value: float

    def __call__(self, t, y, state):
        return jnp.full_like(y, self.value), state


class Linear(td.AbstractVectorField):
    """dy/dt = rate * y."""

    rate: float

    def __call__(self, t, y, state):
        return self.rate * y, state


def _sde(key, **kw):
    k1, k2 = jax.random.split(key)
    drift = td.MLPField(3, (16,), norm="none", activation="tanh", key=k1)
    diffusion = td.MLPField(3, (8,), norm="none", activation="tanh", key=k2)
    sde = td.NeuralSDE(drift, diffusion, **kw)
    return sde, eqx.nn.State(sde)


def test_constant_diffusion_gives_brownian_increments(getkey):
    """dy = 0.5 dW over [0, 2]: y(2) - y(0) ~ N(0, 0.25 * 2), independently per
    coordinate and sample."""
    sde = td.NeuralSDE(Constant(0.0), Constant(0.5), t1=2.0)
    state = eqx.nn.State(sde)
    x = jnp.zeros((4000, 2))
    y, _, stats = eqx.filter_jit(sde)(x, state, key=getkey())
    assert y.shape == x.shape
    np.testing.assert_allclose(np.std(y), 0.5 * np.sqrt(2.0), rtol=0.03)
    assert abs(float(np.mean(y))) < 0.03
    assert abs(np.corrcoef(np.asarray(y[:, 0]), np.asarray(y[:, 1]))[0, 1]) < 0.05


def test_zero_diffusion_is_the_ode(getkey):
    key = getkey()
    drift = td.MLPField(3, (16,), norm="none", activation="tanh", key=key)
    ctrl = dfx.PIDController(rtol=1e-6, atol=1e-6)
    sde = td.NeuralSDE(drift, Constant(0.0), stepsize_controller=ctrl)
    node = td.NeuralODE(drift, solver=dfx.Heun(), stepsize_controller=ctrl)
    state = eqx.nn.State(node)
    x = jax.random.normal(getkey(), (5, 3))
    y_sde, _, _ = sde(x, state, key=getkey())
    y_ode, _, _ = node(x, state)
    np.testing.assert_allclose(y_sde, y_ode, rtol=1e-4, atol=1e-5)


def test_same_key_same_path(getkey):
    sde, state = _sde(getkey())
    x = jax.random.normal(getkey(), (4, 3))
    k = getkey()
    a, _, sa = sde(x, state, key=k)
    b, _, _ = sde(x, state, key=k)
    c, _, _ = sde(x, state, key=getkey())
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert int(sa.num_fn_evals) == 2 + 2 * int(sa.num_steps)


@pytest.mark.parametrize(
    "reg",
    [
        td.LocalRegularizer(),
        td.LocalRegularizer(sampling="biased"),
        td.GlobalRegularizer(),
    ],
)
def test_sde_regularizers(reg, getkey):
    sde, state = _sde(getkey())
    x = jax.random.normal(getkey(), (6, 3))

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(sde, key):
        def loss(sde):
            y, _, stats = sde(x, state, key=key, regularizer=reg)
            return jnp.mean(y**2) + stats.regularization, stats

        return eqx.filter_value_and_grad(loss, has_aux=True)(sde)

    for i in range(2):
        (value, stats), grads = step(sde, jax.random.PRNGKey(i))
    assert float(stats.regularization) > 0
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert int(stats.num_regularizer_evals) == (
        4 if isinstance(reg, td.LocalRegularizer) else 0
    )
    g_drift = grads.drift.layers[0].weight
    assert float(jnp.abs(g_drift).max()) > 0


def test_sde_local_step_with_zero_noise_matches_the_ode_estimate(getkey):
    key = getkey()
    drift = td.MLPField(3, (16,), norm="none", activation="tanh", key=key)
    sde = td.NeuralSDE(drift, Constant(0.0))
    node = td.NeuralODE(drift, solver=dfx.Heun())
    state = eqx.nn.State(node)
    y = jax.random.normal(getkey(), (4, 3))
    terms = sde._terms(state, y, getkey())
    v_sde, n_sde = sde.local_step_estimate(state, 0.3, y, context=terms)
    v_ode, n_ode = node.local_step_estimate(state, 0.3, y)
    np.testing.assert_allclose(v_sde, v_ode, rtol=1e-4)
    assert n_sde == n_ode == 4


def test_sde_local_step_of_a_slow_drift_stays_on_the_brownian_tree(getkey):
    """A slow drift makes the heuristic propose a step longer than the Brownian tree
    covers; the local step is capped at the tree's end, 2 t1 - t0."""
    sde = td.NeuralSDE(Linear(1e-6), Constant(0.1))
    state = eqx.nn.State(sde)
    y = jax.random.normal(getkey(), (4, 3))
    assert float(sde._initial_step(state, 0.5, y)) > 1.5  # past the tree's end, 2
    terms = sde._terms(state, y, getkey())
    value, evals = sde.local_step_estimate(state, 0.5, y, context=terms)
    assert np.isfinite(float(value)) and evals == 4
    _, _, stats = sde(y, state, key=getkey(), regularizer=td.LocalRegularizer())
    assert np.isfinite(float(stats.regularization))


def test_sde_constant_step_size(getkey):
    drift = td.MLPField(3, (8,), norm="none", activation="tanh", key=getkey())
    sde = td.NeuralSDE(
        drift, Constant(0.1), stepsize_controller=dfx.ConstantStepSize(), dt0=0.1
    )
    state = eqx.nn.State(sde)
    x = jax.random.normal(getkey(), (4, 3))
    reg = td.LocalRegularizer(rtol=1e-3, atol=1e-3)
    _, _, stats = sde(x, state, key=getkey(), regularizer=reg)
    assert int(stats.num_steps) == 10
    # Two Heun stages per step and per local step; no step-size heuristic.
    assert int(stats.num_fn_evals) == 2 * 10
    assert int(stats.num_regularizer_evals) == 2
    assert float(stats.regularization) > 0


def test_sde_errors(getkey):
    k = getkey()
    stateful = td.MLPField(3, (8,), norm="tabn", key=k)
    plain = td.MLPField(3, (8,), norm="none", key=k)
    with pytest.raises(ValueError, match="running statistics"):
        td.NeuralSDE(stateful, plain)
    with pytest.raises(ValueError, match="no error estimate"):
        td.NeuralSDE(plain, plain, solver=dfx.Euler())
    for dt0 in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="`dt0` must be positive"):
            td.NeuralSDE(plain, plain, dt0=dt0)
    # A negative tolerance hung a solve forever; 0, 1e-30 and nan failed late.
    for tol in (-1.0, 0.0, 1e-30, float("nan"), float("inf"), 1.0, 2.0):
        with pytest.raises(ValueError, match="`brownian_tol` must be in"):
            td.NeuralSDE(plain, plain, brownian_tol=tol)
    td.NeuralSDE(plain, plain, brownian_tol=0.5)  # coarse but inside the interval
    with pytest.raises(ValueError, match="ConstantStepSize.*pass `dt0`"):
        td.NeuralSDE(plain, plain, stepsize_controller=dfx.ConstantStepSize())
    sde, state = _sde(getkey())
    with pytest.raises(ValueError, match="kind='error'"):
        sde(jnp.ones((2, 3)), state, key=getkey(), regularizer=td.RNODE())
    with pytest.raises(TypeError, match="floating-point"):
        sde(jnp.ones((2, 3), jnp.int32), state, key=getkey())
