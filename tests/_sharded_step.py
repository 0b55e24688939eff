"""Run by tests/test_sharding.py in a subprocess with 4 host devices: one training
step of a classifier on 1 device and data-parallel on 4, same global batch."""

import json
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import tadiffeq as td


jax.config.update("jax_enable_x64", True)  # so rounding cannot hide a real difference
assert jax.device_count() == 4, jax.devices()


def build(key):
    k1, k2 = jax.random.split(key)
    field = td.MLPField(36, (16,), norm=sys.argv[1], key=k1)
    return td.UnmixedClassifier(td.NeuralODE(field), (6, 6, 1), 3, key=k2)


def f64(tree):
    return jax.tree.map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree
    )


model, state = f64(eqx.nn.make_with_state(build)(jax.random.PRNGKey(0)))
optimizer = optax.adamw(1e-2)
opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
x = jax.random.normal(jax.random.PRNGKey(1), (16, 6, 6, 1), jnp.float64)
y = jnp.arange(16) % 3


@eqx.filter_jit
def step(model, opt_state, state, x, y):
    def loss_fn(model):
        logits, new_state, stats = model(x, state, key=jax.random.PRNGKey(2))
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (new_state, stats.num_fn_evals)

    (loss, (state, nfe)), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
        model
    )
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), state, grads, loss, nfe


def max_diff(a, b):
    """Largest difference of any leaf, relative to its largest entry (or 1e-8)."""
    pairs = zip(
        jax.tree.leaves(eqx.filter(a, eqx.is_array)),
        jax.tree.leaves(eqx.filter(b, eqx.is_array)),
    )
    return max(
        float(np.max(np.abs(np.asarray(u, float) - v)) / (np.max(np.abs(u)) + 1e-8))
        for u, v in pairs
    )


one = step(model, opt_state, state, x, y)
mesh = td.data_parallel_mesh()
xs, ys = td.shard_batch((x, y), mesh)
four = step(*td.replicate((model, opt_state, state), mesh), xs, ys)
try:  # 6 samples on 4 devices
    td.shard_batch(np.zeros((6, 2)), mesh)
    indivisible_error = ""
except ValueError as e:
    indivisible_error = str(e)
result = dict(
    max_diff={
        k: max_diff(one[i], four[i]) for i, k in enumerate(["model", "state", "grads"])
    },
    nfe=[int(one[4]), int(four[4])],
    loss=[float(one[3]), float(four[3])],
    x_devices=len(xs.sharding.device_set),
    indivisible_error=indivisible_error,
    numpy_replicated=len(td.replicate(np.ones(3), mesh).sharding.device_set),
    x_shard_shape=list(xs.addressable_shards[0].data.shape),
)
print(json.dumps(result))
