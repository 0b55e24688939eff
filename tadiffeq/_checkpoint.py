"""Checkpoints of a training run: every array of (model, optimiser state,
normalisation state, ...) via Equinox serialisation, plus JSON metadata."""

import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import warnings
from typing import Any

import equinox as eqx
import jax
from jaxtyping import PyTree

from ._misc import check_positive_int


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
    JSON with the arrays' SHA-256 and layout), flushes both to disk and then points
    `latest.json` at it with an atomic rename, so an interrupted save leaves the
    previous checkpoint intact and arrays and metadata always belong to the same
    step. The newest `keep` checkpoints are kept. The checkpoints form one history:
    a save at step n removes those at step n or later (with a warning for later
    ones: the run was rewound, or a new run started in the directory without
    restoring), so a stale later step is never restored in place of it.

    Damage is survived, never silently: `restore` and `latest` read the checkpoint
    `latest.json` names, and if that pointer is missing or unreadable, or the
    checkpoint's metadata is unreadable or its arrays fail their checksum, the
    newest intact checkpoint instead, with a warning saying what was wrong. With
    checkpoint folders present but none intact they raise a `ValueError` listing the
    problems (they never return `None` then, so a run is not restarted over its
    finished work). A `like` of another structure is an error, not damage.

    Everything the run needs to continue exactly (including TA-BN's running
    statistics in the `eqx.nn.State`) must be in the saved pytree or the metadata.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        keep = check_positive_int("keep", keep)
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                f"`directory` must be a path (str or os.PathLike), got {directory!r}."
            )
        self.directory = pathlib.Path(directory)
        self.keep = keep

    @property
    def _latest(self) -> pathlib.Path:
        return self.directory / "latest.json"

    def exists(self) -> bool:
        """Whether the directory holds a checkpoint (or its pointer)."""
        return self._latest.exists() or bool(self._folders())

    def save(self, step: int, tree: PyTree, metadata: dict[str, Any] | None = None):
        """Writes `tree` (any pytree of arrays and static data) and `metadata`
        (JSON-serialisable) as the checkpoint after `step` steps, then removes the
        checkpoints it supersedes: those of `step` or later (a warning names later
        steps) and all but the newest `keep - 1` earlier ones."""
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
        with open(tmp / "arrays.eqx", "wb") as f:
            writer = _HashingWriter(f)
            eqx.tree_serialise_leaves(writer, tree)
            _sync(f)
        meta = {
            "step": step, "metadata": metadata or {}, "leaves": _layout(tree),
            "sha256": writer.hash.hexdigest(),
        }  # fmt: skip
        _write_synced(tmp / "meta.json", json.dumps(meta))
        os.replace(tmp, target)
        pointer = self.directory / "latest.json.tmp"
        _write_synced(pointer, json.dumps({"checkpoint": name}))
        os.replace(pointer, self._latest)  # the commit point
        _sync_directory(self.directory)
        saved = sorted(
            (s, p.stat().st_mtime_ns, p)
            for p in self._folders()
            if (s := _step_of(p.name)) is not None  # (always: for the type checker)
        )
        # One history: this save supersedes every checkpoint at its step or later
        # (a run that rewound, or a new run in the same directory), so none of them
        # can outlive it or be restored in its place.
        superseded = [p for s, _, p in saved if s >= step and p.name != name]
        earlier = [p for s, _, p in saved if s < step]
        for old in superseded + earlier[: max(0, len(earlier) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        later = sorted({s for s, _, _ in saved if s > step})
        if later:
            kept = [p.name for s, _, p in saved if s > step and p.exists()]
            warnings.warn(
                f"Checkpoint of step {step} saved in {self.directory}, which held "
                f"later steps {later} (a rewound or restarted run supersedes them): "
                + (f"could not remove {kept}." if kept else "removed them."),
                stacklevel=2,
            )

    def latest(self) -> tuple[int, dict[str, Any]] | None:
        """`(step, metadata)` of the latest checkpoint whose metadata is intact,
        without reading its arrays (so without their checksum: `restore` verifies
        them, and falls back to an older checkpoint if they fail), or `None` if
        there is no checkpoint."""
        found = self._intact(read_arrays=False)
        return None if found is None else (found[1]["step"], found[1]["metadata"])

    def restore(self, like: PyTree) -> tuple[int, PyTree, dict[str, Any]] | None:
        """`(step, tree, metadata)` of the latest intact checkpoint, with `tree`
        shaped like `like` (same structure, e.g. a freshly initialised run), or
        `None` if there is no checkpoint."""
        found = self._intact(read_arrays=True)
        if found is None:
            return None
        path, meta, data = found
        assert data is not None  # read with `read_arrays=True`
        expected = _layout(like)
        saved = meta.get("leaves")  # absent in checkpoints of tadiffeq 0.1
        if saved is not None and saved != expected:
            raise ValueError(_mismatch(path, saved, expected, like))
        f = io.BytesIO(data)
        try:
            tree = eqx.tree_deserialise_leaves(f, like)
        except Exception as e:
            raise ValueError(
                f"Checkpoint {path} does not match the structure of `like` "
                f"({len(expected)} arrays): {type(e).__name__}: {e}. {_HINT}"
            ) from e
        if f.tell() != len(data):
            raise ValueError(
                f"Checkpoint {path} holds more arrays than `like` "
                f"({len(expected)}); it was written for another model."
            )
        return meta["step"], tree, meta["metadata"]

    def _folders(self) -> list[pathlib.Path]:
        if not self.directory.is_dir():
            return []
        return [
            p
            for p in self.directory.glob("step_*")
            if p.is_dir() and _step_of(p.name) is not None
        ]

    def _intact(self, *, read_arrays: bool):
        """The first intact checkpoint as `(folder, meta, arrays)` (the arrays' bytes,
        checksum verified, with `read_arrays`; else `None`): the one `latest.json`
        names, else the newest intact one (with a warning). `None` without any
        checkpoint; a `ValueError` if there are checkpoint folders but none is
        intact."""
        problems, named = [], None
        if self._latest.exists():
            try:
                named = json.loads(self._latest.read_text())["checkpoint"]
            except (ValueError, KeyError, TypeError) as e:
                problems.append(f"{self._latest} is unreadable ({e!r})")
        folders = sorted(
            self._folders(),
            key=lambda p: (_step_of(p.name), p.stat().st_mtime_ns),
            reverse=True,
        )
        if not folders and named is None and not problems:
            return None
        if named is None and not problems:
            problems.append(f"{self._latest} is missing")
        order = [p for p in folders if p.name == named]
        if named is not None and not order:
            problems.append(f"{self._latest} names {named!r}, which is missing")
        order += [p for p in folders if p.name != named]
        for path in order:
            data = None
            try:
                meta = json.loads((path / "meta.json").read_text())
                _ = meta["step"], meta["metadata"]
                if read_arrays:
                    data = (path / "arrays.eqx").read_bytes()
                    digest = meta.get("sha256")  # absent in tadiffeq 0.1's
                    if (
                        digest is not None
                        and hashlib.sha256(data).hexdigest() != digest
                    ):
                        raise ValueError("its arrays fail their SHA-256 checksum")
            except (OSError, ValueError, KeyError, TypeError) as e:
                problems.append(f"checkpoint {path} is damaged ({e})")
                continue
            if problems:
                warnings.warn(
                    "; ".join(problems) + f". Using {path} instead.", stacklevel=3
                )
            return path, meta, data
        raise ValueError(
            f"No intact checkpoint in {self.directory}: " + "; ".join(problems) + "."
        )


class _HashingWriter:
    """A binary file wrapper that hashes what is written through it."""

    def __init__(self, f):
        self.f, self.hash = f, hashlib.sha256()

    def write(self, b) -> int:
        self.hash.update(b)
        return self.f.write(b)


def _sync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def _write_synced(path: pathlib.Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        _sync(f)


def _sync_directory(path: pathlib.Path) -> None:
    """Flushes a folder's entries (the renames) to disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover (e.g. Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


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
    # Fewer arrays than `like`: maybe the layout from before coverage existed (with
    # several TA-BN layers the first difference is then a shape, not the count).
    hint = f" {_HINT}" if len(saved) < len(expected) else ""
    for i, (a, b) in enumerate(zip(saved, expected)):
        if a != b:
            return (
                f"Checkpoint {path} does not match `like`: array {i} "
                f"({paths[i]}) was saved with shape {tuple(a[0])} and dtype {a[1]}, "
                f"`like` has shape {tuple(b[0])} and dtype {b[1]}.{hint}"
            )
    more = "fewer" if len(saved) < len(expected) else "more"
    return (
        f"Checkpoint {path} holds {len(saved)} arrays, {more} than the "
        f"{len(expected)} of `like`: it was written for another model.{hint}"
    )


def _step_of(name: str) -> int | None:
    """The step of a checkpoint folder `step_<n>` or `step_<n>_r<k>`, else `None`
    (also for a save's unfinished `step_<n>_r<k>.tmp`)."""
    match = re.fullmatch(r"step_(\d+)(?:_r\d+)?", name)
    return None if match is None else int(match.group(1))
