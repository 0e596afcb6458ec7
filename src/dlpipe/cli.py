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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlpipe", description="dlpipe: reproducible deep-learning studies")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate a params file")
    p.add_argument("params_file", nargs="?", default="params.yaml")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("list", help="registered architectures and datasets, with the input kinds they take")
    p.set_defaults(func=cmd_list)
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
