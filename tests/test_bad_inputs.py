"""Bad inputs to the public API: each gets a clear error that names the argument
(issue 22). One row per case; keep the table growing."""

import subprocess
import sys
import textwrap

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import tadiffeq as td
import tadiffeq.data as tdd
import tadiffeq.dynamics as tdy


K = jax.random.PRNGKey(0)


def _node(**kw):
    return td.NeuralODE(td.MLPField(3, (4,), norm="none", key=K), **kw)


def _tabn_node():
    return td.NeuralODE(td.MLPField(3, (4,), norm="tabn", key=K))


def _tabn(hidden):
    """`(model, state)`: a TA-BN NeuralODE with these hidden widths."""
    field = lambda: td.NeuralODE(td.MLPField(3, hidden, norm="tabn", key=K))
    return eqx.nn.make_with_state(field)()


def _latent(values, mask):
    """A small LatentODE's prediction for `values` observed where `mask` is 1."""
    model, state = eqx.nn.make_with_state(td.LatentODE)(3, 2, 4, key=K)
    out = model(jnp.linspace(0, 1, values.shape[1]), values, mask, state)
    return jax.block_until_ready(out[0])


def test_latent_ode_ignores_unobserved_nan():
    """PhysioNet exports mark missing values NaN: where the mask is 0 they are
    ignored (the prediction is that of zeros there), where it is 1 refused above."""
    values = jnp.ones((2, 3, 3))
    mask = jnp.ones_like(values).at[0, 1, 2].set(0.0)
    nan = _latent(values.at[0, 1, 2].set(jnp.nan), mask)
    zero = _latent(values.at[0, 1, 2].set(0.0), mask)
    assert jnp.all(jnp.isfinite(nan))
    assert jnp.array_equal(nan, zero)


def _call(node, x, **kw):
    _, state = eqx.nn.make_with_state(lambda: node)()
    return node(x, state, **kw)


CONSTRUCTION = [
    # (what, call, error type, pattern the message must contain)
    ("NeuralODE dt0=inf", lambda: _node(dt0=float("inf")), ValueError, "`dt0`"),
    ("NeuralODE negative rtol",
     lambda: _node(stepsize_controller=dfx.PIDController(rtol=-1e-3, atol=1e-3)),
     ValueError, "`rtol` must be a finite float >= 0"),
    ("NeuralODE rtol = atol = 0",
     lambda: _node(stepsize_controller=dfx.PIDController(rtol=0.0, atol=0.0)),
     ValueError, "both 0"),
    ("NeuralODE wrapped PID, negative atol",
     lambda: _node(stepsize_controller=dfx.ClipStepSizeController(
         dfx.PIDController(rtol=1e-3, atol=-1.0), step_ts=[0.5])),
     ValueError, "`atol` must be a finite float >= 0"),
    ("LocalRegularizer negative rtol", lambda: td.LocalRegularizer(rtol=-1.0),
     ValueError, "LocalRegularizer: `rtol`"),
    ("TABatchNorm int dtype", lambda: td.TABatchNorm(3, dtype=jnp.int32),
     TypeError, "`dtype` must be a floating-point dtype"),
    ("PopTIBatchNorm int dtype", lambda: td.PopTIBatchNorm(3, dtype=jnp.int32),
     TypeError, "`dtype`"),
    # (The suite's type-checking hook may answer first, with a TypeError naming it.)
    ("MLPField int hidden", lambda: td.MLPField(4, 8, key=K),
     (ValueError, TypeError), "hidden"),
    ("MLPField zero hidden width", lambda: td.MLPField(4, (0,), key=K),
     ValueError, "`hidden`"),
    ("MLPField zero features", lambda: td.MLPField(0, (4,), key=K),
     ValueError, "MLPField: `features`"),
    ("ConvField zero channels", lambda: td.ConvField(0, 4, key=K),
     ValueError, "ConvField: `channels`"),
    ("NeuralSDE negative brownian_tol",
     lambda: td.NeuralSDE(lambda t, y, s: (y, s), lambda t, y, s: (y, s),
                          brownian_tol=-1.0),
     ValueError, "`brownian_tol`"),
    ("NeuralSDE initial_step_order nan",
     lambda: td.NeuralSDE(lambda t, y, s: (y, s), lambda t, y, s: (y, s),
                          initial_step_order=float("nan")),
     ValueError, "`initial_step_order`"),
    ("NeuralODE nonfinite_statistics", lambda: _node(nonfinite_statistics="warn"),
     ValueError, "`nonfinite_statistics`"),
    ("UnmixedClassifier head_statistics",
     lambda: td.UnmixedClassifier(_node(), (2, 2, 1), 3, head_statistics="x", key=K),
     ValueError, "`head_statistics`"),
    ("Checkpointer keep=1.5", lambda: td.Checkpointer("/tmp/never", keep=1.5),
     (ValueError, TypeError), "keep"),
    # Found by benchmarks/probe_bad_inputs.py (docs/design.md, "Bad inputs"). A value
    # of the wrong type meets the suite's type-checking hook first (a TypeError naming
    # the parameter); the library's own check answers without it (the probe).
    ("LinearTimeGrid t0 as text", lambda: td.LinearTimeGrid("0.0", 1.0, 10),
     (ValueError, TypeError), "t0"),
    ("TABatchNorm channel_axis=0", lambda: td.TABatchNorm(3, channel_axis=0),
     ValueError, "TABatchNorm: `channel_axis=0` is the batch axis"),
    ("MiniBatchNorm channel_axis=1.5", lambda: td.MiniBatchNorm(3, channel_axis=1.5),
     (ValueError, TypeError), "channel_axis"),
    ("PopTIBatchNorm eps=inf", lambda: td.PopTIBatchNorm(3, eps=float("inf")),
     ValueError, "PopTIBatchNorm: `eps` must be a finite float > 0"),
    ("TABatchNorm momentum as text", lambda: td.TABatchNorm(3, momentum="0.1"),
     (ValueError, TypeError), "momentum"),
    ("RNODE negative weight", lambda: td.RNODE(kinetic_weight=-1.0),
     ValueError, "RNODE: `kinetic_weight`"),
    ("STEER b=inf", lambda: td.STEER(float("inf")), ValueError, "STEER: `b`"),
    ("StepAccumulator kind", lambda: td.StepAccumulator("bogus"),
     ValueError, "StepAccumulator: `kind` must be one of"),
    ("StepAccumulator rtol=nan", lambda: td.StepAccumulator("error", rtol=float("nan")),
     ValueError, "`rtol`"),
    ("HeavyBallField gamma=nan",
     lambda: td.HeavyBallField(td.MLPField(3, (4,), key=K), 3, gamma=float("nan")),
     ValueError, "HeavyBallField: `gamma`"),
    ("LatentODE init_logstd=inf",
     lambda: td.LatentODE(3, 2, 4, init_logstd=float("inf"), key=K),
     ValueError, "LatentODE: `init_logstd`"),
    ("UnmixedClassifier dropout as text",
     lambda: td.UnmixedClassifier(_node(), (2, 2, 1), 3, dropout="0.5", key=K),
     (ValueError, TypeError), "dropout"),
    ("regularization_schedule num_steps=2.5",
     lambda: td.regularization_schedule(1.0, 0.5, 2.5), (ValueError, TypeError),
     "num_steps"),
    ("affine_penalty weight=-1", lambda: td.affine_penalty(_node(), -1.0),
     ValueError, "affine_penalty: `weight`"),
    ("Checkpointer directory=3", lambda: td.Checkpointer(3), TypeError, "directory"),
    ("synthetic_digits num_train=0", lambda: tdd.synthetic_digits(0, 10),
     ValueError, "`num_train`"),
    ("ImageAugmentation flip_probability=1.5",
     lambda: tdd.ImageAugmentation(flip_probability=1.5),
     ValueError, "`flip_probability`"),
    ("mnist_offline_split num_train=0 (checked before reading)",
     lambda: tdd.mnist_offline_split("/nonexistent", num_train=0),
     ValueError, "`num_train`"),
    ("mnist_offline_split directory not a folder",
     lambda: tdd.mnist_offline_split("/nonexistent"),
     FileNotFoundError, "`directory`"),
    ("UNetField channels=0 (named, not TimeConv2d's in_channels)",
     lambda: td.UNetField(0, (4, 8), key=K), ValueError, "UNetField: `channels`"),
    ("DiffraxStep max_steps=0", lambda: tdy.DiffraxStep(max_steps=0),
     ValueError, "`max_steps`"),
    ("Lorenz63 time_scale=0", lambda: tdy.Lorenz63(time_scale=0.0),
     ValueError, "Lorenz63: `time_scale`"),
    ("generate_lorenz63 sigma as text", lambda: tdd.generate_lorenz63(20, sigma="10"),
     (ValueError, TypeError), "sigma"),
]  # fmt: skip


@pytest.mark.parametrize(
    "what, call, error, pattern", CONSTRUCTION, ids=[c[0] for c in CONSTRUCTION]
)
def test_bad_construction(what, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


x3 = jnp.ones((2, 3))
CALLS = [
    ("float16 input", lambda: _call(_node(), x3.astype(jnp.float16)),
     TypeError, "float16.*cast `x`"),
    ("bfloat16 input", lambda: _call(_node(), x3.astype(jnp.bfloat16)),
     TypeError, "bfloat16"),
    ("decreasing ts", lambda: _call(_node(), x3, ts=jnp.array([0.8, 0.2])),
     Exception, "`ts` must be non-decreasing"),
    ("NaN in ts", lambda: _call(_node(), x3, ts=jnp.array([0.2, jnp.nan])),
     Exception, "`ts` must be non-decreasing"),
    ("ts outside [t0, t1]", lambda: _call(_node(), x3, ts=jnp.array([0.5, 2.0])),
     Exception, r"in \[t0, t1\]"),
    ("state None", lambda: _node()(x3, None), TypeError, "state"),
    ("state of a model without the layer",
     lambda: eqx.nn.make_with_state(_tabn_node)()[0](
         x3, eqx.nn.make_with_state(_node)()[1]),
     ValueError,
     r"NeuralODE: `state` holds no entry for 'NeuralODE.field.norms\[0\].state_index'"),
    # A deeper model's state holds every entry a shallower one looks up (equinox names
    # entries by path): its extra layers once went unnoticed and the output was off.
    ("state of a deeper model", lambda: _tabn((4,))[0](x3, _tabn((4, 4))[1]),
     ValueError, r"holds 6 arrays, but this model's stateful layers hold 3"),
    ("state of a wider model", lambda: _tabn((4,))[0](x3, _tabn((5,))[1]),
     ValueError, r"entry for 'NeuralODE.field.norms\[0\].state_index' has shapes "
     r"\[\(101, 5\), \(101, 5\)\], but the layer holds \[\(101, 4\)"),
    ("NeuralSDE without a key",
     lambda: td.NeuralSDE(lambda t, y, s: (-y, s), lambda t, y, s: (y, s))(
         x3, eqx.nn.State(lambda: None), key=None),
     (ValueError, TypeError), r"Brownian motion from `key`|parameter 'key'"),
    ("LatentODE NaN at an observed value",
     lambda: _latent(jnp.ones((2, 3, 3)).at[0, 0, 0].set(jnp.nan), jnp.ones((2, 3, 3))),
     Exception, "LatentODE: `values` holds NaN or inf at an observed entry"),
    ("TA-BN at t = NaN",
     lambda: eqx.nn.make_with_state(td.TABatchNorm)(3)[0](
         jnp.nan, x3, eqx.nn.make_with_state(td.TABatchNorm)(3)[1]),
     Exception, "`t` is NaN"),
]  # fmt: skip


@pytest.mark.parametrize("what, call, error, pattern", CALLS, ids=[c[0] for c in CALLS])
def test_bad_call(what, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


class _Cubic(td.AbstractVectorField):
    """dy/dt = y**3: from y0 = 10 it blows up at t = 1 / 200."""

    def __call__(self, t, y, state):
        return y**3, state


class _NaNField(td.AbstractVectorField):
    def __call__(self, t, y, state):
        return y * jnp.nan, state


@pytest.mark.parametrize(
    "field, x, match",
    [
        (_Cubic(), jnp.full((2, 3), 10.0), "blows up before t1"),
        (_Cubic(), jnp.array([[1.0, jnp.nan, 0.0]]), "`x` contains NaN or inf"),
        (_NaNField(), jnp.ones((2, 3)), "returns NaN/inf near the state reached"),
    ],
    ids=["blow-up", "nan input", "nan field"],
)
def test_failed_solves_say_why(field, x, match):
    """A failed solve names its cause instead of diffrax's one 'Try increasing
    max_steps': a NaN input, a blow-up (raising max_steps changes nothing), a field
    whose every step is rejected; the same for the NeuralSDE."""
    for max_steps in (64, 4096):
        node, state = eqx.nn.make_with_state(td.NeuralODE)(field, max_steps=max_steps)
        with pytest.raises(Exception, match=match):
            jax.block_until_ready(eqx.filter_jit(node)(x, state))
    zero = td.MLPField(3, (), norm="none", key=jax.random.key(0))
    zero = eqx.tree_at(lambda f: f.layers[0].weight, zero, jnp.zeros((4, 3)))
    sde = td.NeuralSDE(field, zero, max_steps=1024)
    with pytest.raises(Exception, match=match):
        jax.block_until_ready(sde(x, eqx.nn.State(sde), key=jax.random.key(1)))


class _Rotation(td.AbstractVectorField):
    """dy/dt = y A with A = [[0, 50], [-50, 0]]: |y| stays constant, |f| = 50 |y|."""

    def __call__(self, t, y, state):
        return 50.0 * jnp.stack([-y[..., 1], y[..., 0]], axis=-1), state


def test_step_budget_with_a_regularizers_integrals_is_not_called_a_blow_up():
    """RNODE's kinetic integral (int |f|^2 dt = 2,500 |y|^2 here) rides in the
    solve's state and grows by design: a solve that only ran out of steps at a
    bounded model state is the step budget, not a blow-up."""
    node, state = eqx.nn.make_with_state(td.NeuralODE)(_Rotation(), max_steps=4)
    x = jnp.ones((2, 2))
    with pytest.raises(Exception, match="at a finite, bounded state"):
        jax.block_until_ready(
            node(x, state, regularizer=td.RNODE(), key=jax.random.key(0))
        )


def test_scalar_arrays_count_as_numbers():
    """The argument checks refuse strings, NaN and infinities, not numbers that come
    as 0-d NumPy or JAX arrays; traced values (a model built under vmap) pass
    unchecked; arrays of another shape are refused naming the argument. Run in a
    fresh interpreter: the suite's type-checking hook refuses arrays where the
    annotations say float, before the library's checks are reached."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np, tadiffeq as td
        field = td.MLPField(3, (4,), norm="none", key=jax.random.key(0))
        assert td.NeuralODE(field, t1=jnp.array(2.0)).t1 == 2.0
        assert td.NeuralODE(field, dt0=np.float32(0.1)).dt0 == np.float32(0.1)
        make = lambda g: td.HeavyBallField(field, 3, gamma=g).gamma
        assert jax.vmap(make)(jnp.arange(3.0)).shape == (3,)
        try:
            td.NeuralODE(field, t1=jnp.ones(2))
        except ValueError as e:
            assert "`t1` must be a scalar, got shape (2,)" in str(e), e
        else:
            raise AssertionError("an array of shape (2,) was accepted as t1")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_state_checks_refuse_nothing_legitimate():
    """A NeuralODE inside a user's model whose class shares its name, beside another
    stateful layer, takes the whole model's state (only the model the state was made
    for counts arrays); an SDE solver without an error estimate is refused also with
    a constant step size (it would silently solve in the Ito sense)."""

    class NeuralODE(eqx.Module):  # the user's own class, named like tadiffeq's
        node: td.NeuralODE
        extra: td.TABatchNorm

        def __init__(self):
            self.node = td.NeuralODE(td.MLPField(3, (4,), norm="tabn", key=K))
            self.extra = td.TABatchNorm(3)

    outer, state = eqx.nn.make_with_state(NeuralODE)()
    _, new_state, _ = outer.node(x3, state)  # more arrays than the node's: fine
    outer.node(x3, new_state)
    with pytest.raises(ValueError, match="no error estimate"):
        td.NeuralSDE(
            lambda t, y, s: (y, s), lambda t, y, s: (y, s), solver=dfx.Euler(),
            stepsize_controller=dfx.ConstantStepSize(), dt0=0.1,
        )  # fmt: skip
