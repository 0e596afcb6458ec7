"""dvc.yaml says the truth: each stage's deps cover every dlpipe module its entry script can run (so a code change
reruns the stages that run it, and nothing else), and its outputs are the paths the code writes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from dlpipe.paths import ProjectPaths

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC["stages"]
# files a module reads as data rather than importing: the logged model's code is copied from the source file
DATA_FILES = {"src/dlpipe/tracking/model_logging.py": ["src/dlpipe/tracking/pyfunc_model.py"]}


def module_file(name: str) -> Path | None:
    path = SRC.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def package_of(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1])  # a module's package; for __init__ the package itself


def imported_modules(path: Path) -> set[str]:
    """Every dlpipe module `path` imports, at the top or inside functions, including `import_module(f"...")`."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level and path.is_relative_to(SRC):
                base = package_of(path).split(".")[: len(package_of(path).split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names |= set(re.findall(r"^(dlpipe(?:\.\w+)+)\.?$", node.value))
    dynamic = [n for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)]
    for joined in dynamic:  # import_module(f"dlpipe.models.{family}"): the whole package
        head = "".join(v.value for v in joined.values if isinstance(v, ast.Constant))
        if head.startswith("dlpipe.") and head.endswith("."):
            package = SRC.joinpath(*head.rstrip(".").split("."))
            names |= {f"{head}{p.stem}" for p in package.glob("*.py")}
    return {n for n in names if n == "dlpipe" or n.startswith("dlpipe.")}


def closure(entry: Path) -> set[str]:
    """Repository-relative files that running `entry` may execute (or read as code)."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                found = module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    files = {str(p.relative_to(REPO)) for p in seen}
    for source, data in DATA_FILES.items():
        if source in files:
            files |= set(data)
    return files


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def entry_script(stage: dict) -> str | None:
    match = re.match(r"python (pipelines/\w+\.py)", stage["cmd"])
    return match.group(1) if match else None


@pytest.mark.parametrize("name", [n for n, s in STAGES.items() if entry_script(s)])
def test_a_stage_depends_on_every_module_it_runs(name):
    stage = STAGES[name]
    script = entry_script(stage)
    deps = stage.get("deps", [])
    if name == "check":  # always runs: it needs no deps to rerun on a code change
        return
    missing = sorted(f for f in closure(REPO / script) if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {name}: deps miss {missing} (python tests/unit/test_dvc_yaml.py lists them)"


def test_editing_predict_or_the_cli_reruns_no_stage():
    for name, stage in STAGES.items():
        for path in ("src/dlpipe/predict.py", "src/dlpipe/cli.py"):
            assert not covered(path, stage.get("deps", [])), f"{name} depends on {path}"


def test_the_study_does_not_depend_on_select_or_promotion_code():
    deps = STAGES["study"]["deps"]
    for path in ("src/dlpipe/stages/select.py", "src/dlpipe/stages/promote.py", "src/dlpipe/tracking/registry.py"):
        assert not covered(path, deps)


def _declared_outputs() -> set[str]:
    out = set()
    for stage in STAGES.values():
        for kind in ("outs", "metrics"):
            for item in stage.get(kind, []):
                out.add(next(iter(item)) if isinstance(item, dict) else item)
    return out


def test_outputs_in_dvc_yaml_are_the_paths_the_code_writes(tmp_path):
    paths = ProjectPaths(tmp_path)

    def rel(path: Path) -> str:
        return str(path.relative_to(tmp_path))

    written = {
        rel(paths.inputs),
        rel(paths.raw),
        rel(paths.prepared / "splits.npz"),
        rel(paths.prepared / "folds.json"),
        rel(paths.prepared / "summary.json"),
        rel(paths.baselines_report),
        rel(paths.tuning_report("x").parent),
        rel(paths.cv_report("x").parent),
        rel(paths.test_report("x").parent),
        rel(paths.tuned_params),
        rel(paths.models),
        rel(paths.leaderboard_csv),
        rel(paths.leaderboard_md),
        rel(paths.selection),
        rel(paths.plots),
        rel(paths.metrics),
    }
    assert _declared_outputs() == written
    assert rel(paths.oof_predictions("x").parent) == rel(paths.cv_report("x").parent)
    assert rel(paths.test_predictions("x").parent) == rel(paths.test_report("x").parent)
    assert rel(paths.model_dir("x").parent) == rel(paths.models)


def test_downloaded_and_user_copied_data_is_no_stage_output(tmp_path):
    """DVC deletes a stage's outputs before it runs the stage: files a user copied into data/downloads/ must survive."""
    downloads = str(ProjectPaths(tmp_path).downloads.relative_to(tmp_path))
    for out in _declared_outputs():
        assert not covered(downloads, [out]) and not covered(out, [downloads]), out


def suggested_deps(stage: str) -> list[str]:
    """The code deps of `stage`: whole packages where every module runs, single files otherwise."""
    script = entry_script(STAGES[stage])
    files = closure(REPO / script)
    folders = []
    for folder in sorted({str(Path(f).parent) for f in files if f.startswith("src/dlpipe/")}, key=len):
        modules = {str(p.relative_to(REPO)) for p in (REPO / folder).glob("*.py")}
        if folder != "src/dlpipe" and modules <= files:
            folders.append(folder)
    rest = sorted(f for f in files - {script} if not covered(f, folders))
    return [script, *folders, *rest]


if __name__ == "__main__":  # `python tests/unit/test_dvc_yaml.py`: print every stage's code deps for dvc.yaml
    for name, stage in STAGES.items():
        if entry_script(stage) and name != "check":
            print(f"{name}:\n" + "".join(f"      - {d}\n" for d in suggested_deps(name)))
