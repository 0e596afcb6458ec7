"""Who owns a run or a trial, and whether that process still lives.

An owner is (host, scope, pid, process start time): the scope (boot id and pid namespace) makes pids comparable
beyond the host name (a container that shares the host's name sees other pids), and the start time guards against
a recycled pid. Only owners in this host's scope can be judged: for others `is_dead` answers False, and their
heartbeats (or a person) must decide.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

START_TOLERANCE = 1e-3  # seconds: process start times compare within this
STOP_ENV = "DLPIPE_TEST_STOP_AT"  # fault tests: the point (see `stop_point`) where a process freezes itself


def stop_point(name: str) -> None:
    """For fault tests: freeze this process (SIGSTOP) at point `name` when $DLPIPE_TEST_STOP_AT names it, so that the
    test kills it (or its node) exactly there. Points: `fold:open` (a cv fold's run is open, nothing trained yet),
    `<unit>:returned` (a unit on a Ray node returned, its run recorded, before its result goes back)."""
    if os.environ.get(STOP_ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)


@functools.cache
def process_scope() -> str:
    """What makes pids comparable besides the host name: the boot and the pid namespace."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = str(psutil.boot_time())
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{boot}/{namespace}"


@dataclass(frozen=True)
class Owner:
    host: str
    scope: str
    pid: int
    started: float  # process creation time, seconds since the epoch

    @classmethod
    def current(cls, pid: int | None = None) -> Owner:
        proc = psutil.Process(pid)
        return cls(socket.gethostname(), process_scope(), proc.pid, proc.create_time())

    def record(self) -> dict[str, Any]:
        """As a JSON-ready mapping (an Optuna trial attribute)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: Any) -> Owner | None:
        try:
            return cls(str(record["host"]), str(record["scope"]), int(record["pid"]), float(record["started"]))
        except (KeyError, TypeError, ValueError):
            return None

    def to_tags(self, prefix: str = "dlpipe.") -> dict[str, str]:
        """As MLflow run tags."""
        return {
            f"{prefix}host": self.host,
            f"{prefix}scope": self.scope,
            f"{prefix}pid": str(self.pid),
            f"{prefix}pid_started": repr(self.started),
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str], prefix: str = "dlpipe.") -> Owner | None:
        keys = ("host", "scope", "pid", "started")
        return cls.from_record({key: tags.get(f"{prefix}{'pid_started' if key == 'started' else key}") for key in keys})

    @property
    def is_local(self) -> bool:
        """Whether this process can look the owner up (same host and scope)."""
        return self.host == socket.gethostname() and self.scope == process_scope()

    def is_dead(self) -> bool:
        """True when a local owner's process has ended (a zombie has) or its pid now names another process."""
        if not self.is_local:
            return False
        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
                return True
            return abs(proc.create_time() - self.started) > START_TOLERANCE
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:  # cannot tell: leave it alone
            return False
