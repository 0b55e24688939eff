"""The jaxtyping aliases shared by tadiffeq's signatures (as diffrax's
`_custom_types.py`): one name per idea, so a signature says what it takes."""

from jaxtyping import Array, ArrayLike, Float, Int, PyTree, Shaped


#: An ODE state: a pytree of arrays (for the models: `(batch, ...)` leaves).
Y = PyTree[Array]
#: Inputs with a leading batch axis on every leaf.
BatchedY = PyTree[Shaped[Array, "batch ..."]]
#: A scalar float array (a loss, a regularization value, an error estimate).
Scalar = Float[Array, ""]
#: A time or a step size: a Python float or a scalar array (in time units).
RealScalarLike = float | Float[ArrayLike, ""]
#: A count of evaluations or steps: a Python int or a scalar int array.
Count = Int[Array, ""] | int
