"""The README's library example runs as printed and shows the NLL of every round."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow  # a real training run
def test_readme_example_trains_and_prunes_three_rounds():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "run_sparse_flow" in b)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "README.md", "exec"), {})
    lines = out.getvalue().strip().splitlines()
    assert [int(re.match(r"round (\d+)", line).group(1)) for line in lines] == [0, 1, 2, 3]
    nlls = [float(re.search(r"test NLL ([-\d.]+)", line).group(1)) for line in lines]
    assert all(0 < v < 5 for v in nlls)


def test_readme_names_install_test_and_run_commands():
    text = README.read_text()
    assert "pip install torch==2.13.0" in text
    assert 'pip install -e ".[test]"' in text
    assert "python -m pytest" in text
    assert "snakemake --cores all" in text
