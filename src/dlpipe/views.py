"""What the study's command-line views print: pure functions from the select stage's reports to text.

- the leaderboard (`reports/leaderboard.csv`, the verdict from `reports/selection.json`): a compact table, every
  column, or the CSV as it is;
- the study's runs (`reports/selection.json`) with MLflow UI links;
- two DVC experiments side by side (`dvc exp show --json`, each one's `reports/metrics.json`).

Standard library, dlpipe.metric_names and dlpipe.evaluation.wording only: `dlpipe leaderboard` must answer at once,
without torch, Lightning or MLflow (the CLI looks up what the store knows and hands it in).
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlpipe.errors import BadInputError
from dlpipe.evaluation.wording import as_number, baseline_sentence
from dlpipe.metric_names import LABELS, is_positive_metric

SELECT_STAGE = "dvc repro select"
DEFAULT_UI_URL = "http://127.0.0.1:5000"
METRICS_FILE = "reports/metrics.json"
# metrics.json keys that are not an architecture's CV value (metrics.json of older versions had one key per
# architecture; today's has the champion's cv_mean, cv_std and test)
STUDY_KEYS = ("champion", "version", "select_run", "metric", "cv_mean", "cv_std", "test")
MISSING = "-"
WIDTH = 120  # the compact leaderboard and its prose fit a terminal this wide


class ReportMissing(BadInputError):
    """A report a view reads is absent or unreadable: the stage that writes it has not run."""


class UnknownExperiment(BadInputError):
    """`dlpipe compare` was given a name that `dvc exp show` does not list."""


# --------------------------------------------------------------------------------------------------- reading


def read_leaderboard(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of reports/leaderboard.csv, in rank order (ReportMissing naming the stage to run)."""
    if not path.is_file():
        raise ReportMissing(f"{path}: missing; run the study and the select stage first ({SELECT_STAGE})")
    reader = csv.DictReader(io.StringIO(path.read_text()))
    rows = list(reader)
    columns = list(reader.fieldnames or [])
    if "architecture" not in columns:
        raise ReportMissing(f"{path}: no 'architecture' column (not a dlpipe leaderboard); run {SELECT_STAGE} again")
    return columns, rows


def read_selection(path: Path, required: bool = True) -> dict | None:
    """reports/selection.json; None when it is absent and not `required`."""
    if not path.is_file():
        if not required:
            return None
        raise ReportMissing(f"{path}: missing; the study has not been selected yet: run {SELECT_STAGE}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportMissing(
            f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); run {SELECT_STAGE} again"
        ) from None
    if not isinstance(data, dict) or not data.get("winner"):
        raise ReportMissing(f"{path}: names no winner; run {SELECT_STAGE} again")
    return data


# --------------------------------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 4) -> str:
    """A float with `digits` decimals; an int (or integer text) as it is; empty or NaN as '-'; text as it is."""
    if value is None or value == "":
        return MISSING
    number = as_number(value)
    if number is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("+-").isdigit()):
        return str(int(number))
    return f"{number:.{digits}f}"


def _integral(values: Iterable[Any]) -> bool:
    numbers = [as_number(v) for v in values if v not in (None, "")]
    return bool(numbers) and all(n is not None and n.is_integer() for n in numbers)


def _count(value: Any) -> str:
    number = as_number(value)
    return MISSING if number is None else f"{int(number):,}"


def _mean_std(mean: Any, std: Any) -> str:
    if as_number(mean) is None:
        return MISSING
    return fmt(mean) if as_number(std) is None else f"{fmt(mean)} ± {fmt(std)}"


def _text(value: Any) -> str:
    return MISSING if value is None or value == "" else str(value)


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    right: Sequence[bool] | None = None,
    group: tuple[int, int, str] | None = None,
) -> str:
    """A plain-text table: columns two spaces apart, `right`-aligned where asked (numbers), no trailing spaces.

    `group` (first, last, label): a line above the headers that spans columns first..last with the label.
    """
    rows = [list(r) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    right = right or [False] * len(headers)

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "  ".join(parts).rstrip()

    lines = [line(headers), *(line(r) for r in rows)]
    if group:
        first, last, label = group
        start = sum(widths[:first]) + 2 * first
        span = sum(widths[first : last + 1]) + 2 * (last - first)
        lines.insert(0, " " * start + f" {label} ".center(span, "-"))
    return "\n".join(lines) + "\n"


def wrap(text: str, width: int = WIDTH) -> str:
    """Prose lines for a terminal: at most `width` characters, ending in a newline."""
    return textwrap.fill(text, width, break_on_hyphens=False) + "\n"


def metric_label(metric: str) -> str:
    return LABELS.get(metric, metric)


def averaging(metric: str) -> str:
    """Whose test precision/recall/F1 the compact table shows: macro, weighted, or the positive class (as
    evaluation.selection.averaging_of, which imports pandas)."""
    if is_positive_metric(metric):
        return "positive"
    return "weighted" if metric.endswith("_weighted") else "macro"


def short_label(metric: str) -> str:
    """F1 (macro), recall (pos): a column header."""
    return f"{metric.removesuffix('_positive')} (pos)" if is_positive_metric(metric) else metric_label(metric)


def leaderboard_compact(rows: list[dict[str, str]], metric: str | None = None, champion: str | None = None) -> str:
    """Rank, model, kind, CV mean ± std of the selection metric, test accuracy and precision/recall/F1 of the
    selection metric's averaging, parameters and latency: one line per model; the champion marked *, models on the
    Pareto front ◆ (as in reports/leaderboard.md)."""
    metric = metric or (rows[0].get("selection_metric") if rows else None) or "f1_macro"
    avg = averaging(metric)
    tests = ["accuracy", f"precision_{avg}", f"recall_{avg}", f"f1_{avg}"]
    headers = ["#", "model", "kind", f"CV {short_label(metric)}", "acc", "P", "R", "F1", "params", "ms/sample"]
    body = []
    for row in rows:
        kind = row.get("kind") or "deep"
        name = row.get("architecture", "")
        name += " *" if name == champion and kind == "deep" else ""
        name += " ◆" if _true(row.get("pareto")) else ""
        cells = [row.get("rank", ""), name, kind, _mean_std(row.get("cv_mean"), row.get("cv_std"))]
        cells += [fmt(row.get(f"test_{m}")) for m in tests]
        cells += [_count(row.get("n_params")), fmt(row.get("latency_ms_per_sample"))]
        body.append(cells)
    right = [True, False, False] + [True] * (len(headers) - 3)
    folds = {row.get("folds") for row in rows} - {None, ""}
    over = f" over {fmt(folds.pop())} folds" if len(folds) == 1 else " over the folds"
    averages = "of the positive class" if avg == "positive" else f"{avg} averages"
    caption = (
        f"Ranked on cross-validated {metric_label(metric)}, mean ± std{over}; test: the held-out test set "
        f"(P, R, F1 {averages}); ms/sample: CPU latency. "
        + ("* champion; " if champion else "")
        + "◆ on the Pareto front (CV score, latency, parameters)."
    )
    group = (4, 7, "test" if avg == "positive" else f"test, {avg}")
    return wrap(caption) + "\n" + table(headers, body, right, group)


def leaderboard_every_column(columns: list[str], rows: list[dict[str, str]]) -> str:
    """Every column of the CSV, numbers rounded to 4 decimals."""
    whole = {c for c in columns if _integral(row.get(c) for row in rows)}  # counts written as 1234.0 beside NaN
    body = [[_count(row.get(c)).replace(",", "") if c in whole else fmt(row.get(c)) for c in columns] for row in rows]
    right = [all(as_number(row.get(c)) is not None or not row.get(c) for row in rows) for c in columns]
    return table(columns, body, right)


def verdict(selection: Mapping[str, Any]) -> str:
    """The champion and how it compares with the runner-up and the best baseline, from selection.json: the text of
    evaluation.selection.selection_sentence without Markdown (that module imports pandas and scipy)."""
    if selection.get("sentence"):
        return str(selection["sentence"]).replace("**", "")
    metric = metric_label(str(selection.get("metric", "")))
    text = f"Champion: {selection['winner']} on the cross-validated {metric}"
    detail = selection.get("rule_detail") or {}
    if selection.get("rule") == "smallest_within_rope" and detail.get("best") not in (None, selection["winner"]):
        p_right = as_number((detail.get("equivalent_to_best") or {}).get("p_right")) or 0.0
        text += (
            f", the smallest model practically equivalent to the best ({detail['best']}; P(worse by more than "
            f"{selection.get('rope')}) = {p_right:.3f})"
        )
    runner, p, lead = (
        selection.get("runner_up"),
        as_number(selection.get("p_value")),
        as_number(selection.get("mean_difference")),
    )
    if runner is None:
        text += " (the only deep model)."
    elif p is None or lead is None or selection.get("significant") is None:
        text += f", ahead of {runner}."
    else:
        outcome = "significant" if selection["significant"] else "not significant"
        text += f"; its lead of {lead:+.4f} over {runner} is {outcome} at alpha={selection.get('alpha')} (corrected "
        t = as_number(selection.get("t")) or 0.0
        text += f"resampled t-test over {selection.get('k')} folds: t={t:.3f}, p={p:.4f})"
        b = selection.get("bayes") or {}
        if all(as_number(b.get(k)) is not None for k in ("p_right", "p_rope", "p_left")):
            text += (
                f"; Bayesian correlated t-test, rope ±{selection.get('rope')}: P(better) {b['p_right']:.3f}, "
                f"P(equivalent) {b['p_rope']:.3f}, P(worse) {b['p_left']:.3f}"
            )
        text += "."
    text += baseline_sentence(selection.get("baseline") or {}, metric)
    return text


def registry_line(selection: Mapping[str, Any]) -> str | None:
    reg = selection.get("registry")
    if not reg:
        return None
    alias = reg.get("alias") or "challenger"
    champion = reg.get("champion")
    if champion is None:
        tail = "no champion"
    elif champion == reg.get("version"):
        tail = "it is the champion"
    else:
        tail = f"champion: version {champion}"
    line = f"Registered: {reg.get('name')} version {reg.get('version')} (alias {alias}); {tail}."
    promotion = reg.get("promotion") or {}
    if promotion.get("action") == "not_compared" and promotion.get("message"):
        line += f" {str(promotion['message'])[0].upper()}{str(promotion['message'])[1:]}"
    return line


def leaderboard_text(
    columns: list[str],
    rows: list[dict[str, str]],
    selection: Mapping[str, Any] | None = None,
    every_column: bool = False,
) -> str:
    """The leaderboard for a terminal, with the verdict and the registry outcome below when selection is known."""
    metric = str(selection["metric"]) if selection and selection.get("metric") else None
    champion = str(selection["winner"]) if selection and selection.get("winner") else None
    text = leaderboard_every_column(columns, rows) if every_column else leaderboard_compact(rows, metric, champion)
    if selection:
        lines = [verdict(selection), registry_line(selection)]
        text += "\n" + "".join(wrap(line) for line in lines if line)
    return text


# --------------------------------------------------------------------------------------------------- runs


# MLflow 3's UI opens an experiment in GenAI mode (traces, "Evaluation runs") unless the URL asks for model training;
# the choice is kept in the URL as the user browses, not in the experiment's tags (mlflow.experimentKind).
UI_MODE = "workflowType=machine_learning"


def ui_link(ui_url: str, route: str) -> str:
    """A page of the MLflow UI at `ui_url`, opened in model-training mode."""
    return f"{ui_url.rstrip('/')}/#/{route}?{UI_MODE}"


def experiment_link(ui_url: str, experiment_id: str) -> str:
    return ui_link(ui_url, f"experiments/{experiment_id}")


def run_link(ui_url: str, experiment_id: str | None, run_id: str | None) -> str:
    if not run_id or experiment_id is None:
        return ""
    return ui_link(ui_url, f"experiments/{experiment_id}/runs/{run_id}")


def model_link(ui_url: str, name: str, version: Any) -> str:
    return ui_link(ui_url, f"models/{name}/versions/{version}")


def study_run_ids(selection: Mapping[str, Any]) -> list[str]:
    """Every run id selection.json names: the select run, then each architecture's tune, cv and train runs."""
    ids = [selection.get("mlflow_run_id")]
    for stages in (selection.get("runs") or {}).values():
        ids += [(stages or {}).get(s) for s in ("tune", "cv", "train")]
    return list(dict.fromkeys(i for i in ids if i))


def runs_text(
    selection: Mapping[str, Any],
    experiments: Mapping[str, str | None] | None,
    ui_url: str = DEFAULT_UI_URL,
    champion: Mapping[str, Any] | None = None,
) -> str:
    """The champion, the select run and every architecture's tune/cv/train runs, each with its MLflow UI link on the
    line below (links open the UI in model-training mode; lines stay within WIDTH for the default UI URL).

    `experiments`: run id -> experiment id from the store (None: the store does not have that run; the mapping
    itself None: no store to ask, so no links). `champion`: {name, version} of alias champion in the registry now.
    """
    known = experiments is not None
    experiments = experiments or {}
    lines = []

    def entry(text: str, link: str | None) -> None:
        lines.append(text)
        if link and known:
            lines.append(f"  {link}")

    reg = selection.get("registry") or {}
    if champion:
        entry(
            f"champion: {champion['name']} version {champion['version']} (alias champion)",
            model_link(ui_url, champion["name"], champion["version"]),
        )
    elif reg.get("champion") is not None:
        entry(
            f"champion: {reg['name']} version {reg['champion']} (alias champion, as of select)",
            model_link(ui_url, reg["name"], reg["champion"]),
        )
    else:
        lines.append("champion: none")
    if reg:
        alias = reg.get("alias") or "challenger"
        entry(
            f"this study: {selection['winner']} registered as {reg['name']} version {reg['version']} "
            f"(alias {alias} at select)",
            model_link(ui_url, reg["name"], reg["version"]),
        )
    else:
        lines.append(f"this study: {selection['winner']} won; no model was registered")
    select_id = selection.get("mlflow_run_id")
    select_link = run_link(ui_url, experiments.get(select_id), select_id)
    missing = " (not in the MLflow store)" if select_id and known and not select_link else ""
    entry(f"select run: {select_id or MISSING}{missing}", select_link)
    if experiments.get(select_id) is not None:
        lines.append(f"the study's runs: {experiment_link(ui_url, experiments[select_id])}")
    body = []
    for arch, stages in (selection.get("runs") or {}).items():
        body.append(f"{'*' if arch == selection.get('winner') else ' '} {arch}")
        for stage in ("tune", "cv", "train"):
            rid = (stages or {}).get(stage)
            if not rid:
                cell = "(not run)"
            elif known and experiments.get(rid) is None:
                cell = f"{rid}  (not in the MLflow store)"
            else:
                cell = run_link(ui_url, experiments.get(rid), rid) or rid
            body.append(f"    {stage:<5}  {cell}")
    text = "\n".join(lines) + "\n"
    if body:
        text += "\n" + "\n".join(body) + "\n* the champion\n"
    return text


# --------------------------------------------------------------------------------------------------- compare


def exp_show_row(entry: dict) -> dict:
    """One row of `dvc exp show --json`: {"name", "rev", "metrics": the data of reports/metrics.json or None,
    "error": why not, "params": its params as dotted keys}."""
    data = entry.get("data") or {}
    metrics, error = None, entry.get("error")
    files = data.get("metrics") or {}
    key = METRICS_FILE if METRICS_FILE in files else next((k for k in files if k.endswith(f"/{METRICS_FILE}")), None)
    if key is None:
        error = error or f"no {METRICS_FILE} in its metrics"
    elif "data" in files[key]:
        metrics = files[key]["data"]
    else:
        error = (files[key].get("error") or {}).get("msg") or f"{METRICS_FILE} unreadable"
    return {
        "name": entry.get("name") or entry.get("rev"),
        "rev": entry.get("rev"),
        "metrics": metrics,
        "error": error if metrics is None else None,
        "params": flatten_params(data.get("params") or {}),
    }


def exp_show_rows(exp_show: list[dict]) -> list[tuple[dict, dict | None]]:
    """(row, the row of the commit it started from) for the workspace, each baseline commit and its experiments;
    the workspace's baseline is the first commit, a commit has none."""
    out: list[tuple[dict, dict | None]] = []
    commits = [exp_show_row(b) for b in exp_show or [] if b.get("rev") != "workspace"]
    for baseline in exp_show or []:
        row = exp_show_row(baseline)
        out.append((row, commits[0] if baseline.get("rev") == "workspace" and commits else None))
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                out.append((exp_show_row({**rev, "name": rev.get("name") or exp.get("name")}), row))
    return out


def exp_show_index(exp_show: list[dict]) -> dict[str, dict]:
    """Rows of `dvc exp show --json` (see exp_show_row) keyed by name and by rev."""
    index: dict[str, dict] = {}
    for row, _ in exp_show_rows(exp_show):
        for k in (row["name"], row["rev"]):
            if k:
                index.setdefault(str(k), row)
    return index


def experiments_text(exp_show: list[dict], width: int = WIDTH) -> str:
    """`dvc exp show` narrowed to what tells experiments apart: per experiment its champion, the champion's CV value,
    the registered version and the params it changed from the commit it started from (cut to `width`)."""
    body = []
    for row, base in exp_show_rows(exp_show):
        metrics = row["metrics"] or {}
        champion = metrics.get("champion")
        changed = changed_params(base["params"], row["params"]) if base is not None else []
        name = str(row["rev"])[:7] if row["name"] == row["rev"] != "workspace" else str(row["name"])
        body.append(
            [
                name,
                _text(champion),
                fmt(metrics.get("cv_mean", metrics.get(champion))) if champion else MISSING,
                _text(metrics.get("version")),
                ", ".join(f"{k}={b}" for k, _, b in changed) or ("(the commit)" if base is None else "(none)"),
            ]
        )
    headers = ["experiment", "champion", "CV", "version", "params changed from its commit"]
    fixed = sum(max(len(h), *(len(r[i]) for r in body)) + 2 for i, h in enumerate(headers[:-1])) if body else 0
    room = max(20, width - fixed)
    for r in body:
        r[-1] = r[-1] if len(r[-1]) <= room else r[-1][: room - 1] + "…"
    caption = (
        "Experiments (dvc exp show): the champion, its cross-validated selection metric, the registered version.\n\n"
    )
    return caption + table(headers, body, [False, False, True, True, False])


def find_experiment(index: Mapping[str, dict], name: str) -> dict | None:
    """An exact name or rev, else a unique rev prefix of at least 4 characters."""
    if name in index:
        return index[name]
    if len(name) >= 4:
        found = {id(r): r for k, r in index.items() if r["rev"] and str(r["rev"]).startswith(name)}
        if len(found) == 1:
            return next(iter(found.values()))
    return None


def known_names(index: Mapping[str, dict]) -> list[str]:
    return list(dict.fromkeys(r["name"] for r in index.values() if r["name"]))


def study_metrics(name: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics.json of one experiment (ReportMissing, exit 2, saying why when it has none)."""
    if row["metrics"] is None:
        error = str(row["error"])
        if "No such file" in error and row["rev"] != "workspace":  # the commit lacks it: git ignores the file
            hint = f"its commit has none: {METRICS_FILE} must be tracked by Git (not in .gitignore) for dvc exp show"
        else:
            hint = f"{error}; run the pipeline in it (dvc exp run)"
        raise ReportMissing(f"{name}: no {METRICS_FILE} ({hint})")
    if not isinstance(row["metrics"], dict):
        raise ReportMissing(f"{name}: {METRICS_FILE} is not a JSON object")
    return row["metrics"]


def architecture_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Each architecture's CV value of the selection metric: the numeric keys that are not study keys (older
    metrics.json), else the champion's `cv_mean`."""
    out = {}
    for key, value in metrics.items():
        if key in STUDY_KEYS or isinstance(value, bool):
            continue
        number = as_number(value)
        if number is not None:
            out[key] = number
    champion, cv_mean = metrics.get("champion"), as_number(metrics.get("cv_mean"))
    if not out and isinstance(champion, str) and cv_mean is not None:
        out[champion] = cv_mean
    return out


@dataclass
class StudyView:
    """What `dlpipe compare` knows of one experiment's study: its metrics.json, and where its commit (or the
    workspace) has them, its leaderboard rows, selection.json and params (dotted key -> value)."""

    name: str
    metrics: Mapping[str, Any]
    leaderboard: list[dict[str, str]] | None = None
    selection: Mapping[str, Any] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    select_run_stored: bool | None = None  # None: no MLflow store was asked


def flatten_params(files: Mapping[str, Any]) -> dict[str, Any]:
    """`dvc exp show --json` params ({file: {"data": {...}}}) as dotted keys; keys of files other than
    params.yaml are prefixed with the file (reports/tuned.yaml:cnn.train.lr)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            out[prefix] = value

    for file, entry in (files or {}).items():
        data = (entry or {}).get("data") if isinstance(entry, Mapping) else None
        if isinstance(data, Mapping):
            for key, value in data.items():
                walk(str(key) if file.endswith("params.yaml") else f"{file}:{key}", value)
    return out


def changed_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(key, value in a, value in b) of every key whose value differs, in a's order then b's new keys."""
    keys = list(dict.fromkeys([*a, *b]))
    missing = object()
    return [
        (k, _param(a.get(k, missing), missing), _param(b.get(k, missing), missing))
        for k in keys
        if a.get(k, missing) != b.get(k, missing)
    ]


def _param(value: Any, missing: object) -> str:
    if value is missing:
        return "(absent)"
    text = "null" if value is None else json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _models(study: StudyView) -> dict[tuple[str, str], dict[str, Any]]:
    """(architecture, kind) -> {cv_mean, cv_std, test}: the leaderboard's rows, else metrics.json's CV values."""
    if study.leaderboard:
        return {
            (r.get("architecture", ""), r.get("kind") or "deep"): {
                "cv_mean": as_number(r.get("cv_mean")),
                "cv_std": as_number(r.get("cv_std")),
                "test": as_number(r.get("test_selection")),
            }
            for r in study.leaderboard
        }
    m = study.metrics
    own = "cv_mean" in m  # today's metrics.json: the champion's scores alone
    return {
        (k, "deep"): {
            "cv_mean": v,
            "cv_std": as_number(m.get("cv_std")) if own else None,
            "test": as_number(m.get("test")) if own else None,
        }
        for k, v in architecture_values(m).items()
    }


def compare_text(a: StudyView, b: StudyView, significance: Mapping[str, Any] | None = None) -> str:
    """Two studies side by side: per model the CV mean ± std of the selection metric and the held-out test score in
    each (baselines included), B - A of the CV means; then champion, version, select run and test set; the params
    that differ; and `significance`, the two champions compared on their shared folds (see cli.champions_compared),
    or why they were not."""
    ma, mb = _models(a), _models(b)
    champ_a, champ_b = a.metrics.get("champion"), b.metrics.get("champion")

    def cv(models: dict, key: tuple[str, str], champion: Any) -> str:
        if key not in models:
            return MISSING
        m = models[key]
        return _mean_std(m["cv_mean"], m["cv_std"]) + (" *" if key == (champion, "deep") else "")

    def best(key: tuple[str, str]) -> float:
        return max(((m.get(key) or {}).get("cv_mean") or -math.inf) for m in (ma, mb))

    body = []
    for key in sorted(set(ma) | set(mb), key=lambda k: (-best(k), k)):
        va, vb = (ma.get(key) or {}).get("cv_mean"), (mb.get(key) or {}).get("cv_mean")
        diff = f"{vb - va:+.4f}" if va is not None and vb is not None else MISSING
        tests = [fmt((m.get(key) or {}).get("test")) for m in (ma, mb)]
        body.append([key[0], key[1], cv(ma, key, champ_a), tests[0], cv(mb, key, champ_b), tests[1], diff])
    metric = a.metrics.get("metric") or b.metrics.get("metric") or (a.selection or {}).get("metric")
    what = f"cross-validated {metric_label(str(metric))}" if metric else "cross-validated selection metric"
    folds = {str((s.selection or {}).get("k")) for s in (a, b)} - {"None"}
    over = f" over {folds.pop()} folds" if len(folds) == 1 else ""
    text = wrap(
        f"A = {a.name}, B = {b.name}: the {what} per model (mean ± std{over}; * the champion) and its score on "
        "the held-out test set; B - A of the CV means."
    )
    headers = ["model", "kind", "A: CV", "A: test", "B: CV", "B: test", "B - A"]
    text += "\n" + table(headers, body, [False, False, True, True, True, True, True])
    text += "\n" + _study_facts(a, b)
    changed = changed_params(a.params, b.params)
    if changed:
        text += "\nParameters that differ:\n" + table(["", "A", "B"], [[f"  {k}", va, vb] for k, va, vb in changed])
    elif a.params or b.params:
        text += "\nParameters: the same.\n"
    if significance:
        text += "\n" + wrap(champions_sentence(significance))
    return text


def _study_facts(a: StudyView, b: StudyView) -> str:
    def select_run(s: StudyView) -> str:
        rid = _text(s.metrics.get("select_run"))
        return rid + (" (not in the MLflow store)" if s.select_run_stored is False else "")

    rows = [
        ["champion", _text(a.metrics.get("champion")), _text(b.metrics.get("champion"))],
        ["registered version", _text(a.metrics.get("version")), _text(b.metrics.get("version"))],
        ["select run", select_run(a), select_run(b)],
        ["test set", *(_text((s.selection or {}).get("test_set_hash")) for s in (a, b))],
    ]
    return table(["", "A", "B"], rows)


def champions_sentence(result: Mapping[str, Any]) -> str:
    """The two champions compared on the same folds (result of cli.champions_compared), or why not."""
    if result.get("skipped"):
        return f"The champions are not compared: {result['skipped']}."
    t, bayes = result["ttest"], result["bayes"]
    outcome = "significant" if t["p_value"] < result["alpha"] else "not significant"
    return (
        f"Champions on the same {t['k']} folds and test set: B's {result['b']} minus A's {result['a']} = "
        f"{t['mean_difference']:+.4f} ({outcome} at alpha={result['alpha']}: corrected resampled t-test "
        f"t={t['t']:.3f}, p={t['p_value']:.4f}); Bayesian correlated t-test, rope ±{bayes['rope']}: "
        f"P(B better) {bayes['p_right']:.3f}, P(equivalent) {bayes['p_rope']:.3f}, P(A better) {bayes['p_left']:.3f}."
    )
