"""Where the offline datasets live: a directory the caller passes, else an
environment variable, else the user's cache folder. The library assumes no workspace
layout; the experiment scripts add their own."""

import os
import pathlib


def cache_dir() -> pathlib.Path:
    """`$XDG_CACHE_HOME/tadiffeq` (default `~/.cache/tadiffeq`), where the datasets'
    default folders are."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "tadiffeq"


def dataset_dir(name: str, env: str, markers: tuple[str, ...]) -> pathlib.Path | None:
    """The folder of dataset `name`: `$env` if set (it must hold one of `markers`,
    else a `FileNotFoundError` naming the variable: never a silent fall-back), else
    `cache_dir() / name` if it holds one, else `None`."""

    def holds(path: pathlib.Path) -> bool:
        return any((path / m).exists() for m in markers)

    if os.environ.get(env):
        path = pathlib.Path(os.environ[env])
        if not holds(path):
            raise FileNotFoundError(
                f"${env} = {path} holds none of {', '.join(markers)}."
            )
        return path
    path = cache_dir() / name
    return path if holds(path) else None
