"""The README's usage example runs, and CI runs exactly the README's test command."""

import re

import pytest
from conftest import REPO


def _readme():
    return (REPO / "README.md").read_text()


@pytest.mark.heavy
def test_readme_usage_examples_run(capsys):
    """The python blocks run one after another in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", _readme(), re.S)
    assert len(blocks) >= 2, "README lost its python examples"
    assert len(blocks[0].strip().splitlines()) <= 15
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    out = capsys.readouterr().out.split()
    assert out[-2:] == ["(2,", "784)"]
    exec(compile(blocks[1], "README.md", "exec"), namespace)
    assert float(namespace["stats"].regularization) > 0
    for block in blocks[2:]:  # data parallel: same shapes, batch stays sharded
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["y"].shape == (128, 784)
    assert namespace["stats"].num_fn_evals > 0


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", _readme(), re.S)[0].strip().splitlines()
    assert len(commands) == 2, "README must hold exactly two set-up commands"
    test_command = commands[1]
    assert "pytest" in test_command
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]
