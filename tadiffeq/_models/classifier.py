"""The "unmixed" image classifier: one Neural ODE over the image, then a linear head."""

import math
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Shaped

from .._misc import check_float
from .._neural_de import SolveStats
from .._neural_ode import NeuralODE
from .._norm.popti import PopTIBatchNorm
from .._norm.state import check_state


class UnmixedClassifier(eqx.Module):
    """image -> one Neural ODE over the image itself -> BatchNorm -> dropout -> linear.

    The "unmixed" model of Zheng et al. (2024): no convolutional stem or pooling
    before or after the ODE, so all the capacity is in the vector field. The head's
    BatchNorm is a standard BN (running statistics, time independent), whatever
    normalisation the vector field uses: by default per channel of the ODE output
    (the last axis of the field's readout), as the authors' `BatchNorm2d(C)` after
    the ODE; `head_statistics="features"` normalises every flattened feature on its
    own instead (tadiffeq 0.1). For an MLP field the two are the same.

    **Arguments:**

    - `ode`: the [`tadiffeq.NeuralODE`][] (its field's `lift` maps the images to the
      ODE state: identity for conv fields, flattening for MLP fields).
    - `image_shape`: `(height, width, channels)` of one image.
    - `num_classes`: number of classes.
    - `dropout`: dropout rate before the linear layer (default `0.5`).
    - `head_statistics`: `"channels"` (default) or `"features"`, above.
    - `channels_first`: the images come as `(batch, channels, height, width)`
      (PyTorch layout) instead of the default `(batch, height, width, channels)`;
      they are transposed internally.
    - `key`: a `jax.random` key.
    - `dtype`: dtype of the head's parameters and statistics (default float32).

    Called as `logits, state, stats = model(images, state, key=key)` (the key drives
    dropout and is unused in inference mode).
    """

    ode: NeuralODE
    head_norm: PopTIBatchNorm
    dropout: eqx.nn.Dropout
    linear: eqx.nn.Linear
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    channels_first: bool = eqx.field(static=True)
    head_statistics: str = eqx.field(static=True)

    def __init__(
        self,
        ode: NeuralODE,
        image_shape: tuple[int, int, int],
        num_classes: int,
        *,
        dropout: float = 0.5,
        head_statistics: str = "channels",
        channels_first: bool = False,
        key: PRNGKeyArray,
        dtype=None,
    ):
        if not isinstance(ode, NeuralODE):
            raise TypeError(f"`ode` must be a NeuralODE, got {type(ode).__name__}.")
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3:
            raise ValueError(
                f"`image_shape` must be (height, width, channels), got {shape}."
            )
        image_shape = shape
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, int)
            or num_classes < 2
        ):
            raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}.")
        check_float(
            "dropout", dropout, owner="UnmixedClassifier", low=0.0, high=1.0,
            high_open=True,
        )  # fmt: skip
        # The same `lift` and `readout` lookups as NeuralODE's.
        lift = getattr(ode.field, "lift", None)
        x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
        y = jax.eval_shape(lambda x: x if lift is None else lift(x), x)
        if head_statistics not in ("channels", "features"):
            raise ValueError(
                "`head_statistics` must be 'channels' or 'features', got "
                f"{head_statistics!r}."
            )
        readout = getattr(ode.field, "readout", lambda y: y)
        out_shape = jax.eval_shape(readout, y).shape[1:]
        features = math.prod(out_shape)
        self.ode = ode
        self.head_norm = PopTIBatchNorm(
            out_shape[-1] if head_statistics == "channels" else features, dtype=dtype
        )
        self.head_statistics = head_statistics
        self.dropout = eqx.nn.Dropout(dropout)
        self.linear = eqx.nn.Linear(features, num_classes, key=key, dtype=dtype)
        self.image_shape = image_shape
        self.channels_first = channels_first

    @property
    def num_features(self) -> int:
        """The size of the flattened ODE output fed to the head."""
        return cast(int, self.linear.in_features)  # built with an int, not "scalar"

    def __call__(
        self,
        images: Shaped[Array, "batch *image"],
        state: eqx.nn.State,
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "batch classes"], eqx.nn.State, SolveStats]:
        h, w, c = self.image_shape
        expected = (c, h, w) if self.channels_first else (h, w, c)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            layout = "(batch, C, H, W)" if self.channels_first else "(batch, H, W, C)"
            raise ValueError(
                f"UnmixedClassifier: `images` must have shape {layout} = "
                f"(batch, {', '.join(map(str, expected))}), got {images.shape}."
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise TypeError(
                f"UnmixedClassifier: `images` must be floating point, got "
                f"{images.dtype}; convert and normalise them first."
            )
        check_state("UnmixedClassifier", self, state)
        x = jnp.transpose(images, (0, 2, 3, 1)) if self.channels_first else images
        # The ODE's key (for `first_step_jitter`) is folded off the dropout's, which
        # stays `key` itself.
        ode_key = None if key is None else jax.random.fold_in(key, 1)
        y, state, stats = self.ode(x, state, key=ode_key)
        if self.head_statistics == "features":
            y = y.reshape(y.shape[0], -1)
        y, state = self.head_norm(0.0, y, state)
        feats = self.dropout(y.reshape(y.shape[0], -1), key=key)
        logits = feats @ self.linear.weight.T.astype(feats.dtype)
        if self.linear.bias is not None:
            logits = logits + self.linear.bias.astype(feats.dtype)
        return logits, state, stats


def count_parameters(model, *, grid_affine: bool = True) -> int:
    """Number of trainable parameters (inexact array elements) in `model`.

    With `grid_affine=False`, each TA-BN layer's per-grid-point affine `(M + 1, C)`
    counts as one time-independent `(C,)` affine (what a standard BN would have).
    """
    from .._norm.tabn import TABatchNorm

    total = 0
    is_tabn = lambda x: isinstance(x, TABatchNorm)
    is_special = lambda x: is_tabn(x) or isinstance(x, eqx.nn.StateIndex)
    for leaf in jax.tree_util.tree_leaves(
        eqx.filter(model, eqx.is_inexact_array), is_leaf=is_special
    ):
        if isinstance(leaf, eqx.nn.StateIndex):
            continue  # Running statistics are not parameters.
        if is_tabn(leaf):
            for p in (leaf.weight, leaf.bias):
                if p is not None:
                    total += p.size if grid_affine else p.shape[-1]
        else:
            total += leaf.size
    return total
