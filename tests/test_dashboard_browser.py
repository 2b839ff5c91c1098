"""A real browser on the dashboard: headless Chromium loads `dashboard` on the committed
CPU ablation (a copy of ``results/cpu_ablation/studies.db``), runs the page's scripts, and
the rendered DOM holds the study's note with its comparison table (Note tab) and the
titles of its figures (study page); a screenshot is written for a person to look at.

Chromium is a Debian package (``apt-get install chromium``; ``.ci/run`` installs it): where
it is missing the test skips, saying so. The screenshot goes to ``$ATTNRES_SCREENSHOTS``
when that names a folder, else to the test's temporary folder.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from attnres_search.reports.dashboard import FOREST_ID, LOSS_ID
from attnres_search.study.dashboard_app import dashboard_app

ROOT = Path(__file__).resolve().parents[1]
STUDY_DB = ROOT / "results" / "cpu_ablation" / "studies.db"
CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name)) is not None), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package `chromium`, "
                                                         "which .ci/run installs): the browser test needs it")


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def chromium(profile: Path, *args: str) -> subprocess.Popen:
    """Headless Chromium with its own profile folder; ``--virtual-time-budget`` lets the
    page's scripts fetch and render before the DOM is dumped or the screenshot taken."""
    assert CHROMIUM is not None
    return subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}",
                             "--virtual-time-budget=6000", "--window-size=1400,1800", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def first_table(markdown: str) -> tuple[str, list[str]]:
    """The heading above the note's first Markdown table and that table's first column."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    heading = next(line.lstrip("#").strip() for line in reversed(lines[:start]) if line.startswith("#"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line.strip("|").split("|")[0].strip())
    return heading, rows


def text_of(dom: str) -> str:
    """What a reader sees: the DOM without styles, scripts and tags, entities decoded."""
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


@pytest.mark.slow
def test_chromium_renders_the_note_table_and_the_figures(tmp_path: Path, serve_wsgi) -> None:
    db = tmp_path / "studies.db"
    shutil.copyfile(STUDY_DB, db)
    app, _ = dashboard_app(f"sqlite:///{db}", tmp_path / "runs")  # read-only, as `dashboard` serves it
    base = serve_wsgi(app)
    (summary,) = get(f"{base}/api/studies")["study_summaries"]
    detail = get(f"{base}/api/studies/{summary['study_id']}")
    assert detail["note"]["body"], "the committed study has no note: `attnres-search report cpu_ablation --note`"
    heading, variants = first_table(detail["note"]["body"])
    titles = {g["id"]: json.loads(g["graph_object"])["layout"]["title"]["text"] for g in detail["plotly_graph_objects"]}
    assert set(titles) == {FOREST_ID, LOSS_ID} and "baseline" in variants

    shots = Path(os.environ.get("ATTNRES_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page = f"{base}/dashboard/studies/{summary['study_id']}"
    runs = [chromium(tmp_path / "p1", "--dump-dom", page), chromium(tmp_path / "p2", "--dump-dom", f"{page}/note"),
            chromium(tmp_path / "p3", f"--screenshot={shots / 'dashboard.png'}", page)]
    try:
        study_dom, note_dom, _ = (run.communicate(timeout=120)[0] for run in runs)
    finally:
        for run in runs:
            run.kill()
    for title in titles.values():
        assert title in text_of(study_dom), f"figure {title!r} was not rendered"
    assert heading in text_of(note_dom)
    for variant in variants:  # the comparison table rendered as a table, one row per variant
        assert re.search(rf"<td[^>]*>\s*{re.escape(variant)}\s*</td>", note_dom), variant
    screenshot = (shots / "dashboard.png").read_bytes()
    assert screenshot.startswith(b"\x89PNG") and len(screenshot) > 20_000
