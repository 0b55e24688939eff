"""Every Python snippet in docs/ runs as written (the blocks of one page one after
another in one namespace), so the docs state no API that does not exist."""

import re

import pytest
from conftest import REPO


PAGES = sorted((REPO / "docs").glob("*.md"))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_python_snippets_run(page):
    import jax

    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    namespace = {}
    x64 = jax.config.jax_enable_x64
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"{page.name} block {i + 1}", "exec"), namespace)
    finally:  # a snippet that turns on float64 must not change the tests after it
        jax.config.update("jax_enable_x64", x64)


def test_the_design_page_has_snippets():
    assert len(re.findall(r"```python\n", (REPO / "docs/design.md").read_text())) >= 2


def test_the_api_pages_list_every_public_name():
    """docs/api/*.md are what docs/gen_api.py writes (every public class and function,
    so mkdocstrings can resolve every cross-reference of the docstrings)."""
    import runpy

    gen = runpy.run_path(str(REPO / "docs" / "gen_api.py"))
    for module_name, file in gen["PAGES"].items():
        written = (REPO / "docs" / "api" / file).read_text()
        assert written == gen["page"](module_name), (
            f"docs/api/{file} is out of date: run python docs/gen_api.py"
        )
    assert "::: tadiffeq.NeuralODE" in (REPO / "docs/api/tadiffeq.md").read_text()
