"""The study's command-line views from the select stage's reports: `dlpipe leaderboard` (compact, --all, --csv),
`dlpipe runs` (links from run ids), `dlpipe compare` (dvc exp show rows side by side), and the one-line errors."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.reports import (
    BASELINES,
    DEEP,
    leaderboard_frame,
    metrics,
    metrics_per_architecture,
    run_id,
    selection,
    write_reports,
)

from dlpipe import cli, views

UI = "http://127.0.0.1:5000"


@pytest.fixture
def reports_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proj"
    write_reports(root)
    monkeypatch.setenv("DLPIPE_ROOT", str(root))
    monkeypatch.chdir(root)
    return root


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(text: str) -> dict[str, list[str]]:
    """Model name -> the cells of its line (split on runs of 2+ spaces) of a printed table."""
    import re

    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) > 2 and cells[0].isdigit():
            rows[cells[1].split()[0]] = cells
    return rows


# --------------------------------------------------------------------------------------------------- leaderboard


def test_compact_leaderboard_of_8_architectures_and_4_baselines_fits_120_columns(reports_project, capsys) -> None:
    code, out, err = run_cli(capsys, "leaderboard")
    assert code == 0 and err == ""
    assert max(len(line) for line in out.splitlines()) <= 120
    rows = table_rows(out)
    assert list(rows) == list(DEEP + BASELINES)  # rank order of the CSV
    top = ["1", "transformer * ◆", "deep", "0.9900 ± 0.0010", "0.9850", "0.9839", "0.9828", "0.9817", "68,234"]
    assert rows["transformer"] == [*top, "0.0123"]
    assert rows["resnet"][8] == "11,175,370"
    assert rows["knn"][2:] == ["baseline", "0.9000 ± 0.0100", "0.8950", "0.8939", "0.8928", "0.8917", "-", "-"]
    assert [name for name, cells in rows.items() if cells[1].endswith("◆")] == ["transformer", "mlp", "perceptron"]
    assert [name for name, cells in rows.items() if "*" in cells[1]] == ["transformer"]  # the champion
    assert "-- test, macro --" in out
    assert "Ranked on cross-validated F1 (macro), mean ± std over 5 folds" in out
    assert "Champion: transformer on the cross-validated F1 (macro); its lead of +0.0100 over cnn is not" in out
    assert "Against the best baseline: on CV, the lead of +0.0800 over svc is significant (p =\n0.0010;" in out
    assert "Registered: dlpipe-digits version 4 (alias challenger); champion: version 3." in out


def test_weighted_selection_metric_shows_weighted_test_metrics() -> None:
    frame = leaderboard_frame("f1_weighted")
    rows = frame.astype(object).where(frame.notna(), "").astype(str).to_dict("records")
    out = views.leaderboard_compact(rows)
    top = table_rows(out)["transformer"]
    expected = [f"{frame.loc[0, f'test_{m}_weighted']:.4f}" for m in ("precision", "recall", "f1")]
    assert top[3:8] == ["0.9900 ± 0.0010", "0.9850", *expected]
    flat = " ".join(out.split())  # the caption wraps at 120 characters
    assert "CV F1 (weighted)" in out and "F1 weighted averages" in flat and "-- test, weighted --" in out


def test_positive_class_metric_shows_the_positive_class_test_values(tmp_path: Path) -> None:
    write_reports(tmp_path, metric="recall_positive", with_selection=False)
    _, rows = views.read_leaderboard(tmp_path / "reports" / "leaderboard.csv")
    out = views.leaderboard_compact(rows)
    assert "CV recall (pos)" in out and "P, R, F1 of the positive class" in " ".join(out.split())
    assert table_rows(out)["transformer"][3:8] == ["0.9900 ± 0.0010", "0.9850", "0.9870", "0.9863", "0.9856"]
    assert max(len(line) for line in out.splitlines()) <= 120


def test_all_prints_every_column_and_csv_the_file(reports_project, capsys) -> None:
    csv_text = (reports_project / "reports" / "leaderboard.csv").read_text()
    code, out, _ = run_cli(capsys, "leaderboard", "--csv")
    assert code == 0 and out == csv_text
    code, out, _ = run_cli(capsys, "leaderboard", "--all")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header == csv_text.splitlines()[0].split(",")
    row = table_rows(out)["transformer"]
    assert row[header.index("n_params")] == "68234" and row[header.index("ece")] == "0.0100"
    assert table_rows(out)["knn"][header.index("n_params")] == "-"


def test_leaderboard_without_selection_has_no_verdict(tmp_path: Path, capsys, monkeypatch) -> None:
    write_reports(tmp_path, with_selection=False)
    monkeypatch.setenv("DLPIPE_ROOT", str(tmp_path))
    code, out, _ = run_cli(capsys, "leaderboard")
    assert code == 0 and "Winner" not in out and len(table_rows(out)) == 12


def test_missing_leaderboard_is_one_line_naming_the_stage(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DLPIPE_ROOT", str(tmp_path))
    for args in (["leaderboard"], ["leaderboard", "--all"], ["leaderboard", "--csv"]):
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and out == ""
        assert err.strip().splitlines() == [
            f"dlpipe leaderboard: error: {tmp_path / 'reports' / 'leaderboard.csv'}: missing; run the study and the "
            "select stage first (dvc repro select)"
        ]
    assert list(tmp_path.iterdir()) == []


def test_a_csv_that_is_no_leaderboard_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "leaderboard.csv").write_text("a,b\n1,2\n")
    monkeypatch.setenv("DLPIPE_ROOT", str(tmp_path))
    code, _, err = run_cli(capsys, "leaderboard")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no 'architecture' column" in err


def test_leaderboard_and_argument_parsing_import_no_heavy_library(reports_project) -> None:
    """`python -X importtime` lists every module a process imported: none of torch, lightning, mlflow, pandas."""
    for args in (["leaderboard"], ["leaderboard", "--all"], ["--help"]):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "dlpipe.cli", *args],
            capture_output=True,
            text=True,
            cwd=reports_project,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
        assert "dlpipe" in imported
        assert not imported & {"torch", "lightning", "mlflow", "pandas", "numpy", "optuna", "sklearn", "pydantic"}


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"significant": True, "p_value": 0.0123, "t": 2.5},
        {"baseline": None},
        {"baseline": {**selection()["baseline"], "beats": False, "mean_difference": -0.02}},
        {"bayes": None},
        {"runner_up": None},
        {
            "rule": "smallest_within_rope",
            "winner": "mlp",
            "rule_detail": {"best": "transformer", "equivalent_to_best": {"p_right": 0.012}},
        },
    ],
)
def test_verdict_is_the_select_stages_sentence_without_markdown(change: dict) -> None:
    from dlpipe.evaluation.selection import selection_sentence

    chosen = {**selection(), **change}
    assert views.verdict(chosen) == selection_sentence(chosen).replace("**", "")


def test_registry_line() -> None:
    assert views.registry_line(selection(registry=False)) is None
    assert (
        views.registry_line(selection())
        == "Registered: dlpipe-digits version 4 (alias challenger); champion: version 3."
    )
    same = selection()
    same["registry"]["champion"] = 4
    assert views.registry_line(same).endswith("version 4 (alias challenger); it is the champion.")
    undecided = selection()
    message = "not compared: dlpipe-digits version 4 and champion version 3 were tested on different held-out ..."
    undecided["registry"]["promotion"] = {"action": "not_compared", "message": message}
    assert views.registry_line(undecided) == (
        "Registered: dlpipe-digits version 4 (alias challenger); champion: version 3. Not compared: dlpipe-digits "
        "version 4 and champion version 3 were tested on different held-out ..."
    )


# --------------------------------------------------------------------------------------------------- runs


def test_runs_text_links_every_run_in_model_training_mode_within_120_columns() -> None:
    sel = selection()
    experiments = {rid: "7" for rid in views.study_run_ids(sel)}
    experiments[run_id("gru", "tune")] = None  # a run the store does not have
    text = views.runs_text(sel, experiments, UI, champion={"name": "dlpipe-digits", "version": "3"})
    lines = text.splitlines()
    mode = "?workflowType=machine_learning"
    assert lines[:2] == [
        "champion: dlpipe-digits version 3 (alias champion)",
        f"  {UI}/#/models/dlpipe-digits/versions/3{mode}",
    ]
    assert lines[2].startswith("this study: transformer registered as dlpipe-digits version 4 (alias challenger")
    assert lines[3] == f"  {UI}/#/models/dlpipe-digits/versions/4{mode}"
    assert lines[4:7] == [
        f"select run: {sel['mlflow_run_id']}",
        f"  {UI}/#/experiments/7/runs/{sel['mlflow_run_id']}{mode}",
        f"the study's runs: {UI}/#/experiments/7{mode}",
    ]
    for arch in DEEP:
        for stage in ("tune", "cv", "train"):
            rid = run_id(arch, stage)
            line = next(x for x in lines if rid in x)
            assert line == (
                f"    {stage:<5}  {rid}  (not in the MLflow store)"
                if rid == run_id("gru", "tune")
                else f"    {stage:<5}  {UI}/#/experiments/7/runs/{rid}{mode}"
            )
    assert "* transformer" in lines and "  mlp" in lines
    assert lines[-1] == "* the champion"
    assert max(len(line) for line in lines) <= 120
    assert all(mode in line for line in lines if "http" in line)


def test_runs_text_flags_a_select_run_missing_from_the_store() -> None:
    sel = selection()
    experiments = {rid: "7" for rid in views.study_run_ids(sel)}
    experiments[sel["mlflow_run_id"]] = None
    text = views.runs_text(sel, experiments, UI)
    assert f"select run: {sel['mlflow_run_id']} (not in the MLflow store)" in text.splitlines()
    assert "the study's runs" not in text


def test_runs_text_without_a_store_or_registry() -> None:
    sel = selection(registry=False)
    sel["runs"]["mlp"]["tune"] = None  # tune disabled
    text = views.runs_text(sel, None, "http://mlflow.example:8000/")
    assert "http" not in text
    assert "champion: none" in text and "this study: transformer won; no model was registered" in text
    assert "    tune   (not run)" in text.splitlines()


def test_runs_command_without_selection_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DLPIPE_ROOT", str(tmp_path))
    code, out, err = run_cli(capsys, "runs")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"dlpipe runs: error: {tmp_path / 'reports' / 'selection.json'}: missing; the study has not been selected "
        "yet: run dvc repro select"
    ]


def test_runs_command_without_a_store_prints_ids_and_creates_nothing(reports_project, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out, err = run_cli(capsys, "runs", "--ui-url", "http://h:1")
    assert code == 0 and run_id("cnn", "cv") in out and "http://h:1/#/experiments" not in out
    assert err.startswith("dlpipe runs: note: no MLflow store at") and len(err.strip().splitlines()) == 1
    assert not (reports_project / "mlruns").exists()


# --------------------------------------------------------------------------------------------------- compare


def exp_row(rev: str, name: str | None, data: dict | None, error: dict | None = None) -> dict:
    files = {"reports/metrics.json": {"data": data} if data is not None else {"error": error}}
    return {"rev": rev, "name": name, "data": {"rev": rev, "metrics": files, "params": {}}, "error": None}


EXP_SHOW = [  # the shape of DVC 3's `dvc exp show --json`
    {**exp_row("workspace", None, metrics()), "experiments": None},
    {
        **exp_row("a" * 40, "main", metrics(version=3, champion="cnn")),
        "experiments": [
            {"name": "exp-b", "executor": None, "revs": [exp_row("b" * 40, "exp-b", metrics(version=5, shift=0.001))]},
            {
                "name": "broken",
                "executor": None,
                "revs": [exp_row("c" * 40, "broken", None, {"type": "FileNotFoundError", "msg": "no such file"})],
            },
        ],
    },
]


def test_exp_show_index_finds_names_revs_and_prefixes() -> None:
    index = views.exp_show_index(EXP_SHOW)
    assert views.find_experiment(index, "exp-b")["metrics"]["version"] == 5
    assert views.find_experiment(index, "main")["metrics"]["champion"] == "cnn"
    assert views.find_experiment(index, "bbbbbbb")["name"] == "exp-b"
    assert views.find_experiment(index, "workspace")["metrics"]["version"] == 4
    assert views.find_experiment(index, "abc") is None and views.find_experiment(index, "nope") is None
    assert views.known_names(index) == ["workspace", "main", "exp-b", "broken"]
    with pytest.raises(views.ReportMissing, match=r"broken: no reports/metrics.json \(no such file; run") as info:
        views.study_metrics("broken", views.find_experiment(index, "broken"))
    assert info.value.exit_code == 2
    ignored = {**views.find_experiment(index, "broken"), "error": "[Errno 2] No such file or directory: 'x'"}
    with pytest.raises(views.ReportMissing, match=r"its commit has none: reports/metrics.json must be tracked by Git"):
        views.study_metrics("broken", ignored)


def test_compare_text_side_by_side_with_std_test_baselines_params_and_significance() -> None:
    board_b = [dict(r) for r in leaderboard_frame().astype(str).to_dict("records") if r["architecture"] != "wide_deep"]
    for row in board_b:
        row["cv_mean"] = str(float(row["cv_mean"]) + 0.001)
    a = views.StudyView(
        "main",
        metrics(version=3, champion="cnn"),
        leaderboard_frame().astype(str).to_dict("records"),
        selection(),
        {"seed": 42, "train.max_epochs": 15, "models.cnn.hidden": [128]},
        select_run_stored=True,
    )
    b = views.StudyView(
        "exp-b",
        {**metrics(version=5, shift=0.001), "select_run": "gone" + "0" * 28},
        board_b,
        selection(),
        {"seed": 42, "train.max_epochs": 3, "models.cnn.hidden": [128], "reports/tuned.yaml:cnn.train.lr": 0.01},
        select_run_stored=False,
    )
    significance = {
        "a": "cnn",
        "b": "transformer",
        "alpha": 0.05,
        "ttest": {"k": 5, "mean_difference": 0.0126, "t": 2.6156, "p_value": 0.0591},
        "bayes": {"rope": 0.005, "p_left": 0.0109, "p_rope": 0.0839, "p_right": 0.9052},
    }
    text = views.compare_text(a, b, significance)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert lines[0].startswith("A = main, B = exp-b: the cross-validated F1 (macro) per model (mean ± std over 5 folds")
    rows = {line.split()[0]: re.split(r"\s{2,}", line.strip()) for line in lines if line[:1].isalpha()}
    assert rows["model"] == ["model", "kind", "A: CV", "A: test", "B: CV", "B: test", "B - A"]
    top = ["transformer", "deep", "0.9900 ± 0.0010", "0.9858", "0.9910 ± 0.0010 *", "0.9858", "+0.0010"]
    assert rows["transformer"] == top  # CV mean ± std and test (of the selection metric) in each, B - A
    assert rows["knn"][1:3] == ["baseline", "0.9000 ± 0.0100"]  # baselines beside the deep models
    assert rows["wide_deep"][-1] == "-"  # not in B
    assert rows["champion"] == ["champion", "cnn", "transformer"]
    assert rows["registered"] == ["registered version", "3", "5"]
    assert rows["select"][-1] == "gone" + "0" * 28 + " (not in the MLflow store)"
    assert any(re.split(r"\s{2,}", x.strip()) == ["train.max_epochs", "15", "3"] for x in lines)
    assert any(re.split(r"\s{2,}", x.strip()) == ["reports/tuned.yaml:cnn.train.lr", "(absent)", "0.01"] for x in lines)
    assert "models.cnn.hidden" not in text and "seed" not in text  # the same in both
    prose = " ".join(lines[-4:])
    assert "B's transformer minus A's cnn = +0.0126 (not significant at alpha=0.05" in prose
    assert "P(B better) 0.905" in prose


def test_compare_text_from_metrics_json_alone_and_a_skipped_comparison() -> None:
    """Commits whose leaderboard is not at hand: metrics.json of earlier versions (every architecture's CV value)."""
    a = views.StudyView("main", metrics_per_architecture(champion="cnn"))
    b = views.StudyView("exp-b", metrics_per_architecture(shift=0.001))
    text = views.compare_text(a, b, {"skipped": "their test sets differ (1 in A, 2 in B)"})
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:1].isalpha()}
    assert rows["cnn"] == ["cnn", "deep", "0.9800", "*", "-", "0.9810", "-", "+0.0010"]
    assert text.rstrip().endswith("The champions are not compared: their test sets differ (1 in A, 2 in B).")


def test_compare_text_from_todays_metrics_json_shows_each_champions_std_and_test() -> None:
    a, b = views.StudyView("main", metrics(champion="cnn")), views.StudyView("exp-b", metrics(shift=0.001))
    text = views.compare_text(a, b)
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:1].isalpha()}
    assert rows["cnn"][:5] == ["cnn", "deep", "0.9800", "±", "0.0020"] and "0.9758" in rows["cnn"]
    assert rows["transformer"][2:] and "0.9910" in rows["transformer"] and "0.9868" in rows["transformer"]
    assert "cv_mean" not in views.architecture_values(metrics()) and views.architecture_values(metrics()) == {
        "transformer": 0.99
    }


def test_compare_of_unknown_names_lists_the_known_ones(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("DLPIPE_ROOT", str(tmp_path))
    calls = []

    def fake_show(root, *options):  # the real DVC runs in tests/integration/test_compare_cli.py
        calls.append(options)
        if options and options[0] == "--rev":
            raise views.BadInputError(f"unknown Git revision {options[1]!r}")
        return json.loads(json.dumps(EXP_SHOW))

    monkeypatch.setattr(cli, "dvc_exp_show", fake_show)
    code, out, err = run_cli(capsys, "compare", "exp-b", "exp-z")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "dlpipe compare: error: exp-z: no such DVC experiment or revision; known: workspace, main, exp-b, broken"
    ]
    assert calls == [(), ("--all-commits",), ("--rev", "exp-z", "-n", "1")]
    code, out, _ = run_cli(capsys, "compare", "main", "exp-b")
    assert code == 0 and out.startswith("A = main, B = exp-b: ")


def test_champions_are_compared_on_their_fold_runs_when_the_test_sets_match(tmp_path, mlflow_template_db) -> None:
    from helpers.mlflow_store import install_mlflow_store
    from mlflow.tracking import MlflowClient

    from dlpipe.evaluation.statistics import corrected_resampled_ttest

    client = MlflowClient(tracking_uri=install_mlflow_store(tmp_path, mlflow_template_db))
    exp = client.create_experiment("unit/compare")
    folds = {"cnn": [0.99, 0.98, 0.995, 0.99, 0.985], "lstm": [0.97, 0.975, 0.98, 0.96, 0.97]}

    def study(name: str, winner: str, test_set: str = "t1", **params) -> views.StudyView:
        cv_run = client.create_run(exp, run_name=f"cv-{winner}").info.run_id
        for k, value in enumerate(folds[winner]):
            child = client.create_run(exp, tags={"mlflow.parentRunId": cv_run, "fold": str(k)}).info.run_id
            client.log_metric(child, "f1_macro", value)
            client.set_terminated(child)
        chosen = {**selection(), "winner": winner, "test_set_hash": test_set, "test_train_ratio": 0.25}
        chosen["runs"] = {winner: {"cv": cv_run}}
        return views.StudyView(name, metrics(champion=winner), selection=chosen, params={"seed": 42, **params})

    a, b = study("A", "cnn"), study("B", "lstm")
    result = cli.champions_compared(a, b, client)
    expected = corrected_resampled_ttest(folds["lstm"], folds["cnn"], 0.25)
    assert (result["a"], result["b"]) == ("cnn", "lstm")
    assert result["ttest"]["p_value"] == pytest.approx(expected.p_value)
    assert result["ttest"]["mean_difference"] == pytest.approx(-0.017)
    assert result["bayes"]["p_left"] > 0.5  # A's cnn is practically better
    assert cli.champions_compared(a, study("C", "lstm", "t2"), client) == {
        "skipped": "their test sets differ (t1 in A, t2 in B)"
    }
    assert cli.champions_compared(a, study("D", "lstm", seed=7), client)["skipped"].startswith("their folds differ")
    assert cli.champions_compared(a, b, None) == {"skipped": "no MLflow store holds their fold scores"}


@pytest.mark.parametrize("args", [["list"], ["--help"], ["compare", "--help"], ["runs", "--help"]])
def test_other_views_fit_120_columns(capsys, args: list[str]) -> None:
    with contextlib.suppress(SystemExit):  # --help exits
        cli.main(args)
    out = capsys.readouterr().out
    assert out and max(len(line) for line in out.splitlines()) <= 120


def test_runs_link_is_the_studys_page_or_a_one_line_error(reports_project, capsys, monkeypatch, mlflow_template_db):
    from helpers.mlflow_store import install_mlflow_store
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out, err = run_cli(capsys, "runs", "--link")
    assert code == 2 and out == ""  # no store: `make ui` falls back to the experiment list
    assert err.strip().splitlines()[-1] == (
        "dlpipe runs: error: the select run is not in the MLflow store: no link to the study"
    )
    client = MlflowClient(tracking_uri=install_mlflow_store(reports_project, mlflow_template_db))
    exp = client.create_experiment("dlpipe/digits")
    select_run = client.create_run(exp).info.run_id
    sel = json.loads((reports_project / "reports" / "selection.json").read_text())
    (reports_project / "reports" / "selection.json").write_text(json.dumps({**sel, "mlflow_run_id": select_run}))
    code, out, err = run_cli(capsys, "runs", "--link")
    assert code == 0 and out == f"{UI}/#/experiments/{exp}?workflowType=machine_learning\n"


def test_experiments_view_shows_champions_and_changed_params_in_120_columns() -> None:
    shown = json.loads(json.dumps(EXP_SHOW))
    params = {"seed": 42, "train": {"max_epochs": 15, "lr": 0.001}, "models": {"mlp": {"hidden": [128, 64]}}}
    long = {f"tune.spaces.k{i}": i for i in range(40)}  # many changed keys: cut to the width

    def with_params(entry: dict, changes: dict) -> None:
        merged = json.loads(json.dumps(params))
        merged["train"].update(changes.get("train", {}))
        merged.update({k: v for k, v in changes.items() if k != "train"})
        entry["data"]["params"] = {"params.yaml": {"data": merged}}

    with_params(shown[0], {"seed": 7})  # the workspace, against the commit
    with_params(shown[1], {})
    with_params(shown[1]["experiments"][0]["revs"][0], {"train": {"max_epochs": 3}})
    with_params(shown[1]["experiments"][1]["revs"][0], long)
    text = views.experiments_text(shown)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    rows = {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line) for line in lines[2:]}
    assert rows["workspace"] == ["workspace", "transformer", "0.9900", "4", "seed=7"]
    assert rows["main"] == ["main", "cnn", "0.9800", "3", "(the commit)"]
    assert rows["exp-b"] == ["exp-b", "transformer", "0.9910", "5", "train.max_epochs=3"]
    assert rows["broken"][1:4] == ["-", "-", "-"] and rows["broken"][-1].endswith("…")
