"""Who owns a run or a trial, and whether that process still lives.

An owner is (host, pid, process start time); the start time guards against a recycled pid. Only owners on this
host can be judged: for other hosts `is_dead` answers False and their heartbeats (or a person) must decide.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float  # process creation time, seconds since the epoch

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    def to_tags(self, prefix: str = "dlpipe.") -> dict[str, str]:
        return {
            f"{prefix}host": self.host,
            f"{prefix}pid": str(self.pid),
            f"{prefix}pid_started": f"{self.started:.3f}",
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str], prefix: str = "dlpipe.") -> Owner | None:
        try:
            return cls(tags[f"{prefix}host"], int(tags[f"{prefix}pid"]), float(tags[f"{prefix}pid_started"]))
        except (KeyError, ValueError):
            return None

    def is_dead(self) -> bool:
        """True when this owner ran on this host and its process is gone (or the pid now names another process)."""
        if self.host != socket.gethostname():
            return False
        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
                return True
            started = proc.create_time()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return True
        except psutil.AccessDenied:
            return False
        return abs(started - self.started) > 1.0
