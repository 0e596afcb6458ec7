"""The `dlpipe` command: check, list, promote, predict, and the study's views (leaderboard, runs, compare).

Parsing the command line imports nothing heavy: each command imports what it needs, so that `dlpipe leaderboard`
(reports only) answers at once while `dlpipe promote` pays for torch and MLflow.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIServer, make_server

from dlpipe.errors import BadInputError, DlpipeError


def cmd_check(args: argparse.Namespace) -> int:
    """What the check stage refuses (the same code): params, the CSV they name, the splits data.* asks for, and a
    Ray study's stores."""
    from dlpipe.executors import check_stores
    from dlpipe.paths import ProjectPaths
    from dlpipe.stages.check import validate

    paths = ProjectPaths.from_env()
    params = validate(Path(args.params_file), paths)
    check_stores(params, paths)  # as the check stage: a Ray study needs server stores
    print(f"{args.params_file}: ok ({params.data.name}; {', '.join(params.architectures)})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from dlpipe.data import DATASETS
    from dlpipe.models import ARCHITECTURES

    def rows(title: str, entries: list[tuple[str, str, str]]) -> None:
        """One entry a row, its description wrapped under itself so that no line passes 120 columns."""
        print(title)
        width = max(12, *(len(name) for name, _, _ in entries))
        for name, kinds, description in entries:
            lead = f"  {name:<{width}} {kinds:<14} "
            lines = textwrap.wrap(description, width=120 - len(lead)) or [""]
            print(lead + lines[0])
            for line in lines[1:]:
                print(" " * len(lead) + line)

    rows("architectures:", [(a.name, "/".join(sorted(a.kinds)), a.description) for a in ARCHITECTURES.values()])
    rows("datasets:", [(d.name, d.kind, d.description) for d in DATASETS.values()])
    return 0


def cmd_tune_worker(args: argparse.Namespace) -> int:
    from dlpipe.stages import tune

    return tune.worker_main(args)


def _project(args: argparse.Namespace):
    """(params, paths) of the project in $DLPIPE_ROOT or the working directory."""
    from dlpipe.config import load_params
    from dlpipe.paths import ProjectPaths

    paths = ProjectPaths.from_env()
    return load_params(args.params or paths.params), paths


def cmd_promote(args: argparse.Namespace) -> int:
    """Move alias champion (gated on the held-out test set); a refusal prints both scores and exits 0."""
    from dlpipe.errors import BadInputError
    from dlpipe.stages import promote

    params, paths = _project(args)
    if args.rollback and (args.version is not None or args.force):
        raise BadInputError("--rollback: takes no --version or --force")
    if args.rollback:
        decision = promote.rollback(params, paths, name=args.model_name)
    else:
        decision = promote.run(params, paths, version=args.version, force=args.force, name=args.model_name)
    print(decision.message)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from dlpipe.io import write_text
    from dlpipe.paths import ProjectPaths
    from dlpipe.predict import predict, unknown_categories_note, use_project_store

    use_project_store(ProjectPaths.from_env().root, args.model)
    frame = predict(args.model, args.input, drop=args.drop)
    note = unknown_categories_note(frame)
    if note:
        print(f"dlpipe predict: {note}", file=sys.stderr)
    if args.output:
        write_text(args.output, frame.to_csv(index=False))
        print(f"{len(frame)} predictions written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(frame.to_csv(index=False))
    return 0


def _fail(prog: str, exc: BaseException) -> int:
    """A dlpipe error as one line per problem on stderr; its exit code (as stages.runner.fail, without its imports)."""
    code = exc.exit_code if isinstance(exc, DlpipeError) else 1
    for line in str(exc).splitlines() or [type(exc).__name__]:
        print(f"{prog}: error: {line}", file=sys.stderr)
    return code


def _paths():
    from dlpipe.paths import ProjectPaths

    return ProjectPaths.from_env()


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """The select stage's leaderboard: reports/leaderboard.csv and the verdict in reports/selection.json."""
    from dlpipe import views

    paths = _paths()
    columns, rows = views.read_leaderboard(paths.leaderboard_csv)
    if args.csv:
        sys.stdout.write(paths.leaderboard_csv.read_text())
        return 0
    selection = views.read_selection(paths.selection, required=False)
    print(views.leaderboard_text(columns, rows, selection, every_column=args.all), end="")
    return 0


def _configured_tracking_uri(params_file: Path) -> str | None:
    """params' mlflow.tracking_uri, read without validating the whole file (that would import torch)."""
    import yaml

    try:
        raw = yaml.safe_load(params_file.read_text()) if params_file.is_file() else None
    except yaml.YAMLError:
        raise BadInputError(f"{params_file}: not valid YAML; check it with `dlpipe check`") from None
    value = ((raw or {}).get("mlflow") or {}).get("tracking_uri") if isinstance(raw, dict) else None
    return value if isinstance(value, str) and value else None


def _store_view(selection: dict, paths, params_file: Path) -> tuple[str | None, dict | None, dict | None]:
    """(tracking URI, run id -> experiment id, current champion {name, version}) from the MLflow store; all None
    without one."""
    from dlpipe import views
    from dlpipe.tracking import store

    try:
        uri = store.connect(_configured_tracking_uri(params_file), paths.root, "dlpipe runs")
    except store.NoStoreError as exc:
        print(f"dlpipe runs: note: {exc}; run ids shown without links", file=sys.stderr)
        return None, None, None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from dlpipe.tracking import registry

    client, experiments = MlflowClient(), {}
    for run_id in views.study_run_ids(selection):
        try:
            experiments[run_id] = client.get_run(run_id).info.experiment_id
        except MlflowException:
            experiments[run_id] = None
    champion = None
    name = (selection.get("registry") or {}).get("name")
    if name:
        version = registry.get_alias(name, registry.CHAMPION)
        champion = {"name": name, "version": version.version} if version else None
    return uri, experiments, champion


def cmd_runs(args: argparse.Namespace) -> int:
    """The current study's champion, select run and every architecture's runs, with MLflow UI links."""
    from dlpipe import views

    paths = _paths()
    selection = views.read_selection(paths.selection)
    uri, experiments, champion = _store_view(selection, paths, Path(args.params) if args.params else paths.params)
    ui_url = args.ui_url or (uri if uri and uri.startswith(("http://", "https://")) else views.DEFAULT_UI_URL)
    if args.link:  # the study's page alone (`make ui` prints it): MLflow's experiment list would drop the mode
        experiment = (experiments or {}).get(selection.get("mlflow_run_id"))
        if experiment is None:
            raise BadInputError("the select run is not in the MLflow store: no link to the study")
        print(views.experiment_link(ui_url, experiment))
        return 0
    print(views.runs_text(selection, experiments, ui_url, champion), end="")
    return 0


def dvc_exp_show(root: Path, *options: str) -> list[dict]:
    """`dvc exp show --json [options]` in `root` (BadInputError with DVC's own error line when it fails)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", *options]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or proc.stderr.splitlines()
        raise BadInputError(
            f"dvc exp show{' ' + ' '.join(options) if options else ''}: "
            f"{(errors or ['failed'])[-1].removeprefix('ERROR: ')}"
        )
    try:
        return json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        raise DlpipeError(f"dvc exp show --json printed no JSON: {proc.stdout[:200]!r}") from None


def _resolve_experiments(root: Path, names: list[str]) -> dict[str, dict]:
    """Each name's row of `dvc exp show`: this commit's experiments, else every commit's, else a Git revision."""
    from dlpipe import views

    index = views.exp_show_index(dvc_exp_show(root))
    found = {n: views.find_experiment(index, n) for n in names}
    if any(row is None for row in found.values()):
        index = views.exp_show_index(dvc_exp_show(root, "--all-commits"))
        found = {n: row or views.find_experiment(index, n) for n, row in found.items()}
    for name in [n for n, row in found.items() if row is None]:
        try:
            baselines = [e for e in dvc_exp_show(root, "--rev", name, "-n", "1") if e.get("rev") != "workspace"]
        except BadInputError:
            continue
        if baselines:
            found[name] = views.exp_show_index(baselines[:1])[baselines[0]["rev"]]
    unknown = [n for n, row in found.items() if row is None]
    if unknown:
        known = views.known_names(index)
        raise views.UnknownExperiment(
            f"{', '.join(unknown)}: no such DVC experiment or revision; known: "
            f"{', '.join(known) or 'none (run dvc exp run first)'}"
        )
    return found


def cmd_compare(args: argparse.Namespace) -> int:
    """Two DVC experiments' (or revisions') studies side by side: their leaderboards with std, test scores and
    baselines, the params that differ, and the two champions compared on their shared folds."""
    from dlpipe import views

    paths = _paths()
    found = _resolve_experiments(paths.root, [args.a, args.b])
    a, b = (_study_view(paths.root, n, found[n]) for n in (args.a, args.b))
    client = _compare_store(paths, (a, b))
    significance = champions_compared(a, b, client)
    print(views.compare_text(a, b, significance), end="")
    return 0


def _committed(root: Path, rev: str | None, path: str) -> str | None:
    """A file as the experiment's commit has it (the workspace's own file for `workspace`); None when absent."""
    if rev in (None, "workspace"):
        file = root / path
        return file.read_text() if file.is_file() else None
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def _study_view(root: Path, name: str, row: dict):
    import csv
    import io

    from dlpipe import views

    board = _committed(root, row["rev"], "reports/leaderboard.csv")
    selection = _committed(root, row["rev"], "reports/selection.json")
    try:
        chosen = json.loads(selection) if selection else None
    except json.JSONDecodeError:
        chosen = None
    return views.StudyView(
        name=name,
        metrics=views.study_metrics(name, row),
        leaderboard=list(csv.DictReader(io.StringIO(board))) if board else None,
        selection=chosen if isinstance(chosen, dict) else None,
        params=row.get("params") or {},
    )


def _compare_store(paths, studies) -> object | None:
    """An MlflowClient of the project's store (None without one, with a note); marks each study's select run as
    stored or not."""
    from dlpipe.tracking import store

    try:
        store.connect(_configured_tracking_uri(paths.params), paths.root, "dlpipe compare")
    except store.NoStoreError as exc:
        print(f"dlpipe compare: note: {exc}; select runs not checked, champions not compared", file=sys.stderr)
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for study in studies:
        run_id = study.metrics.get("select_run")
        if run_id:
            try:
                client.get_run(str(run_id))
                study.select_run_stored = True
            except MlflowException:
                study.select_run_stored = False
    return client


def champions_compared(a, b, client) -> dict:
    """The two champions' paired fold scores of the selection metric (from their cv runs' fold runs in MLflow)
    through the corrected resampled and Bayesian correlated t-tests; {"skipped": why} when they share no folds."""
    sa, sb = a.selection or {}, b.selection or {}
    if not sa or not sb:
        return {"skipped": "reports/selection.json is missing from " + (a.name if not sa else b.name)}
    if sa.get("test_set_hash") != sb.get("test_set_hash"):
        return {"skipped": f"their test sets differ ({sa.get('test_set_hash')} in A, {sb.get('test_set_hash')} in B)"}
    for key in ("seed", "data.folds", "data.limit"):
        if key in a.params and key in b.params and a.params[key] != b.params[key]:
            return {"skipped": f"their folds differ ({key}: {a.params[key]} in A, {b.params[key]} in B)"}
    if sa.get("metric") != sb.get("metric"):
        return {"skipped": f"they were chosen on different metrics ({sa.get('metric')}, {sb.get('metric')})"}
    if client is None:
        return {"skipped": "no MLflow store holds their fold scores"}
    scores = [_fold_scores(client, s) for s in (a, b)]
    for study, found in zip((a, b), scores, strict=True):
        if found is None:
            return {"skipped": f"the fold scores of {study.name}'s champion are not in the MLflow store"}
    if len(scores[0]) != len(scores[1]):
        return {"skipped": f"they were scored on {len(scores[0])} and {len(scores[1])} folds"}
    from dlpipe.evaluation.statistics import corrected_resampled_ttest, correlated_bayesian_ttest

    # n_test / n_train of the folds as select recorded it; 1 / (k - 1) for k equal folds
    ratio = float(sa.get("test_train_ratio") or 1.0 / (len(scores[0]) - 1))
    rope = float(sa.get("rope") or 0.0)
    return {
        "a": sa["winner"],
        "b": sb["winner"],
        "alpha": sa.get("alpha", 0.05),
        "ttest": corrected_resampled_ttest(scores[1], scores[0], ratio).to_dict(),
        "bayes": correlated_bayesian_ttest(scores[1], scores[0], ratio, rope).to_dict(),
    }


def _fold_scores(client, study) -> list[float] | None:
    """The champion's per-fold selection metric, from the finished fold runs under its cv run, in fold order."""
    selection = study.selection or {}
    cv_run = ((selection.get("runs") or {}).get(selection.get("winner")) or {}).get("cv")
    metric = selection.get("metric")
    if not cv_run or not metric:
        return None
    from mlflow.exceptions import MlflowException

    try:
        experiment = client.get_run(cv_run).info.experiment_id
        children = client.search_runs(
            [experiment], f"tags.mlflow.parentRunId = '{cv_run}' and attributes.status = 'FINISHED'", max_results=1000
        )
    except MlflowException:
        return None
    by_fold = {}
    for run in children:
        fold, value = run.data.tags.get("fold"), run.data.metrics.get(metric)
        if fold is not None and value is not None:
            by_fold.setdefault(int(fold), value)
    folds = selection.get("k")
    if not by_fold or (folds and sorted(by_fold) != list(range(int(folds)))):
        return None
    return [by_fold[k] for k in sorted(by_fold)]


def cmd_experiments(args: argparse.Namespace) -> int:
    """`dvc exp show` in 120 columns: each experiment's champion, its CV value, version and the params it changed."""
    from dlpipe import views

    options = ["--all-commits"] if args.all_commits else []
    print(views.experiments_text(dvc_exp_show(_paths().root, *options)), end="")
    return 0


def cmd_relocate(args: argparse.Namespace) -> int:
    """Point a moved or copied project's MLflow store at its own mlruns/ (configure and connect also do it)."""
    from dlpipe.tracking import store

    paths = _paths()
    db = paths.mlruns / store.DB_NAME
    if not db.is_file():
        raise store.NoStoreError(f"no MLflow store at {db}: nothing to relocate")
    done = store.relocate(paths.root, announce=False)
    for r in done:
        print(f"{r.db}: {r.rows} stored artifact paths moved from {r.old} to {r.new}")
    if not done:
        print(f"{db}: already records its artifacts under {paths.mlruns}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the study storage (tune.storage, else optuna/journal.log), on 127.0.0.1 by default."""
    try:
        import optuna_dashboard
    except ImportError:
        raise BadInputError(
            "optuna-dashboard is not installed: pip install 'dlpipe[dashboard]' (make install installs it)"
        ) from None
    from dlpipe.tuning.study import open_storage, redact, storage_location

    params, paths = _project(args)
    location = storage_location(params, paths)
    if "://" not in location and not Path(location).is_file():
        raise BadInputError(f"{location}: no Optuna studies yet; run the study stage first (dvc repro study)")
    app = optuna_dashboard.wsgi(open_storage(location))
    try:
        server = make_server(args.host, args.port, app, server_class=_DashboardServer)
    except OSError as exc:
        raise BadInputError(
            f"--host {args.host} --port {args.port}: cannot listen there ({exc.strerror or exc}); choose another --port"
        ) from None
    print(f"dlpipe dashboard: {redact(location)} on http://{args.host}:{args.port}/ (Ctrl-C stops it)", file=sys.stderr)
    serve_until_interrupted(server)
    return 0


class _DashboardServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connection does not keep the process alive


def serve_until_interrupted(server: WSGIServer) -> None:
    """Serve in a thread and wait in the main thread, where Ctrl-C lands: in a request handler, wsgiref's catch-all
    would swallow it (optuna-dashboard's own run_server then keeps serving)."""
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlpipe", description="dlpipe: reproducible deep-learning studies")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate a params file")
    p.add_argument("params_file", nargs="?", default="params.yaml")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("list", help="registered architectures and datasets, with the input kinds they take")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("tune-worker", help="join an architecture's Optuna study; run trials until its budget is done")
    p.add_argument("--arch", required=True, help="architecture name")
    p.add_argument("--params", default=None, help="params file (default: params.yaml in the project root)")
    p.add_argument("--worker-index", type=int, default=0, help="worker number: it uses GPU (index %% GPU count)")
    p.add_argument("--parent-run-id", default=None, help="MLflow run to log trials under (default: newest tune run)")
    p.add_argument("--rendezvous", default=None, help="TOKEN:N: wait for N workers of this launch (set by tune)")
    p.set_defaults(func=cmd_tune_worker)
    p = sub.add_parser("promote", help="move alias champion to the challenger if it beats the champion on the test set")
    p.add_argument("--params", default=None, help="params file (default: params.yaml in the project root)")
    p.add_argument("--version", type=int, default=None, help="promote this version (default: alias challenger)")
    p.add_argument("--force", action="store_true", help="promote without comparing with the champion")
    p.add_argument("--rollback", action="store_true", help="return champion to the version it replaced")
    p.add_argument("--model-name", default=None, help="registered model (default: registry.model_name)")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("predict", help="class predictions and probabilities from a logged model")
    p.add_argument("--model", required=True, help="model URI, e.g. models:/dlpipe-digits@champion")
    p.add_argument("--input", required=True, help="a .csv (features or flattened pixels), .npz (X) or image folder")
    p.add_argument("--output", default=None, help="CSV file to write (default: standard output)")
    p.add_argument("--drop", action="append", default=None, help="CSV column to ignore (repeatable), e.g. target")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("leaderboard", help="the models ranked on the selection metric (reports/leaderboard.csv)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--all", action="store_true", help="every column of the leaderboard, not the compact table")
    shape.add_argument("--csv", action="store_true", help="print reports/leaderboard.csv as it is")
    p.set_defaults(func=cmd_leaderboard)
    p = sub.add_parser("runs", help="the study's champion and MLflow runs, with MLflow UI links")
    p.add_argument("--params", default=None, help="params file (default: params.yaml in the project root)")
    p.add_argument(
        "--ui-url",
        default=None,
        help="MLflow UI base URL (default: the tracking server when params "
        "name one, else http://127.0.0.1:5000, where `make ui` serves)",
    )
    p.add_argument("--link", action="store_true", help="print only the link to the study's runs in the MLflow UI")
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("compare", help="two DVC experiments' leaderboards side by side (dvc exp show)")
    p.add_argument("a", metavar="A", help="DVC experiment name, revision or `workspace`")
    p.add_argument("b", metavar="B", help="DVC experiment name, revision or `workspace`")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("experiments", help="DVC experiments: champion, CV, version, the params changed (120 columns)")
    p.add_argument("--all-commits", action="store_true", help="every commit's experiments, not only this commit's")
    p.set_defaults(func=cmd_experiments)
    p = sub.add_parser("relocate", help="point a moved or copied project's MLflow store at its own mlruns/")
    p.set_defaults(func=cmd_relocate)
    p = sub.add_parser("dashboard", help="optuna-dashboard on the project's Optuna study storage")
    p.add_argument("--params", default=None, help="params file (default: params.yaml in the project root)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    p.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DlpipeError as exc:
        return _fail(f"dlpipe {args.command}", exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
