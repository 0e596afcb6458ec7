"""Run the study stage of a project on a two-node local Ray cluster; meant to run in a network namespace with only
`lo` up (tests/integration/test_ray_cluster.py starts it under `unshare --net`).

    python ray_cluster_script.py PROJECT OUT.json SERVER_DIR [--kill-node]

Starts an `mlflow server` on 127.0.0.1 (backend SERVER_DIR/srv.db, a migrated SQLite store the caller put there;
artifacts proxied into SERVER_DIR/art) and `ray.cluster_utils.Cluster` (a head and a worker node, one CPU each; each
node its own raylet and worker processes), runs `pipelines/study.py` of PROJECT as a driver of that cluster
(RAY_ADDRESS) logging to the server (MLFLOW_TRACKING_URI: units reach runs and artifacts only through it), and with
`--kill-node`
removes the worker node (its raylet and workers killed) as soon as a fold's run is open on it. Writes OUT.json: the
stage's exit code and stderr, the runs of the folds the killed node was running, the network interfaces and every
socket seen while the study ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def sockets() -> list[str]:
    """Every TCP/UDP socket of this network namespace: local and peer address of each."""
    out = subprocess.run(["ss", "-tuanH"], capture_output=True, text=True).stdout
    return [" ".join(line.split()[4:6]) for line in out.splitlines() if line.strip()]


def running_folds(db: Path) -> dict[int, str]:
    """{owner pid: run id} of the fold runs now RUNNING (read from the server's backend store)."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, "attributes.status = 'RUNNING' and tags.fold != ''")
    except Exception:  # the store is being written: look again
        return {}
    return {int(r.data.tags["dlpipe.pid"]): r.info.run_id for r in runs if "dlpipe.pid" in r.data.tags}


def mlflow_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free loopback port; returns (process, url) once it answers /health."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'srv.db'}",
    ]
    cmd += [
        "--artifacts-destination",
        str(folder / "art"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = open(folder / "server.log", "wb")  # noqa: SIM115  (open while the server runs)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    """End the server and the workers it started (its own process group)."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def node_pids(node) -> set[int]:
    """The processes of a Ray node: its raylet and everything it started (its workers)."""
    import psutil
    from ray._private.ray_constants import PROCESS_TYPE_RAYLET

    raylet = psutil.Process(node.all_processes[PROCESS_TYPE_RAYLET][0].process.pid)
    return {raylet.pid} | {p.pid for p in raylet.children(recursive=True)}


def main() -> int:
    project, out, server_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    kill = "--kill-node" in sys.argv
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit in 107 characters
    os.environ["RAY_TMPDIR"] = temp  # this cluster's sessions and address file, apart from any other Ray here
    node_args = {"num_cpus": 1, "include_dashboard": False}
    started = time.monotonic()
    server, url = mlflow_server(server_dir)
    cluster = Cluster(initialize_head=True, head_node_args=node_args)
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    seconds = {"cluster": time.monotonic() - started}
    seen: set[str] = set(sockets())
    killed: list[str] = []  # the run ids of the folds running on the worker node when it was removed
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            seen.update(sockets())
            if kill and not killed:
                on_worker = [
                    run for pid, run in running_folds(server_dir / "srv.db").items() if pid in node_pids(worker)
                ]
                if on_worker:  # a fold runs on the worker node: kill the node's raylet and workers now
                    cluster.remove_node(worker, allow_graceful=False)
                    killed.extend(on_worker)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "DLPIPE_ROOT": str(project), "MLFLOW_TRACKING_URI": url}
    env |= {"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    proc = subprocess.run(
        [sys.executable, "pipelines/study.py"], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    seconds["study"] = time.monotonic() - started - seconds["cluster"]
    done.set()
    watcher.join()
    interfaces = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout.splitlines()
    ray.shutdown()
    cluster.shutdown()
    stop(server)
    shutil.rmtree(temp, ignore_errors=True)
    result = {
        "returncode": proc.returncode,
        "stderr": proc.stderr[-6000:],
        "killed": killed,
        "seconds": seconds,
        "interfaces": interfaces,
        "sockets": sorted(seen),
    }
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
