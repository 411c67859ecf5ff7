"""The documentation's code runs and prints what its comments claim.

Every ```python block of a page runs, in order, in one namespace per page, in a fresh
interpreter. Blocks fenced as ```py are fragments shown for reading (signatures, before/after
snippets, the example pages' excerpts of scripts that run in tests/test_examples*.py)
and are not run. The site itself is built with warnings as errors by `.ci/run`
(`mkdocs build --strict`).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "```python" in p.read_text())
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def page_code(page: Path) -> str:
    return "\n".join(BLOCK.findall(page.read_text()))


def run_code(code: str, tmp_path) -> str:
    """Runs ``code`` in a fresh interpreter; returns its standard output."""
    script = tmp_path / "page.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_code_runs(page, tmp_path):
    run_code(page_code(page), tmp_path)


def test_sparsemax_output_in_getting_started_is_as_commented(tmp_path):
    stdout = run_code(page_code(DOCS / "getting-started.md") + "\n"
                      "print('RESULT', (probabilities.detach().tolist(), scores.grad.tolist(),"
                      " h_learned.detach().tolist()))\n", tmp_path)
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT"))
    probabilities, grad, h = eval(line[len("RESULT"):])  # noqa: S307 - our own output
    assert probabilities[0] == pytest.approx([1, 0, 0, 0], abs=1e-6)
    assert probabilities[1] == pytest.approx([0.25] * 4, abs=1e-6)
    assert grad[0] == pytest.approx([0, 0, 0, 0], abs=1e-5)
    assert grad[1] == pytest.approx([0.75, -0.25, -0.25, -0.25], abs=1e-5)
    assert h == pytest.approx([1.0, 0.5, 0.8, 1.2], abs=0.15)
