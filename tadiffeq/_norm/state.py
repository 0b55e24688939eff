"""Checking that an `eqx.nn.State` belongs to a model."""

import equinox as eqx
import jax

from .base import norm_layers
from .batchnorm import AbstractBatchNorm


def check_state(owner: str, model, state, *, whole: bool | None = None) -> None:
    """Trace-time errors for a `state` that is not `model`'s, naming `state`: not an
    `eqx.nn.State`; without an entry for one of the model's stateful layers; a
    BatchNorm entry whose shapes differ from the layer's (another width or grid);
    and, with `whole=True` (`model` is everything the state belongs to), more arrays
    than the model's layers hold (the state of a deeper model, whose extra layers'
    entries would otherwise go unnoticed). `whole=None`: true when `model` was the
    model given to `eqx.nn.make_with_state` (equinox names every entry by its path
    from that model: each marker is then `model`'s class name followed by the
    index's own path in `model`; a model without stateful layers checks nothing).
    Equinox's own error for a state used twice passes through unchanged."""
    if not isinstance(state, eqx.nn.State):
        raise TypeError(
            f"{owner}: `state` must be the model's eqx.nn.State (from "
            f"eqx.nn.make_with_state), got {type(state).__name__}."
        )
    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)
    leaves = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_index)[0]
    located = [(path, i) for path, i in leaves if is_index(i)]
    indices = [i for _, i in located]
    name = lambda i: i.marker if isinstance(i.marker, str) else "a stateful layer"
    held = 0
    for index in indices:
        try:
            held += len(jax.tree.leaves(state.get(index)))
        except KeyError as e:  # an index this state does not hold
            coverage = any(
                isinstance(layer, AbstractBatchNorm) and index is layer.coverage_index
                for layer in norm_layers(model)
            )
            raise ValueError(
                f"{owner}: `state` holds no entry for {name(index)!r}: it is the "
                "state of another model; build the model and its state together with "
                "eqx.nn.make_with_state."
                + (
                    " That entry is a TA-BN layer's coverage: a state made for "
                    "layers built with `coverage_aware=False` (or by tadiffeq 0.1) "
                    "has none."
                    if coverage
                    else ""
                )
            ) from e
    for layer in norm_layers(model):
        if not isinstance(layer, AbstractBatchNorm):
            continue
        for index, want in layer.state_shapes():
            got = [a.shape for a in jax.tree.leaves(state.get(index))]
            if got != want:
                raise ValueError(
                    f"{owner}: `state`'s entry for {name(index)!r} has shapes {got}, "
                    f"but the layer holds {want}: it is the state of another model."
                )
    if whole is None:
        root = type(model).__name__
        whole = bool(located) and all(
            i.marker == root + jax.tree_util.keystr(path) for path, i in located
        )
    total = len(jax.tree.leaves(state))
    if whole and total != held:
        raise ValueError(
            f"{owner}: `state` holds {total} arrays, but this model's stateful "
            f"layers hold {held}: it is the state of another (larger) model."
        )
