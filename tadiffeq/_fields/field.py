"""The interface of a stateful vector field."""

import abc

import equinox as eqx
from jaxtyping import Array, ArrayLike, PyTree


class AbstractVectorField(eqx.Module):
    """A vector field `dy, state = field(t, y, state)` on a batched state `y`.

    `y` carries the batch on its leading axis (the whole batch is one ODE system);
    `state` is the `eqx.nn.State` of the field's normalisation layers. A field also
    says how a model input becomes the ODE's initial state (`lift`, default identity)
    and which part of the state is the output (`readout`, default identity), so that
    augmented and higher-order variants plug into [`tadiffeq.NeuralODE`][] unchanged.
    """

    @abc.abstractmethod
    def __call__(
        self, t: ArrayLike, y: PyTree[Array], state: eqx.nn.State
    ) -> tuple[PyTree[Array], eqx.nn.State]:
        """Returns `(dy/dt, state)`; `dy/dt` has the structure and shape of `y`."""

    def lift(self, x: PyTree[Array]) -> PyTree[Array]:
        """Maps a batched input to the initial state y(t0)."""
        return x

    def readout(self, y: PyTree[Array]) -> PyTree[Array]:
        """Maps the state (any leading axes) to the output."""
        return y
