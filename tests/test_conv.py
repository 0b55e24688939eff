import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.jet import jet
from jaxtyping import TypeCheckError

import tadiffeq as td


def _concat_conv(t, x, w, b, mode):
    """The paper's layer written the obvious way: concatenate a constant t channel."""
    xt = jnp.concatenate([x, jnp.full(x.shape[:-1] + (1,), t, x.dtype)], -1)
    stride, pad, dil = td.conv_geometry(mode)
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
@pytest.mark.parametrize("cin, cout", [(4, 5), (12, 1)])
def test_conv2d_derivatives_equal_autodiff(mode, cin, cout, getkey):
    """The CPU path (slices + dots) against autodiff of the XLA convolution; 12 -> 1
    channels takes the col2im form (except "up", always the sub-pixel form)."""
    stride, pad, dil = td.conv_geometry(mode)
    x = jax.random.normal(getkey(), (2, 6, 6, cin))
    w = jax.random.normal(getkey(), (3, 3, cin, cout)) * 0.2
    if dil == 1:
        assert td.conv_strategy(x.shape, w.shape, stride, pad, dil, impl="im2col") == (
            "col2im" if cout == 1 else "im2col"
        )
    dn = ("NHWC", "HWIO", "NHWC")

    def plain(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (stride, stride), (pad, pad), lhs_dilation=(dil, dil),
            dimension_numbers=dn,
        )  # fmt: skip

    def ours(x, w):
        return td.conv2d(x, w, stride, pad, dil, impl="im2col")

    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
    g_ref = jax.grad(loss(plain), (0, 1))(x, w)
    g = jax.grad(loss(ours), (0, 1))(x, w)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # Forward mode and second order work too (no custom rule: slices and dots).
    t_ref = jax.jvp(plain, (x, w), (x, w))[1]
    np.testing.assert_allclose(
        jax.jvp(ours, (x, w), (x, w))[1], t_ref, rtol=1e-4, atol=1e-4
    )
    hvp = jax.jvp(jax.grad(loss(ours), 1), (x, w), (jnp.zeros_like(x), w))[1]
    hvp_ref = jax.jvp(jax.grad(loss(plain), 1), (x, w), (jnp.zeros_like(x), w))[1]
    np.testing.assert_allclose(hvp, hvp_ref, rtol=1e-3, atol=1e-3)
    # Only one argument differentiated.
    gx = jax.grad(loss(ours))(x, w)
    np.testing.assert_allclose(gx, g_ref[0], rtol=1e-4, atol=1e-4)
    # Taylor mode (TayNODE's `jet`) sees plain primitives.
    series = ([x, 0.5 * x], [w, -w])
    out, coeffs = jet(ours, (x, w), series)
    out_ref, coeffs_ref = jet(plain, (x, w), series)
    for a, b in zip([out, *coeffs], [out_ref, *coeffs_ref]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(5, 7), (1, 2)])
def test_conv2d_im2col_equals_xla_for_other_geometries(size, getkey):
    """Other kernel sizes, strides and asymmetric padding; odd and tiny inputs."""
    x = jax.random.normal(getkey(), (2, *size, 3))
    for kh, kw, stride, pad in [(3, 3, 2, (1, 1)), (1, 1, 1, (0, 0)),
                                (5, 3, 1, (2, 2)), (3, 3, 3, (0, 2))]:  # fmt: skip
        if size[0] + sum(pad) < kh or size[1] + sum(pad) < kw:
            continue
        for cout in (4, 1):  # im2col, and col2im for the stride-1 thin outputs
            w = jax.random.normal(getkey(), (kh, kw, 3, cout))
            a = td.conv2d(x, w, stride, pad, 1, impl="im2col")
            b = td.conv2d(x, w, stride, pad, 1, impl="xla")
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # The "up" geometry on a 1-pixel-wide input.
    w = jax.random.normal(getkey(), (3, 3, 3, 4))
    a = td.conv2d(x, w, 1, (1, 2), 2, impl="im2col")
    np.testing.assert_allclose(
        a, td.conv2d(x, w, 1, (1, 2), 2, impl="xla"), rtol=1e-5, atol=1e-5
    )
    assert a.shape == (2, 2 * size[0], 2 * size[1], 4)


def test_conv2d_auto_is_im2col_on_cpu_only(getkey):
    """On CPU the default lowers to dots (no convolution inside the solve); `xla`
    keeps the vendor convolution for GPU/TPU."""
    x = jax.random.normal(getkey(), (1, 6, 6, 2))
    w = jax.random.normal(getkey(), (3, 3, 2, 2))
    hlo = lambda impl: jax.jit(
        lambda x, w: td.conv2d(x, w, 2, (1, 1), 1, impl=impl)
    ).lower(x, w).as_text()  # fmt: skip
    assert "convolution" in hlo("xla") and "convolution" not in hlo("im2col")
    expected = "im2col" if jax.default_backend() == "cpu" else "xla"
    assert hlo("auto") == hlo(expected)


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
    with pytest.raises(ValueError, match="`impl`"):
        td.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), 1, (1, 1), 1,
                  impl="cudnn")  # fmt: skip
    with pytest.raises((ValueError, TypeCheckError), match="cin"):
        td.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 5, 2)), 1, (1, 1), 1)
    with pytest.raises(ValueError, match="`mode`"):
        td.TimeConv2d(3, 4, "sideways", key=getkey())
    with pytest.raises(ValueError, match="`in_channels`"):
        td.TimeConv2d(0, 4, key=getkey())
    conv = td.TimeConv2d(3, 4, key=getkey())
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\)"):
        conv(0.0, jnp.ones((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="TimeConv2d: `t` must be a scalar"):
        conv(jnp.ones(4), jnp.ones((2, 8, 8, 3)))
    x, w = jnp.ones((2, 1, 1, 3)), jnp.ones((5, 5, 3, 1))
    for impl in ("im2col", "xla"):  # the same errors for both implementations
        with pytest.raises(ValueError, match="padded input height 1 is smaller"):
            td.conv2d(x, w, 1, (0, 0), 1, impl=impl)
        with pytest.raises(ValueError, match="`stride` must be a positive int"):
            td.conv2d(x, w, 0, (2, 2), 1, impl=impl)
        with pytest.raises(ValueError, match="`padding` must be"):
            td.conv2d(x, w, 1, (2, -1), 1, impl=impl)
        with pytest.raises(TypeError, match="same dtype"):
            td.conv2d(x, w.astype(jnp.bfloat16), 1, (2, 2), 1, impl=impl)
