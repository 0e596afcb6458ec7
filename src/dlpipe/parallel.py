"""Units of work (a fold, a study's trials, a final fit) run in parallel worker processes that import once.

`ProcessPool` starts its workers from a forkserver that has already imported the training stack (torch, Lightning,
MLflow: several seconds), so a worker is ready in milliseconds and every unit it runs pays no imports. Each worker
runs one unit at a time; worker i may be pinned to GPU i (one unit per GPU). A worker that dies (killed, out of
memory) fails only the unit it was running, with the reason, and is replaced; it never hangs the caller. `stop`
interrupts the workers (their MLflow runs end KILLED) and waits for them. A worker dies with the process that owns
the pool (a lifeline pipe closes when it is killed, even with SIGKILL): it never runs on unseen, finishing units and
writing outputs beside a rerun; its open runs and trials are left to the next stage's sweep of dead owners.

`SerialPool` runs the same units in this process, one after another: for one worker and for DDP, where Lightning
launches every rank as a copy of this process and all ranks must run the same units in the same order.

A unit is a module-level function and its arguments (both picklable); it returns a picklable result. Results do
not depend on which worker ran a unit (each unit seeds itself).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from dlpipe import profile

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 30.0  # how long interrupted workers get to end their runs before they are killed


@dataclass
class Task:
    key: str  # names the unit in logs and failures, e.g. "cv mlp fold 3"
    fn: Callable[..., Any]
    args: tuple = ()


@dataclass
class Done:
    task: Task
    result: Any = None
    error: BaseException | None = None  # the unit raised this (re-raised in the caller)
    crash: str | None = None  # the worker died while running the unit
    details: str = ""  # traceback text of an unexpected error

    @property
    def ok(self) -> bool:
        return self.error is None and self.crash is None


class WorkerCrashed(RuntimeError):
    """A worker process died while it ran a unit."""


class SerialPool:
    """Runs units in this process, in submission order."""

    size = 1

    def __init__(self) -> None:
        self._queue: list[Task] = []

    @property
    def free(self) -> int:
        return 0 if self._queue else 1

    @property
    def busy(self) -> int:
        return len(self._queue)

    def share(self, ctx: Any) -> None:
        """The stage's loaded context, which a pool on other machines ships to them (units here read the project)."""

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    def next_done(self) -> Done:
        task = self._queue.pop(0)
        try:
            return Done(task, result=task.fn(*task.args))
        except Exception as exc:  # the caller decides; KeyboardInterrupt and SystemExit propagate
            return Done(task, error=exc, details=traceback.format_exc())

    def stop(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        self._queue.clear()


@dataclass
class _Worker:
    index: int
    process: Any
    conn: Connection
    lifeline: Connection  # the pool's end of the worker's lifeline (see _die_with_owner)
    task: Task | None = None
    started: float = field(default_factory=time.monotonic)


class ProcessPool:
    """`size` worker processes forked from a forkserver that has imported `preload`."""

    def __init__(
        self,
        size: int,
        preload: Sequence[str] = (),
        init: Callable[[int], None] | None = None,
        env: Callable[[int], dict[str, str]] | None = None,
    ):
        self.size = size
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(list(preload))
        self._init = init
        self._env = env
        # Workers take this process's environment as it is now, not the forkserver's: the forkserver is shared by
        # every pool of the process and keeps the environment of the first (a second study in the same process,
        # e.g. another project's DLPIPE_ROOT or MLflow store, would otherwise run in the first one's).
        self._base_env = dict(os.environ)
        self._workers: dict[int, _Worker] = {}
        # Starting the first worker waits for the forkserver to import `preload` (seconds): do it in the
        # background, so the caller's own imports and set-up overlap with it.
        self._starting = threading.Thread(target=lambda: [self._start(i) for i in range(size)], daemon=True)
        self._starting.start()

    def _ready(self) -> None:
        self._starting.join()
        if len(self._workers) < self.size:
            raise RuntimeError(f"could not start {self.size} worker processes (started {len(self._workers)})")

    def _start(self, index: int) -> None:
        parent, child = self._ctx.Pipe()
        alive_r, alive_w = self._ctx.Pipe(duplex=False)  # only this process holds the writing end
        env = {**self._base_env, **(self._env(index) if self._env else {})}
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child, alive_r, index, env, self._init),
            daemon=True,
            name=f"dlpipe-worker-{index}",
        )
        proc.start()
        child.close()
        alive_r.close()
        self._workers[index] = _Worker(index, proc, parent, alive_w)

    @property
    def free(self) -> int:
        self._ready()
        return sum(w.task is None for w in self._workers.values())

    @property
    def busy(self) -> int:
        return sum(w.task is not None for w in self._workers.values())

    def share(self, ctx: Any) -> None:
        """Nothing to ship: the workers read the project on this machine."""

    def submit(self, task: Task) -> None:
        self._ready()
        worker = next((w for w in self._workers.values() if w.task is None), None)
        if worker is None:
            raise RuntimeError("no free worker: wait for next_done() first")
        worker.task = task
        worker.conn.send((task.fn, task.args))

    def next_done(self) -> Done:
        """Block until a running unit finishes (or its worker dies)."""
        while True:
            running = [w for w in self._workers.values() if w.task is not None]
            if not running:
                raise RuntimeError("no unit is running")
            ready = wait([w.conn for w in running] + [w.process.sentinel for w in running])
            for w in running:
                if w.conn in ready:
                    try:
                        status, payload, details = w.conn.recv()
                    except (EOFError, OSError):
                        return self._crashed(w)
                    task, w.task = w.task, None
                    if status == "ok":
                        return Done(task, result=payload)
                    if status == "interrupted":
                        raise KeyboardInterrupt(f"{task.key}: interrupted in worker {w.index}")
                    return Done(task, error=payload, details=details)
                if w.process.sentinel in ready:
                    return self._crashed(w)

    def _crashed(self, w: _Worker) -> Done:
        w.process.join(timeout=5)
        code = w.process.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        task, w.task = w.task, None
        reason = f"worker {w.index} (pid {w.process.pid}) died with {how} while running {task.key}"
        log.error("%s; starting a new worker", reason)
        w.conn.close()
        w.lifeline.close()
        self._start(w.index)
        return Done(task, crash=reason)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers.values()]

    def stop(self) -> None:
        """Interrupt every worker (SIGINT: runs end KILLED), then kill any that outlive the grace period."""
        self._starting.join()
        live = [w for w in self._workers.values() if not _ended(w, time.monotonic())]
        for w in live:
            _send(w, signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for w in live:
            if not _ended(w, deadline):
                _send(w, signal.SIGKILL)
                _ended(w, time.monotonic() + 5)
            w.process.join(timeout=1)

    def close(self) -> None:
        """Let idle workers exit; kill the rest."""
        self._starting.join()
        for w in self._workers.values():
            with contextlib.suppress(BrokenPipeError, OSError):
                w.conn.send(None)
        deadline = time.monotonic() + 10
        for w in self._workers.values():
            if not _ended(w, deadline):
                _send(w, signal.SIGKILL)
                _ended(w, time.monotonic() + 5)
            w.process.join(timeout=1)
            w.conn.close()
            w.lifeline.close()  # only now: a worker that loses it while alive kills itself


def _ended(w: _Worker, deadline: float) -> bool:
    """Whether worker `w` ended before `deadline` (what it still sends is dropped). Judged by its pipe, which closes
    only when the worker is gone: the process handle asks the forkserver, and a signal to the whole process group
    kills the forkserver, after which every worker looks ended while it is still closing its runs."""
    try:
        while w.conn.poll(max(0.0, deadline - time.monotonic())):
            w.conn.recv()
    except (EOFError, OSError):
        return True
    return False


def _send(w: _Worker, sig: int) -> None:
    """Signal a worker that has not ended (its pipe is open, so its pid is still its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(w.process.pid, sig)


def visible_devices() -> list[str]:
    """The GPUs this process may hand out: $CUDA_VISIBLE_DEVICES, else every CUDA device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no CUDA runtime: no GPUs
        return []


def worker_env(index: int, devices: list[str]) -> dict[str, str]:
    """The environment worker `index` adds: GPU `index % len(devices)` only (nothing without GPUs)."""
    return {"CUDA_VISIBLE_DEVICES": devices[index % len(devices)]} if devices else {}


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _die_with_owner(lifeline: Connection) -> None:
    """Kill this worker as soon as the pool's process is gone (nothing is ever sent: recv returns at EOF)."""
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv()
    os.kill(os.getpid(), signal.SIGKILL)


def _worker_main(
    conn: Connection, lifeline: Connection, index: int, env: dict[str, str], init: Callable[[int], None] | None
) -> None:
    threading.Thread(target=_die_with_owner, args=(lifeline,), name="lifeline", daemon=True).start()
    os.environ.clear()
    os.environ.update(env)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    profile.worker_started()
    if init is not None:
        init(index)
    try:
        _serve(conn)
    finally:
        profile.dump_now()  # a worker process ends without atexit handlers


def _serve(conn: Connection) -> None:
    while True:
        try:
            job = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if job is None:
            return
        fn, args = job
        try:
            reply = ("ok", fn(*args), "")
        except KeyboardInterrupt:
            conn.send(("interrupted", None, ""))
            return
        except BaseException as exc:  # reported to the caller, which decides
            reply = ("error", _picklable(exc), traceback.format_exc())
        conn.send(reply)


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
