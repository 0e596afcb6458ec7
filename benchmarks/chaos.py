"""Chaos loop: a small study killed again and again at random moments must end exactly as an uninterrupted one.

    python benchmarks/chaos.py --kills 24 --seed 0        # `make chaos`; about 10 minutes on 2 cores

1. A fresh git + DVC project (a copy of this repository's dvc.yaml, pipelines/ and src/, a small study of two
   architectures on digits, two worker processes) runs `dvc repro` once, uninterrupted: the reference.
2. Rounds, each in a fresh copy of the same project: `dvc repro` is started and killed at a random moment of a
   chosen phase (tune, cv, train or select: the phase is watched live, in the stage's MLflow runs and DVC's output),
   then started again, and killed again, a few times; then it runs to completion. The signal is SIGKILL, SIGINT or
   SIGTERM, sent to the whole process group (a terminal's Ctrl-C, a scheduler's kill) or to the running stage's
   process alone (the OOM killer), all drawn from a random generator with a fixed seed.
3. Promotion: the last round's registry gets more versions of the model, then `dlpipe promote --version N --force`,
   `dlpipe promote --rollback` and the gated `dlpipe promote` are started and killed at random moments and run
   again (a rollback only if it is not done yet: what a user who looks first would do).

After every run that completes, it checks: every study has its budget of finished trials with the reference's params
and values, in order; no MLflow run is RUNNING; the final results have exactly one FINISHED run each (every fold of
the final cv parent, every finished trial of the final tune parent and no FINISHED run of a trial Optuna dropped,
one train run per architecture and params hash, the select run); the registry's aliases point at versions, no
champion move is pending, and replaying the audit trail gives the champion history and the champion (every move
has its record, none had to be adopted); no temporary file of dlpipe.io is left; the leaderboard (every column that
is not a time or a run id) and every fold's metrics equal the reference's; `dvc status` has nothing to do.

Lost work counts finished units that were done twice or thrown away: a fold, trial or final fit that finished
(its run FINISHED, or its result recorded) and was trained again. The closing line says how many kills were
survived (every check passed after the run that followed them) and how much work was lost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
ARCHS = ["perceptron", "mlp"]
FOLDS = 3
TRIALS = 3
STUDY = {  # small and quick: ~40 s for a clean `dvc repro` on 2 cores, every phase long enough to be hit
    "data": {"limit": 300, "folds": FOLDS},
    "architectures": ARCHS,
    "models": {"mlp": {"hidden": [16]}},
    "train": {"max_epochs": 5},
    "trainer": {"accelerator": "cpu", "progress_bar": False, "workers": 2},
    "tune": {"n_trials": TRIALS, "max_epochs": 4, "cv_folds": 0},
    "baselines": {"models": []},
}
MODEL = "dlpipe-digits"
EXPERIMENT = "dlpipe/digits"
PHASES = ("tune", "cv", "train", "select")
ORDER = {p: i for i, p in enumerate(("check", "study", "tune", "cv", "train", "select"))}
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}
RUN_TIMEOUT = 900  # seconds for a run that must complete
EXIT_TIMEOUT = 120  # seconds for a signalled process group to end (SIGINT/SIGTERM let workers close their runs)
# leaderboard columns that are measured, not computed: times, latencies, run ids and what depends on them
VOLATILE = re.compile(r"(seconds|latency|_ms|run_id|pareto)")


def log(msg: str) -> None:
    print(msg, flush=True)


# --- projects -------------------------------------------------------------------------------------------------------


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def env_for(root: Path) -> dict[str, str]:
    """The project's own sources (the ones DVC tracks) first, the venv's tools on PATH, its own MLflow store."""
    env = {k: v for k, v in os.environ.items() if k not in ("DLPIPE_ROOT", "MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(root / "src")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def sh(cmd: list[str], root: Path, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=root, env=env_for(root), capture_output=True, text=True, timeout=timeout)


def must(cmd: list[str], root: Path, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    proc = sh(cmd, root, timeout)
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} exited {proc.returncode} in {root}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def make_base(root: Path) -> Path:
    """A git + DVC project with the small study, checked, fetched and prepared (what every round starts from)."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".gitignore", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)
    for folder in ("pipelines", "src"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(base, STUDY), sort_keys=False))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "chaos@example.com"],
        ["git", "config", "user.name", "chaos"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "study"],
        ["dvc", "repro", "baselines"],
    ):
        must(cmd, root)
    return root


def fresh_copy(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest, symlinks=True)
    return dest


# --- watching a run -------------------------------------------------------------------------------------------------


class Watched:
    """A command in its own process group (its session), its output collected line by line as it comes."""

    def __init__(self, cmd: list[str], root: Path):
        self.root = root
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env_for(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.pgid = self.proc.pid
        self.lines: list[str] = []
        self.stage: str | None = None  # the DVC stage running now (its last "Running stage" line)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            found = re.search(r"Running stage '([^']+)'", line)
            if found:
                self.stage = found[1]

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def members(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.pgid and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def stage_process(self) -> psutil.Process | None:
        """The stage DVC is running (a child of dvc running pipelines/<stage>.py)."""
        try:
            for child in psutil.Process(self.proc.pid).children():
                if any("pipelines/" in part for part in child.cmdline()):
                    return child
        except psutil.Error:
            return None
        return None

    def signal(self, sig: int, whom: str) -> str:
        """Send `sig` to the group, or to the running stage alone; returns whom it reached."""
        if whom == "stage":
            stage = self.stage_process()
            if stage is not None:
                try:
                    stage.send_signal(sig)
                    return "stage"
                except psutil.Error:
                    pass
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            return "nobody"
        return "group"

    def wait_all(self, timeout: float) -> bool:
        """Wait until the command and every process of its group ended; False (and SIGKILL them) on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and not self.members():
                self._reader.join(timeout=5)
                return True
            time.sleep(0.2)
        for p in self.members():
            p.kill()
        self.proc.wait()
        return False

    def output(self) -> str:
        return "\n".join(self.lines)


def running_units(project: Path, pgid: int) -> set[str]:
    """Kinds of unit (trial, fold, train) whose MLflow run is RUNNING in a live process of group `pgid`."""
    db = project / "mlruns" / "mlflow.db"
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            rows = con.execute(
                "SELECT t.run_uuid, t.key, t.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
                "WHERE r.status = 'RUNNING' AND t.key IN ('stage', 'fold', 'trial', 'dlpipe.pid')"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return set()
    runs: dict[str, dict[str, str]] = {}
    for run, key, value in rows:
        runs.setdefault(run, {})[key] = value
    kinds = set()
    for tags in runs.values():
        try:
            if os.getpgid(int(tags.get("dlpipe.pid", "0"))) != pgid:
                continue
        except (ProcessLookupError, ValueError):
            continue
        if "fold" in tags:
            kinds.add("cv")
        elif "trial" in tags:
            kinds.add("tune")
        elif tags.get("stage") == "train":
            kinds.add("train")
    return kinds


def phase_of(run: Watched) -> str | None:
    """What the run is doing now: the DVC stage, and inside the study the unit kind that is training."""
    stage = run.stage
    if stage != "study":
        return stage
    units = running_units(run.root, run.pgid)
    for kind in ("train", "cv", "tune"):  # the latest phase that has a unit running
        if kind in units:
            return kind
    return "study"  # starting up, planning or summarising between units


def watch_phases(run: Watched, timeout: float = RUN_TIMEOUT) -> dict[str, tuple[float, float]]:
    """Run to completion and record when each phase was first and last seen (seconds from the start)."""
    spans: dict[str, list[float]] = {}
    deadline = time.monotonic() + timeout
    while run.proc.poll() is None and time.monotonic() < deadline:
        phase = phase_of(run)
        if phase:
            spans.setdefault(phase, [run.elapsed, run.elapsed])[1] = run.elapsed
        time.sleep(0.1)
    if run.proc.poll() is None:
        run.signal(signal.SIGKILL, "group")
        raise SystemExit(f"the reference run did not finish in {timeout}s")
    run.wait_all(EXIT_TIMEOUT)
    if run.proc.returncode != 0:
        raise SystemExit(f"the reference run failed ({run.proc.returncode}):\n{run.output()[-4000:]}")
    return {p: (a, b) for p, (a, b) in spans.items()}


# --- what a finished project holds ----------------------------------------------------------------------------------


def client(project: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def study_trials(project: Path, name: str) -> list:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(project / "optuna" / "journal.log")))
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def finished_trials(project: Path, arch: str) -> list[tuple]:
    name = read_json(project / "reports" / "tuning" / f"{arch}.json")["study_name"]
    return [
        (t.params, t.state.name, t.value) for t in study_trials(project, name) if t.state.name in ("COMPLETE", "PRUNED")
    ]


def leaderboard(project: Path) -> list[dict[str, str]]:
    import csv

    with open(project / "reports" / "leaderboard.csv") as fh:
        return [{k: v for k, v in row.items() if not VOLATILE.search(k)} for row in csv.DictReader(fh)]


def fold_metrics(project: Path) -> dict[str, Any]:
    return {arch: read_json(project / "reports" / "cv" / f"{arch}.json")["per_fold"] for arch in ARCHS}


@dataclass
class Reference:
    trials: dict[str, list[tuple]]
    leaderboard: list[dict[str, str]]
    folds: dict[str, Any]
    spans: dict[str, tuple[float, float]]
    seconds: float

    @classmethod
    def of(cls, project: Path, spans: dict[str, tuple[float, float]], seconds: float) -> Reference:
        return cls(
            {a: finished_trials(project, a) for a in ARCHS}, leaderboard(project), fold_metrics(project), spans, seconds
        )


def all_runs(project: Path) -> list:
    c = client(project)
    experiments = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(experiments, max_results=10000) if experiments else []


def artifact(run, name: str) -> Path:
    return Path(run.info.artifact_uri.removeprefix("file://")) / name


def check_runs(project: Path) -> list[str]:
    """No RUNNING run; exactly one FINISHED run for each unit of the final results."""
    problems = []
    runs = all_runs(project)
    by_id = {r.info.run_id: r for r in runs}
    running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    if running:
        problems.append(f"runs left RUNNING: {running}")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    for arch in ARCHS:
        cv_parent = read_json(project / "reports" / "cv" / f"{arch}.json")["mlflow_run_id"]
        folds = Counter(r.data.tags["fold"] for r in finished if r.data.tags.get("mlflow.parentRunId") == cv_parent)
        if folds != Counter({str(k): 1 for k in range(FOLDS)}):
            problems.append(f"cv {arch}: FINISHED fold runs of the final parent {dict(folds)}, want one per fold")
        tuning = read_json(project / "reports" / "tuning" / f"{arch}.json")
        numbers = sorted(
            t.number for t in study_trials(project, tuning["study_name"]) if t.state.name in ("COMPLETE", "PRUNED")
        )
        kids = Counter(
            int(r.data.tags["trial"])
            for r in finished
            if r.data.tags.get("mlflow.parentRunId") == tuning["mlflow_run_id"]
        )
        if kids != Counter(dict.fromkeys(numbers, 1)):
            problems.append(
                f"tune {arch}: FINISHED trial runs {dict(kids)} of the final parent, want one for each "
                f"finished trial {numbers}"
            )
        test = read_json(project / "reports" / "test" / f"{arch}.json")
        trains = [
            r
            for r in finished
            if r.data.tags.get("stage") == "train"
            and r.data.tags.get("architecture") == arch
            and r.data.tags.get("params_hash") == test["params_hash"]
        ]
        if [r.info.run_id for r in trains] != [test["mlflow_run_id"]]:
            problems.append(
                f"train {arch}: FINISHED train runs {[r.info.run_id for r in trains]}, want the report's "
                f"{test['mlflow_run_id']} alone"
            )
        for run_id in (cv_parent, tuning["mlflow_run_id"]):
            if by_id.get(run_id) is None or by_id[run_id].info.status != "FINISHED":
                problems.append(f"{arch}: final parent run {run_id} is not FINISHED")
    select = read_json(project / "reports" / "selection.json")["mlflow_run_id"]
    if by_id.get(select) is None or by_id[select].info.status != "FINISHED":
        problems.append(f"select run {select} is not FINISHED")
    return problems


def lost_work(project: Path) -> list[str]:
    """Finished units done twice, or finished and thrown away: one line naming each."""
    runs = all_runs(project)
    lost = []
    done: dict[tuple, list[str]] = {}
    for r in runs:
        tags, status = r.data.tags, r.info.status
        if "fold" in tags:
            key, recorded = (
                ("fold", tags.get("architecture"), tags.get("params_hash"), tags["fold"]),
                "fold_report.json",
            )
        elif tags.get("stage") == "train":
            key, recorded = ("train", tags.get("architecture"), tags.get("params_hash")), "test_report.json"
        else:
            continue
        if status == "FINISHED":
            done.setdefault(key, []).append(r.info.run_id)
        elif artifact(r, recorded).is_file():  # its result was recorded, then the run was killed: thrown away
            lost.append(f"{r.info.run_name} ({r.info.run_id}): {recorded} logged, then the run ended {status}")
    for key, run_ids in done.items():
        if len(run_ids) > 1:
            unit = " ".join(str(part) for i, part in enumerate(key) if i != 2)  # kind, architecture, fold
            lost.append(f"{unit}: FINISHED {len(run_ids)} times ({', '.join(run_ids)})")
    for arch in ARCHS:  # trials: a FINISHED trial run whose Optuna trial is not finished was thrown away
        tuning = read_json(project / "reports" / "tuning" / f"{arch}.json")
        states = {t.number: t.state.name for t in study_trials(project, tuning["study_name"])}
        for r in runs:
            tags = r.data.tags
            if tags.get("study_name") == tuning["study_name"] and "trial" in tags and r.info.status == "FINISHED":
                state = states.get(int(tags["trial"]))
                if state not in ("COMPLETE", "PRUNED"):
                    lost.append(f"{r.info.run_name} ({r.info.run_id}): FINISHED run of a {state} trial")
    return lost


def check_registry(project: Path, expected: list[int] | None = None) -> list[str]:
    """Aliases point at versions; nothing pending; the audit trail replays to the history and the champion."""
    c = client(project)
    problems = []
    try:
        model = c.get_registered_model(MODEL)
    except Exception as exc:
        return [f"registered model {MODEL}: {exc}"]
    versions = {int(v.version) for v in c.search_model_versions(f"name = '{MODEL}'")}
    aliases = {a: int(v) for a, v in model.aliases.items()}
    for alias in ("champion", "challenger"):
        if aliases.get(alias) not in versions:
            problems.append(f"alias {alias} -> {aliases.get(alias)}, not one of the versions {sorted(versions)}")
    if "champion_pending" in model.tags:
        problems.append(f"a champion move is still pending: {model.tags['champion_pending']}")
    history = json.loads(model.tags.get("champion_history", "[]"))
    audit = json.loads(model.tags.get("champion_audit", "[]"))
    stack: list[int] = []
    for entry in audit:
        action = entry.get("action")
        if action == "promoted":
            if stack and entry.get("previous") != stack[-1]:
                problems.append(f"audit {entry['id']}: promoted from {entry.get('previous')}, champion was {stack[-1]}")
            stack.append(int(entry["version"]))
            tags = c.get_model_version(MODEL, str(entry["version"])).tags
            if "promoted_at" not in tags:
                problems.append(f"version {entry['version']} was promoted ({entry['id']}) but has no promoted_at tag")
        elif action == "rolled_back":
            if not stack or stack[-1] != entry.get("previous"):
                problems.append(
                    f"audit {entry['id']}: rolled back from {entry.get('previous')}, champion was "
                    f"{stack[-1] if stack else None}"
                )
            stack = stack[:-1]
            if not stack or stack[-1] != entry.get("version"):
                problems.append(
                    f"audit {entry['id']}: rolled back to {entry.get('version')}, the history says "
                    f"{stack[-1] if stack else None}"
                )
        elif action == "adopted":
            problems.append(
                f"audit {entry['id']}: champion {entry.get('version')} had to be adopted: a move without its record"
            )
            stack.append(int(entry["version"]))
    if stack != history:
        problems.append(f"the audit trail replays to {stack}, champion_history is {history}")
    if history and aliases.get("champion") != history[-1]:
        problems.append(f"champion is version {aliases.get('champion')}, the history ends with {history[-1]}")
    if expected is not None and history != expected:
        problems.append(f"champion history {history}, expected {expected} from the commands that completed")
    return problems


def temp_leftovers(project: Path) -> list[str]:
    skip = {".git", ".dvc", "mlruns"}
    found = []
    for dirpath, dirnames, filenames in os.walk(project):
        dirnames[:] = [d for d in dirnames if d not in skip]
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if n.startswith(".") and n.endswith(".tmp")]
    return [os.path.relpath(p, project) for p in found]


def check_project(project: Path, ref: Reference) -> list[str]:
    problems = []
    for arch in ARCHS:
        got = finished_trials(project, arch)
        if got != ref.trials[arch]:
            problems.append(
                f"study {arch}: finished trials differ from the reference:\n  got  {got}\n  want {ref.trials[arch]}"
            )
    problems += check_runs(project)
    problems += check_registry(project)
    problems += [f"temporary file left: {p}" for p in temp_leftovers(project)]
    if leaderboard(project) != ref.leaderboard:
        problems.append(
            f"leaderboard differs from the reference:\n  got  {leaderboard(project)}\n  want {ref.leaderboard}"
        )
    if fold_metrics(project) != ref.folds:
        problems.append("per-fold metrics differ from the reference")
    status = sh(["dvc", "status"], project).stdout
    stale = [line for line in status.splitlines() if re.match(r"^\S+:", line) and not line.startswith("check:")]
    if stale:
        problems.append(f"dvc status after the run: {stale}")
    return problems


# --- kills ----------------------------------------------------------------------------------------------------------


@dataclass
class Kill:
    number: int
    where: str  # round N / promote
    target: str  # the phase aimed at
    phase: str  # the phase running when the signal was sent
    signal: str
    whom: str
    at: float  # seconds after the start
    exit: int | None = None
    exited_in: float = 0.0
    hung: bool = False  # still running EXIT_TIMEOUT seconds after the signal (then SIGKILLed)
    survived: bool = False


@dataclass
class Tally:
    kills: list[Kill] = field(default_factory=list)
    lost: int = 0
    failures: list[str] = field(default_factory=list)
    completions: int = 0


def kill_during(run: Watched, target: str, ref: Reference, rng: random.Random, number: int, where: str) -> Kill | None:
    """Wait for `target` (or a later phase), kill at a random moment of it; None if the run completed first."""
    start, end = ref.spans.get(target, (0.0, 1.0))
    delay = rng.uniform(0.0, max(0.5, 0.85 * (end - start)))  # within the phase as long as the reference had it
    name = rng.choice(list(SIGNALS))
    whom = "group" if name == "SIGINT" else rng.choice(["group", "stage"])
    seen_at = None
    deadline = time.monotonic() + RUN_TIMEOUT
    while run.proc.poll() is None and time.monotonic() < deadline:
        phase = phase_of(run)
        if seen_at is None and phase is not None and ORDER.get(phase, -1) >= ORDER[target]:
            seen_at = time.monotonic()
        if seen_at is not None and time.monotonic() - seen_at >= delay:
            reached = run.signal(SIGNALS[name], whom)
            kill = Kill(number, where, target, phase or "?", name, reached, run.elapsed)
            sent = time.monotonic()
            kill.hung = not run.wait_all(EXIT_TIMEOUT)
            kill.exit, kill.exited_in = run.proc.returncode, time.monotonic() - sent
            return kill
        time.sleep(0.05)
    run.wait_all(EXIT_TIMEOUT)
    return None


def round_targets(rng: random.Random, k: int) -> list[str]:
    """k phases to aim at, in pipeline order (each attempt resumes where the last one was killed)."""
    return sorted((rng.choice(PHASES) for _ in range(k)), key=PHASES.index)


def pipeline_round(
    base: Path, workdir: Path, index: int, quota: int, ref: Reference, rng: random.Random, tally: Tally
) -> Path:
    project = fresh_copy(base, workdir / f"round{index}")
    targets = round_targets(rng, quota)
    log(f"round {index}: aiming at {', '.join(targets)}")
    kills: list[Kill] = []
    completed = False
    for target in targets:
        run = Watched(["dvc", "repro"], project)
        kill = kill_during(run, target, ref, rng, len(tally.kills) + len(kills) + 1, f"round {index}")
        if kill is None:
            completed = run.proc.returncode == 0
            log(f"  the run completed before the kill aimed at {target} (exit {run.proc.returncode})")
            if not completed:
                tally.failures.append(f"round {index}: a run failed on its own:\n{run.output()[-3000:]}")
            break
        kills.append(kill)
        if kill.hung:
            tally.failures.append(
                f"round {index}: kill {kill.number}: still running {EXIT_TIMEOUT}s after {kill.signal}"
            )
        log(
            f"  kill {kill.number}: {kill.signal} to the {kill.whom} at {kill.at:.1f}s, aimed at {target}, hit "
            f"{kill.phase}; exit {kill.exit} after {kill.exited_in:.1f}s"
        )
    started = time.monotonic()
    problems = []
    if not completed:
        final = sh(["dvc", "repro"], project)
        if final.returncode != 0:
            problems = [f"the rerun failed (exit {final.returncode}):\n{final.stdout[-3000:]}\n{final.stderr[-2000:]}"]
        log(f"  rerun to completion: exit {final.returncode} in {time.monotonic() - started:.1f}s")
    if not problems:
        problems = check_project(project, ref)
    tally.completions += 1
    try:
        lost_units = lost_work(project)
    except (OSError, KeyError, ValueError) as exc:  # no reports to read after a failed rerun
        lost_units, problems = [], [*problems, f"could not count lost work: {exc}"]
    lost = len(lost_units)
    tally.lost += lost
    for kill in kills:
        kill.survived = not problems and not kill.hung
    tally.kills += kills
    tally.failures += [f"round {index}: {p}" for p in problems]
    log(f"  checks: {'all passed' if not problems else f'{len(problems)} FAILED'}; lost work {lost}")
    for unit in lost_units:
        log(f"    lost: {unit}")
    for p in problems:
        log(f"    - {p}")
    return project


# --- promotion ------------------------------------------------------------------------------------------------------


def registry_state(project: Path) -> tuple[int | None, list[int], bool]:
    model = client(project).get_registered_model(MODEL)
    champion = model.aliases.get("champion")
    history = json.loads(model.tags.get("champion_history", "[]"))
    return (int(champion) if champion else None), history, "champion_pending" in model.tags


def add_versions(project: Path, n: int) -> list[int]:
    """n more versions of the champion's logged model (a new model per pipeline run, without rerunning it)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")  # the registry resolves the model here
    c = client(project)
    champion = c.get_model_version_by_alias(MODEL, "champion")
    held_out = {"test_set_hash": champion.tags.get("test_set_hash", "")}  # the gate compares only on the same test set
    for _ in range(n):
        c.create_model_version(
            MODEL, champion.source, champion.run_id, tags=held_out, model_id=getattr(champion, "model_id", None)
        )
    return sorted(int(v.version) for v in c.search_model_versions(f"name = '{MODEL}'"))


def promote_round(project: Path, quota: int, rng: random.Random, tally: Tally) -> None:
    versions = add_versions(project, 2)
    log(f"promotion: versions {versions}; {quota} kills of `dlpipe promote`")
    timing: dict[str, float] = {}
    kills = 0
    attempts = 0
    while kills < quota and attempts < quota * 4:
        attempts += 1
        champion, history, _ = registry_state(project)
        kind = rng.choice(["force", "force", "rollback", "gated"]) if len(history) >= 2 else "force"
        if kind == "force":
            version = rng.choice([v for v in versions if v != champion])
            cmd, expected = ["dlpipe", "promote", "--version", str(version), "--force"], [*history, version]
        elif kind == "rollback":
            cmd, expected = ["dlpipe", "promote", "--rollback"], history[:-1]
        else:
            cmd, expected = ["dlpipe", "promote"], history  # the challenger is the same model: a tie, refused
        if kind not in timing:  # one uninterrupted run of each kind measures how long it takes
            started = time.monotonic()
            proc = sh(cmd, project)
            timing[kind] = max(1.0, time.monotonic() - started)
            problems = [] if proc.returncode == 0 else [f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}"]
            problems += check_registry(project, expected)
            tally.failures += [f"promote: {p}" for p in problems]
            log(f"  {' '.join(cmd[1:])}: uninterrupted, {proc.stdout.strip()}")
            continue
        # half the kills at any moment, half in the last fifth (where the registry is written)
        late = rng.random() < 0.5
        delay = rng.uniform(0.8 * timing[kind], 1.05 * timing[kind]) if late else rng.uniform(0, timing[kind])
        name = rng.choice(list(SIGNALS))
        run = Watched(cmd, project)
        while run.proc.poll() is None and run.elapsed < delay:
            time.sleep(0.01)
        if run.proc.poll() is not None:
            run.wait_all(EXIT_TIMEOUT)
            timing[kind] = max(timing[kind], run.elapsed)
            problems = [] if run.proc.returncode == 0 else [f"{' '.join(cmd)} failed: {run.output()[-2000:]}"]
            problems += check_registry(project, expected)
            tally.failures += [f"promote: {p}" for p in problems]
            log(f"  {' '.join(cmd[1:])}: completed before the kill ({run.elapsed:.1f}s)")
            continue
        at = run.elapsed
        run.signal(SIGNALS[name], "group")
        hung = not run.wait_all(EXIT_TIMEOUT)
        kill = Kill(len(tally.kills) + 1, "promote", kind, "promote", name, "process", at, run.proc.returncode)
        kill.hung = hung
        after_champion, after_history, pending = registry_state(project)
        if kind == "rollback" and after_history == expected and not pending:
            again = "done before the kill: not run again"
            rerun = None
        else:
            rerun = sh(cmd, project)
            again = f"run again: {rerun.stdout.strip() or rerun.stderr.strip()[-300:]}"
        problems = [] if rerun is None or rerun.returncode == 0 else [f"{' '.join(cmd)} failed when run again"]
        problems += check_registry(project, expected)
        problems += [f"temporary file left: {p}" for p in temp_leftovers(project)]
        problems += [f"still running {EXIT_TIMEOUT}s after {name}"] if hung else []
        kill.survived = not problems
        tally.kills.append(kill)
        kills += 1
        tally.failures += [f"promote: {p}" for p in problems]
        log(
            f"  kill {kill.number}: {name} at {at:.2f}s of `{' '.join(cmd[1:])}` (exit {kill.exit}; champion "
            f"{after_champion}, pending {pending}); {again}; checks {'passed' if not problems else 'FAILED'}"
        )
        for p in problems:
            log(f"    - {p}")


# --- main -----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24, help="kills in total (at least 5: one per phase)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments, phases and signals")
    parser.add_argument("--per-round", type=int, default=4, help="kills per pipeline round before it completes")
    parser.add_argument("--workdir", type=Path, default=None, help="where the projects go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the projects afterwards")
    args = parser.parse_args(argv)
    # every command it starts takes SIGINT as a terminal's Ctrl-C, also when this runs in the background of a
    # non-interactive shell (which starts it with SIGINT ignored, a disposition its children would inherit)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dlpipe-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tally = Tally()
    try:
        log(f"chaos: {args.kills} kills, seed {args.seed}, in {workdir}")
        base = make_base(workdir / "base")
        log(f"base project ready ({time.monotonic() - started:.0f}s)")
        reference = fresh_copy(base, workdir / "reference")
        run = Watched(["dvc", "repro"], reference)
        spans = watch_phases(run)
        ref = Reference.of(reference, spans, run.elapsed)
        log(
            f"reference: {run.elapsed:.1f}s; phases "
            + ", ".join(f"{p} {a:.1f}-{b:.1f}s" for p, (a, b) in sorted(spans.items(), key=lambda kv: kv[1][0]))
        )
        promote_quota = max(4, math.ceil(args.kills / 3))
        pipeline_quota = max(args.kills - promote_quota, 4)
        project, index = None, 0
        while sum(k.where != "promote" for k in tally.kills) < pipeline_quota and index < pipeline_quota:
            index += 1
            left = pipeline_quota - sum(k.where != "promote" for k in tally.kills)
            project = pipeline_round(base, workdir, index, min(args.per_round, left), ref, rng, tally)
        if project is not None:
            promote_round(project, promote_quota, rng, tally)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report(tally, time.monotonic() - started)
    return 0 if not tally.failures and all(k.survived for k in tally.kills) else 1


def report(tally: Tally, seconds: float) -> None:
    kills = tally.kills
    log("")
    log("kills by phase hit and signal:")
    phases = sorted({k.phase for k in kills}, key=lambda p: ORDER.get(p, 99))
    names = list(SIGNALS)
    log(f"  {'phase':<10}" + "".join(f"{n:>9}" for n in names) + f"{'total':>8}{'survived':>10}")
    for phase in phases:
        row = [sum(k.phase == phase and k.signal == n for k in kills) for n in names]
        ok = sum(k.phase == phase and k.survived for k in kills)
        log(f"  {phase:<10}" + "".join(f"{n:>9}" for n in row) + f"{sum(row):>8}{ok:>10}")
    if tally.failures:
        log(f"{len(tally.failures)} check(s) failed:")
        for failure in tally.failures:
            log(f"  - {failure}")
    log(f"{len(kills)} kills, {tally.completions} runs to completion checked, {seconds / 60:.1f} min")
    survived = sum(k.survived for k in kills)
    log(f"{survived}/{len(kills)} kills survived; lost work: {tally.lost} finished units retrained")


if __name__ == "__main__":
    sys.exit(main())
