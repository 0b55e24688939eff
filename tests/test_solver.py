import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    CallCounter,
    counted_recorded_field,
    RecordedField,
    replay_tabn,
)

import tadiffeq as td


class Plain(td.AbstractVectorField):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, state):
        return jax.vmap(lambda v: self.mlp(jnp.append(v, t)))(y), state


@pytest.mark.parametrize(
    "solver", [dfx.Dopri5(), dfx.Tsit5(), dfx.Bosh3(), dfx.Heun(), dfx.Dopri8()]
)
def test_matches_diffrax_solver_step_for_step(solver, getkey):
    """Without state, StatefulSolver is the wrapped diffrax solver: same steps, same
    solution, same dense output."""
    field = Plain(eqx.nn.MLP(4, 3, 16, 2, activation=jnp.tanh, key=getkey()))
    y0 = jax.random.normal(getkey(), (5, 3))
    ts = jnp.linspace(0.0, 1.0, 7)
    kw = dict(
        t0=0.0, t1=1.0, dt0=0.05, y0=y0, max_steps=500,
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=dfx.PIDController(rtol=1e-5, atol=1e-5),
    )  # fmt: skip
    ref = dfx.diffeqsolve(
        dfx.ODETerm(lambda t, y, a: field(t, y, None)[0]), solver, **kw
    )
    term = dfx.ODETerm(td.StatefulField(field, eqx.nn.State(field)))
    ours = dfx.diffeqsolve(term, td.StatefulSolver(solver), **kw)
    assert int(ours.stats["num_steps"]) == int(ref.stats["num_steps"])
    assert int(ours.stats["num_rejected_steps"]) == int(ref.stats["num_rejected_steps"])
    np.testing.assert_allclose(ours.ys, ref.ys, rtol=1e-5, atol=1e-6)


def _euler_node(norm, dt, t1=1.0):
    return td.NeuralODE(
        norm, solver=dfx.Euler(), stepsize_controller=dfx.ConstantStepSize(), dt0=dt,
        t1=t1,
    )  # fmt: skip


def test_euler_buffers_equal_hand_computation(getkey):
    """Euler with dt = h/2 on a grid of M = 2 intervals evaluates at t = 0, 0.25,
    0.5, 0.75: weights (1, 0, 0), (.5, .5, 0), (0, 1, 0), (0, .5, .5). Compute the
    whole solve and the sequential running-average updates by hand."""
    field, state = eqx.nn.make_with_state(RecordedField)(
        3, 4, td.TABatchNorm(4, num_intervals=2, momentum=0.3), key=getkey()
    )
    x = jax.random.normal(getkey(), (6, 3))
    node = _euler_node(field, 0.25)
    y1, new_state, stats = eqx.filter_jit(node)(x, state)
    assert int(stats.num_steps) == 4 and int(stats.num_fn_evals) == 4

    w1, b1 = np.asarray(field.lin1.weight, np.float64), np.asarray(field.lin1.bias)
    w2, b2 = np.asarray(field.lin2.weight, np.float64), np.asarray(field.lin2.bias)
    y = np.asarray(x, np.float64)
    rm, rv = np.zeros((3, 4)), np.ones((3, 4))
    weights = {0.0: [1, 0, 0], 0.25: [0.5, 0.5, 0], 0.5: [0, 1, 0], 0.75: [0, 0.5, 0.5]}
    for t, w in weights.items():
        h = y @ w1[:-1] + t * w1[-1] + b1
        mean, var = h.mean(0), h.var(0)
        rate = 0.3 * np.asarray(w, float)[:, None]
        rm = rm + rate * (mean - rm)
        rv = rv + rate * (h.var(0, ddof=1) - rv)
        g = np.asarray(w, float) @ np.ones((3, 4))  # affine = 1, 0 on every point
        hn = (h - mean) / np.sqrt(var + 1e-5) * g
        y = y + 0.25 * (np.tanh(hn) @ w2[:-1] + t * w2[-1] + b2)
    got_m, got_v = new_state.get(field.norm.state_index)
    np.testing.assert_allclose(y1, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_m, rm, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_v, rv, rtol=1e-4, atol=1e-6)


def test_euler_on_grid_times_updates_each_point_once(getkey):
    field, state = eqx.nn.make_with_state(RecordedField)(
        2, 3, td.TABatchNorm(3, num_intervals=4, momentum=0.1), key=getkey()
    )
    x = jax.random.normal(getkey(), (5, 2))
    _, new_state, _ = _euler_node(field, 0.25)(x, state)
    n, ts, ms, vs = new_state.get(field.recorder.index)
    assert int(n) == 4
    np.testing.assert_allclose(ts[:4], [0, 0.25, 0.5, 0.75], atol=1e-7)
    rm, rv = new_state.get(field.norm.state_index)
    np.testing.assert_allclose(rm[:4], 0.1 * np.asarray(ms[:4]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rv[:4], 0.9 + 0.1 * np.asarray(vs[:4]), rtol=1e-5)
    np.testing.assert_array_equal(rm[4], 0.0)  # t1 itself is never evaluated
    np.testing.assert_array_equal(rv[4], 1.0)


@pytest.mark.parametrize("solver", [dfx.Dopri5(), dfx.Tsit5()])
def test_adaptive_buffers_replay_the_accepted_evaluations(solver, getkey):
    """For dopri5/tsit5 the buffers equal the updates of exactly the evaluations of
    accepted steps (and the first FSAL one), applied in order, at their times."""
    counter = CallCounter()
    Counted = counted_recorded_field(counter)
    field, state = eqx.nn.make_with_state(Counted)(
        3, 8, td.TABatchNorm(8, num_intervals=20), key=getkey(), scale=6.0
    )
    x = jax.random.normal(getkey(), (16, 3))
    node = td.NeuralODE(
        field, solver=solver, dt0=0.5,  # a large first step: rejections
        stepsize_controller=dfx.PIDController(rtol=1e-4, atol=1e-4),
    )  # fmt: skip
    _, new_state, stats = jax.jit(node.__call__)(x, state)
    accepted, rejected = int(stats.num_accepted_steps), int(stats.num_rejected_steps)
    assert rejected > 0 and accepted > 2
    n, ts, ms, vs = (np.asarray(a) for a in new_state.get(field.recorder.index))
    s = td.RKTableau.of(solver).num_stages
    assert n == 1 + (s - 1) * accepted  # FSAL: first evaluation, then s - 1 per step
    assert (
        counter.count == int(stats.num_fn_evals) == 1 + (s - 1) * (accepted + rejected)
    )
    # Accepted steps only, stages in order: the recorded times never go back.
    assert np.all(np.diff(ts[:n]) >= -1e-7)
    assert ts[0] == 0.0 and abs(ts[n - 1] - 1.0) < 1e-6
    rm, rv = new_state.get(field.norm.state_index)
    exp_m, exp_v = replay_tabn(field.norm, ts[:n], ms[:n], vs[:n])
    assert np.all(np.isfinite(rm)) and np.all(np.isfinite(rv))
    np.testing.assert_allclose(rm, exp_m, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rv, exp_v, rtol=1e-4, atol=1e-6)
    # Neighbourhood: every running mean is a convex combination of 0 and batch means.
    lo = np.minimum(0, ms[:n].min(0))
    hi = np.maximum(0, ms[:n].max(0))
    assert np.all(rm >= lo - 1e-6) and np.all(rm <= hi + 1e-6)


def test_nfe_includes_initial_step_heuristic(getkey):
    counter = CallCounter()
    Counted = counted_recorded_field(counter)
    field, state = eqx.nn.make_with_state(Counted)(
        3, 8, td.PopTIBatchNorm(8), key=getkey()
    )
    _, _, stats = jax.jit(td.NeuralODE(field).__call__)(
        jax.random.normal(getkey(), (4, 3)), state
    )
    assert counter.count == int(stats.num_fn_evals) == 2 + 1 + 6 * int(stats.num_steps)


def test_initial_step_uses_pid_heuristic(getkey):
    """diffrax 0.7 would start every solve at dt0 = 0.01; we run its heuristic."""
    field, state = eqx.nn.make_with_state(RecordedField)(
        2, 4, td.NoNorm(4), key=getkey(), scale=0.01
    )
    _, new_state, _ = td.NeuralODE(field)(jax.random.normal(getkey(), (3, 2)), state)
    _, ts, _, _ = new_state.get(field.recorder.index)
    # A slow field: the heuristic picks a first step far above 0.01 (the second stage
    # of dopri5 is at t0 + dt / 5).
    assert float(ts[1]) > 0.01


def test_unsupported_solver_errors():
    with pytest.raises(
        TypeError, match="`solver` must be diffrax.Euler or an explicit"
    ):
        td.StatefulSolver(dfx.Kvaerno5())
    with pytest.raises(TypeError, match="`solver`"):
        td.NeuralODE(lambda t, y, s: (y, s), solver=dfx.ReversibleHeun())


def test_diffrax_private_name_is_still_there():
    """tadiffeq/_diffrax_private.py imports diffrax's private `AdjointTerm` (the term
    of BacksolveAdjoint's backward solve); this fails with the fix if diffrax moves
    it."""
    import diffrax._term

    assert isinstance(getattr(diffrax._term, "AdjointTerm", None), type), (
        f"diffrax {dfx.__version__} has no `diffrax._term.AdjointTerm`: update "
        "tadiffeq/_diffrax_private.py and the diffrax pin in pyproject.toml."
    )
    assert issubclass(diffrax._term.AdjointTerm, dfx.AbstractTerm)


def test_rk_tableau_of_tsit5_is_consistent():
    """Row sums of a equal c (the method's consistency), b sums to 1, the error
    weights to 0; FSAL and an error estimate for tsit5, neither for Euler."""
    tab = td.RKTableau.of(dfx.Tsit5())
    np.testing.assert_allclose(tab.a.sum(axis=1), tab.c, atol=1e-12)
    assert tab.num_stages == 7 and abs(tab.b.sum() - 1) < 1e-12
    assert tab.has_error_estimate and abs(tab.b_error.sum()) < 1e-12 and tab.fsal
    euler = td.RKTableau.of(dfx.Euler())
    assert not euler.has_error_estimate and euler.num_stages == 1
    with pytest.raises(TypeError, match="`solver` must be"):
        td.RKTableau.of(dfx.ImplicitEuler())


def test_jax_computes_a_vmapped_reduction_right():
    """jax 0.10.2 returns wrong sums on the CPU for a vmapped matrix-vector product
    followed by a reduction under jit (jax-ml/jax#39103, its reproducer; pyproject.toml
    excludes that release): with the identity, row i gives i ** 2 exactly."""
    n = 32_769
    i = jnp.arange(n, dtype=jnp.float32)
    x = jnp.stack((i, jnp.zeros_like(i), jnp.zeros_like(i)), axis=1)
    eye = jnp.eye(3, dtype=jnp.float32)
    f = jax.vmap(lambda row: jnp.sum((eye @ row) ** 2))
    assert float(jax.jit(f)(x)[-1]) == float((n - 1) ** 2), (
        f"jax {jax.__version__} miscompiles a vmapped reduction on this backend "
        "(jax-ml/jax#39103): install another release (pyproject.toml excludes 0.10.2)."
    )
