"""Small fields and layers shared by the tests."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import tadiffeq as td


class Recorder(eqx.Module):
    """Records (t, batch mean, unbiased batch variance) of its input at every call
    in training mode, into a fixed-size buffer in the state."""

    index: eqx.nn.StateIndex

    def __init__(self, channels: int, capacity: int = 1024):
        self.index = eqx.nn.StateIndex(
            (
                jnp.array(0),
                jnp.zeros(capacity),
                jnp.zeros((capacity, channels)),
                jnp.zeros((capacity, channels)),
            )
        )

    def __call__(self, t, x, state):
        n, ts, ms, vs = state.get(self.index)
        mean = jnp.mean(x, axis=0)
        var = jnp.var(x, axis=0, ddof=1)
        new = (n + 1, ts.at[n].set(t), ms.at[n].set(mean), vs.at[n].set(var))
        return x, state.set(self.index, new)


class RecordedField(td.AbstractVectorField):
    """dy/dt = W2 tanh(norm(W1 [y, t])) with a Recorder in front of the norm."""

    lin1: td.TimeLinear
    lin2: td.TimeLinear
    recorder: Recorder
    norm: td.AbstractNorm
    scale: float = eqx.field(static=True)

    def __init__(self, features, width, norm, *, key, scale=1.0):
        k1, k2 = jax.random.split(key)
        self.lin1 = td.TimeLinear(features, width, key=k1)
        self.lin2 = td.TimeLinear(width, features, key=k2)
        self.recorder = Recorder(width)
        self.norm = norm
        self.scale = scale

    def __call__(self, t, y, state):
        h = self.lin1(t, y)
        h, state = self.recorder(t, h, state)
        h, state = self.norm(t, h, state)
        return self.scale * self.lin2(t, jnp.tanh(h)), state


def replay_tabn(norm: td.TABatchNorm, ts, means, variances):
    """The TA-BN running buffers after applying the recorded evaluations in order."""
    rm = np.zeros((norm.grid.num_points, norm.num_features))
    rv = np.ones_like(rm)
    for t, m, v in zip(ts, means, variances):
        w = np.asarray(norm.grid.weights(t), dtype=np.float64)[:, None]
        rate = norm.momentum * w
        rm = rm + rate * (m - rm)
        rv = rv + rate * (v - rv)
    return rm, rv


class CallCounter:
    """Counts vector-field evaluations at run time through a host callback."""

    def __init__(self):
        self.count = 0

    def _inc(self, *_):
        self.count += 1

    def __call__(self, y):
        jax.debug.callback(self._inc, y[0, 0])


def counted_recorded_field(counter: CallCounter) -> type[RecordedField]:
    """A `RecordedField` subclass whose every evaluation bumps `counter`."""

    class Counted(RecordedField):
        def __call__(self, t, y, state):
            counter(y)
            return super().__call__(t, y, state)

    return Counted
