"""The study's scheduler: every architecture's phases in order, their units spread over a pool of workers.

Tuning comes first; cross-validation and the final fit of one architecture follow it. In parallel, a final fit that
needs nothing from the folds (an argmax decision) runs beside them: at once, or under a study budget as soon as no
drop can reach its architecture; otherwise (a threshold chosen on out-of-fold predictions, or serially) it follows
them. Different architectures (and the folds of one) run at the same time. Each phase's planning and summary run in
this process (`stages.tune.plan` and `finish`, `stages.cv.plan` and `finish`, `stages.train.reusable`); the units
(`trials_unit`, `fold_unit`, `train_unit`) run on the pool. An error in a unit or a step fails only its
architecture. Under `study.budget`, each scored fold may drop an architecture far below the leader on its first
folds (`evaluation.cv.drops`): its queued folds and its final fit never run, and its cv report says why. The
folds that decide drops (and the tuning before them) start before the later folds (`PARALLEL_ORDER`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dlpipe.errors import DlpipeError
from dlpipe.evaluation import cv as evaluation_cv
from dlpipe.evaluation.cv import fold_score
from dlpipe.parallel import Done, ProcessPool, SerialPool, Task
from dlpipe.profile import timed
from dlpipe.stages import cv, train, tune
from dlpipe.stages.common import StageContext
from dlpipe.tracking import store
from dlpipe.tracking.runs import end_run

log = logging.getLogger(__name__)
STAGE = "study"
# which ready units start first (lowest first), by phase
PARALLEL_ORDER = {"train": 0, "cv": 1, "tune": 2, "later folds": 3}
SERIAL_ORDER = {"tune": 0, "cv": 1, "later folds": 2, "train": 3}


@dataclass
class _Arch:
    """Where one architecture stands: its open parent runs, pending units and partial results."""

    name: str
    open_runs: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    folds: dict[int, Any] = field(default_factory=dict)
    failed: str | None = None
    error: BaseException | None = None
    finished: bool = False
    cv_plan: Any = None  # its cross-validation's plan, once started
    cv_done: bool = False  # every fold scored: no longer droppable
    dropped: dict | None = None  # why the study budget dropped it
    train_started: bool = False  # its final fit is queued (after tuning, or after cross-validation)


def relative_costs(ctx: StageContext, batch: int = 64, repeats: int = 3) -> dict[str, float]:
    """Seconds of one training step (forward and backward on a batch of the data) per architecture, with its
    untuned params: a cheap proxy for how long its units take, to start the costliest first."""
    import time

    import torch.nn.functional as F

    from dlpipe.models import build_model

    X = ctx.data.dataset.inputs(slice(0, batch))
    y = ctx.data.dataset.y[:batch]
    costs = {}
    for arch in ctx.params.architectures:
        try:
            net = build_model(arch, ctx.params.model_params(arch), tuple(X.shape[1:]), ctx.data.dataset.num_classes)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                F.cross_entropy(net(X), y).backward()
                times.append(time.perf_counter() - start)
            costs[arch] = min(times)
        except Exception:  # a model that cannot be built fails in its own unit, with the reason
            costs[arch] = 0.0
    return costs


def _meeting(task: Task) -> str | None:
    """The group of study runners `task` meets before its first trial (None: not such a runner)."""
    job = task.args[0] if task.args else None
    return getattr(job, "rendezvous", None) if isinstance(job, tune.TrialsJob) else None


class Study:
    """Schedules every architecture's units on a pool and runs each phase's follow-up when its units are done."""

    def __init__(self, ctx: StageContext, pool: ProcessPool | SerialPool):
        self.ctx = ctx
        self.pool = pool
        self.archs = {a: _Arch(a) for a in ctx.params.architectures}
        self.ready: list[tuple[int, float, int, Task]] = []
        self.after: dict[str, Callable[[Done], None]] = {}
        self._seq = 0
        self.meeting: set[str] = set()  # the groups of study runners that started meeting (tune.TrialsJob.rendezvous)
        self.serial = isinstance(pool, SerialPool)
        self.cost = {a: 0.0 for a in self.archs} if self.serial else relative_costs(ctx)
        # in parallel, a final fit that needs nothing from the folds (an argmax decision) runs beside them: at once
        # after tuning, or under a study budget once no drop can reach its architecture
        self.train_beside_cv = not self.serial and not train.needs_cv(ctx.params)

    # --- scheduling -------------------------------------------------------------------------------------------------
    def submit(self, arch: str, phase: str, task: Task, then: Callable[[Done], None]) -> None:
        # In parallel, later phases go first (an architecture finishes early; its long chain starts first);
        # serially (DDP), every study runs before any multi-device fit, so later-launched ranks find them done.
        # Costlier architectures first: the longest chain of units starts at once. Under a study budget, the folds
        # past the first drop_after_folds ("later folds") wait for every other architecture's tuning and first folds:
        # the drop decisions come as early as they can, before the work they may save.
        order = (PARALLEL_ORDER if not self.serial else SERIAL_ORDER)[phase]
        self._seq += 1
        self.ready.append((order, -self.cost[arch], self._seq, task))
        self.ready.sort(key=lambda item: item[:3])
        self.after[task.key] = then
        self.archs[arch].pending.add(task.key)

    def run(self) -> dict[str, str]:
        try:
            for arch in self.ctx.params.architectures:
                self.guard(arch, lambda a=arch: self.start_tune(a))
            while self.ready or self.pool.busy:
                while self.pool.free and self.ready:
                    self.pool.submit(self.ready.pop(self.next_ready())[3])
                with timed("waiting"):  # this process idles while the workers train
                    done = self.pool.next_done()
                self.handle(done)
        except BaseException as exc:
            self.pool.stop()
            for state in self.archs.values():
                for run_id in state.open_runs:
                    end_run(run_id, exc)
            raise
        return {a: s for a, s in self.archs.items() if s.failed}

    def next_ready(self) -> int:
        """Which ready unit starts next: the first, except the runners of a study that meet before their first
        trial (`tune.workers` > 1): they start together when enough workers are free, else they wait while another
        unit can start (a runner started alone would hold its worker idle until the others join). When only such
        runners are ready, the first starts and its group's other runners start as soon as workers are free."""
        for i, (*_, task) in enumerate(self.ready):
            if _meeting(task) in self.meeting:  # a started runner waits for this one: it goes first
                return i
        free = self.pool.free
        for i, (*_, task) in enumerate(self.ready):
            group = _meeting(task)
            if group is None:
                return i
            if sum(_meeting(item[3]) == group for item in self.ready) <= free:
                self.meeting.add(group)
                return i
        self.meeting.add(_meeting(self.ready[0][3]))
        return 0

    def handle(self, done: Done) -> None:
        arch = done.task.key.split(" ", 2)[1]
        state = self.archs[arch]
        state.pending.discard(done.task.key)
        then = self.after.pop(done.task.key)
        if state.failed or state.dropped:
            return
        if not done.ok:
            error = (store.explain(done.error) or done.error) if done.error is not None else None
            reason = done.crash or f"{done.task.key}: {type(error).__name__}: {error}"
            if done.details and not isinstance(error, DlpipeError):
                log.error("%s raised:\n%s", done.task.key, done.details)
            self.fail(arch, reason, error)
            if done.crash:  # the dead worker's own runs are still RUNNING
                self.ctx.close_orphans(STAGE)
            return
        self.guard(arch, lambda: then(done))

    def guard(self, arch: str, step: Callable[[], None]) -> None:
        """Run a phase step of `arch` in this process; an error fails the architecture, not the study."""
        try:
            step()
        except DlpipeError as exc:
            self.fail(arch, str(exc), exc)

    def fail(self, arch: str, reason: str, error: BaseException | None) -> None:
        state = self.archs[arch]
        state.failed, state.error = reason, error
        log.error("study %s: %s", arch, reason)
        for run_id in state.open_runs:
            end_run(run_id, error or RuntimeError(reason))
        state.open_runs.clear()
        self.ready = [item for item in self.ready if item[3].key.split(" ", 2)[1] != arch]

    # --- the study budget's drop rule ---------------------------------------------------------------------------------
    def check_drops(self) -> None:
        """Drop every architecture still in cross-validation whose first folds are far below the leader's
        (`evaluation.cv.drops`); its queued folds and its final fit do not run."""
        budget, sel = self.ctx.params.study.budget, self.ctx.params.selection
        if not budget.enabled:
            return
        scores, candidates = {}, set()
        for arch, state in self.archs.items():
            if state.cv_plan is None or state.failed or state.dropped:
                continue
            merged = {**state.cv_plan.done, **state.folds}
            scores[arch] = {k: fold_score(r, sel.metric, sel.positive_class) for k, r in merged.items()}
            if not state.cv_done:
                candidates.add(arch)
        for arch, why in evaluation_cv.drops(scores, candidates, budget.drop_after_folds, budget.drop_margin).items():
            self.guard(arch, lambda a=arch, w=why: self.drop(a, w))
        if self.train_beside_cv:
            self.start_undroppable(budget.drop_after_folds)

    def start_undroppable(self, after: int) -> None:
        """Start the final fits no drop can reach any more: once every architecture still in the study has its first
        `after` folds scored, the leader over them is known, and those not dropped stay."""
        alive = [s for s in self.archs.values() if not s.failed and not s.dropped]
        if all(s.cv_plan is not None and all(k in {**s.cv_plan.done, **s.folds} for k in range(after)) for s in alive):
            for state in alive:
                self.guard(state.name, lambda a=state.name: self.start_train(a))

    def drop(self, arch: str, why: dict) -> None:
        state = self.archs[arch]
        p = state.cv_plan
        state.dropped = why
        self.ready = [item for item in self.ready if item[3].key.split(" ", 2)[1] != arch]
        cv.write_dropped(self.ctx, p, list({**p.done, **state.folds}.values()), why)
        if p.opened:
            self.close_run(arch, p.parent_run_id)

    # --- phases -----------------------------------------------------------------------------------------------------
    def start_tune(self, arch: str) -> None:
        p = tune.plan(self.ctx, arch)
        if not isinstance(p, tune.TunePlan):
            self.start_cv(arch)
            return
        self.archs[arch].open_runs.add(p.parent_run_id)
        jobs = p.jobs(self.ctx.params, self.ctx.paths, slots=self.pool.size)
        if not jobs:
            self.finish_tune(arch, p)
            return
        for job in jobs:
            task = Task(f"tune {arch} runner{job.index}", tune.trials_unit, (job,))
            self.submit(arch, "tune", task, lambda _d, a=arch, plan=p: self.tune_runner_done(a, plan))

    def tune_runner_done(self, arch: str, p: tune.TunePlan) -> None:
        if not any(key.startswith(f"tune {arch} ") for key in self.archs[arch].pending):
            self.finish_tune(arch, p)

    def finish_tune(self, arch: str, p: tune.TunePlan) -> None:
        job = p.summary_job(self.ctx.params, self.ctx.paths)
        self.submit(
            arch,
            "tune",
            Task(f"tune {arch} summary", tune.summary_unit, (job,)),
            lambda d, a=arch, plan=p: self.tuned(a, plan, d.result),
        )

    def tuned(self, arch: str, p: tune.TunePlan, report: dict) -> None:
        tune.finish(self.ctx, report)
        self.close_run(arch, p.parent_run_id)
        self.start_cv(arch)
        if self.train_beside_cv and not self.ctx.params.study.budget.enabled:  # it needs only the tuned params
            self.start_train(arch)

    def start_cv(self, arch: str) -> None:
        p = cv.plan(self.ctx, arch)
        self.archs[arch].cv_plan = p
        if p.opened:
            self.archs[arch].open_runs.add(p.parent_run_id)
        jobs = p.jobs(self.ctx.params, self.ctx.paths)
        if not jobs:
            self.finish_cv(arch, p)
            return
        budget = self.ctx.params.study.budget
        for job in jobs:
            task = Task(f"cv {arch} fold{job.k}", cv.fold_unit, (job,))
            phase = "later folds" if budget.enabled and job.k >= budget.drop_after_folds else "cv"
            self.submit(arch, phase, task, lambda d, a=arch, plan=p, k=job.k: self.fold_done(a, plan, k, d.result))
        self.check_drops()  # folds reused from an earlier run may already decide

    def fold_done(self, arch: str, p: cv.CvPlan, k: int, result: Any) -> None:
        state = self.archs[arch]
        state.folds[k] = result
        self.check_drops()
        if state.dropped:
            return
        if not any(key.startswith(f"cv {arch} ") for key in state.pending):
            self.finish_cv(arch, p)

    def finish_cv(self, arch: str, p: cv.CvPlan) -> None:
        self.archs[arch].cv_done = True
        folds = p.all_folds(self.archs[arch].folds)
        job = p.summary_job(self.ctx.params, self.ctx.paths, folds)
        self.submit(
            arch,
            "cv",
            Task(f"cv {arch} summary", cv.summary_unit, (job,)),
            lambda d, a=arch, plan=p, f=folds: self.cross_validated(a, plan, f, d.result),
        )

    def cross_validated(self, arch: str, p: cv.CvPlan, folds: list, summary: dict) -> None:
        cv.finish(self.ctx, p, folds, summary)
        if p.opened:
            self.close_run(arch, p.parent_run_id)
        self.start_train(arch)

    def start_train(self, arch: str) -> None:
        state = self.archs[arch]
        if state.train_started or state.failed:
            return
        state.train_started = True
        if train.reusable(self.ctx, arch) is not None:
            self.archs[arch].finished = True
            return
        job = train.TrainJob(self.ctx.params, self.ctx.paths, arch)
        self.submit(arch, "train", Task(f"train {arch}", train.train_unit, (job,)), lambda _d, a=arch: self.trained(a))

    def trained(self, arch: str) -> None:
        self.archs[arch].finished = True

    def close_run(self, arch: str, run_id: str | None) -> None:
        if run_id:
            end_run(run_id)
            self.archs[arch].open_runs.discard(run_id)
