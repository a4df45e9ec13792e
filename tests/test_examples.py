"""The README's Python example and the docstring examples run as they are."""

import doctest
import importlib
import re

import pytest
from conftest import ROOT

import einmlp


def test_readme_python_block_runs(monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has a Python example"
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for block in blocks:  # one session, as a reader would type them
        exec(compile(block, "README.md", "exec"), namespace)  # the project's own README
    out = capsys.readouterr().out
    assert "-2 * X.T @ (((Ytilde * f2'(C)) @ W2.T) * f1'(A))" in out and "True" in out


def test_readme_starts_with_the_two_commands():
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert "einmlp derive derivations/article.ein --wrt W1" in blocks[0]
    assert "pytest" in blocks[1]
    assert blocks[1].strip() in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("name", ["einmlp.api", "einmlp.check", "einmlp.training", "einmlp.testing"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), extraglobs={"einmlp": einmlp}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
