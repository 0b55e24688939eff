"""Training-time image augmentations as pure JAX functions of an explicit key:
random crop with padding, horizontal flip, random erasing."""

import math
from collections.abc import Sequence
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._misc import check_float, check_int


def _check_images(name: str, images) -> None:
    if images.ndim != 4:
        raise ValueError(
            f"{name}: `images` must be channels-last (batch, height, width, channels), "
            f"got shape {images.shape}."
        )


def _per_channel(value, channels: int, dtype, name: str) -> Array:
    value = jnp.asarray(value, dtype)
    if value.ndim > 1 or value.size not in (1, channels):
        raise ValueError(
            f"`{name}` must be a scalar or one value per channel ({channels}), got "
            f"shape {value.shape}."
        )
    return jnp.broadcast_to(value.reshape(-1), (channels,))


def _uniform_int(u: Array, n) -> Array:
    """Uniform integers in {0, ..., n - 1} from uniforms `u` in [0, 1)."""
    return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def random_crop(
    key: PRNGKeyArray,
    images: Float[Array | np.ndarray, "batch height width channels"],
    padding: int,
    *,
    fill: ArrayLike | Sequence[float] = 0.0,
) -> Float[Array | np.ndarray, "batch height width channels"]:
    """Pads every image by `padding` pixels on each side with `fill` and crops a
    window of the original size at an independent uniform offset in
    `{0, ..., 2 * padding}^2` per image (torchvision's `RandomCrop(size, padding)`).

    **Arguments:**

    - `key`: a `jax.random` key.
    - `images`: channels-last batch.
    - `padding`: pixels added on each side (0 returns `images`).
    - `fill`: the padding value, a scalar or one value per channel (e.g. black in
      normalised units, `-mean / std`).
    """
    _check_images("random_crop", images)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"`padding` must be a non-negative int, got {padding!r}.")
    if padding == 0:
        return images
    b, h, w, c = images.shape
    fill = _per_channel(fill, c, images.dtype, "fill")
    canvas = jnp.broadcast_to(fill, (b, h + 2 * padding, w + 2 * padding, c))
    canvas = canvas.at[:, padding : padding + h, padding : padding + w].set(images)
    offsets = _uniform_int(jax.random.uniform(key, (b, 2)), 2 * padding + 1)

    def crop(img, offset):
        return jax.lax.dynamic_slice(img, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(canvas, offsets)


def random_flip(
    key: PRNGKeyArray,
    images: Float[Array | np.ndarray, "batch height width channels"],
    probability: float = 0.5,
) -> Float[Array, "batch height width channels"]:
    """Mirrors each image left-right with independent `probability` (default 0.5)."""
    _check_images("random_flip", images)
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"`probability` must be in [0, 1], got {probability}.")
    flip = jax.random.uniform(key, (images.shape[0],)) < probability
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_erasing(
    key: PRNGKeyArray,
    images: Float[Array | np.ndarray, "batch height width channels"],
    probability: float = 0.5,
    *,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: ArrayLike | Sequence[float] = 0.0,
    attempts: int = 10,
) -> Float[Array, "batch height width channels"]:
    """Random erasing (Zhong et al. 2020) as torchvision's `RandomErasing` does it:
    with `probability`, an axis-aligned rectangle of each image is set to `value`.

    Per image, up to `attempts` candidates are drawn: area `s * H * W` with `s`
    uniform in `scale`, aspect ratio `r` log-uniform in `ratio`, height
    `round(sqrt(s H W r))`, width `round(sqrt(s H W / r))`. The first candidate
    strictly smaller than the image is placed at a uniform position; if none fits,
    the image is left as it is.

    **Arguments:**

    - `key`: a `jax.random` key.
    - `images`: channels-last batch (erasing is applied after normalisation, so
      `value=0` is the dataset's mean colour).
    - `probability`: chance that an image is erased (default 0.5).
    - `scale`, `ratio`: the ranges above.
    - `value`: the fill, a scalar or one value per channel.
    - `attempts`: candidates per image (default 10, as torchvision).

    ??? cite "Reference"

        ```bibtex
        @inproceedings{zhong2020random,
          title={Random Erasing Data Augmentation},
          author={Zhong, Zhun and Zheng, Liang and Kang, Guoliang and Li, Shaozi and
                  Yang, Yi},
          booktitle={AAAI},
          year={2020}
        }
        ```
    """
    _check_images("random_erasing", images)
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"`probability` must be in [0, 1], got {probability}.")
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"`scale` must satisfy 0 < lo <= hi <= 1, got {scale}.")
    if not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"`ratio` must satisfy 0 < lo <= hi, got {ratio}.")
    if attempts < 1:
        raise ValueError(f"`attempts` must be positive, got {attempts}.")
    b, h, w, c = images.shape
    value = _per_channel(value, c, images.dtype, "value")
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    # One draw for everything (each random call compiles its own generator).
    u = jax.random.uniform(key, (b, 2 * attempts + 3))
    u_scale, u_ratio = u[:, :attempts], u[:, attempts : 2 * attempts]
    u_apply, u_top, u_left = u[:, -3], u[:, -2], u[:, -1]
    target = area * (scale[0] + (scale[1] - scale[0]) * u_scale)
    r = jnp.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
    eh = jnp.round(jnp.sqrt(target * r)).astype(jnp.int32)
    ew = jnp.round(jnp.sqrt(target / r)).astype(jnp.int32)
    fits = (eh < h) & (ew < w)
    first = jnp.argmax(fits, axis=1)  # the first candidate that fits (0 if none does)
    eh = jnp.take_along_axis(eh, first[:, None], 1)
    ew = jnp.take_along_axis(ew, first[:, None], 1)
    # Uniform in {0, ..., h - eh}; candidates that do not fit are never used.
    top = _uniform_int(u_top[:, None], jnp.maximum(h - eh + 1, 1))
    left = _uniform_int(u_left[:, None], jnp.maximum(w - ew + 1, 1))
    rows = jnp.arange(h)[None, :]
    cols = jnp.arange(w)[None, :]
    inside = ((rows >= top) & (rows < top + eh))[:, :, None] & (
        (cols >= left) & (cols < left + ew)
    )[:, None, :]
    erase = (u_apply < probability) & jnp.any(fits, axis=1)
    return jnp.where((erase[:, None, None] & inside)[..., None], value, images)


class ImageAugmentation(eqx.Module):
    """The training augmentation of the TA-BN image experiments, applied to a
    normalised channels-last batch in this order: random crop with padding,
    horizontal flip, random erasing. Each step is skipped when its setting is 0.

    Called as `augmented = augmentation(key, images)`; deterministic given the key.

    **Arguments:**

    - `crop_padding`: pixels of padding for [`tadiffeq.data.random_crop`][]
      (default 4).
    - `crop_fill`: the padding value per channel (default 0; pass `-mean / std` for
      black padding as torchvision pads before normalising).
    - `flip_probability`: for [`tadiffeq.data.random_flip`][] (default 0.5).
    - `erasing_probability`: for [`tadiffeq.data.random_erasing`][] (default 0.5).
    - `erasing_value`: the erased pixels' value (default 0, the mean colour).
    """

    crop_padding: int = eqx.field(static=True, default=4)
    crop_fill: tuple[float, ...] = eqx.field(static=True, default=(0.0,))
    flip_probability: float = eqx.field(static=True, default=0.5)
    erasing_probability: float = eqx.field(static=True, default=0.5)
    erasing_value: float = eqx.field(static=True, default=0.0)

    def __init__(
        self,
        crop_padding: int = 4,
        crop_fill: ArrayLike | Sequence[float] = 0.0,
        flip_probability: float = 0.5,
        erasing_probability: float = 0.5,
        erasing_value: float = 0.0,
    ):
        self.crop_padding = check_int("crop_padding", crop_padding, minimum=0)
        for name, p in (
            ("flip_probability", flip_probability),
            ("erasing_probability", erasing_probability),
        ):
            check_float(name, p, owner="ImageAugmentation", low=0.0, high=1.0)
        check_float("erasing_value", erasing_value, owner="ImageAugmentation")
        fill = np.ravel(np.asarray(crop_fill))
        if fill.dtype.kind not in "biuf":
            raise ValueError(
                f"`crop_fill` must be a finite number or one per channel, got "
                f"{crop_fill!r}."
            )
        fill = fill.astype(float)
        if fill.size < 1 or not np.isfinite(fill).all():
            raise ValueError(
                "`crop_fill` must be a finite number or one per channel, got "
                f"{crop_fill!r}."
            )
        self.crop_fill = tuple(float(v) for v in fill)
        self.flip_probability = flip_probability
        self.erasing_probability = erasing_probability
        self.erasing_value = erasing_value

    def __call__(
        self,
        key: PRNGKeyArray,
        images: Float[Array | np.ndarray, "batch height width channels"],
    ) -> Float[Array, "batch height width channels"]:
        k_crop, k_flip, k_erase = jax.random.split(key, 3)
        images = jnp.asarray(images)
        if self.crop_padding:
            images = random_crop(
                k_crop, images, self.crop_padding, fill=jnp.asarray(self.crop_fill)
            )
            images = cast(Array, images)  # an Array in, an Array out
        if self.flip_probability:
            images = random_flip(k_flip, images, self.flip_probability)
        if self.erasing_probability:
            images = random_erasing(
                k_erase, images, self.erasing_probability, value=self.erasing_value
            )
        return images
