"""pyproject.toml declares what dlpipe uses, and uses what it declares: every third-party module that src/dlpipe
imports belongs to a declared distribution (a dependency or an extra), and every declared dependency is imported
(or used through another package, or run as a command)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from helpers.project import REPO_ROOT

SRC = REPO_ROOT / "src" / "dlpipe"

# Distributions dlpipe uses without importing them: found through a call or a name in src/dlpipe.
USED_THROUGH = {
    "to_markdown": "tabulate",  # pandas.DataFrame.to_markdown imports tabulate, which pandas does not install
    "CmaEsSampler": "cmaes",  # optuna.samplers.CmaEsSampler imports cmaes, which Optuna does not install
}
# Declared dependencies src/dlpipe never imports, with the reason they are declared.
NOT_IMPORTED = {
    "dvc": "the `dvc` command runs the stages (dvc.yaml) and `make repro`",
    "django-js-lib-vega-embed": "scripts/build_plots_page.py inlines its vega JS into the offline plots page",
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.match(r"[A-Za-z0-9._-]+", requirement).group())


def declared() -> tuple[set[str], set[str]]:
    """(dependencies, dependencies and every extra's) as normalized distribution names."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    required = {requirement_name(r) for r in project["dependencies"]}
    extras = {requirement_name(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    return required, required | extras


def source_usage() -> tuple[dict[str, list[str]], set[str]]:
    """({top-level module imported by src/dlpipe: files importing it}, names used as attributes or names)."""
    modules: dict[str, list[str]] = {}
    names: set[str] = set()
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            found = []
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found = [node.module or ""]
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Name):
                names.add(node.id)
            for module in found:
                modules.setdefault(module.split(".")[0], []).append(str(path.relative_to(REPO_ROOT)))
    return modules, names


def third_party(modules: dict[str, list[str]]) -> dict[str, list[str]]:
    return {m: files for m, files in modules.items() if m not in sys.stdlib_module_names and m != "dlpipe"}


def test_every_module_src_imports_is_declared() -> None:
    _, allowed = declared()
    owners = packages_distributions()
    undeclared = {
        module: (owners.get(module, ["<not installed>"]), files[0])
        for module, files in third_party(source_usage()[0]).items()
        if not {normalize(d) for d in owners.get(module, [])} & allowed
    }
    assert not undeclared, f"imported by src/dlpipe, not declared in pyproject.toml: {undeclared}"


def test_every_package_used_through_another_is_declared() -> None:
    required, _ = declared()
    _, names = source_usage()
    missing = {name: dist for name, dist in USED_THROUGH.items() if name in names and dist not in required}
    assert not missing, f"src/dlpipe uses these without importing them; declare them: {missing}"


def test_every_declared_dependency_is_used() -> None:
    required, _ = declared()
    owners = packages_distributions()
    modules, names = source_usage()
    imported = {normalize(d) for m in third_party(modules) for d in owners.get(m, [])}
    through = {dist for name, dist in USED_THROUGH.items() if name in names}
    unused = required - imported - through - set(NOT_IMPORTED)
    assert not unused, f"declared in pyproject.toml, never used by src/dlpipe: {sorted(unused)}"


def test_the_import_walk_sees_a_real_third_party_import() -> None:
    modules, names = source_usage()
    assert "scipy" in third_party(modules) and "json" not in third_party(modules)
    assert "to_markdown" in names
