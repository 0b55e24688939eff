import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import tadiffeq as td


SCRIPT = pathlib.Path(__file__).with_name("_sharded_step.py")


@pytest.mark.heavy
@pytest.mark.parametrize("norm", ["tabn"])
def test_one_step_on_four_devices_equals_one_device(norm):
    """Data-parallel over 4 host devices: the same updated model, optimiser state,
    TA-BN statistics, loss and NFE as on one device for the same global batch (the
    batch statistics are reduced across devices)."""
    flags = os.environ.get("XLA_FLAGS", "")
    env = dict(
        os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=4"
    )
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, str(SCRIPT), norm],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["x_devices"] == 4 and res["x_shard_shape"] == [4, 6, 6, 1]
    assert "divisible by the 4 local devices" in res["indivisible_error"]
    assert res["numpy_replicated"] == 4
    assert res["nfe"][0] == res["nfe"][1]
    np.testing.assert_allclose(*res["loss"], rtol=1e-6)
    assert max(res["max_diff"].values()) < 1e-7, res  # float64 rounding


def test_shard_batch_errors():
    mesh = td.data_parallel_mesh()
    with pytest.raises(ValueError, match="divisible"):
        td.shard_batch(np.zeros(()), mesh)
    with pytest.raises(ValueError, match="devices"):
        td.data_parallel_mesh([])
    x = td.shard_batch(np.ones((4, 2)), mesh)
    assert isinstance(x, jax.Array) and x.shape == (4, 2)
    tree = td.replicate({"w": jax.numpy.ones(3), "n": 3}, mesh)
    assert tree["n"] == 3 and tree["w"].sharding.is_fully_replicated
