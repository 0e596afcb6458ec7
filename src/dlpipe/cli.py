"""The `dlpipe` command: check, list (and, as the pipeline grows, promote, predict, ...)."""

from __future__ import annotations

import argparse
import sys

from dlpipe.errors import DlpipeError
from dlpipe.stages.runner import fail


def cmd_check(args: argparse.Namespace) -> int:
    from dlpipe.config import load_params

    params = load_params(args.params_file)
    print(f"{args.params_file}: ok ({params.data.name}; {', '.join(params.architectures)})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from dlpipe.data import DATASETS
    from dlpipe.models import ARCHITECTURES

    print("architectures:")
    for arch in ARCHITECTURES.values():
        print(f"  {arch.name:<12} {'/'.join(sorted(arch.kinds)):<14} {arch.description}")
    print("datasets:")
    for ds in DATASETS.values():
        print(f"  {ds.name:<14} {ds.kind:<14} {ds.description}")
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
    from dlpipe.predict import predict, use_project_store

    use_project_store(ProjectPaths.from_env().root, args.model)
    frame = predict(args.model, args.input, drop=args.drop)
    if args.output:
        write_text(args.output, frame.to_csv(index=False))
        print(f"{len(frame)} predictions written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(frame.to_csv(index=False))
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from dlpipe.evaluation.selection import is_positive_metric
    from dlpipe.stages import select
    from dlpipe.tracking import store

    params, paths = _project(args)
    metric = params.selection.metric
    if is_positive_metric(metric):  # per-class fold metrics may come from the store: refuse rather than create it
        store.connect(params.mlflow.tracking_uri, paths.root, f"dlpipe leaderboard (selection.metric {metric})")
    print(select.leaderboard_text(params, paths, csv=args.csv), end="")
    return 0


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
    p = sub.add_parser("leaderboard", help="the architectures ranked on the selection metric (from reports/)")
    p.add_argument("--params", default=None, help="params file (default: params.yaml in the project root)")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a Markdown table")
    p.set_defaults(func=cmd_leaderboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DlpipeError as exc:
        return fail(f"dlpipe {args.command}", exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
