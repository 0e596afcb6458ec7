"""Write .dvc/plots/page.html, the page `dvc plots show` and `dvc plots diff` fill: vega, vega-lite and vega-embed
inlined from the PyPI package django-js-lib-vega-embed, so the page draws with no network and opens anywhere.

`make install` runs it (the file is generated, not committed). Usage: python scripts/build_plots_page.py [--out PATH]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKELETON = ROOT / ".dvc" / "plots" / "page.in.html"
PAGE = ROOT / ".dvc" / "plots" / "page.html"
MARKER = "<!-- dlpipe:vega-scripts -->"
PACKAGE, DISTRIBUTION = "js_lib_vega_embed", "django-js-lib-vega-embed"
SCRIPTS = ("vega5.js", "vega-lite5.js", "vega-embed6.js")  # load order: vega-lite needs vega, vega-embed needs both
DVC_PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")  # dvc_render replaces these anywhere in the page


class PageBuildError(Exception):
    """The page cannot be built (package missing, marker missing, script unsafe to inline)."""


def vega_scripts() -> str:
    """The three libraries as inline <script> elements, in load order, with a line naming their source."""
    try:
        folder = importlib.resources.files(PACKAGE) / "static" / PACKAGE
        version = importlib.metadata.version(DISTRIBUTION)
    except (ModuleNotFoundError, importlib.metadata.PackageNotFoundError):
        raise PageBuildError(f"{DISTRIBUTION} is not installed: run `make install`") from None
    parts = [f"<!-- vega, vega-lite, vega-embed from {DISTRIBUTION} {version} (PyPI); licences in that package -->"]
    for name in SCRIPTS:
        source = folder / name
        if not source.is_file():
            raise PageBuildError(f"{DISTRIBUTION} {version}: {name} not found in {folder}")
        code = source.read_text(encoding="utf-8")
        unsafe = [token for token in ("</script", *DVC_PLACEHOLDERS) if token in code]
        if unsafe:
            raise PageBuildError(f"{name} contains {unsafe[0]!r}: it cannot be inlined as it is")
        parts.append(f"<script>\n{code}\n</script>")
    return "\n".join(parts)


def build(skeleton: Path = SKELETON, out: Path = PAGE) -> Path:
    """Fill `skeleton`'s marker with the inlined libraries and write the page atomically to `out`."""
    from dlpipe.io import atomic_path

    text = skeleton.read_text(encoding="utf-8")
    if text.count(MARKER) != 1:
        raise PageBuildError(f"{skeleton}: needs the line {MARKER} exactly once")
    page = text.replace(MARKER, vega_scripts())
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
        tmp.chmod(0o666 & ~_umask())  # readable like any checkout file, not mkstemp's 0600
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skeleton", type=Path, default=SKELETON, help="page with the marker (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=PAGE, help="page to write (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        build(args.skeleton, args.out)
    except (PageBuildError, OSError) as err:
        print(f"build_plots_page: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
