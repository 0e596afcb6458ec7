"""The tests' own layout: helpers are imported from tests/helpers/, never from conftest.py (which holds only fixtures
and hooks, and is pytest's to import)."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.project import REPO_ROOT

TESTS = REPO_ROOT / "tests"


def conftest_imports(path: Path) -> list[int]:
    """Line numbers in `path` that import conftest (`import conftest`, `from conftest import ...`)."""

    def imported(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        return [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []

    tree = ast.parse(path.read_text(), filename=str(path))
    return [n.lineno for n in ast.walk(tree) if any(m.split(".")[0] == "conftest" for m in imported(n))]


def test_no_test_imports_from_conftest() -> None:
    found = [f"{p.relative_to(REPO_ROOT)}:{n}" for p in sorted(TESTS.rglob("*.py")) for n in conftest_imports(p)]
    assert not found, f"import these from tests/helpers/ instead of conftest: {found}"


def test_the_check_sees_both_import_forms(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text("import os\nimport conftest\n\ndef f():\n    from conftest import REPO_ROOT\n")
    assert conftest_imports(sample) == [2, 5]
