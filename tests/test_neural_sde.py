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


def test_sde_initial_step_is_the_sde_heuristic():
    """The SDE heuristic (StochasticDiffEq.jl's `sde_determine_initdt`) by hand for
    f = a y, g = c: |f +- 3g| peaks at |a y| + 3c, the trial Euler step changes f by
    a^2 dt0 y and leaves g, so the change term is |a^2 dt0 y| + 6c; Heun's strong
    order 1/2 gives dt1 = 0.01 / max(d1, d2)."""
    a, c, rtol, atol = -1.5, 0.2, 1e-2, 1e-2
    ctrl = dfx.PIDController(rtol=rtol, atol=atol)
    sde = td.NeuralSDE(
        Linear(a), Constant(c), stepsize_controller=ctrl, initial_step_order=0.5
    )
    state = eqx.nn.State(sde)
    y = np.linspace(-2.0, 3.0, 12, dtype=np.float32).reshape(4, 3)
    rms = lambda v: np.sqrt(np.mean(v**2))
    scale = atol + rtol * np.abs(y)
    d0 = rms(y / scale)
    d1 = rms((np.abs(a * y) + 3 * c) / scale)
    dt0 = 0.01 * d0 / d1
    d2 = rms((np.abs(a**2 * dt0 * y) + 6 * c) / scale) / dt0
    expected = min(100 * dt0, 0.01 / max(d1, d2), 1.0 - 0.25)
    got = sde.initial_step(state, jnp.asarray(0.25), jnp.asarray(y))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # SOSRI's order 3/2 (the default): dt1 = (0.01 / max(d1, d2))**(1/2).
    sosri = td.NeuralSDE(Linear(a), Constant(c), stepsize_controller=ctrl)
    expected = min(100 * dt0, np.sqrt(0.01 / max(d1, d2)), 1.0 - 0.25)
    got = sosri.initial_step(state, jnp.asarray(0.25), jnp.asarray(y))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # A slow field: the heuristic's step is capped at t1 - t.
    slow = td.NeuralSDE(Linear(1e-6), Constant(1e-6))
    assert float(slow.initial_step(state, jnp.asarray(0.75), jnp.asarray(y))) == 0.25


def test_sde_local_step_with_zero_noise_is_the_ode_step(getkey):
    """Without noise the SDE's local step is the ODE step of Heun at the SDE
    heuristic's dt."""
    drift = td.MLPField(3, (16,), norm="none", activation="tanh", key=getkey())
    sde = td.NeuralSDE(drift, Constant(0.0))
    state = eqx.nn.State(sde)
    y = jax.random.normal(getkey(), (4, 3))
    t = jnp.asarray(0.3)
    v_sde, n_sde = sde.local_step_estimate(state, t, y, key=getkey())
    dt = float(sde.initial_step(state, t, y))
    node = td.NeuralODE(
        drift, solver=dfx.Heun(), stepsize_controller=dfx.ConstantStepSize(), dt0=dt
    )
    v_ode, _ = node.local_step_estimate(state, t, y, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(v_sde, v_ode, rtol=1e-4)
    assert n_sde == 4


def test_sde_local_step_draws_a_fresh_increment_of_variance_dt(getkey):
    """dy = r y dW (no drift), y = 1: Heun's error estimate is (k2 - k1) / 2 =
    r^2 dW^2 / 2 per coordinate, so with atol = 1 (rtol negligible) E * dt =
    rms(r^2 dW^2 / 2) dt -> r^2 sqrt(3) dt^2 / 2 over many coordinates when
    dW ~ N(0, dt) (E[dW^4] = 3 dt^2). Other keys, other increments."""
    r = 0.5
    ctrl = dfx.PIDController(rtol=1e-9, atol=1.0)
    sde = td.NeuralSDE(Constant(0.0), Linear(r), stepsize_controller=ctrl)
    state = eqx.nn.State(sde)
    y = jnp.ones((20000, 1))
    t = jnp.asarray(0.2)
    dt = float(sde.initial_step(state, t, y))
    v1, _ = sde.local_step_estimate(state, t, y, key=jax.random.key(1))
    v2, _ = sde.local_step_estimate(state, t, y, key=jax.random.key(2))
    np.testing.assert_allclose(v1, r**2 * np.sqrt(3) * dt**2 / 2, rtol=0.05)
    assert float(v1) != float(v2)


def test_sde_local_step_differentiates_the_first_stage(getkey):
    """As the paper's SOSRI step: by default the first stage's drift and diffusion
    are recomputed with the parameters (gradient flows); `stop_first_stage=True`
    freezes it, which changes the gradient."""
    sde, state = _sde(getkey())
    y = jax.random.normal(getkey(), (6, 3))
    key = getkey()

    def grad(stop):
        def value(sde):
            return sde.local_step_estimate(
                state, 0.4, y, key=key, stop_first_stage=stop
            )[0]

        return eqx.filter_grad(value)(sde).diffusion.layers[0].weight

    g_default, g_frozen, g_live = grad(None), grad(True), grad(False)
    np.testing.assert_array_equal(g_default, g_live)
    diff = np.linalg.norm(g_default - g_frozen)
    assert np.linalg.norm(g_frozen) > 0 and diff > 0.1 * np.linalg.norm(g_frozen)


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
    # Dopri5 has an error estimate but no strong order: diffrax failed at the first
    # call without naming `solver`.
    with pytest.raises(ValueError, match="`solver=Dopri5\\(\\)` has no strong order"):
        td.NeuralSDE(plain, plain, solver=dfx.Dopri5())
    pid = dfx.PIDController(rtol=1e-3, atol=1e-3, error_order=1.0)
    td.NeuralSDE(plain, plain, solver=dfx.Dopri5(), stepsize_controller=pid)
    td.NeuralSDE(plain, plain, solver=dfx.Ralston())
    for dt0 in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="`dt0` must be a finite float > 0"):
            td.NeuralSDE(plain, plain, dt0=dt0)
    # A negative tolerance hung a solve forever; 0, 1e-30 and nan failed late.
    for tol in (-1.0, 0.0, 1e-30, float("nan"), float("inf"), 1.0, 2.0):
        with pytest.raises(
            ValueError, match="`brownian_tol` must be (in|a finite float)"
        ):
            td.NeuralSDE(plain, plain, brownian_tol=tol)
    td.NeuralSDE(plain, plain, brownian_tol=0.5)  # coarse but inside the interval
    with pytest.raises(ValueError, match="ConstantStepSize.*needs an explicit `dt0`"):
        td.NeuralSDE(plain, plain, stepsize_controller=dfx.ConstantStepSize())
    sde, state = _sde(getkey())
    with pytest.raises(ValueError, match="kind='error'"):
        sde(jnp.ones((2, 3)), state, key=getkey(), regularizer=td.RNODE())
    for reg in (
        td.LocalRegularizer(kind="stiffness"),
        td.GlobalRegularizer("stiffness"),
    ):
        with pytest.raises(ValueError, match=r"kind='error'\) only"):
            sde(jnp.ones((2, 3)), state, key=getkey(), regularizer=reg)
    with pytest.raises(TypeError, match="floating-point"):
        sde(jnp.ones((2, 3), jnp.int32), state, key=getkey())
