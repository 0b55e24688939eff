"""Checkpoints of a training run: every array of (model, optimiser state,
normalisation state, ...) via Equinox serialisation, plus JSON metadata."""

import json
import os
import pathlib
import shutil
from typing import Any

import equinox as eqx
import jax
from jaxtyping import PyTree


class Checkpointer:
    """Saves and restores a training run in `directory`.

    ```python
    ckpt = td.Checkpointer("runs/exp1")
    restored = ckpt.restore((model, opt_state, state))
    if restored is not None:
        step, (model, opt_state, state), meta = restored
    ...
    ckpt.save(step, (model, opt_state, state), {"history": history})
    ```

    Each save writes `step_<n>/` (arrays by `eqx.tree_serialise_leaves`, metadata as
    JSON) and then points `latest.json` at it with an atomic rename, so an
    interrupted save leaves the previous checkpoint intact and arrays and metadata
    always belong to the same step. The newest `keep` checkpoints are kept.

    Everything the run needs to continue exactly (including TA-BN's running
    statistics in the `eqx.nn.State`) must be in the saved pytree or the metadata.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        if keep < 1:
            raise ValueError(f"`keep` must be at least 1, got {keep}.")
        self.directory = pathlib.Path(directory)
        self.keep = keep

    @property
    def _latest(self) -> pathlib.Path:
        return self.directory / "latest.json"

    def exists(self) -> bool:
        return self._latest.exists()

    def save(self, step: int, tree: PyTree, metadata: dict[str, Any] | None = None):
        """Writes `tree` (any pytree of arrays and static data) and `metadata`
        (JSON-serialisable) as the checkpoint after `step` steps."""
        step = int(step)
        # A step saved again goes to a new folder: the one `latest.json` may point at
        # is only removed after the commit point.
        name, k = f"step_{step}", 0
        while (self.directory / name).exists():
            k += 1
            name = f"step_{step}_r{k}"
        target = self.directory / name
        tmp = self.directory / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        eqx.tree_serialise_leaves(tmp / "arrays.eqx", tree)
        meta = {"step": step, "metadata": metadata or {}, "leaves": _layout(tree)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, target)
        pointer = self.directory / "latest.json.tmp"
        pointer.write_text(json.dumps({"checkpoint": name}))
        os.replace(pointer, self._latest)  # the commit point
        saved = sorted(
            (_step_of(p.name), p.stat().st_mtime_ns, p)
            for p in self.directory.glob("step_*")
            if p.is_dir() and _step_of(p.name) is not None
        )
        superseded = [p for s, _, p in saved if s == step and p.name != name]
        others = [p for s, _, p in saved if s != step]
        for old in superseded + others[: max(0, len(others) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> tuple[int, dict[str, Any]] | None:
        """`(step, metadata)` of the latest checkpoint without loading its arrays, or
        `None` if there is no checkpoint."""
        if not self.exists():
            return None
        name = json.loads(self._latest.read_text())["checkpoint"]
        meta = json.loads((self.directory / name / "meta.json").read_text())
        return meta["step"], meta["metadata"]

    def restore(self, like: PyTree) -> tuple[int, PyTree, dict[str, Any]] | None:
        """`(step, tree, metadata)` of the latest checkpoint, with `tree` shaped like
        `like` (same structure, e.g. a freshly initialised run), or `None` if there is
        no checkpoint."""
        if not self.exists():
            return None
        name = json.loads(self._latest.read_text())["checkpoint"]
        path = self.directory / name
        meta = json.loads((path / "meta.json").read_text())
        expected = _layout(like)
        saved = meta.get("leaves")  # absent in checkpoints of tadiffeq 0.1
        if saved is not None and saved != expected:
            raise ValueError(_mismatch(path, saved, expected, like))
        with open(path / "arrays.eqx", "rb") as f:
            try:
                tree = eqx.tree_deserialise_leaves(f, like)
            except Exception as e:
                raise ValueError(
                    f"Checkpoint {path} does not match the structure of `like` "
                    f"({len(expected)} arrays): {type(e).__name__}: {e}. {_HINT}"
                ) from e
            if f.read(1):
                raise ValueError(
                    f"Checkpoint {path} holds more arrays than `like` "
                    f"({len(expected)}); it was written for another model."
                )
        return meta["step"], tree, meta["metadata"]


_HINT = (
    "A model with coverage-aware TA-BN layers (the default since tadiffeq 0.2) holds "
    "one more state array per layer than tadiffeq 0.1 saved: restore such a "
    "checkpoint into layers built with `TABatchNorm(..., coverage_aware=False)`."
)


def _layout(tree: PyTree) -> list[list]:
    """The shape and dtype of every array leaf of `tree`, in order."""
    return [
        [list(x.shape), str(x.dtype)]
        for x in jax.tree_util.tree_leaves(tree)
        if eqx.is_array(x)
    ]


def _mismatch(path, saved: list, expected: list, like: PyTree) -> str:
    """Says where the arrays of a checkpoint and of `like` first differ."""
    paths = [
        jax.tree_util.keystr(p)
        for p, x in jax.tree_util.tree_flatten_with_path(like)[0]
        if eqx.is_array(x)
    ]
    for i, (a, b) in enumerate(zip(saved, expected)):
        if a != b:
            return (
                f"Checkpoint {path} does not match `like`: array {i} "
                f"({paths[i]}) was saved with shape {tuple(a[0])} and dtype {a[1]}, "
                f"`like` has shape {tuple(b[0])} and dtype {b[1]}."
            )
    more = "fewer" if len(saved) < len(expected) else "more"
    hint = f" {_HINT}" if more == "fewer" else ""
    return (
        f"Checkpoint {path} holds {len(saved)} arrays, {more} than the "
        f"{len(expected)} of `like`: it was written for another model.{hint}"
    )


def _step_of(name: str) -> int | None:
    """The step of a checkpoint folder `step_<n>` or `step_<n>_r<k>`, else `None`."""
    base = name[5:].split("_r")[0]
    return int(base) if base.isdigit() else None
