"""Writes the API reference pages docs/api/*.md: one `::: name` per public class and
function of `tadiffeq`, `tadiffeq.data` and `tadiffeq.dynamics`, grouped by the
module that defines it. Run after changing a public `__init__.py`:

    python docs/gen_api.py

(tests/test_docs.py fails while a page is out of date.)
"""

import collections
import importlib
import inspect
import pathlib


PAGES = {
    "tadiffeq": "tadiffeq.md",
    "tadiffeq.data": "data.md",
    "tadiffeq.dynamics": "dynamics.md",
}
API = pathlib.Path(__file__).resolve().parent / "api"


def page(module_name: str) -> str:
    """The page of `module_name`'s public classes and functions."""
    module = importlib.import_module(module_name)
    groups = collections.defaultdict(list)
    for name in sorted(n for n in dir(module) if not n.startswith("_")):
        obj = getattr(module, name)
        if inspect.ismodule(obj) or not callable(obj):
            continue  # constants are documented in their module's docstring
        source = getattr(obj, "__module__", None)
        if isinstance(source, str) and source.startswith("tadiffeq"):
            groups[source].append(name)
    lines = [f"# `{module_name}`", ""]
    for source in sorted(groups):
        lines += [f"## {source.split('.')[-1].lstrip('_').replace('_', ' ')}", ""]
        for name in groups[source]:
            lines += [f"::: {module_name}.{name}", ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    API.mkdir(exist_ok=True)
    for module_name, file in PAGES.items():
        (API / file).write_text(page(module_name))
        print(f"wrote {API / file}")
