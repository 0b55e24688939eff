import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tadiffeq as td


def _mlp_node(norm, key, features=6, norm_kwargs=None, dtype=None, **kw):
    def build(key):
        field = td.MLPField(
            features, (16,), norm=norm, norm_kwargs=norm_kwargs, activation="tanh",
            dtype=dtype, key=key,
        )  # fmt: skip
        return td.NeuralODE(field, **kw)

    return eqx.nn.make_with_state(build)(key)


def _train_stats(node, state, key, steps=3):
    """A few training-mode solves, so the running statistics are not at init."""
    for i in range(steps):
        x = jax.random.normal(jax.random.fold_in(key, i), (32, node.field.features))
        _, state, _ = node(x + 0.5, state)
    return state


SLOW = pytest.mark.slow  # more of the same property; run with -m slow


@pytest.mark.parametrize(
    "norm",
    ["tabn", "popti", pytest.param("tabn_gaussian", marks=SLOW),
     pytest.param("none", marks=SLOW)],
)  # fmt: skip
def test_inference_output_is_independent_of_batch(norm, getkey):
    node, state = _mlp_node(norm, getkey())
    state = _train_stats(node, state, getkey())
    inf = eqx.filter_jit(eqx.nn.inference_mode(node))
    x = jax.random.normal(getkey(), (256, 6))
    y256, _, stats = inf(x, state)
    y2, _, _ = inf(x[:2], state)
    y1, _, _ = inf(x[:1], state)
    # float32: XLA:CPU may pick other matmul kernels for other batch sizes, and the
    # adaptive solve carries their rounding (~1e-6) into the outputs; in float64
    # the outputs are bit-identical. A batch-dependent normalisation moves them by
    # ~1e-1.
    np.testing.assert_allclose(y2, y256[:2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y1, y256[:1], rtol=1e-4, atol=1e-5)
    assert stats.num_steps.shape == (256,)  # each sample solved on its own


def test_minibatch_inference_depends_on_batch(getkey):
    node, state = _mlp_node("minibatch", getkey())
    assert not node.per_sample_inference
    inf = eqx.filter_jit(eqx.nn.inference_mode(node))
    x = jax.random.normal(getkey(), (256, 6))
    y256, _, stats = inf(x, state)
    y2, _, _ = inf(x[:2], state)
    assert stats.num_steps.shape == ()
    assert not np.allclose(y2, y256[:2], atol=1e-3)


def test_inference_leaves_state_unchanged(getkey):
    node, state = _mlp_node("tabn", getkey())
    state = _train_stats(node, state, getkey())
    before = jax.tree.leaves(td.clone_state(state))
    _, after, _ = eqx.nn.inference_mode(node)(jnp.ones((4, 6)), state)
    for a, b in zip(before, jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)


def test_training_updates_state_and_is_deterministic(getkey):
    node, state = _mlp_node("tabn", getkey())
    x = jax.random.normal(getkey(), (8, 6))
    f = eqx.filter_jit(node)
    y_a, s_a, st_a = f(x, td.clone_state(state))
    y_b, s_b, _ = f(x, td.clone_state(state))
    np.testing.assert_array_equal(y_a, y_b)
    rm, _ = s_a.get(node.field.norms[0].state_index)
    assert np.any(np.asarray(rm) != 0)
    np.testing.assert_array_equal(rm, s_b.get(node.field.norms[0].state_index)[0])
    assert int(st_a.num_fn_evals) == 3 + 6 * int(st_a.num_steps)


def test_compiles_once_per_input_shape(getkey):
    node, state = _mlp_node("tabn", getkey())

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def train(node, x, state):
        return node(x, state)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def evaluate(node, x, state):
        return eqx.nn.inference_mode(node)(x, state)

    x = jax.random.normal(getkey(), (8, 6))
    for _ in range(3):
        _, state, _ = train(node, x, state)
        evaluate(node, x, state)
    # New parameter values (same structure) do not retrace.
    node2 = jax.tree.map(lambda a: a * 1.01 if eqx.is_inexact_array(a) else a, node)
    train(node2, x, state)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=2)
    def train2(node, x, state):
        return node(x, state)

    for b in (8, 8, 16, 16):
        _, state, _ = train2(node, jnp.ones((b, 6)), state)


def test_max_steps_is_a_clear_error(getkey):
    node, state = _mlp_node(
        "tabn", getkey(), max_steps=2,
        stepsize_controller=dfx.PIDController(rtol=1e-8, atol=1e-8),
    )  # fmt: skip
    with pytest.raises(Exception, match="maximum number of solver steps"):
        jax.block_until_ready(eqx.filter_jit(node)(jnp.ones((4, 6)), state))


def test_vmap_over_independent_batches(getkey):
    node, state = _mlp_node("tabn", getkey())
    xs = jax.random.normal(getkey(), (3, 8, 6))
    ys, states, stats = jax.vmap(node, in_axes=(0, None))(xs, state)
    assert stats.num_steps.shape == (3,)
    for i in range(3):
        y, s, _ = node(xs[i], td.clone_state(state))
        np.testing.assert_allclose(ys[i], y, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            states.get(node.field.norms[0].state_index)[0][i],
            s.get(node.field.norms[0].state_index)[0],
            rtol=1e-4, atol=1e-6,
        )  # fmt: skip


def test_vmap_with_jumps_updates_each_members_statistics_as_alone(getkey):
    # After a `jump_ts` jump the FSAL stage is re-evaluated. Under vmap the members
    # (scaled inputs: different step counts) jump at different steps: a member that
    # did not jump must not take the re-evaluation's statistics update (it did:
    # 0.02-0.05 off). float64, so the vmapped and lone solves take the same steps.
    with jax.enable_x64(True):
        pid = dfx.PIDController(rtol=1e-5, atol=1e-5)
        ctrl = dfx.ClipStepSizeController(pid, jump_ts=[0.05, 0.37, 0.61])
        node, state = _mlp_node(
            "tabn", getkey(), dtype=jnp.float64, stepsize_controller=ctrl
        )
        scales = jnp.array([0.1, 1.0, 4.0], jnp.float64)[:, None, None]
        xs = jax.random.normal(getkey(), (3, 8, 6), jnp.float64) * scales
        ys, states, stats = jax.vmap(node, in_axes=(0, None))(xs, state)
        assert len(set(stats.num_steps.tolist())) > 1  # they step differently
        for i in range(3):
            y, s, _ = node(xs[i], td.clone_state(state))
            np.testing.assert_allclose(ys[i], y, rtol=1e-12, atol=1e-14)
            # Every statistic and coverage buffer (the outputs use batch statistics).
            jax.tree.map(
                lambda batched, alone, i=i: np.testing.assert_allclose(
                    batched[i], alone, rtol=1e-12, atol=1e-14
                ),
                states,
                s,
            )


def _loss(node, state, x):
    y, _, _ = node(x, td.clone_state(state))
    return jnp.sum(jnp.sin(y))


def test_gradient_matches_finite_differences(getkey):
    """Fixed-step dopri5: the gradient of the discrete solve is exact, check it."""
    node, state = _mlp_node(
        "tabn", getkey(), stepsize_controller=dfx.ConstantStepSize(), dt0=0.125
    )
    # Perturb the TA-BN affine so that the time-dependent path is exercised.
    norm = node.field.norms[0]
    gamma = 1 + 0.3 * jax.random.normal(getkey(), norm.weight.shape)
    node = eqx.tree_at(lambda n: n.field.norms[0].weight, node, gamma)
    x = jax.random.normal(getkey(), (6, 6))
    grads = eqx.filter_grad(_loss)(node, state, x)
    for path, idx in [
        (lambda n: n.field.norms[0].weight, (40, 3)),
        (lambda n: n.field.layers[0].weight, (2, 5)),
        (lambda n: n.field.layers[1].bias, (1,)),
    ]:
        eps = 1e-2
        leaf = path(node)
        bump = jnp.zeros_like(leaf).at[idx].set(eps)
        up = _loss(eqx.tree_at(path, node, leaf + bump), state, x)
        down = _loss(eqx.tree_at(path, node, leaf - bump), state, x)
        fd = (up - down) / (2 * eps)
        np.testing.assert_allclose(path(grads)[idx], fd, rtol=2e-2, atol=1e-4)


@pytest.mark.heavy
@pytest.mark.parametrize("norm", ["tabn_gaussian", pytest.param("popti", marks=SLOW)])
def test_backsolve_and_checkpoint_adjoints_agree(norm, getkey):
    """Discretise-then-optimise (checkpointing) and optimise-then-discretise
    (backsolve) agree when the forward solve resolves the TA-BN grid. (With a grid
    finer than the solver's steps they differ on purpose for the grid affine: the
    discrete solve only reads the grid points next to its stage times, so its exact
    gradient is zero elsewhere, while the continuous adjoint integrates over all t.)"""
    key = getkey()
    ctrl = dfx.PIDController(rtol=1e-6, atol=1e-6)
    grid = dict(num_intervals=4)
    a, state = _mlp_node(norm, key, norm_kwargs=grid, stepsize_controller=ctrl)
    b, _ = _mlp_node(
        norm,
        key,
        norm_kwargs=grid,
        stepsize_controller=ctrl,
        adjoint=dfx.BacksolveAdjoint(),
    )
    x = jax.random.normal(getkey(), (6, 6))
    ga = eqx.filter_grad(_loss)(a, state, x)
    gb = eqx.filter_grad(_loss)(b, state, x)
    for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(u, v, rtol=2e-3, atol=2e-4)
    # Both return the updated statistics of the forward solve.
    _, sa, _ = a(x, td.clone_state(state))
    _, sb, _ = b(x, td.clone_state(state))
    for u, v in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_saving_at_times(getkey):
    node, state = _mlp_node("popti", getkey())
    x = jax.random.normal(getkey(), (5, 6))
    ts = jnp.array([0.0, 0.5, 1.0])
    ys, _, _ = node(x, td.clone_state(state), ts=ts)
    y1, _, _ = node(x, td.clone_state(state))
    assert ys.shape == (3, 5, 6)
    np.testing.assert_allclose(ys[0], x, atol=1e-6)
    np.testing.assert_allclose(ys[-1], y1, rtol=1e-5, atol=1e-6)
    inf = eqx.nn.inference_mode(node)
    ys_i, _, _ = inf(x, state, ts=ts)
    y1_i, _, _ = inf(x, state)
    assert ys_i.shape == (3, 5, 6)
    np.testing.assert_allclose(ys_i[-1], y1_i, rtol=1e-5, atol=1e-6)


def test_neural_ode_errors(getkey):
    field = td.MLPField(4, (8,), key=getkey())
    with pytest.raises(ValueError, match="t0 < t1"):
        td.NeuralODE(field, t0=1.0, t1=1.0)
    with pytest.raises(ValueError, match="time grid covers"):
        td.NeuralODE(field, t0=0.0, t1=2.0)
    with pytest.raises(ValueError, match="no error estimate"):
        td.NeuralODE(field, solver=dfx.Euler())
    with pytest.raises(ValueError, match="needs an explicit `dt0`"):
        td.NeuralODE(field, stepsize_controller=dfx.ConstantStepSize())
    with pytest.raises(ValueError, match=r"StepTo\(...\)` is not supported"):
        td.NeuralODE(field, stepsize_controller=dfx.StepTo(jnp.linspace(0, 1, 5)))
    with pytest.raises(ValueError, match="max_steps"):
        td.NeuralODE(field, max_steps=0)
    node, state = eqx.nn.make_with_state(td.NeuralODE)(field)
    with pytest.raises(TypeError, match="`x` must be a floating-point array"):
        node(jnp.ones((3, 4), jnp.int32), state)
    with pytest.raises(ValueError, match=r"shape \(batch, 4\)"):
        node(jnp.ones((3, 5)), state)


def test_serialisation_keeps_tabn_statistics(tmp_path, getkey):
    """The reference code loses TA-BN statistics on save; (model, state) round-trips
    through equinox's serialisation here."""
    node, state = _mlp_node("tabn", getkey())
    state = _train_stats(node, state, getkey())
    path = tmp_path / "model.eqx"
    eqx.tree_serialise_leaves(path, (node, state))
    fresh, fresh_state = _mlp_node("tabn", getkey())  # different init
    loaded, loaded_state = eqx.tree_deserialise_leaves(path, (fresh, fresh_state))
    x = jax.random.normal(getkey(), (4, 6))
    inf = eqx.nn.inference_mode
    a, _, _ = inf(node)(x, state)
    b, _, _ = inf(loaded)(x, loaded_state)
    np.testing.assert_array_equal(a, b)
    rm = loaded_state.get(loaded.field.norms[0].state_index)[0]
    assert np.any(np.asarray(rm) != 0)


def test_float64(getkey):
    with jax.enable_x64(True):
        field = td.MLPField(
            3, (8,), norm="tabn", norm_kwargs=dict(dtype=jnp.float64),
            dtype=jnp.float64, key=getkey(),
        )  # fmt: skip
        node, state = eqx.nn.make_with_state(td.NeuralODE)(
            field, stepsize_controller=dfx.PIDController(rtol=1e-9, atol=1e-9)
        )
        x = jax.random.normal(getkey(), (4, 3), dtype=jnp.float64)
        y, state, stats = node(x, state)
        assert y.dtype == jnp.float64
        assert state.get(node.field.norms[0].state_index)[0].dtype == jnp.float64
        assert int(stats.num_steps) > 5


@pytest.mark.heavy
def test_float32_state_stays_float32_with_x64_on(getkey):
    """With 64-bit types enabled (e.g. next to a float64 script), a float32 state is
    solved in float32: times, output, statistics and regularizer values."""
    with jax.enable_x64(True):
        build = lambda k: td.NeuralODE(td.MLPField(4, (8,), norm="tabn", key=k))
        node, state = eqx.nn.make_with_state(build)(getkey())
        x = jax.random.normal(getkey(), (6, 4), jnp.float32)
        y, new_state, stats = node(x, state)
        assert y.dtype == stats.regularization.dtype == jnp.float32
        assert {a.dtype for a in jax.tree.leaves(new_state)} == {jnp.dtype("float32")}
        ts = jnp.linspace(0.0, 1.0, 3)  # float64 times: the state decides
        assert node(x, state, ts=ts)[0].dtype == jnp.float32
        regs = (td.LocalRegularizer(), td.LocalRegularizer(sampling="biased"))
        for reg in (*regs, td.STEER(0.5), td.RNODE()):
            y, _, stats = node(x, state, regularizer=reg, key=getkey())
            assert y.dtype == stats.regularization.dtype == jnp.float32
        drift = td.MLPField(4, (8,), norm="none", activation="tanh", key=getkey())
        sde = td.NeuralSDE(drift, drift)
        y, _, stats = sde(x, eqx.nn.State(sde), key=getkey(), regularizer=regs[0])
        assert y.dtype == stats.regularization.dtype == jnp.float32
        # A float64 state is solved in float64.
        y64, _, _ = node(x.astype(jnp.float64), state)
        assert y64.dtype == jnp.float64


@pytest.mark.parametrize("norm", ["tabn", "popti"])
def test_nonfinite_batch_statistics_never_enter_the_state(norm, getkey):
    """A finite outlier whose square overflows float32 makes a batch variance inf; the
    default raises, `keep_previous` keeps the previous statistics and counts them."""
    x = jax.random.normal(getkey(), (16, 6)).at[0, 0].set(1e25)
    node, state = _mlp_node(norm, getkey())
    with pytest.raises(Exception, match="batch statistic .* was not finite"):
        node(x, td.clone_state(state))
    keep, state = _mlp_node(norm, getkey(), nonfinite_statistics="keep_previous")
    before = jax.tree.leaves(td.clone_state(state))
    _, after, stats = keep(x, td.clone_state(state))
    assert int(stats.num_nonfinite_statistics) > 0
    unchanged = 0
    for a, b in zip(jax.tree.leaves(after), before):
        assert np.all(np.isfinite(a))
        unchanged += int(np.sum(np.asarray(a) == np.asarray(b)))
    # The poisoned entries are back at their old values.
    assert unchanged >= int(stats.num_nonfinite_statistics)
    _, cleaned, clean = keep(x[1:], after)
    assert int(clean.num_nonfinite_statistics) == 0
    if norm == "tabn":
        # The outlier makes every channel of the first layer's variance inf at every
        # point the solve touched: those points keep their statistics and their
        # coverage (which a clean solve does lower).
        first = keep.field.norms[0]
        np.testing.assert_array_equal(
            first.coverage(after), first.coverage(td.clone_state(state))
        )
        assert np.any(first.coverage(cleaned) > first.coverage(after))
    with pytest.raises(ValueError, match="nonfinite_statistics"):
        _mlp_node(norm, getkey(), nonfinite_statistics="ignore")


def test_nan_input_with_a_fixed_step_solver_is_an_error(getkey):
    node, state = _mlp_node(
        "popti",
        getkey(),
        solver=dfx.Euler(),
        stepsize_controller=dfx.ConstantStepSize(),
        dt0=0.25,
    )
    x = jax.random.normal(getkey(), (8, 6)).at[3, 2].set(jnp.nan)
    # Named as the input's fault (before: every running statistic NaN, no error;
    # then: the statistics' error).
    with pytest.raises(Exception, match="`x` contains NaN or inf"):
        node(x, state)
