"""Run the study stage of a project on a local Ray cluster of three nodes while two of them die; meant to run in a
network namespace with only `lo` up (tests/integration/test_ray_cluster.py starts it under `unshare --net`).

    python ray_cluster_script.py PROJECT OUT.json SERVER_DIR BACKEND_URI

Starts an `mlflow server` on 127.0.0.1 (backend BACKEND_URI, a PostgreSQL database reached through its Unix socket;
artifacts proxied into SERVER_DIR/art) and `ray.cluster_utils.Cluster`: a head and two worker nodes, one CPU each,
each node its own raylet, worker processes and session folder. Runs `pipelines/study.py` of PROJECT as a driver of
that cluster (RAY_ADDRESS) logging to the server (MLFLOW_TRACKING_URI: units reach runs and artifacts only through
it). Two faults, each costing a fold:
- `mid-fold`: the node is frozen (SIGSTOP) and removed (its raylet and workers SIGKILLed) as soon as a fold's run is
  open on it;
- `recorded`: the node's units stop themselves (SIGSTOP, dlpipe.executors.ray_pool.STOP_ENV) once a fold is logged
  and its run ended, before the result goes back; the node is removed then.
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

from dlpipe.executors.ray_pool import STOP_ENV

HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}  # a dead node noticed in ~2 s


def sockets() -> list[str]:
    """Every TCP/UDP socket of this network namespace: local and peer address of each."""
    out = subprocess.run(["ss", "-tuanH"], capture_output=True, text=True).stdout
    return [" ".join(line.split()[4:6]) for line in out.splitlines() if line.strip()]


def fold_runs(client, status: str) -> dict[int, str]:
    """{owner pid: run id} of the fold runs with `status` (read through the server)."""
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, f"attributes.status = '{status}' and tags.fold != ''")
    except Exception:  # the server is busy: look again
        return {}
    return {int(r.data.tags["dlpipe.pid"]): r.info.run_id for r in runs if "dlpipe.pid" in r.data.tags}


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
        "mid-fold": cluster.add_node(num_cpus=1),
        "recorded": cluster.add_node(num_cpus=1, env_vars={STOP_ENV: "fold_unit"}),
    }
    cluster.wait_for_nodes()
    return cluster, faults


def main() -> int:
    project, out, server_dir, backend = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import psutil
    import ray
    from mlflow.tracking import MlflowClient

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
        client = MlflowClient(tracking_uri=url)

        def watch() -> None:
            while not done.wait(0.3):
                seen.update(sockets())
                for fault, node in faults.items():
                    if fault in killed:
                        continue
                    pids = node_pids(node)
                    if fault == "mid-fold":
                        held = [run for pid, run in fold_runs(client, "RUNNING").items() if pid in pids]
                        for pid in pids if held else ():  # freeze the node first: the kill lands where it was seen
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGSTOP)
                    else:  # a unit of the node stopped itself after its fold's run ended
                        stopped = {pid for pid, status in pids.items() if status == psutil.STATUS_STOPPED}
                        held = [run for pid, run in fold_runs(client, "FINISHED").items() if pid in stopped]
                    if held:
                        cluster.remove_node(node, allow_graceful=False)
                        killed[fault] = held

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "DLPIPE_ROOT": str(project), "MLFLOW_TRACKING_URI": url}
        proc = subprocess.run(
            [sys.executable, "pipelines/study.py"], cwd=project, env=env, capture_output=True, text=True, timeout=300
        )
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
