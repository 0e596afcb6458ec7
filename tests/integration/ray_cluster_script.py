"""Run the study stage of a project on a local Ray cluster of three nodes while two of them die; meant to run in a
network namespace with only `lo` up (tests/integration/test_ray_cluster.py starts it under `unshare --net`).

    python ray_cluster_script.py PROJECT OUT.json SERVER_DIR BACKEND_URI

Starts an `mlflow server` on 127.0.0.1 (backend BACKEND_URI, a PostgreSQL database reached through its Unix socket;
artifacts proxied into SERVER_DIR/art) and `ray.cluster_utils.Cluster`: a head and two worker nodes, one CPU each,
each node its own raylet, worker processes and session folder. Runs `pipelines/study.py` of PROJECT as a driver of
that cluster (RAY_ADDRESS) logging to the server (MLFLOW_TRACKING_URI: units reach runs and artifacts only through
it). Two faults, each costing a fold:
- `mid-fold`: the node's units stop themselves (SIGSTOP at dlpipe.processes.stop_point `fold:open`) as soon as a
  fold's run is open, before it trains; the node is removed then (its raylet and workers SIGKILLed);
- `recorded`: the node's units stop themselves once a fold is logged and its run ended, before the result goes
  back (`fold_unit:returned`); the node is removed then.
Writes OUT.json: the stage's exit code and stderr, the fold runs each killed node held, the network interfaces and
every socket seen while the study ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: helpers
from helpers.servers import mlflow_server

from dlpipe.processes import STOP_ENV

STATES = {"mid-fold": "RUNNING", "recorded": "FINISHED"}  # what the fold's run is when the node's unit stops
HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}  # a dead node noticed in ~2 s


def sockets() -> list[str]:
    """Every TCP/UDP socket of this network namespace: local and peer address of each."""
    out = subprocess.run(["ss", "-tuanH"], capture_output=True, text=True).stdout
    return [" ".join(line.split()[4:6]) for line in out.splitlines() if line.strip()]


class FoldRuns:
    """{owner pid: run id} of the fold runs with a status, read from the server's PostgreSQL backend (a query
    through the server every few tenths of a second would load the one CPU the study needs)."""

    def __init__(self, backend: str):
        from sqlalchemy.engine import make_url

        url = make_url(backend)
        self.connect = {"dbname": url.database, "user": url.username, **url.query}

    def __call__(self, status: str) -> dict[int, str]:
        import psycopg2

        query = (
            "SELECT p.value, r.run_uuid FROM runs r JOIN tags p ON p.run_uuid = r.run_uuid AND p.key = 'dlpipe.pid' "
            "JOIN tags f ON f.run_uuid = r.run_uuid AND f.key = 'fold' WHERE r.status = %s"
        )
        try:
            with psycopg2.connect(**self.connect) as db, db.cursor() as cursor:
                cursor.execute(query, (status,))
                return {int(pid): run for pid, run in cursor.fetchall()}
        except psycopg2.Error:  # the server is busy: look again
            return {}


def node_pids(node) -> dict[int, str]:
    """{pid: status} of a Ray node's processes: its raylet and everything it started (its workers)."""
    import psutil
    from ray._private.ray_constants import PROCESS_TYPE_RAYLET

    try:
        raylet = psutil.Process(node.all_processes[PROCESS_TYPE_RAYLET][0].process.pid)
        return {p.pid: p.status() for p in [raylet, *raylet.children(recursive=True)]}
    except psutil.Error:
        return {}


def start_cluster():
    """A head and the two nodes that will die (one CPU each); returns (cluster, {fault: node})."""
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 1, "include_dashboard": False, "_system_config": HEALTH}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    faults = {
        "mid-fold": cluster.add_node(num_cpus=1, env_vars={STOP_ENV: "fold:open"}),
        "recorded": cluster.add_node(num_cpus=1, env_vars={STOP_ENV: "fold_unit:returned"}),
    }
    cluster.wait_for_nodes()
    return cluster, faults


def main() -> int:
    project, out, server_dir, backend = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import psutil
    import ray

    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit in 107 characters
    os.environ["RAY_TMPDIR"] = temp  # this cluster's sessions and address file, apart from any other Ray here
    os.environ |= {"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    started = time.monotonic()
    server = contextlib.ExitStack()  # the server starts while the cluster does (in this thread: Ray's signal handlers)
    booted: dict = {}

    def boot_server() -> None:
        try:
            booted["url"] = server.enter_context(mlflow_server(server_dir, backend))
        except Exception as exc:
            booted["error"] = exc

    boot = threading.Thread(target=boot_server)
    boot.start()
    with server:
        try:
            cluster, faults = start_cluster()
        finally:
            boot.join()
        if "error" in booted:
            raise booted["error"]
        url = booted["url"]
        seconds = {"server and cluster": time.monotonic() - started}
        seen: set[str] = set(sockets())
        killed: dict[str, list[str]] = {}  # fault -> the fold runs its node held when it was removed
        done = threading.Event()
        fold_runs = FoldRuns(backend)

        def watch() -> None:
            while not done.wait(0.3):
                seen.update(sockets())
                for fault, node in faults.items():
                    if fault in killed:
                        continue
                    # a unit of the node stopped itself at the fault's point: held, its fold's run in that state
                    stopped = {pid for pid, status in node_pids(node).items() if status == psutil.STATUS_STOPPED}
                    held = [run for pid, run in fold_runs(STATES[fault]).items() if pid in stopped] if stopped else []
                    if held:  # kill its workers (a frozen one would never notice its raylet die), then the node
                        for pid in node_pids(node):
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
                        cluster.remove_node(node, allow_graceful=False)
                        killed[fault] = held

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "DLPIPE_ROOT": str(project), "MLFLOW_TRACKING_URI": url}
        try:
            cmd = [sys.executable, "pipelines/study.py"]
            proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired as exc:  # report what it said (the test fails on the exit code)
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
            proc = subprocess.CompletedProcess(exc.cmd, -9, "", f"{stderr}\nstudy: no end after {exc.timeout}s")
        seconds["study"] = time.monotonic() - started - seconds["server and cluster"]
        done.set()
        watcher.join()
        interfaces = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout.splitlines()
        ray.shutdown()
        cluster.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    result = {
        "returncode": proc.returncode,
        "stderr": proc.stderr[-8000:],
        "killed": killed,
        "seconds": seconds,
        "interfaces": interfaces,
        "sockets": sorted(seen),
    }
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
