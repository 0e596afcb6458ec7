"""`dvc plots show` and `dvc plots diff` pages, drawn by a real headless Chromium with the network cut off.

Each test makes a fresh git + DVC copy of the project (dvc.yaml's plots, the repository's .dvc/config and custom
templates, the page built by scripts/build_plots_page.py), writes sample plot files in the formats the select stage
writes, runs dvc, loads dvc_plots/index.html offline and reads what vega drew (SVG) from the dumped DOM. DVC's own
page (vega from a CDN) draws nothing offline: the control tests show the check fails on it and that the offline
browser really cannot fetch, even from a server on loopback.
"""

from __future__ import annotations

import csv
import functools
import html
import http.server
import importlib.resources
import itertools
import re
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from dvc_render.base import Renderer
from helpers import capabilities
from helpers.processes import subprocess_env
from helpers.project import REPO_ROOT, copy_project, load_script
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

pytestmark = pytest.mark.slow


render_plots = load_script("render_plots")
build_plots_page = load_script("build_plots_page")

CV_PLOT = "Models ranked by cross-validation"
TEST_PLOT = "Models on the held-out test set"
FILE_PLOTS = {
    "confusion": "reports/plots/confusion.csv",
    "pr": "reports/plots/pr.csv",
    "roc": "reports/plots/roc.csv",
    "calibration": "reports/plots/calibration.csv",
}
METRIC = "F1 (macro)"
CHAMPION = "resnet"  # the select stage's `model` column of the confusion and curve files
MODELS = [  # architecture, kind, cv_mean, cv_std, test
    ("cnn", "deep", 0.972, 0.008, 0.975),
    ("mlp", "deep", 0.955, 0.012, 0.961),
    ("resnet", "deep", 0.993, 0.009, 0.978),  # mean + std passes 1: the chart stops at 1
    ("logreg", "baseline", 0.948, 0.010, 0.952),
    ("forest", "baseline", 0.931, 0.015, 0.944),
]
TEMPERATURES = {"cnn": 1.0, "mlp": 0.6, "resnet": 1.6, "logreg": 0.8}  # calibration: one model per temperature


def div_id(plot_id: str) -> str:
    """The id of the <div> DVC writes for a plot."""
    return Renderer.remove_special_chars(plot_id)


# --- sample plot files, in the formats the select stage writes -----------------------------------------------------


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def write_sample_reports(root: Path, *, classes: int = 3, baselines: bool = True, shift: float = 0.0) -> dict:
    """Write reports/plots/*.csv for a study; returns what a correct drawing shows (ranks, AP, AUC, ECE, counts)."""
    rng = np.random.default_rng(classes)
    models = [m for m in MODELS if baselines or m[1] == "deep"]
    _write_csv(
        root / "reports/plots/comparison.csv",
        ["architecture", "kind", "metric", "cv_mean", "cv_std", "cv_low", "cv_high", "test"],
        [(a, k, METRIC, m + shift, s, m + shift - s, m + shift + s, t - shift) for a, k, m, s, t in models],
    )
    n = 400
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), y] += 2.5
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    predicted = prob.argmax(1)
    confusion = [(a, p, CHAMPION) for a, p in zip(y, predicted, strict=True)]
    _write_csv(root / "reports/plots/confusion.csv", ["actual", "predicted", "model"], confusion)
    pr_rows, roc_rows, ap, auc = [], [], {}, {}
    for c in range(classes):
        precision, recall, _ = precision_recall_curve(y == c, prob[:, c])
        pr_rows += [(c, r, p, CHAMPION) for r, p in zip(recall, precision, strict=True)]
        fpr, tpr, _ = roc_curve(y == c, prob[:, c])
        roc_rows += [(c, f, t, CHAMPION) for f, t in zip(fpr, tpr, strict=True)]
        ap[str(c)] = average_precision_score(y == c, prob[:, c])
        auc[str(c)] = roc_auc_score(y == c, prob[:, c])
    _write_csv(root / "reports/plots/pr.csv", ["class", "recall", "precision", "model"], pr_rows)
    _write_csv(root / "reports/plots/roc.csv", ["class", "fpr", "tpr", "model"], roc_rows)
    calibration, ece = [], {}
    for arch, temperature in TEMPERATURES.items():
        scaled = np.exp(logits / temperature) / np.exp(logits / temperature).sum(1, keepdims=True)
        confidence, correct = scaled.max(1), scaled.argmax(1) == y
        bins = np.minimum((confidence * 10).astype(int), 9)
        rows = [(confidence[bins == b].mean(), correct[bins == b].mean(), int((bins == b).sum())) for b in set(bins)]
        calibration += [(arch, *r) for r in rows]
        ece[arch] = sum(count * abs(acc - conf) for conf, acc, count in rows) / n
    _write_csv(root / "reports/plots/calibration.csv", ["architecture", "confidence", "accuracy", "count"], calibration)
    cells = Counter(zip(y.tolist(), predicted.tolist(), strict=True))
    return {
        "ranked": [m[0] for m in sorted(models, key=lambda m: -m[2])],
        "cv_low": min(m[2] + shift - m[3] for m in models),
        "kinds": ["deep", "baseline"] if baselines else ["deep"],
        "ap": ap,
        "auc": auc,
        "ece": ece,
        "counts": sorted(cells.get((a, p), 0) for a in range(classes) for p in range(classes)),
        "classes": [str(c) for c in range(classes)],
    }


# --- projects, dvc, the browser -------------------------------------------------------------------------------------


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    tail = f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{tail}"
    return proc


def make_plots_project(root: Path) -> Path:
    """A fresh git + DVC project: dvc.yaml, params.yaml, the repository's .dvc/config and .dvc/plots, page built."""
    copy_project(root)
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "plots@example.com"], root)
    run(["git", "config", "user.name", "plots"], root)
    run(["dvc", "init", "-q"], root)
    shutil.copy2(REPO_ROOT / ".dvc" / "config", root / ".dvc" / "config")
    plots = root / ".dvc" / "plots"
    shutil.copytree(REPO_ROOT / ".dvc" / "plots", plots, ignore=shutil.ignore_patterns("page.html"))
    build_plots_page.build(plots / "page.in.html", plots / "page.html")
    return root


def commit(root: Path, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", message], root)


@pytest.fixture(scope="module")
def browser() -> str:
    capabilities.need("chromium")  # CI requires it (.ci/run installs Debian's chromium)
    return render_plots.find_chromium()


def plots_page(root: Path, *args: str) -> Path:
    """Run `dvc plots show|diff ...` in `root`; returns the page it wrote."""
    run(["dvc", "plots", *args], root)
    page = root / "dvc_plots" / "index.html"
    assert page.is_file()
    return page


# --- reading what the browser drew ----------------------------------------------------------------------------------


def sections(dom: str, plot_ids: list[str]) -> dict[str, str]:
    """Each plot's part of the DOM: from its <div id=...> to the next plot's."""
    starts = {}
    for plot_id in plot_ids:
        match = re.search(rf'<div id="{re.escape(div_id(plot_id))}"', dom)
        assert match, f"no <div> for plot {plot_id!r} in the page"
        starts[plot_id] = match.start()
    ordered = sorted(starts.items(), key=lambda item: item[1])
    ends = [start for _, start in ordered[1:]] + [len(dom)]
    return {plot_id: dom[start:end] for (plot_id, start), end in zip(ordered, ends, strict=True)}


def texts(section: str, role: str) -> list[str]:
    """The text of every SVG text item with vega's `role` (axis-label, legend-label, title-text, mark ...)."""
    groups = re.findall(rf'<g class="mark-text role-{role}(?: [^"]*)?"[^>]*>(.*?)</g>', section, flags=re.S)
    return [html.unescape(t) for g in groups for t in re.findall(r"<text[^>]*>(.*?)</text>", g, flags=re.S)]


def drawn_marks(section: str) -> int:
    """How many data marks (points, rules, lines, cells, labels) vega drew in this section's SVG."""
    groups = re.findall(r'<g class="mark-\w+ role-mark[^"]*"[^>]*>(.*?)</g>', section, flags=re.S)
    return sum(len(re.findall(r"<(?:path|line|text|rect|circle)\b", g)) for g in groups)


def problems(section: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'class="dlpipe-plot-(?:error|empty)">([^<]*)', section)]


def assert_all_drawn(dom: str, plot_ids: list[str]) -> dict[str, str]:
    """Every plot has an SVG with data marks and no error/empty note; returns the sections."""
    parts = sections(dom, plot_ids)
    blank = [p for p, part in parts.items() if "<svg" not in part or drawn_marks(part) == 0]
    assert not blank, f"charts not drawn: {blank}"
    noted = {p: problems(part) for p, part in parts.items() if problems(part)}
    assert not noted, noted
    return parts


def numbers(labels: list[str]) -> list[float]:
    return [float(t) for t in labels if re.fullmatch(r"-?\d+(\.\d+)?", t)]


def labelled_values(labels: list[str], key: str) -> dict[str, float]:
    """{'0': 0.983, ...} from legend or title labels such as '0 (AP 0.983)'."""
    found = (re.fullmatch(rf"(.+) \({key} (\d\.\d+)\)", t) for t in labels)
    return {m.group(1): float(m.group(2)) for m in found if m}


def label_gaps(section: str) -> list[float]:
    """Pixels between neighbouring numeric axis labels of a chart's x axis (vega's 10px sans-serif: a digit is
    5.56 px wide, a point 2.78), from where vega placed them and how it anchored them."""
    groups = re.findall(r'<g class="mark-text role-axis-label(?: [^"]*)?"[^>]*>(.*?)</g>', section, flags=re.S)
    spans = []
    for group in groups:
        for attrs, text in re.findall(r"<text([^>]*)>(.*?)</text>", group, flags=re.S):
            placed = re.search(r'text-anchor="(\w+)" transform="translate\(([-\d.]+),', attrs)
            if not placed or not numbers([html.unescape(text)]):
                continue
            width = sum(2.78 if ch == "." else 5.56 for ch in text)
            x = float(placed.group(2))
            left = {"start": x, "middle": x - width / 2, "end": x - width}[placed.group(1)]
            spans.append((left, left + width))
    spans.sort()
    return [b[0] - a[1] for a, b in itertools.pairwise(spans)]


ALL_PLOTS = [CV_PLOT, TEST_PLOT, *FILE_PLOTS.values()]


# --- tests ----------------------------------------------------------------------------------------------------------


def test_plots_show_draws_every_chart_offline(tmp_path: Path, browser: str):
    root = make_plots_project(tmp_path / "study")
    expected = write_sample_reports(root)
    page = plots_page(root, "show")

    parts = assert_all_drawn(render_plots.dump_dom(page, browser), ALL_PLOTS)

    text = page.read_text()
    assert "cdn.jsdelivr" not in text and not re.search(r"<script[^>]+src=", text), "the page loads a script"

    cv = parts[CV_PLOT]
    assert f"{METRIC}, cross-validation mean ± 1 std over folds" in texts(cv, "axis-title")
    assert [t for t in texts(cv, "axis-label") if not numbers([t])] == expected["ranked"]
    ticks = numbers(texts(cv, "axis-label"))
    assert max(ticks) <= 1.0 and min(ticks) >= expected["cv_low"] - 0.02, ticks  # zoomed, never past 1
    assert texts(cv, "legend-label") == expected["kinds"]
    test = parts[TEST_PLOT]
    assert f"{METRIC}, held-out test set" in texts(test, "axis-title")
    assert [t for t in texts(test, "axis-label") if not numbers([t])] == expected["ranked"]
    ticks = numbers(texts(test, "axis-label"))
    assert max(ticks) <= 1.0 and min(ticks) > 0.9, ticks
    for part in (cv, test):  # one revision: no revision legend or labels
        assert "workspace" not in " ".join(texts(part, "mark") + texts(part, "legend-label"))

    confusion = parts[FILE_PLOTS["confusion"]]
    assert sorted(int(t) for t in texts(confusion, "mark")) == expected["counts"]
    assert {"predicted class", "true class"} <= set(texts(confusion, "axis-title"))

    for plot, key in ((FILE_PLOTS["pr"], "ap"), (FILE_PLOTS["roc"], "auc")):
        shown = labelled_values(texts(parts[plot], "legend-label"), key.upper())
        assert shown.keys() == expected[key].keys(), shown
        for cls, value in expected[key].items():  # the area the chart computes is sklearn's
            assert abs(shown[cls] - value) < 0.0015, (plot, cls, shown[cls], value)
    ece = labelled_values(texts(parts[FILE_PLOTS["calibration"]], "title-text"), "ECE")
    assert ece.keys() == expected["ece"].keys(), ece
    for arch, value in expected["ece"].items():
        assert abs(ece[arch] - value) < 0.0015, (arch, ece[arch], value)


def test_titles_name_the_champion_and_score_axes_keep_their_labels_apart(tmp_path: Path, browser: str):
    """A study whose models span 0.87-0.99 on the test set (the digits study's range): every x-axis label of the
    comparison charts stands clear of its neighbours, and the champion's charts name it."""
    root = make_plots_project(tmp_path / "study")
    write_sample_reports(root)
    wide = [
        ("cnn", "deep", 0.9917, 0.0053, 0.9916),
        ("mlp", "deep", 0.9703, 0.01, 0.9611),
        ("resnet", "deep", 0.9107, 0.03, 0.8722),
        ("svc", "baseline", 0.991, 0.005, 0.9944),
        ("logreg", "baseline", 0.962, 0.01, 0.9583),
    ]
    _write_csv(
        root / "reports/plots/comparison.csv",
        ["architecture", "kind", "metric", "cv_mean", "cv_std", "test"],
        [(a, k, METRIC, m, s, t) for a, k, m, s, t in wide],
    )
    parts = assert_all_drawn(render_plots.dump_dom(plots_page(root, "show"), browser), ALL_PLOTS)
    for plot in (CV_PLOT, TEST_PLOT):
        gaps = label_gaps(parts[plot])
        assert gaps and min(gaps) >= 8, (plot, gaps, texts(parts[plot], "axis-label"))
    for plot, title in (
        ("confusion", "confusion matrix on the held-out test set"),
        ("pr", "precision-recall per class (out-of-fold predictions)"),
        ("roc", "ROC per class, one-vs-rest (out-of-fold predictions)"),
    ):
        assert f"Champion {CHAMPION}: {title}" in texts(parts[FILE_PLOTS[plot]], "title-text")


def test_plots_diff_keeps_revisions_apart(tmp_path: Path, browser: str):
    root = make_plots_project(tmp_path / "study")
    write_sample_reports(root)
    commit(root, "study with baselines")
    expected = write_sample_reports(root, classes=11, baselines=False, shift=0.004)

    parts = assert_all_drawn(render_plots.dump_dom(plots_page(root, "diff", "HEAD"), browser), ALL_PLOTS)

    cv = parts[CV_PLOT]
    rows = [t for t in texts(cv, "axis-label") if not numbers([t])]
    assert sorted(rows) == sorted(m[0] for m in MODELS)  # one row per model, baselines from HEAD only
    labels = Counter(texts(cv, "mark"))
    assert labels["HEAD"] == len(MODELS) and labels["workspace"] == len(expected["ranked"]), labels
    assert {"HEAD", "workspace"} <= set(texts(parts[FILE_PLOTS["pr"]], "legend-label"))
    confusion = parts[FILE_PLOTS["confusion"]]
    assert {"HEAD", "workspace"} <= set(re.findall(r"aria-label=\"Title text '([^']*)'", confusion))
    classes = [t for t in texts(confusion, "axis-label") if t.isdigit()]
    assert classes[: len(expected["classes"])] == expected["classes"]  # numeric class names in numeric order


def test_missing_plot_files_leave_the_others_drawn(tmp_path: Path, browser: str):
    root = make_plots_project(tmp_path / "study")
    expected = write_sample_reports(root, baselines=False)
    for name in ("pr", "roc", "calibration"):
        (root / FILE_PLOTS[name]).unlink()

    parts = sections(render_plots.dump_dom(plots_page(root, "show"), browser), ALL_PLOTS)

    present = [CV_PLOT, TEST_PLOT, FILE_PLOTS["confusion"]]
    assert_all_drawn("".join(parts[p] for p in present), present)
    assert texts(parts[CV_PLOT], "legend-label") == ["deep"] == expected["kinds"]
    for name in ("pr", "roc", "calibration"):
        note = f"{div_id(FILE_PLOTS[name])}: no data (its file is missing in this revision)"
        assert problems(parts[FILE_PLOTS[name]]) == [note]


def test_comparison_file_without_kind_or_bounds_still_draws(tmp_path: Path, browser: str):
    """The comparison file as the select stage wrote it before kind, cv_low and cv_high: deep models, mean -/+ std."""
    root = make_plots_project(tmp_path / "study")
    write_sample_reports(root)
    rows = [(a, METRIC, m, s, t) for a, k, m, s, t in MODELS]
    _write_csv(root / "reports/plots/comparison.csv", ["architecture", "metric", "cv_mean", "cv_std", "test"], rows)

    parts = assert_all_drawn(render_plots.dump_dom(plots_page(root, "show"), browser), ALL_PLOTS)

    cv = parts[CV_PLOT]
    assert texts(cv, "legend-label") == ["deep"]
    bars = re.findall(r'aria-label="cv_low: ([\d.]+); architecture: (\w+); cv_high: ([\d.]+)', cv)
    drawn = {arch: (float(low), float(high)) for low, arch, high in bars}
    expected = {a: (m - s, min(1.0, m + s)) for a, _, m, s, _ in MODELS}  # one bar per model, stopped at 1
    assert drawn.keys() == expected.keys(), drawn
    for arch, (low, high) in expected.items():
        assert abs(drawn[arch][0] - low) < 0.001 and abs(drawn[arch][1] - high) < 0.001, (arch, drawn[arch])
    assert max(numbers(texts(cv, "axis-label"))) <= 1.0


def test_dvcs_default_page_draws_nothing_offline(tmp_path: Path, browser: str):
    """The control: DVC's own page loads vega from a CDN; offline it is blank and the check above fails on it."""
    root = make_plots_project(tmp_path / "study")
    write_sample_reports(root)
    run(["dvc", "config", "--unset", "plots.html_template"], root)
    page = plots_page(root, "show")
    assert "https://cdn.jsdelivr.net/npm/vega@" in page.read_text()

    dom = render_plots.dump_dom(page, browser)

    assert "<svg" not in dom
    with pytest.raises(AssertionError, match="charts not drawn"):
        assert_all_drawn(dom, ALL_PLOTS)


def test_offline_browser_cannot_fetch_even_from_loopback(tmp_path: Path, browser: str):
    """DVC's page with its CDN links pointed at a live server on 127.0.0.1: drawn online, blank offline."""
    root = make_plots_project(tmp_path / "study")
    write_sample_reports(root)
    run(["dvc", "config", "--unset", "plots.html_template"], root)
    page = plots_page(root, "show")
    served = tmp_path / "served"
    served.mkdir()
    package = build_plots_page.PACKAGE
    for name in build_plots_page.SCRIPTS:
        shutil.copy2(Path(str(importlib.resources.files(package) / "static" / package / name)), served / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        text = page.read_text()
        for lib, name in zip(("vega@", "vega-lite@", "vega-embed@"), build_plots_page.SCRIPTS, strict=True):
            text = re.sub(rf"https://cdn\.jsdelivr\.net/npm/{lib}[\d.]+", f"{base}/{name}", text)
        page.write_text(text)

        online = sections(render_plots.dump_dom(page, browser, offline=False), ALL_PLOTS)
        assert all("<canvas" in part for part in online.values()), "DVC's page draws on canvas once vega loads"
        offline = render_plots.dump_dom(page, browser, offline=True)
        assert "<canvas" not in offline and "<svg" not in offline
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_render_plots_writes_a_png_of_the_comparison(tmp_path: Path, browser: str):
    from PIL import Image

    root = make_plots_project(tmp_path / "study")
    write_sample_reports(root)
    png = tmp_path / "comparison.png"

    render_plots.render(root, png, [CV_PLOT])

    image = Image.open(png).convert("RGB")
    assert 300 < image.width < 1400 and 150 < image.height < 1000, image.size
    colours = Counter(image.getdata())
    deep, baseline = (76, 120, 168), (228, 87, 86)  # the templates' colours for deep models and baselines
    assert colours[deep] > 50 and colours[baseline] > 50, colours.most_common(5)
