"""Bad inputs to the public API: each gets a clear error that names the argument
(issue 22). One row per case; keep the table growing."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import tadiffeq as td


K = jax.random.PRNGKey(0)


def _node(**kw):
    return td.NeuralODE(td.MLPField(3, (4,), norm="none", key=K), **kw)


def _tabn_node():
    return td.NeuralODE(td.MLPField(3, (4,), norm="tabn", key=K))


def _tabn(hidden):
    """`(model, state)`: a TA-BN NeuralODE with these hidden widths."""
    field = lambda: td.NeuralODE(td.MLPField(3, hidden, norm="tabn", key=K))
    return eqx.nn.make_with_state(field)()


def _call(node, x, **kw):
    _, state = eqx.nn.make_with_state(lambda: node)()
    return node(x, state, **kw)


CONSTRUCTION = [
    # (what, call, error type, pattern the message must contain)
    ("NeuralODE dt0=inf", lambda: _node(dt0=float("inf")), ValueError, "`dt0`"),
    ("NeuralODE negative rtol",
     lambda: _node(stepsize_controller=dfx.PIDController(rtol=-1e-3, atol=1e-3)),
     ValueError, "`rtol` must be finite and >= 0"),
    ("NeuralODE rtol = atol = 0",
     lambda: _node(stepsize_controller=dfx.PIDController(rtol=0.0, atol=0.0)),
     ValueError, "both 0"),
    ("NeuralODE wrapped PID, negative atol",
     lambda: _node(stepsize_controller=dfx.ClipStepSizeController(
         dfx.PIDController(rtol=1e-3, atol=-1.0), step_ts=[0.5])),
     ValueError, "`atol` must be finite"),
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
