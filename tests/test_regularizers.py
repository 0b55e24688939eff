import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CallCounter

import tadiffeq as td


class Linear(td.AbstractVectorField):
    """dy/dt = y A (per sample, a row vector times A)."""

    a: jax.Array

    def __call__(self, t, y, state):
        return y @ self.a, state


def _linear_node(a, **kw):
    field = Linear(jnp.asarray(a))
    return td.NeuralODE(field, **kw), eqx.nn.State(field)


# Dormand--Prince 5(4), written out independently of diffrax for the hand computation.
_DP_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_DP_B5 = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0])
# The embedded 4th-order weights diffrax's Dopri5 uses (Shampine 1986), not the
# classic Dormand--Prince ones (5179/57600, ...).
_DP_B4 = np.array(
    [1951 / 21600, 0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60]
)


def _dopri5_by_hand(a, y, dt):
    ks = []
    for row in _DP_A:
        z = y + dt * sum(c * k for c, k in zip(row, ks))
        ks.append(z @ a)
    y5 = y + dt * sum(c * k for c, k in zip(_DP_B5, ks))
    y4 = y + dt * sum(c * k for c, k in zip(_DP_B4, ks))
    return y5, y5 - y4, ks


def test_local_error_estimate_equals_hand_computation_on_linear_ode(getkey):
    a = np.array([[-1.0, 2.0, 0.0], [-2.0, -0.5, 1.0], [0.3, 0.0, -3.0]])
    y = np.asarray(jax.random.normal(getkey(), (4, 3)), np.float64)
    with jax.enable_x64(True):  # float64 so the comparison is tight
        node, state = _linear_node(
            a, stepsize_controller=dfx.PIDController(rtol=1e-4, atol=1e-5)
        )
        value, evals = td.local_step_estimate(node, state, 0.2, jnp.asarray(y))
        assert evals == 2 + 7
        # The step size the PID heuristic proposes at (0.2, y).
        term = dfx.ODETerm(lambda t, y, args: y @ jnp.asarray(a))
        func = lambda terms, t, y, args: terms.vf(t, y, args)
        tnext, _ = node.stepsize_controller.init(
            term, 0.2, 1.0, jnp.asarray(y), None, None, func, 5
        )
        dt = float(tnext) - 0.2
        solver = dfx.Dopri5()
        _, y_err, _, _, _ = solver.step(
            term, 0.2, 0.2 + dt, jnp.asarray(y), None,
            solver.init(term, 0.2, 0.2 + dt, jnp.asarray(y), None), False,
        )  # fmt: skip
    y5, err, _ = _dopri5_by_hand(a, y, dt)
    scale = 1e-5 + 1e-4 * np.maximum(np.abs(y), np.abs(y5))
    expected = np.sqrt(np.mean((err / scale) ** 2)) * dt
    np.testing.assert_allclose(value, expected, rtol=1e-8)
    # The same embedded error as diffrax's own Dopri5 step.
    np.testing.assert_allclose(y_err, err, rtol=1e-8, atol=1e-15)


def test_stiffness_estimate_is_exact_for_a_linear_field():
    """For f(y) = -lam y the difference quotient is exactly lam."""
    node, state = _linear_node(-7.0 * np.eye(3), solver=dfx.Tsit5())
    y = jnp.ones((2, 3))
    value, _ = td.local_step_estimate(node, state, 0.0, y, kind="stiffness")
    tab = td.RKTableau.of(dfx.Tsit5())
    np.testing.assert_allclose(value * td.real_stability_boundary(tab), 7.0, rtol=1e-3)


def _stability_function(tab, z):
    """R(z) = 1 + z b^T (I - z A)^{-1} 1."""
    eye, ones = np.eye(len(tab.b)), np.ones(len(tab.b))
    return 1 + z * tab.b @ np.linalg.solve(eye - z * tab.a, ones)


def test_stability_boundaries_match_the_known_constants():
    for solver, size in [(dfx.Dopri5(), 3.3066), (dfx.Tsit5(), 3.5068)]:
        tab = td.RKTableau.of(solver)
        x = td.real_stability_boundary(tab)
        assert abs(x - size) < 1e-4
        # |R(-x)| = 1 at the boundary and < 1 just inside.
        assert abs(abs(_stability_function(tab, -x)) - 1) < 1e-6
        assert abs(_stability_function(tab, -0.99 * x)) < 1
    with pytest.raises(ValueError, match="last two stages"):
        td.stiffness_estimate(td.RKTableau.of(dfx.Bosh3()), jnp.zeros((4, 1)), 0.1)


def _mlp(key, norm="none", features=4, scale=1.0, **kw):
    """A tanh MLP field; `scale` multiplies both weight matrices (a harder field:
    scale 4 takes ~8 steps and several rejections at tolerance 1e-6 from dt0 = 1)."""

    def build(key):
        field = td.MLPField(features, (12,), norm=norm, activation="tanh", key=key)
        field = eqx.tree_at(
            lambda f: (f.layers[0].weight, f.layers[1].weight),
            field,
            (field.layers[0].weight * scale, field.layers[1].weight * scale),
        )
        return td.NeuralODE(field, solver=dfx.Tsit5(), **kw)

    return eqx.nn.make_with_state(build)(key)


def test_gradients_flow_through_the_step_not_through_y_t_or_dt(getkey):
    node, state = _mlp(getkey())
    y = jax.random.normal(getkey(), (5, 4))

    def value(node, t, y, stop=True):
        return td.local_step_estimate(node, state, t, y, stop_first_stage=stop)[0]

    g_t, g_y = jax.grad(value, argnums=(1, 2))(node, 0.3, y)
    assert float(g_t) == 0.0 and float(jnp.abs(g_y).max()) == 0.0
    g = eqx.filter_grad(value)(node, 0.3, y)
    assert float(jnp.abs(g.field.layers[0].weight).max()) > 0
    # With the first stage differentiated too, the gradient is the exact gradient
    # of the estimate at the (frozen) step size: compare with finite differences
    # (float64: the estimate is ~1e-6).
    g_full = eqx.filter_grad(lambda n: value(n, 0.3, y, False))(node)
    assert not np.allclose(g_full.field.layers[0].weight, g.field.layers[0].weight)
    with jax.enable_x64(True):
        field = td.MLPField(
            4, (12,), norm="none", activation="tanh", dtype=jnp.float64, key=getkey()
        )
        fixed_node = td.NeuralODE(
            field, solver=dfx.Tsit5(), stepsize_controller=dfx.ConstantStepSize(),
            dt0=0.1,
        )  # fmt: skip
        y64 = jnp.asarray(y, jnp.float64)

        def fixed(n):
            return td.local_step_estimate(
                n, state, 0.3, y64, stop_first_stage=False, rtol=1e-3, atol=1e-3
            )[0]

        g_fixed = eqx.filter_grad(fixed)(fixed_node)
        w = fixed_node.field.layers[1].weight
        path = lambda n: n.field.layers[1].weight
        eps = 1e-3  # smaller steps lose the difference to rounding
        up = fixed(eqx.tree_at(path, fixed_node, w.at[2, 1].add(eps)))
        dn = fixed(eqx.tree_at(path, fixed_node, w.at[2, 1].add(-eps)))
        np.testing.assert_allclose(
            path(g_fixed)[2, 1], (up - dn) / (2 * eps), rtol=1e-3
        )


def test_the_heuristic_step_size_is_a_constant_of_the_gradient(getkey):
    # The adaptive node's estimate and its gradient equal those of a constant-step
    # node whose dt0 is the heuristic's dt at the current parameters, although that
    # dt depends on the parameters: the gradient does not flow through dt (diffrax's
    # `PIDController.init` stops it, and `local_step_estimate` again).
    with jax.enable_x64(True):
        field = td.MLPField(
            4, (12,), norm="none", activation="tanh", dtype=jnp.float64, key=getkey()
        )
        state = eqx.nn.State(field)
        ctrl = dfx.PIDController(rtol=1e-3, atol=1e-3)
        node = td.NeuralODE(field, solver=dfx.Tsit5(), stepsize_controller=ctrl)
        y = jax.random.normal(getkey(), (5, 4), jnp.float64)
        t = 0.3

        def heuristic_dt(field):
            term = dfx.ODETerm(td.StatefulField(field, state))
            tnext, _ = ctrl.init(
                term, t, 1.0, y, None, None, dfx.Tsit5().func, dfx.Tsit5().order(term)
            )
            return tnext - t

        dt = heuristic_dt(field)
        assert 0 < float(dt) < 0.7  # not clamped to t1 - t
        fixed = td.NeuralODE(
            field, solver=dfx.Tsit5(), stepsize_controller=dfx.ConstantStepSize(),
            dt0=float(dt),
        )  # fmt: skip

        def value(n):
            return td.local_step_estimate(
                n, state, t, y, stop_first_stage=False, rtol=1e-3, atol=1e-3
            )[0]

        np.testing.assert_allclose(value(node), value(fixed), rtol=1e-12)
        g, g_fixed = eqx.filter_grad(value)(node), eqx.filter_grad(value)(fixed)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14),
            g.field,
            g_fixed.field,
        )


def test_biased_samples_lie_on_accepted_step_boundaries(getkey):
    node, state = _mlp(getkey(), scale=4.0)
    y0 = jax.random.normal(getkey(), (6, 4))
    term = dfx.ODETerm(td.StatefulField(node.field, state))
    ctrl = dfx.PIDController(rtol=1e-6, atol=1e-6)

    @jax.jit
    def solve(key):
        solver = td.StatefulSolver(dfx.Tsit5(), [td.StepReservoir(key)])
        sol = dfx.diffeqsolve(
            term, solver, 0.0, 1.0, 1.0, y0, stepsize_controller=ctrl,
            saveat=dfx.SaveAt(t0=True, steps=True, solver_state=True), max_steps=64,
        )  # fmt: skip
        return sol

    counts = {}
    for i in range(100):
        sol = solve(jax.random.PRNGKey(i))
        n_acc = int(sol.stats["num_accepted_steps"])
        assert int(sol.stats["num_rejected_steps"]) > 0  # dt0 = 1 is too large
        ts = np.asarray(sol.ts[: n_acc + 1])  # t0 and the accepted step ends
        count, t_s, y_s = sol.solver_state[2][0]
        assert int(count) == n_acc
        idx = int(np.argmin(np.abs(ts - float(t_s))))
        # An interior step end, as the paper's `rand(sol.t[1:end-1])`: never t0
        # (the input itself), never t1.
        assert abs(ts[idx] - float(t_s)) < 1e-7 and 0 < idx < n_acc
        np.testing.assert_allclose(y_s, sol.ys[idx], rtol=1e-6)
        counts[idx] = counts.get(idx, 0) + 1
    # Uniform over the interior boundaries: every one gets picked.
    assert len(counts) == n_acc - 1 and min(counts.values()) >= 2


def test_biased_sample_of_a_single_step_solve_is_its_start(getkey):
    """A solve of one accepted step has no interior boundary: the sample is t0."""
    node, state = _mlp(getkey())
    y0 = jax.random.normal(getkey(), (3, 4))
    term = dfx.ODETerm(td.StatefulField(node.field, state))
    solver = td.StatefulSolver(dfx.Tsit5(), [td.StepReservoir(jax.random.key(0))])
    sol = dfx.diffeqsolve(
        term, solver, 0.0, 1.0, 1.0, y0, saveat=dfx.SaveAt(solver_state=True)
    )
    count, t_s, y_s = sol.solver_state[2][0]
    assert int(count) == 1 and float(t_s) == 0.0
    np.testing.assert_array_equal(y_s, y0)


def test_local_step_never_ends_past_t1(getkey):
    """The heuristic's dt is clamped to t1 - t (the paper's solver is initialised
    on (t, t1)): near t1 the step is exactly the one of dt = t1 - t."""
    node, state = _mlp(getkey(), scale=0.1)  # slow field: the heuristic's dt is big
    y = jax.random.normal(getkey(), (4, 4))
    pid = node.stepsize_controller
    tol = dict(rtol=pid.rtol, atol=pid.atol)
    t = 1.0 - 1e-3
    far = td.local_step_estimate(node, state, 0.0, y)[0]
    near = td.local_step_estimate(node, state, t, y)[0]
    fixed = td.NeuralODE(
        node.field, solver=dfx.Tsit5(), stepsize_controller=dfx.ConstantStepSize(),
        dt0=float(1.0 - np.float32(t)),
    )  # fmt: skip
    by_hand = td.local_step_estimate(fixed, state, t, y, **tol)[0]
    assert 0 < float(near) < 1e-2 * float(far)
    np.testing.assert_allclose(near, by_hand, rtol=1e-5)


def test_stiffness_regularizers_take_no_tolerances_and_are_finite_at_t1(getkey):
    """The stiffness estimate scales nothing by rtol/atol: a constant-step node takes
    both stiffness regularizers without them. From t1 (dt clamped to 0) the local
    estimate is 0, not 0 / 0."""
    a = -7.0 * jnp.eye(3)  # every eigenvalue -7: the estimate is exact (above)
    y = jax.random.normal(getkey(), (2, 3))
    boundary = td.real_stability_boundary(td.RKTableau.of(dfx.Tsit5()))
    fixed, state = _linear_node(
        a, solver=dfx.Tsit5(), stepsize_controller=dfx.ConstantStepSize(), dt0=0.1
    )
    local, _ = td.local_step_estimate(fixed, state, 0.5, y, kind="stiffness")
    np.testing.assert_allclose(local, 7.0 / boundary, rtol=1e-3)
    _, _, stats = fixed(y, state, regularizer=td.GlobalRegularizer(kind="stiffness"))
    np.testing.assert_allclose(stats.regularization, 7.0 / boundary, rtol=1e-3)
    adaptive, state = _linear_node(a, solver=dfx.Tsit5())
    at_t1, _ = td.local_step_estimate(adaptive, state, 1.0, y, kind="stiffness")
    assert float(at_t1) == 0.0
    with pytest.raises(ValueError, match="GlobalRegularizer.*rtol"):
        td.GlobalRegularizer(rtol=-1.0)


def test_local_regularizer_value_is_the_step_at_the_sampled_time(getkey):
    """End to end: the unbiased regularizer's value is `local_step_estimate` at
    t_s ~ U[t0, t1) drawn from the key, from the solution y(t_s)."""
    node, state = _mlp(getkey(), scale=2.0)
    x = jax.random.normal(getkey(), (5, 4))
    key = jax.random.PRNGKey(3)
    _, _, stats = node(x, state, regularizer=td.LocalRegularizer(), key=key)
    t_s = jax.random.uniform(key, (), minval=node.t0, maxval=node.t1)
    y_s = node(x, state, ts=t_s[None])[0][0]
    expected, evals = node.local_step_estimate(state, t_s, y_s)
    assert float(expected) > 0 and int(stats.num_regularizer_evals) == evals == 9
    np.testing.assert_allclose(stats.regularization, expected, rtol=1e-5)


def test_time_probe_reads_the_dense_output(getkey):
    node, state = _mlp(getkey())
    y0 = jax.random.normal(getkey(), (3, 4))
    term = dfx.ODETerm(td.StatefulField(node.field, state))
    solver = td.StatefulSolver(dfx.Tsit5(), [td.TimeProbe(jnp.asarray(0.37))])
    sol = dfx.diffeqsolve(
        term, solver, 0.0, 1.0, 0.1, y0,
        stepsize_controller=dfx.PIDController(rtol=1e-5, atol=1e-5),
        saveat=dfx.SaveAt(ts=jnp.array([0.37]), solver_state=True),
    )  # fmt: skip
    y_t, found = sol.solver_state[2][0]
    assert bool(found)
    np.testing.assert_allclose(y_t, sol.ys[0], rtol=1e-6, atol=1e-7)


def test_global_accumulator_counts_accepted_steps_only(getkey):
    node, state = _mlp(
        getkey(), scale=4.0,
        stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-6),
    )  # fmt: skip
    y0 = jax.random.normal(getkey(), (6, 4))
    # float64: the error estimates at tol 1e-6 are differences of nearly equal stage
    # sums, which float32 leaves ~1e-3 relative noise on.
    with jax.enable_x64(True):
        to64 = lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x
        node, state, y0 = jax.tree.map(to64, (node, state, y0))
        _check_global_accumulator(node, state, y0)


def _check_global_accumulator(node, state, y0):
    acc = td.StepAccumulator("error", 1e-6, 1e-6)
    term = dfx.ODETerm(td.StatefulField(node.field, state))
    sol = dfx.diffeqsolve(
        term, td.StatefulSolver(dfx.Tsit5(), [acc]), 0.0, 1.0, 1.0, y0,
        stepsize_controller=node.stepsize_controller,
        saveat=dfx.SaveAt(t0=True, steps=True, solver_state=True), max_steps=64,
    )  # fmt: skip
    total, maximum, count = sol.solver_state[2][0]
    n_acc = int(sol.stats["num_accepted_steps"])
    assert int(sol.stats["num_rejected_steps"]) > 0 and int(count) == n_acc
    # Replay: E * dt of one step from every accepted step's start.
    ts, ys = np.asarray(sol.ts[: n_acc + 1]), sol.ys[: n_acc + 1]
    replay = []
    for i in range(n_acc):
        dt = ts[i + 1] - ts[i]
        fixed = td.NeuralODE(
            node.field, solver=dfx.Tsit5(), stepsize_controller=dfx.ConstantStepSize(),
            dt0=float(dt),
        )  # fmt: skip
        v, _ = td.local_step_estimate(fixed, state, ts[i], ys[i], rtol=1e-6, atol=1e-6)
        replay.append(float(v))
    np.testing.assert_allclose(total, sum(replay), rtol=1e-8)
    np.testing.assert_allclose(maximum, max(replay), rtol=1e-8)
    np.testing.assert_allclose(
        td.StepAccumulator.reduce((total, maximum, count), "mean"), total / n_acc
    )


@pytest.mark.parametrize(
    "reg",
    [
        td.LocalRegularizer(),
        td.LocalRegularizer(sampling="biased"),
        pytest.param(td.LocalRegularizer(kind="stiffness"), marks=pytest.mark.slow),
        td.GlobalRegularizer(),
        pytest.param(td.GlobalRegularizer(kind="stiffness"), marks=pytest.mark.slow),
        td.RNODE(),
        td.TayNODE(),
        pytest.param(td.STEER(0.5), marks=pytest.mark.slow),
    ],
    ids=lambda r: (
        f"{type(r).__name__}-{getattr(r, 'kind', '')}-{getattr(r, 'sampling', '')}"
    ),
)
def test_regularizers_with_tabn_compile_once(reg, getkey):
    """Regularization and TA-BN state in one model: one compilation for repeated
    steps with new keys; finite value and gradients; the TA-BN statistics are
    exactly those of the unregularized forward solve (the regularizer's extra
    evaluations never touch them) except for augmented/STEER solves."""
    node, state = _mlp(getkey(), norm="tabn")
    x = jax.random.normal(getkey(), (8, 4))

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(node, state, key):
        def loss(node):
            y, new_state, stats = node(x, state, regularizer=reg, key=key)
            return jnp.mean(y**2) + 0.1 * stats.regularization, (new_state, stats)

        return eqx.filter_value_and_grad(loss, has_aux=True)(node)

    for i in range(3):
        (value, (new_state, stats)), grads = step(
            node, td.clone_state(state), jax.random.PRNGKey(i)
        )
        assert np.isfinite(float(value))
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert int(stats.num_regularizer_evals) == (
        9 if isinstance(reg, td.LocalRegularizer) else 0
    )
    if isinstance(reg, (td.LocalRegularizer, td.GlobalRegularizer)):
        _, plain_state, _ = node(x, td.clone_state(state))
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(plain_state)):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_local_regularizer_nfe_is_counted_exactly(getkey):
    counter = CallCounter()

    class Counted(td.AbstractVectorField):
        inner: td.MLPField

        def __call__(self, t, y, state):
            counter(y)
            return self.inner(t, y, state)

    inner = td.MLPField(4, (8,), norm="none", key=getkey())
    node = td.NeuralODE(Counted(inner), solver=dfx.Tsit5())
    state = eqx.nn.State(node)
    _, _, stats = jax.jit(
        lambda x, k: node(x, state, regularizer=td.LocalRegularizer(), key=k)
    )(jnp.ones((3, 4)), jax.random.PRNGKey(0))
    total = int(stats.num_fn_evals) + int(stats.num_regularizer_evals)
    assert counter.count == total == 3 + 6 * int(stats.num_steps) + 9


def test_rnode_integrals_on_a_linear_field(getkey):
    """For dy/dt = y A: the Hutchinson term is |eps^T A^T|^2 per sample, constant in
    time, and the kinetic energy integral matches a fine quadrature."""
    a = jnp.array([[-0.5, 1.0], [-1.0, -0.2]])
    node, state = _linear_node(
        a, stepsize_controller=dfx.PIDController(rtol=1e-8, atol=1e-8)
    )
    x = jax.random.normal(getkey(), (3, 2))
    key = getkey()
    with jax.enable_x64(False):
        _, _, stats = node(x, state, regularizer=td.RNODE(1.0, 0.0), key=key)
        _, _, stats_j = node(x, state, regularizer=td.RNODE(0.0, 1.0), key=key)
    eps = jax.random.normal(key, x.shape)
    frob = jnp.mean(jnp.sum((eps @ a.T) ** 2, axis=1))
    np.testing.assert_allclose(stats_j.regularization, frob, rtol=1e-4)
    ts = np.linspace(0, 1, 4001)
    ys = np.stack(
        [np.asarray(x) @ np.asarray(jax.scipy.linalg.expm(t * a)) for t in ts]
    )
    ke = 0.5 * np.sum((ys @ np.asarray(a)) ** 2, axis=2).mean(1)
    np.testing.assert_allclose(stats.regularization, np.trapezoid(ke, ts), rtol=1e-4)
    # The integrals run to t1 also when the saved times end earlier.
    with jax.enable_x64(False):
        ys_half, _, stats_half = node(
            x, state, ts=jnp.array([0.0, 0.5]), regularizer=td.RNODE(1.0, 0.0), key=key
        )
    assert ys_half.shape == (2, 3, 2)
    np.testing.assert_allclose(
        ys_half[1], np.asarray(x) @ np.asarray(jax.scipy.linalg.expm(0.5 * a)),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    np.testing.assert_allclose(
        stats_half.regularization, stats.regularization, rtol=1e-6
    )


def test_total_derivatives_of_nonlinear_fields(getkey):
    """Against Taylor-mode (jet) on a tanh field, order 3; and on the default ReLU
    MLP (a custom derivative rule, where jet fails), y'' = df/dt + df/dy f."""
    from jax.experimental.jet import jet

    field = td.MLPField(3, (8,), norm="none", activation="tanh", key=getkey())
    state = eqx.nn.State(field)
    fn = lambda t, y: field(t, y, state)[0]
    y, t = jax.random.normal(getkey(), (4, 3)), jnp.asarray(0.3)
    d1, d2, d3 = td.total_derivatives(fn, t, y, 3)
    _, (j2,) = jet(fn, (t, y), ((jnp.ones_like(t),), (d1,)))
    _, (_, j3) = jet(fn, (t, y), ((jnp.ones_like(t), jnp.zeros_like(t)), (d1, d2)))
    np.testing.assert_allclose(d2, j2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d3, j3, rtol=1e-4, atol=1e-5)
    relu = td.MLPField(3, (8,), norm="none", key=getkey())
    fr = lambda t, y: relu(t, y, state)[0]
    r1, r2 = td.total_derivatives(fr, t, y, 2)
    np.testing.assert_allclose(r2, jax.jvp(fr, (t, y), (1.0, r1))[1], rtol=1e-6)
    node, nstate = eqx.nn.make_with_state(td.NeuralODE)(relu)
    _, _, stats = node(y, nstate, regularizer=td.TayNODE(order=3))
    assert np.isfinite(float(stats.regularization)) and stats.regularization > 0


def test_taynode_total_derivatives_and_integral(getkey):
    a = jnp.array([[-0.5, 1.0], [-1.0, -0.2]])
    y = jax.random.normal(getkey(), (3, 2))
    ds = td.total_derivatives(lambda t, y: y @ a, 0.0, y, 3)
    for k, d in enumerate(ds, start=1):
        np.testing.assert_allclose(
            d, y @ np.linalg.matrix_power(np.asarray(a), k), rtol=1e-5
        )
    # Time-dependent field: y' = t y -> y'' = y + t^2 y.
    d = td.total_derivatives(lambda t, y: t * y, 0.5, y, 2)
    np.testing.assert_allclose(d[1], y * (1 + 0.25), rtol=1e-6)
    node, state = _linear_node(
        a, stepsize_controller=dfx.PIDController(rtol=1e-8, atol=1e-8)
    )
    _, _, stats = node(y, state, regularizer=td.TayNODE(order=2))
    ts = np.linspace(0, 1, 4001)
    ys = np.stack(
        [np.asarray(y) @ np.asarray(jax.scipy.linalg.expm(t * a)) for t in ts]
    )
    integrand = np.sum((ys @ np.linalg.matrix_power(np.asarray(a), 2)) ** 2, 2).mean(1)
    np.testing.assert_allclose(
        stats.regularization, np.trapezoid(integrand, ts), rtol=1e-4
    )


def test_steer_randomises_the_end_time(getkey):
    a = jnp.array([[-1.0, 0.0], [0.0, -1.0]])
    node, state = _linear_node(
        a, stepsize_controller=dfx.PIDController(rtol=1e-8, atol=1e-8)
    )
    x = jnp.ones((1, 2))
    ends = []
    for i in range(20):
        y, _, stats = node(
            x, state, regularizer=td.STEER(0.3), key=jax.random.PRNGKey(i)
        )
        ends.append(-float(jnp.log(y[0, 0])))  # y = exp(-T)
        assert float(stats.regularization) == 0.0
    ends = np.array(ends)
    assert ends.min() >= 0.7 - 1e-4 and ends.max() <= 1.3 + 1e-4 and ends.std() > 0.05
    with pytest.raises(ValueError, match="smaller than t1 - t0"):
        node(x, state, regularizer=td.STEER(1.0), key=getkey())


def test_regularization_schedule():
    s = td.regularization_schedule(100.0, 1.0, 10)
    np.testing.assert_allclose(
        [s(0), s(5), s(10), s(20)], [100.0, 10.0, 1.0, 1.0], rtol=1e-5
    )
    assert float(td.regularization_schedule(0.5)(1000)) == 0.5
    with pytest.raises(ValueError, match="num_steps"):
        td.regularization_schedule(1.0, 0.1)


def test_regularizer_errors(getkey):
    node, state = _mlp(getkey())
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="pass `key=`"):
        node(x, state, regularizer=td.LocalRegularizer())
    with pytest.raises(ValueError, match="inference mode"):
        eqx.nn.inference_mode(node)(
            x, state, regularizer=td.GlobalRegularizer(), key=getkey()
        )
    back, bstate = _mlp(getkey(), adjoint=dfx.BacksolveAdjoint())
    with pytest.raises(ValueError, match="BacksolveAdjoint"):
        back(x, bstate, regularizer=td.GlobalRegularizer())
    with pytest.raises(ValueError, match="`kind`"):
        td.LocalRegularizer(kind="curvature")
    with pytest.raises(ValueError, match="`sampling`"):
        td.LocalRegularizer(sampling="importance")
    with pytest.raises(ValueError, match="`reduce`"):
        td.GlobalRegularizer(reduce="median")
    bosh, bstate = eqx.nn.make_with_state(td.NeuralODE)(
        td.MLPField(4, (8,), norm="none", key=getkey()), solver=dfx.Bosh3()
    )
    with pytest.raises(ValueError, match="last two stages"):
        bosh(x, bstate, regularizer=td.LocalRegularizer(kind="stiffness"), key=getkey())
    with pytest.raises(TypeError, match="AbstractRegularizer"):
        node(x, state, regularizer="local", key=getkey())


def test_local_regularizer_works_with_backsolve(getkey):
    node, state = _mlp(getkey(), adjoint=dfx.BacksolveAdjoint())
    x = jax.random.normal(getkey(), (4, 4))

    def loss(node):
        _, _, stats = node(x, state, regularizer=td.LocalRegularizer(), key=getkey())
        return stats.regularization

    g = eqx.filter_grad(loss)(node)
    assert float(jnp.abs(g.field.layers[0].weight).max()) > 0
