"""The DAG-test recipe of docs/emulator.md works as written: taken from the page and run for real.

A user's project is laid out in a temporary directory (an example DAG as
``dags/my_dag.py``, the page's ``tests/conftest.py`` and
``tests/test_my_dag.py``), and pytest runs it in a subprocess from another
directory: both the ``airflow dags test`` subprocess and the in-process
``dag.test()`` must pass against the emulator fixture.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "emulator.md"


def doc_block(first_line: str) -> str:
    """The fenced Python block of docs/emulator.md that starts with ``first_line``."""
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL):
        if block.startswith(first_line + "\n"):
            return block
    raise AssertionError(f"docs/emulator.md has no python block starting {first_line!r}")


@pytest.mark.integration
def test_the_documented_dag_test_recipe_runs_from_any_directory(tmp_path):
    project = tmp_path / "project"
    (project / "dags").mkdir(parents=True)
    (project / "tests").mkdir()
    example = (REPO / "dags_examples" / "runcomfy_flux_kontext_edit.py").read_text()
    (project / "dags" / "my_dag.py").write_text(
        example.replace('dag_id="runcomfy_flux_kontext_edit"', 'dag_id="my_dag"')
    )
    (project / "tests" / "conftest.py").write_text(doc_block("# tests/conftest.py"))
    (project / "tests" / "test_my_dag.py").write_text(doc_block("# tests/test_my_dag.py"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(project / "tests"), "-q", "-p", "no:cacheprovider",
         "-o", "asyncio_default_fixture_loop_scope=function"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
