"""Shared entry point of every stage: parse args, validate params, turn dlpipe errors into exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable

from dlpipe import profile
from dlpipe.config import Params, load_params
from dlpipe.errors import DlpipeError
from dlpipe.paths import ProjectPaths
from dlpipe.tracking import store
from dlpipe.training.threads import apply_cpu_threads

log = logging.getLogger("dlpipe")


# Libraries' chatter a user cannot act on: device banners and tips, "study created/loaded", "validating the
# input example", registry notices; their warnings and errors still show.
QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "optuna", "mlflow", "alembic")


def setup_logging(level: int = logging.INFO) -> None:
    """One line per event from dlpipe; third-party progress bars and notices off (stages and workers call it)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    dumps = logging.getLogger("mlflow.store.db.utils")  # SQL dumps of what a stage reports in one line
    if not any(isinstance(f, store.KnownStoreErrors) for f in dumps.filters):
        dumps.addFilter(store.KnownStoreErrors())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts" bars
    import optuna  # its own handler resets its logger's level on first use: set it through its API

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning on torch 2.15, harmless
    # frozen transfer backbones keep their BatchNorm statistics by staying in eval mode: intended
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `dvc queue kill` and schedulers send SIGTERM: end runs as KILLED


def prepare_process(params: Params) -> None:
    """Once per process that trains: logging, SIGTERM as an interrupt, the CPU thread count."""
    setup_logging()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    apply_cpu_threads(params.trainer)


def fail(prog: str, exc: BaseException) -> int:
    """Print a dlpipe error as one line per problem on stderr and return its exit code."""
    code = exc.exit_code if isinstance(exc, DlpipeError) else 1
    for line in str(exc).splitlines() or [type(exc).__name__]:
        print(f"{prog}: error: {line}", file=sys.stderr)
    return code


def stage_main(
    name: str,
    run: Callable[..., object],
    argv: list[str] | None = None,
    with_arch: bool = False,
) -> int:
    """Run stage `name`: `run(params, paths)` or, with `with_arch`, `run(params, paths, arch)`."""
    parser = argparse.ArgumentParser(prog=f"dlpipe-{name}", description=f"dlpipe {name} stage")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml in the project root)")
    if with_arch:
        parser.add_argument("--arch", required=True, help="architecture name")
    args = parser.parse_args(argv)
    profile.stage_started()
    setup_logging()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    prog = f"dlpipe {name}"
    try:
        paths = ProjectPaths.from_env()
        params = load_params(args.params or paths.params)
        apply_cpu_threads(params.trainer)
        if with_arch:
            if args.arch not in params.architectures:
                raise_unknown_arch(args.arch, params)
            run(params, paths, args.arch)
        else:
            run(params, paths)
    except DlpipeError as exc:
        return fail(prog, exc)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a locked or corrupt MLflow store, a full disk: one line, not the SQL MLflow tried
        known = store.explain(exc)
        if known is None:
            raise
        return fail(prog, known)
    return 0


def raise_unknown_arch(arch: str, params: Params) -> None:
    from dlpipe.errors import ConfigError

    raise ConfigError(f"--arch: {arch!r} is not in params architectures ({', '.join(params.architectures)})")
