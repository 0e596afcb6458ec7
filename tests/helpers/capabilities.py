"""What the machine offers to tests that need more than Python: a PostgreSQL server, a GPU, the network, a
Chromium, folders that can be made read-only, a network namespace with only loopback.

A test declares what it needs with a marker (`@pytest.mark.postgres`, `gpu`, `network`, `chromium`,
`read_only_dirs`, `loopback_netns`), or a fixture calls `need(name)`. Each capability is probed once per session:
where it is absent the test is skipped with the reason, unless the comma-separated `DLPIPE_REQUIRE` names it (CI:
every one but gpu and network), then it fails with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable
from pathlib import Path

REQUIRE_ENV = "DLPIPE_REQUIRE"
POSTGRES_ROOT = Path("/usr/lib/postgresql")
NETWORK_PROBE = ("download.pytorch.org", 443)  # where torchvision's and torch's downloads come from
NETWORK_TIMEOUT_S = 3.0


def postgres_bin(root: Path | None = None) -> Path | None:
    """The newest <root>/<version>/bin (root: /usr/lib/postgresql) with the server binaries initdb and pg_ctl."""
    found = [p for p in (root or POSTGRES_ROOT).glob("*/bin") if (p / "initdb").is_file() and (p / "pg_ctl").is_file()]
    if not found:
        return None
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def postgres_missing() -> str | None:
    if postgres_bin() is None:
        return (
            f"PostgreSQL server binaries (initdb, pg_ctl) not found under {POSTGRES_ROOT}/*/bin: "
            "install Debian's postgresql package (apt-get install -y postgresql)"
        )
    if not any(importlib.util.find_spec(m) is not None for m in ("psycopg2", "psycopg")):
        return "no PostgreSQL driver for SQLAlchemy: pip install -e '.[postgres]' (psycopg2-binary)"
    return None


def gpu_missing() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False): run on a machine with an NVIDIA GPU and CUDA torch"
    return None


def network_missing() -> str | None:
    host, port = NETWORK_PROBE
    try:
        with socket.create_connection((host, port), timeout=NETWORK_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"no network: a TCP connection to {host}:{port} failed within {NETWORK_TIMEOUT_S:g} s ({exc})"


def chromium_missing() -> str | None:
    import shutil

    names = ("chromium", "chromium-browser", "google-chrome")
    override = os.environ.get("DLPIPE_CHROMIUM")
    if (shutil.which(override) if override else next(filter(None, map(shutil.which, names)), None)) is None:
        return "Chromium is not installed (Debian: apt-get install -y chromium; or DLPIPE_CHROMIUM=<browser>)"
    return None


def read_only_dirs_missing() -> str | None:
    """Whether a folder can be made unwritable: chmod 555, or for root (who ignores the bits) chattr +i."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        try:
            if not os.access(folder, os.W_OK):
                return None
            if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
                subprocess.run(["chattr", "-i", str(folder)], check=True)
                return None
        except FileNotFoundError:
            pass
        finally:
            folder.chmod(0o755)
    return "running as root without chattr +i (e2fsprogs, on a filesystem that supports it): no read-only folders"


LOOPBACK_NETNS = ("unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"')


def loopback_netns_missing() -> str | None:
    """Whether a command can run in a network namespace of its own with only `lo` up (`unshare --net` as root), and
    Ray is installed: cluster tests run there, so nothing they start can reach beyond loopback."""
    import shutil
    import subprocess

    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install -r requirements.lock)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare (util-linux) or ip (iproute2) not found"
    try:
        probe = subprocess.run([*LOOPBACK_NETNS, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"no network namespace: {exc}"
    if probe.returncode != 0:
        return f"no network namespace (unshare --net needs root or user namespaces): {probe.stderr.strip()[-200:]}"
    return None


PROBES: dict[str, Callable[[], str | None]] = {
    "loopback_netns": loopback_netns_missing,
    "postgres": postgres_missing,
    "gpu": gpu_missing,
    "network": network_missing,
    "chromium": chromium_missing,
    "read_only_dirs": read_only_dirs_missing,
}


def required(environ: dict[str, str] | None = None) -> set[str]:
    """The capabilities `DLPIPE_REQUIRE` names; an unknown name raises ValueError (a typo must not pass silently)."""
    value = (os.environ if environ is None else environ).get(REQUIRE_ENV, "")
    names = {n.strip() for n in value.split(",") if n.strip()}
    unknown = names - PROBES.keys()
    if unknown:
        raise ValueError(f"{REQUIRE_ENV}: unknown capability {sorted(unknown)}; allowed: {sorted(PROBES)}")
    return names


def verdict(name: str, missing: str | None, require: set[str]) -> tuple[str, str] | None:
    """None when the capability is present, else ("skip" | "fail", reason): "fail" when `require` names it."""
    if missing is None:
        return None
    if name in require:
        return "fail", f"capability '{name}' is required ({REQUIRE_ENV}) but absent: {missing}"
    return "skip", f"capability '{name}' absent: {missing}"


def need(name: str) -> None:
    """Inside a test or fixture: skip, or fail where `DLPIPE_REQUIRE` names it, when capability `name` is absent
    (what the markers do, for a need found only at run time)."""
    import pytest

    outcome = verdict(name, PROBES[name](), required())
    if outcome is not None:
        action, reason = outcome
        (pytest.fail if action == "fail" else pytest.skip)(reason)
