"""Every Python snippet in docs/ runs as written (the blocks of one page one after
another in one namespace), so the docs state no API that does not exist."""

import re

import pytest
from conftest import REPO


PAGES = sorted((REPO / "docs").glob("*.md"))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_python_snippets_run(page):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page.name} block {i + 1}", "exec"), namespace)


def test_the_design_page_has_snippets():
    assert len(re.findall(r"```python\n", (REPO / "docs/design.md").read_text())) >= 2
