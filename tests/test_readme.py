"""The README's usage example runs, and CI runs exactly the README's test command."""

import re

from conftest import REPO


def _readme():
    return (REPO / "README.md").read_text()


def test_readme_usage_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", _readme(), re.S)
    assert blocks, "README has no python example"
    assert len(blocks[0].strip().splitlines()) <= 15
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out.split()
    assert out[-1] == "(2, 784)" or out[-2:] == ["(2,", "784)"]


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", _readme(), re.S)[0].strip().splitlines()
    assert len(commands) == 2, "README must hold exactly two set-up commands"
    test_command = commands[1]
    assert "pytest" in test_command
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]
