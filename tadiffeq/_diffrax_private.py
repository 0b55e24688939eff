"""The one place tadiffeq uses a private name of diffrax (pinned by `diffrax<0.8` in
pyproject.toml; `tests/test_solver.py` checks it is still there)."""

import diffrax


try:  # The adjoint ODE's term that BacksolveAdjoint hands the solver (not exported).
    from diffrax._term import AdjointTerm as AdjointTerm
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "tadiffeq needs diffrax's private `diffrax._term.AdjointTerm` (the term of "
        "BacksolveAdjoint's backward solve, on which no normalisation statistics may "
        f"be updated), which diffrax {diffrax.__version__} no longer has; install "
        "`diffrax>=0.7,<0.8`."
    ) from e
