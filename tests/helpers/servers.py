"""Servers the integration tests start on loopback: a throwaway PostgreSQL cluster (Debian's initdb/pg_ctl) and an
`mlflow server` (proxied artifacts). Plain context managers: the fixtures and tests/integration/ray_cluster_script.py
(which runs in a network namespace of its own) share them."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"  # loopback only
MLFLOW = Path(sys.executable).parent / "mlflow"
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """End a server and the workers it started (its own process group, made by start_new_session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL cluster: TCP on 127.0.0.1:`port`, and a Unix socket in `socket_dir` (reachable from a
    network namespace of its own, where this machine's 127.0.0.1 is not)."""

    port: int
    socket_dir: Path

    def url(self, db: str, password: str | None = None) -> str:
        user = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{user}@{HOST}:{self.port}/{db}"

    def socket_url(self, db: str) -> str:
        return f"postgresql://postgres@/{db}?host={self.socket_dir}&port={self.port}"


def postgres_bin() -> Path:
    from helpers.capabilities import postgres_bin as find

    found = find()
    if found is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    return found


@contextlib.contextmanager
def postgres(*databases: str) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on a free loopback port with `databases`; stopped and removed after. The
    server refuses to run as root, so as root it runs as the `postgres` user (made by Debian's package)."""
    bindir = postgres_bin()
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="dlpipe-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, sock, logfile = base / "data", base / "sock", base / "server.log"

    def run(*cmd: str | Path, check: bool = True) -> None:
        out = subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            log = logfile.read_text() if logfile.exists() else ""
            raise RuntimeError(f"{cmd[0]} failed ({out.returncode}): {out.stdout}{out.stderr}{log}")

    run("mkdir", "-p", sock)
    run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    port = free_port()
    options = f"-c listen_addresses={HOST} -p {port} -k {sock} -c fsync=off"
    run(bindir / "pg_ctl", "-D", data, "-l", logfile, "-o", options, "-w", "-t", "60", "start")
    try:
        for db in databases:
            run(bindir / "createdb", "-h", HOST, "-p", str(port), "-U", "postgres", db)
        yield Postgres(port, sock)
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_server(folder: Path, backend_uri: str) -> Iterator[str]:
    """`mlflow server` on a free loopback port, backend `backend_uri`, artifacts proxied into folder/art (its log:
    folder/server.log); yields its URL once it answers /health, stops it after."""
    from dlpipe.tuning.study import with_driver

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://{HOST}:{port}"
    cmd = [str(MLFLOW), "server", "--backend-store-uri", with_driver(backend_uri)]
    cmd += ["--artifacts-destination", str(folder / "art"), "--host", HOST, "--port", str(port), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner processes beside the server
    log_path = folder / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start ({proc.poll()}):\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        stop(proc)
