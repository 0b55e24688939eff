import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tadiffeq as td
from tadiffeq._models.conv import _GEOMETRY


def _concat_conv(t, x, w, b, mode):
    """The paper's layer written the obvious way: concatenate a constant t channel."""
    xt = jnp.concatenate([x, jnp.full(x.shape[:-1] + (1,), t, x.dtype)], -1)
    stride, pad, dil = _GEOMETRY[mode]
    out = jax.lax.conv_general_dilated(
        xt, w, (stride, stride), (pad, pad), lhs_dilation=(dil, dil),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip
    return out + b


@pytest.mark.parametrize("mode", ["same", "down", "up"])
@pytest.mark.parametrize("size", [(8, 8), (7, 6)])
def test_time_conv_equals_concatenated_time_channel(mode, size, getkey):
    conv = td.TimeConv2d(3, 5, mode, key=getkey())
    x = jax.random.normal(getkey(), (2, *size, 3))
    for t in [0.0, 0.37, 1.0]:
        out = conv(t, x)
        ref = _concat_conv(t, x, conv.weight, conv.bias, mode)
        assert out.shape == ref.shape == (2, *conv.output_shape(*size), 5)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_up_is_a_stride_2_transposed_convolution(getkey):
    """`up` equals PyTorch's ConvTranspose2d(k=3, stride=2, padding=1,
    output_padding=1) with kernel W_pt[c, o, a, b] = W[2 - a, 2 - b, c, o]:
    out[2 i - 1 + a, 2 j - 1 + b, o] += x[i, j, c] W_pt[c, o, a, b]."""
    conv = td.TimeConv2d(2, 3, "up", key=getkey())
    x = np.asarray(jax.random.normal(getkey(), (1, 4, 5, 2)))
    w = np.asarray(conv.weight[:, :, :-1, :])  # without the time channel
    w_pt = np.transpose(w[::-1, ::-1], (2, 3, 0, 1))
    out = np.zeros((1, 8, 10, 3))
    for i in range(4):
        for j in range(5):
            for a in range(3):
                for b in range(3):
                    p, q = 2 * i - 1 + a, 2 * j - 1 + b
                    if 0 <= p < 8 and 0 <= q < 10:
                        out[0, p, q] += x[0, i, j] @ w_pt[:, :, a, b]
    np.testing.assert_allclose(conv(0.0, jnp.asarray(x)) - conv.bias, out, atol=1e-5)


@pytest.mark.parametrize("mode", ["same", "down", "up"])
def test_conv2d_derivatives_equal_autodiff(mode, getkey):
    stride, pad, dil = _GEOMETRY[mode]
    x = jax.random.normal(getkey(), (2, 6, 6, 4))
    w = jax.random.normal(getkey(), (3, 3, 4, 5)) * 0.2
    dn = ("NHWC", "HWIO", "NHWC")

    def plain(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (stride, stride), (pad, pad), lhs_dilation=(dil, dil),
            dimension_numbers=dn,
        )  # fmt: skip

    def ours(x, w):
        return td.conv2d(x, w, stride, pad, dil)

    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
    g_ref = jax.grad(loss(plain), (0, 1))(x, w)
    g = jax.grad(loss(ours), (0, 1))(x, w)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # Forward mode and second order work too (custom JVP, not VJP).
    t_ref = jax.jvp(plain, (x, w), (x, w))[1]
    np.testing.assert_allclose(
        jax.jvp(ours, (x, w), (x, w))[1], t_ref, rtol=1e-4, atol=1e-4
    )
    hvp = jax.jvp(jax.grad(loss(ours), 1), (x, w), (jnp.zeros_like(x), w))[1]
    hvp_ref = jax.jvp(jax.grad(loss(plain), 1), (x, w), (jnp.zeros_like(x), w))[1]
    np.testing.assert_allclose(hvp, hvp_ref, rtol=1e-3, atol=1e-3)
    # Only one argument differentiated (symbolic zeros for the other).
    gx = jax.grad(loss(ours))(x, w)
    np.testing.assert_allclose(gx, g_ref[0], rtol=1e-4, atol=1e-4)


def test_conv_gradient_inside_a_loop(getkey):
    x = jax.random.normal(getkey(), (2, 4, 4, 3))
    w = jax.random.normal(getkey(), (3, 3, 3, 3)) * 0.1

    def run(w, f):
        def body(i, y):
            return y + 0.1 * f(y, w)

        return jnp.sum(jax.lax.fori_loop(0, 4, body, x) ** 2)

    plain = lambda y, w: jax.lax.conv_general_dilated(
        y, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    ours = lambda y, w: td.conv2d(y, w, 1, (1, 1), 1)
    np.testing.assert_allclose(
        jax.grad(run)(w, ours), jax.grad(run)(w, plain), rtol=1e-4, atol=1e-4
    )


def test_time_conv_errors(getkey):
    with pytest.raises(ValueError, match="`mode`"):
        td.TimeConv2d(3, 4, "sideways", key=getkey())
    with pytest.raises(ValueError, match="`in_channels`"):
        td.TimeConv2d(0, 4, key=getkey())
    conv = td.TimeConv2d(3, 4, key=getkey())
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\)"):
        conv(0.0, jnp.ones((2, 3, 8, 8)))
