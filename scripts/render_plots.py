"""Render the project's `dvc plots show` page to a PNG with headless Chromium, network off (e.g. for the README).

Usage: python scripts/render_plots.py [--out dvc_plots/plots.png] [--width 1400] [TARGET ...]
TARGETs go to `dvc plots show` (a plot id from dvc.yaml such as "Models ranked by cross-validation", or a file);
none draws every plot. Needs Chromium (Debian: apt-get install chromium; or set DLPIPE_CHROMIUM to a browser).
The browser helpers here are also what tests/e2e/test_plots_offline.py drives.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
RENDER_BUDGET_MS = 20_000  # virtual time Chromium gives the page's scripts before it dumps or shoots


class RenderError(Exception):
    """The page could not be rendered (no browser, dvc or Chromium failed)."""


def find_chromium() -> str | None:
    """The Chromium to drive: $DLPIPE_CHROMIUM, else the first of BROWSERS on PATH; None if there is none."""
    override = os.environ.get("DLPIPE_CHROMIUM")
    if override:
        return shutil.which(override)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released), for a proxy that refuses every connection."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chromium_command(browser: str, profile: Path, *args: str, offline: bool = True) -> list[str]:
    """Headless Chromium with a fresh profile; `offline` sends every request, loopback too, to a dead proxy and
    resolves no host name, so a page that needs the network cannot get it."""
    cmd = [
        browser,
        "--headless",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={RENDER_BUDGET_MS}",
    ]
    if os.geteuid() == 0:  # Chromium refuses to run as root with its sandbox on
        cmd.append("--no-sandbox")
    if offline:
        cmd += [
            f"--proxy-server=http://127.0.0.1:{_closed_port()}",
            "--proxy-bypass-list=<-loopback>",
            "--host-resolver-rules=MAP * ~NOTFOUND",
        ]
    return cmd + list(args)


def run_chromium(url: str, *args: str, browser: str | None = None, offline: bool = True, timeout: int = 120) -> str:
    """Run headless Chromium on `url` with `args`; returns its stdout."""
    browser = browser or find_chromium()
    if browser is None:
        raise RenderError("Chromium not found: install it (Debian: apt-get install chromium) or set DLPIPE_CHROMIUM")
    with tempfile.TemporaryDirectory(prefix="dlpipe-chromium-") as profile:
        cmd = chromium_command(browser, Path(profile), *args, url, offline=offline)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RenderError(f"{browser} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def dump_dom(page: Path | str, browser: str | None = None, offline: bool = True) -> str:
    """The page's DOM after its scripts ran (charts drawn as SVG by the dlpipe page)."""
    url = page if isinstance(page, str) else page.resolve().as_uri()
    return run_chromium(url, "--dump-dom", browser=browser, offline=offline)


def screenshot(page: Path, png: Path, browser: str | None = None, width: int = 1400, height: int = 4000) -> Path:
    """A PNG of `page` (network off), cropped to what it draws, written atomically to `png`."""
    from PIL import Image, ImageChops

    from dlpipe.io import atomic_path

    with tempfile.TemporaryDirectory(prefix="dlpipe-shot-") as tmp:
        raw = Path(tmp) / "page.png"
        run_chromium(page.resolve().as_uri(), f"--window-size={width},{height}", f"--screenshot={raw}", browser=browser)
        if not raw.is_file():
            raise RenderError(f"Chromium wrote no screenshot of {page}")
        image = Image.open(raw).convert("RGB")
        box = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
        if box is None:
            raise RenderError(f"{page}: the page is blank")
        margin = 16
        image = image.crop((0, 0, min(image.width, box[2] + margin), min(image.height, box[3] + margin)))
        with atomic_path(png) as out:
            image.save(out, format="PNG")
            mask = os.umask(0)
            os.umask(mask)
            out.chmod(0o666 & ~mask)  # readable like any other file, not mkstemp's 0600
    return png


def _dvc() -> str:
    beside = Path(sys.executable).parent / "dvc"  # the venv's dvc, as `make` and the tests use
    return str(beside) if beside.is_file() else "dvc"


def plots_page(project: Path, out_dir: Path, targets: list[str]) -> Path:
    """Run `dvc plots show [targets] -o out_dir` in `project`; returns the page it wrote."""
    proc = subprocess.run(
        [_dvc(), "plots", "show", *targets, "-o", str(out_dir)], cwd=project, capture_output=True, text=True
    )
    page = out_dir / "index.html"
    if proc.returncode != 0 or not page.is_file():
        raise RenderError(f"dvc plots show exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return page


def render(project: Path, png: Path, targets: list[str], width: int = 1400) -> Path:
    """The project's plots (or `targets`) as a PNG at `png`."""
    with tempfile.TemporaryDirectory(prefix="dlpipe-plots-") as tmp:
        return screenshot(plots_page(project, Path(tmp), targets), png, width=width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="plot ids or files for `dvc plots show` (default: all plots)")
    parser.add_argument("--project", type=Path, default=ROOT, help="project root (default: this repository)")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: PROJECT/dvc_plots/plots.png)")
    parser.add_argument("--width", type=int, default=1400, help="browser window width in pixels (default: 1400)")
    args = parser.parse_args(argv)
    out = args.out or args.project / "dvc_plots" / "plots.png"
    try:
        render(args.project, out, args.targets, width=args.width)
    except (RenderError, OSError, subprocess.TimeoutExpired) as err:
        print(f"render_plots: {err}", file=sys.stderr)
        return 2 if isinstance(err, RenderError) and "not found" in str(err) else 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
