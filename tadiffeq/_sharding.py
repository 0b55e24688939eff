"""Data parallelism: a one-axis device mesh, the batch sharded along it, everything
else replicated.

Nothing else is needed for correctness: a Neural ODE's batch is one system (its
state is `(batch, ...)`), so under `jax.jit` with the batch sharded, the batch
statistics of every normalisation layer (TA-BN included) and the solver's error norm
become cross-device reductions by themselves, and every device takes the same steps.
One training step on N devices computes what it computes on one device for the same
global batch, up to the order of floating-point sums.
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree


BATCH_AXIS = "batch"


def data_parallel_mesh(
    devices: (
        Sequence[jax.Device] | None  # pyright: ignore[reportInvalidTypeForm]
    ) = None,
) -> Mesh:
    """A one-dimensional mesh named `"batch"` over `devices` (default: every device
    of every process, `jax.devices()`)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("`devices` must not be empty.")
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every array leaf of `tree` (a model, optimiser state, `eqx.nn.State`; JAX
    and NumPy arrays) replicated on all devices of `mesh`; other leaves untouched."""
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(x):
        is_array = isinstance(x, (jax.Array, np.ndarray))
        return jax.device_put(x, sharding) if is_array else x

    return jax.tree.map(put, tree)


def shard_batch(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every array leaf of `tree` split along its leading (batch) axis over `mesh`.

    With several processes (multi-host), each process passes its own slice of the
    global batch and gets back the global array. The per-process batch size must be
    divisible by the number of local devices.
    """
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    local = len(mesh.local_devices)

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim == 0 or x.shape[0] % local:
            raise ValueError(
                f"shard_batch: the leading (batch) axis of every leaf must be "
                f"divisible by the {local} local devices of the mesh, got an array "
                f"of shape {tuple(x.shape)}."
            )
        if jax.process_count() > 1:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    return jax.tree.map(put, tree)
