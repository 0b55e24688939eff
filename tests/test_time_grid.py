import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tadiffeq as td


def test_linear_weights_match_paper_formula():
    grid = td.LinearTimeGrid(0.0, 1.0, 10)
    for t in [0.0, 0.03, 0.1, 0.37, 0.55, 0.999, 1.0]:
        w = np.asarray(grid.weights(t))
        h = 0.1
        l = min(int(np.floor(t / h)), 9)
        w_r = (t - l * h) / h
        expected = np.zeros(11)
        expected[l] += 1 - w_r
        expected[l + 1] += w_r
        np.testing.assert_allclose(w, expected, atol=1e-6)


def test_nearer_point_gets_more_weight():
    # The paper's weights, not the released code's swapped ones.
    w = td.LinearTimeGrid(0.0, 1.0, 100).weights(0.012)
    assert w[1] > w[2] and w[1] > 0.75


@pytest.mark.parametrize("cls", ["linear", "nearest", "gaussian"])
def test_weights_sum_to_one_and_clamp(cls):
    grid = td.make_time_grid(cls, t0=-1.0, t1=3.0, num_intervals=7)
    ts = jnp.linspace(-5.0, 7.0, 41)
    ws = jax.vmap(grid.weights)(ts)
    np.testing.assert_allclose(ws.sum(-1), 1.0, atol=1e-5)
    assert (ws >= 0).all()
    # Outside [t0, t1] times clamp to the end points.
    np.testing.assert_allclose(grid.weights(-5.0), grid.weights(-1.0), atol=1e-6)
    np.testing.assert_allclose(grid.weights(7.0), grid.weights(3.0), atol=1e-6)


def test_nearest_is_one_hot():
    grid = td.NearestTimeGrid(0.0, 1.0, 4)
    np.testing.assert_array_equal(grid.weights(0.3), [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(grid.weights(0.4), [0, 0, 1, 0, 0])


def test_gaussian_is_normalised_kernel():
    grid = td.GaussianTimeGrid(0.0, 1.0, 4, width=0.3)
    t = 0.4
    pts = np.linspace(0, 1, 5)
    k = np.exp(-((t - pts) ** 2) / (2 * 0.3**2))
    np.testing.assert_allclose(grid.weights(t), k / k.sum(), rtol=1e-5)
    np.testing.assert_allclose(grid.points(), pts, atol=1e-7)


def test_grid_errors():
    with pytest.raises(ValueError, match="num_intervals"):
        td.LinearTimeGrid(0.0, 1.0, 0)
    with pytest.raises(TypeError, match="num_intervals"):
        td.LinearTimeGrid(0.0, 1.0, 2.5)
    with pytest.raises(ValueError, match="t0 < t1"):
        td.LinearTimeGrid(1.0, 1.0, 10)
    with pytest.raises(ValueError, match="interpolation"):
        td.make_time_grid("cubic")
    with pytest.raises(ValueError, match="width"):
        td.GaussianTimeGrid(0.0, 1.0, 4, width=-1.0)
    with pytest.raises(ValueError, match="width"):
        td.make_time_grid("linear", width=0.1)
    with pytest.raises(ValueError, match="`t` must be a scalar time"):
        td.LinearTimeGrid(0.0, 1.0, 4).weights(jnp.zeros(5))


def test_points_follow_the_default_float_dtype():
    grid = td.LinearTimeGrid(0.0, 1.0, 4)
    assert grid.points().dtype == jnp.float32
    with jax.enable_x64(True):
        points = grid.points()
        assert points.dtype == jnp.float64 == grid.weights(0.3).dtype
        np.testing.assert_array_equal(points, [0.0, 0.25, 0.5, 0.75, 1.0])
