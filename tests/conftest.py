import os
import pathlib

import jax
import pytest


# Determinism (no fast math); XLA's backend optimisation level 0 compiles the suite's
# many small programs ~27% faster in CPU time (measured on 2 cores) and leaves the
# semantics alone. Set XLA_FLAGS yourself to test with other flags.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_cpu_enable_fast_math=false --xla_backend_optimization_level=0",
)
jax.config.update("jax_default_matmul_precision", "highest")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(items):
    """Heavy tests first (a stable sort, so the order is otherwise unchanged): with
    `-n auto` the workers then take them in turns at the start, and the run ends on
    short tests instead of one worker finishing a long one alone."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


@pytest.fixture
def getkey():
    """`getkey()` returns a fresh, deterministic PRNG key each call."""
    state = {"key": jax.random.PRNGKey(0)}

    def _getkey():
        state["key"], sub = jax.random.split(state["key"])
        return sub

    return _getkey


@pytest.fixture(autouse=True, scope="module")
def _clear_jax_caches():
    """Drop each module's compiled functions afterwards, so the suite's memory stays
    flat (several GB otherwise)."""
    yield
    jax.clear_caches()
