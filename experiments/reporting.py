"""Tables and JSON for the experiments and the benchmarks: the one place that formats a
result row and writes a results file."""

import dataclasses
import json
import pathlib
import sys
from collections.abc import Callable

import jax
import numpy as np


def to_jsonable(o):
    """`json.dumps`'s `default`: dataclasses as dicts, NumPy scalars as Python
    numbers, JAX arrays as (nested) lists."""
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (jax.Array, np.ndarray)):
        return np.asarray(o).tolist()
    raise TypeError(f"Cannot serialise {type(o).__name__}")


def write_json(path: pathlib.Path, obj) -> pathlib.Path:
    """Writes `obj` as indented JSON to `path` (folders created); returns `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=to_jsonable))
    return path


def fixed3(v) -> str:
    """A cell with 3 decimals (1 from 100 on); empty for `None`."""
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return "" if v is None else str(v)


def significant3(v) -> str:
    """A cell with 3 significant digits (whole numbers from 1,000 on); empty for
    `None`."""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def print_table(
    rows: list[dict],
    columns: list[tuple[str, str]],
    file=None,
    *,
    markdown: bool = False,
    fmt: Callable[[object], str] = fixed3,
) -> None:
    """Prints `rows` as a table: `columns` is `[(key, header)]`; aligned plain text,
    or a markdown table with `markdown=True`; cells formatted by `fmt`."""
    file = sys.stdout if file is None else file
    cells = [[fmt(r.get(k)) for k, _ in columns] for r in rows]
    headers = [h for _, h in columns]
    if markdown:
        print("| " + " | ".join(headers) + " |", file=file)
        print("|" + "|".join("---" for _ in columns) + "|", file=file)
        for row in cells:
            print("| " + " | ".join(row) + " |", file=file)
    else:
        table = [headers, *cells]
        widths = [max(len(c[i]) for c in table) for i in range(len(columns))]
        for i, row in enumerate(table):
            print(
                "  ".join(
                    c.rjust(w) if j else c.ljust(w)
                    for j, (c, w) in enumerate(zip(row, widths))
                ),
                file=file,
            )
            if i == 0:
                print("  ".join("-" * w for w in widths), file=file)
    file.flush()


def save_figure(fig, path: pathlib.Path, *, dpi: int = 120) -> pathlib.Path:
    """Writes the matplotlib figure `fig` to `path` (creating its folder) and closes
    it; returns `path`."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def pyplot():
    """`matplotlib.pyplot` on the file-only Agg backend, or `None` where matplotlib
    is not installed (figures are optional: `pip install tadiffeq[experiments]`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
