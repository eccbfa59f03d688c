"""The one-file HTML report: built from the committed results into a temporary folder, checked
as text (every table and figure is in it, images embedded, nothing linked from outside) and in
headless Chromium (every image decodes, every table has rows, every in-page link lands)."""

from __future__ import annotations

import base64
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from semalign_core.paths import REPO_ROOT
from semalign_core.report.html import (
    find_chromium,
    main,
    open_in_chromium,
    provenance_rows,
    report_html,
    save_screenshot,
)

RESULTS = REPO_ROOT / "results"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TABLE_RULE = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")  # a pipe table's header rule


class _Tags(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tree_state() -> dict[str, int]:
    return {
        str(p): p.stat().st_mtime_ns for d in (RESULTS, REPO_ROOT / "figures") for p in d.rglob("*")
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of the committed results, written into a temporary folder (the tree untouched)."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    before = _tree_state()
    assert main(["--results", str(RESULTS), "--out", str(out)]) == 0
    assert _tree_state() == before, "building the report changed results/ or figures/"
    return out


def test_the_committed_report_is_the_report_of_the_committed_results(report):
    """figures/report.html (`make report`) is rebuilt whenever results/ change: not stale."""
    committed = REPO_ROOT / "figures" / "report.html"
    assert committed.read_bytes() == report.read_bytes()


def _tags(report: Path) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(report.read_text())
    return parser.tags


def test_every_figure_is_embedded_as_its_png(report):
    images = [a["src"] for t, a in _tags(report) if t == "img"]
    embedded = [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in images]
    pngs = sorted(report.parent.glob("*.png"))
    assert pngs and all(s.startswith("data:image/png;base64,") for s in images)
    assert sorted(embedded) == sorted(p.read_bytes() for p in pngs)
    assert all(data.startswith(PNG_SIGNATURE) for data in embedded)


def test_every_table_of_every_page_is_rendered(report):
    text = report.read_text()
    pages = sorted(report.parent.glob("*.md")) + [REPO_ROOT / "docs" / "decisions.md"]
    assert len(pages) > 5
    expected = 1 + sum(  # + the provenance table
        sum(bool(TABLE_RULE.match(line)) for line in page.read_text().splitlines())
        for page in pages
    )
    assert sum(tag == "table" for tag, _ in _tags(report)) == expected
    shown = html.unescape(re.sub(r"<[^>]+>", "", text))  # the page's text, tags dropped
    for page in pages[:-1]:
        heading = next(ln[2:] for ln in page.read_text().splitlines() if ln.startswith("# "))
        assert heading.replace("`", "") in shown, page.name
    assert "Reproduction check" in text and "Decisions register" in text


def test_nothing_is_loaded_or_linked_from_outside(report):
    tags = _tags(report)
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed")]
    links = [a["href"] for t, a in tags if t == "a"]
    ids = {a["id"] for _, a in tags if "id" in a}
    assert links and all(h.startswith("#") and h[1:] in ids for h in links)


def test_provenance_names_every_commit_and_no_path(report):
    """Reference: the records' provenance read here with json, not with the report's reader."""
    text = report.read_text()
    for path in RESULTS.glob("*/*/*.json"):
        provenance = json.loads(path.read_text()).get("provenance")
        if isinstance(provenance, dict):
            assert provenance["git_commit"][:12] in text, path
            assert provenance["packages"]["torch"] in text
    assert str(REPO_ROOT) not in text and str(report.parent) not in text


def _record(folder: Path, name: str, commit: str, created: str, torch: str) -> None:
    provenance = {"git_commit": commit, "created": created, "machine": "Linux x86_64, 2 cpus",
                  "python": "3.11.7", "packages": {"torch": torch, "numpy": "2.4.6"}}  # fmt: skip
    path = folder / "exp" / "cpu" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": provenance, "metrics": {}}))


def test_provenance_rows_summarise_each_experiment_and_profile(tmp_path):
    _record(tmp_path, "a__1", "a" * 40, "2026-01-02T00:00:00+00:00", "2.13.0")
    _record(tmp_path, "b__1", "b" * 40 + "-dirty", "2026-01-01T00:00:00+00:00", "2.12.0")
    (tmp_path / "exp" / "smoke").mkdir()  # no records: no row
    assert provenance_rows(tmp_path) == [[
        "exp", "cpu", 2, "aaaaaaaaaaaa, bbbbbbbbbbbb-dirty",
        "2026-01-01T00:00:00+00:00 … 2026-01-02T00:00:00+00:00", "Linux x86_64, 2 cpus",
        "3.11.7", "numpy 2.4.6; torch 2.12.0, 2.13.0",
    ]]  # fmt: skip


def test_a_reproduction_check_replaces_the_note(tmp_path):
    check = tmp_path / "reproduction_check.md"
    check.write_text("# Reproduction check\n\n| cell | verdict |\n|---|---|\n| x | identical |\n")
    text = report_html([check], tmp_path)
    assert text.count('id="reproduction_check-md"') == 1 and "No reproduction check" not in text
    assert "No reproduction check" in report_html([], tmp_path)


def _browser():
    if find_chromium() is None:
        pytest.skip(
            "chromium or chromedriver not on PATH (apt-get install chromium chromium-driver)"
        )


def test_the_page_renders_in_headless_chromium(report):
    _browser()
    with open_in_chromium(report) as driver:
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);"
        )
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => t.rows.length);"
        )
        dangling = driver.execute_script(
            "return Array.from(document.querySelectorAll('a[href]'))"
            ".map(a => a.getAttribute('href'))"
            ".filter(h => !h.startsWith('#') || !document.getElementById(h.slice(1)));"
        )
        fetched = driver.execute_script("return performance.getEntriesByType('resource').length;")
    assert len(images) == len(list(report.parent.glob("*.png")))
    assert all(complete and width > 0 for _, complete, width in images), images
    assert rows and min(rows) >= 2, "a table without a body row"
    assert dangling == [] and fetched == 0


def test_screenshot_is_a_png_of_the_page(report, tmp_path):
    _browser()
    png = save_screenshot(report, tmp_path / "shot" / "report.png")
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(png) as image:
        assert image.width >= 800 and image.height >= 600
