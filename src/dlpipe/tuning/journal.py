"""The journal file of Optuna studies, kept readable after a crash or a full disk.

Optuna's `JournalFileBackend` appends one JSON record per line. A process that dies mid-write, or a disk that
fills up, leaves a torn last line; Optuna tolerates it on read, but the next append lands on the partial line and
from then on every read of the file (all architectures share it) raises a decode error.

`JournalFile` repairs the file under Optuna's own journal lock (the lock object the backend appends under), so no
writer is mid-append while it looks:

- When the storage is opened and before every append: a file that does not end with a newline has its torn tail
  moved to a sidecar file and is truncated to its last complete line (reading the last byte decides).
- When the storage is opened, a last line that is not a journal record, or a file Optuna cannot load, starts a
  scan of the whole file: a line that is not a record but whose tail, from some `{"op_code"`, is one (a record
  appended onto a torn line by an older version) keeps that record; anything else that is not a record is removed.

Nothing is silently deleted: removed bytes go, in file order, to `<journal>.torn-<UTC time>` beside the journal,
and one warning names both files. A journal that ends with a newline and whose last line is a record is not
rewritten (the check on opening reads only the end of the file; the one before an append, its last byte).

The lock (`HolderLock`) is Optuna's symlink lock whose link names its holder (host, pid, process start time). A
process that waits for it and finds the holder dead (killed while it appended) breaks it at once; a holder it
cannot judge (another host, an older version's plain link) is broken after Optuna's grace period, as Optuna does;
a live local holder is waited for.

Ctrl-C and SIGTERM that arrive while this process holds the lock are delivered right after it lets go: Optuna's
lock turns an interrupt that lands between the two system calls of its release into a FileNotFoundError (the
trial then fails as if its objective had raised, and the interrupt is lost), and an interrupt while it waits
for the lock into removing another process's lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalStorage

from dlpipe.errors import DlpipeError
from dlpipe.interrupts import deferred_interrupts
from dlpipe.io import atomic_path
from dlpipe.processes import Owner

log = logging.getLogger(__name__)

SIDECAR_INFIX = ".torn-"
RECORD_START = re.compile(rb'\{"op_code"')
CHUNK = 1 << 16
LOCK_SUFFIX = ".lock"  # Optuna's: every process that appends to the journal agrees on the lock file
LOCK_TAG = "dlpipe-lock:"  # a link target that names its holder: LOCK_TAG + JSON {owner..., "nonce"}
GRACE_SECONDS = 30.0  # Optuna's default: a holder that cannot be judged keeps the lock this long at most
WAIT_WARNING_SECONDS = 10.0


def _holder(target: str) -> Owner | None:
    """The owner a lock link names (None: not a dlpipe link, or unreadable)."""
    if not target.startswith(LOCK_TAG):
        return None
    try:
        return Owner.from_record(json.loads(target.removeprefix(LOCK_TAG)))
    except ValueError:
        return None


class HolderLock:
    """A symlink lock (as Optuna's `JournalFileSymlinkLock`, on the same lock file) whose link names its holder.

    Waiting, it breaks the lock of a local holder that has ended at once; a holder it cannot judge after
    `grace_period` seconds with the same link (as Optuna does). Release removes only this holder's own link.
    Optuna's file backend takes it as its `lock_obj` (it calls only `acquire` and `release`).
    """

    def __init__(self, filepath: str, grace_period: float = GRACE_SECONDS):
        self.lock_file = filepath + LOCK_SUFFIX
        self.grace_period = grace_period
        self._mine = threading.local()  # the link this thread holds (threads of one process share the object)

    def acquire(self) -> bool:
        target = LOCK_TAG + json.dumps({**Owner.current().record(), "nonce": uuid.uuid4().hex})
        delay, seen, since, warned = 0.001, None, time.monotonic(), time.monotonic()
        while True:
            try:
                os.symlink(target, self.lock_file)
                self._mine.target = target
                return True
            except FileExistsError:
                pass
            try:
                other = os.readlink(self.lock_file)
            except FileNotFoundError:  # released meanwhile
                continue
            except OSError:  # not a link (another kind of lock): judged by its age only
                other = ""
            holder = _holder(other)
            if holder is not None and holder.is_dead():
                self._break(other, f"its holder, process {holder.pid}, has ended")
                delay = 0.001
                continue
            if other != seen:
                seen, since = other, time.monotonic()
            elif time.monotonic() - since > self.grace_period:
                self._break(other, f"it was held for more than {self.grace_period:.0f}s")
                continue
            if time.monotonic() - warned > WAIT_WARNING_SECONDS:
                log.warning("waiting for the optuna journal lock %s (held by %s)", self.lock_file, holder or other)
                warned = time.monotonic()
            time.sleep(delay)
            delay = min(2 * delay, 0.1)

    def _break(self, target: str, why: str) -> None:
        """Remove the lock link if it still is `target` (moved aside first: one breaker wins; a link that changed
        meanwhile is put back)."""
        aside = f"{self.lock_file}.{uuid.uuid4().hex}.break"
        try:
            os.rename(self.lock_file, aside)
        except FileNotFoundError:
            return
        try:
            if (os.readlink(aside) if os.path.islink(aside) else "") != target:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.lock_file, follow_symlinks=False)
                return
            log.warning("optuna journal lock %s: %s; broke it", self.lock_file, why)
        finally:
            os.unlink(aside)

    def release(self) -> None:
        mine = getattr(self._mine, "target", None)
        self._mine.target = None
        aside = f"{self.lock_file}.{uuid.uuid4().hex}.rename"
        try:
            os.rename(self.lock_file, aside)
        except OSError:
            raise RuntimeError(f"did not hold the lock {self.lock_file}") from None
        try:
            if os.readlink(aside) != mine:  # broken meanwhile and taken by another: give it back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.lock_file, follow_symlinks=False)
                raise RuntimeError(f"did not hold the lock {self.lock_file}")
        finally:
            os.unlink(aside)


@contextlib.contextmanager
def held(lock: HolderLock) -> Iterator[None]:
    with deferred_interrupts():
        lock.acquire()
        try:
            yield
        finally:
            lock.release()


def is_record(line: bytes) -> bool:
    """Whether `line` (without or with its newline) is one journal record: a JSON object with an op_code."""
    try:
        data = json.loads(line)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        return False
    return isinstance(data, dict) and isinstance(data.get("op_code"), int)


def recovered(line: bytes) -> tuple[bytes, bytes]:
    """(kept, removed) of one line that ends with a newline: the whole line when it is a record, else its first
    tail from a `{"op_code"` that is a record, else nothing."""
    if is_record(line):
        return line, b""
    for match in RECORD_START.finditer(line, 1):
        if is_record(line[match.start() :]):
            return line[match.start() :], line[: match.start()]
    return b"", line


def tail_of(path: Path) -> tuple[bytes, bytes]:
    """(the last complete line of `path` with its newline, the torn bytes after it); reads backwards in chunks."""
    with open(path, "rb") as f:
        pos, buf = f.seek(0, os.SEEK_END), b""
        while pos > 0:
            step = min(CHUNK, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            end = buf.rfind(b"\n")
            if end >= 0:
                start = buf.rfind(b"\n", 0, end)
                if start >= 0 or pos == 0:
                    return buf[start + 1 : end + 1], buf[end + 1 :]
        return b"", buf


def sidecar_path(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    candidate = path.with_name(f"{path.name}{SIDECAR_INFIX}{stamp}")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}{SIDECAR_INFIX}{stamp}-{n}")
        n += 1
    return candidate


def write_sidecar(path: Path, removed: bytes) -> Path:
    """Write the removed bytes (fsynced, before the journal changes) to a new sidecar of `path`."""
    side = sidecar_path(path)
    with open(side, "xb") as f:
        f.write(removed)
        f.flush()
        os.fsync(f.fileno())
    return side


def cut_torn_tail(path: Path) -> Path | None:
    """Move what follows the last newline of `path` to a sidecar; the caller holds the journal lock."""
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return None
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return None
        pos, keep = end, 0
        while pos > 0:
            step = min(CHUNK, pos)
            pos -= step
            f.seek(pos)
            cut = f.read(step).rfind(b"\n")
            if cut >= 0:
                keep = pos + cut + 1
                break
        f.seek(keep)
        side = write_sidecar(path, f.read())
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    log.warning(
        "optuna journal %s ended in a torn record (a crash or a full disk?): moved its %d bytes to %s",
        path,
        end - keep,
        side,
    )
    return side


def rewrite(path: Path) -> Path | None:
    """Keep only the records of `path` (see `recovered`); the caller holds the journal lock."""
    *complete, torn = path.read_bytes().split(b"\n")  # lines as Optuna reads them: ended by \n only
    kept, removed = [], []
    for line in [c + b"\n" for c in complete] + ([torn] if torn else []):
        if not line.endswith(b"\n"):  # the torn tail
            removed.append(line)
            continue
        good, bad = recovered(line)
        kept.append(good)
        removed.append(bad)
    lost = b"".join(removed)
    if not lost:
        return None
    side = write_sidecar(path, lost)
    mode = stat.S_IMODE(path.stat().st_mode)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"".join(kept))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
    broken = sum(bool(r) for r in removed)
    log.warning(
        "optuna journal %s had %d broken lines (a crash or a full disk?): kept any record in them and "
        "moved the other %d bytes to %s",
        path,
        broken,
        len(lost),
        side,
    )
    return side


class JournalFile:
    """One journal file with the lock Optuna appends under; `storage()` opens it, repaired first."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = HolderLock(str(self.path))  # on the lock file of JournalFileBackend's own default lock

    def repair(self, scan: bool = False) -> Path | None:
        """Cut a torn tail; scan the whole file when `scan` or when its last complete line is not a record.
        Returns the sidecar that received the removed bytes (None: nothing was wrong)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        with held(self.lock):
            if not scan:
                line, torn = tail_of(self.path)
                if not line or is_record(line):
                    return cut_torn_tail(self.path) if torn else None
            return rewrite(self.path)

    def storage(self, kind: type[JournalStorage] = JournalStorage) -> JournalStorage:
        """The Optuna storage (of class `kind`) over this file, repaired first (a full scan only if the cheap
        checks or Optuna's own load find something wrong)."""
        self.repair()
        backend = RepairingJournalBackend(self)
        try:
            return kind(backend)
        except (ValueError, KeyError, TypeError):  # a broken line in the middle of the file
            if self.repair(scan=True) is None:
                raise
        try:
            return kind(RepairingJournalBackend(self))
        except (ValueError, KeyError, TypeError) as exc:
            raise DlpipeError(f"optuna journal {self.path} cannot be read after repair: {exc}") from None


class RepairingJournalBackend(JournalFileBackend):
    """Optuna's file backend that, under its lock, cuts a torn tail (another process crashed mid-write) before it
    appends, so a record never lands on a partial line."""

    def __init__(self, journal: JournalFile):
        super().__init__(str(journal.path), lock_obj=journal.lock)
        self.journal = journal

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "\n".join(json.dumps(entry, separators=(",", ":")) for entry in logs) + "\n"
        with held(self.journal.lock):
            cut_torn_tail(self.journal.path)
            with open(self.journal.path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
