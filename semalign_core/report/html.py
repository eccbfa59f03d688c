"""The whole report as one self-contained HTML file, checked in a headless browser.

``python -m semalign_core.report.html [--results DIR] [--out FILE] [--screenshot PNG]`` builds
every table and figure (:func:`~semalign_core.report.build.build_all`, the papers' numbers beside
ours) into the folder of ``FILE`` (default ``figures/report.html`` beside the results read), then
writes one HTML page: a contents list, every table (Markdown rendered with ``mistune``), every
figure (PNG embedded as a base64 data URI), the reproduction check, the decisions register
(``docs/decisions.md``) and the provenance of the records behind the numbers. Nothing is linked
from outside the file; no script runs. Output is deterministic (no timestamp of its own).

``--screenshot`` opens the page in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium) and saves what the first screen shows.
"""

from __future__ import annotations

import argparse
import base64
import html
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import mistune

from semalign_core.errors import ArtifactError
from semalign_core.paths import REPO_ROOT, figures_dir, results_dir
from semalign_core.report.build import build_all, reading
from semalign_core.report.markdown import markdown_table
from semalign_core.report.results import read_records

DECISIONS = REPO_ROOT / "docs" / "decisions.md"
REPRODUCTION_PAGE = "reproduction_check.md"  # what report.reproduction.reproduction_check writes
TITLE = "SemAlign and SALF: reproduction report"
SCREEN = (1280, 1600)  # the screenshot's window, in CSS pixels
STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: left; }
th { background: #eee; }
img { max-width: 100%; }
section { border-top: 2px solid #444; margin-top: 2em; }
code { background: #f4f4f4; }
"""


class _GithubCode(mistune.HTMLRenderer):
    """A ``\\|`` in inline code shows as ``|``, as on GitHub (a table cell's code needs it)."""

    def codespan(self, text: str) -> str:
        return super().codespan(text.replace("\\|", "|"))


# Raw HTML in the Markdown is shown as text: the page runs nothing it did not write itself.
_MARKDOWN = mistune.create_markdown(renderer=_GithubCode(escape=True), plugins=["table"])


def page_title(path: Path) -> str:
    """A table's first ``# `` heading, else its file name (figures have no heading)."""
    if path.suffix == ".md":
        lines = path.read_text(encoding="utf-8").splitlines()
        heading = next((ln for ln in lines if ln.startswith("# ")), None)
        if heading:
            return heading[2:].strip()
    return path.name


def page_html(path: Path) -> str:
    """A table rendered from Markdown, or a figure embedded as a PNG data URI."""
    if path.suffix == ".png":
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return (
            f"<h2>{html.escape(path.name)}</h2>\n"
            f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">\n'
        )
    return _MARKDOWN(path.read_text(encoding="utf-8"))


def _versions(values: Sequence) -> str:
    """The distinct values, sorted, joined (a number seen in several versions shows them all)."""
    return ", ".join(sorted({str(v) for v in values if v is not None})) or "-"


def _provenance_cells(found: Sequence[dict]) -> list:
    """Record count, distinct commits (12 digits, ``-dirty`` kept), first … last creation time,
    machines, Python and each package's versions of the provenance dicts ``found``."""
    commits = [str(p.get("git_commit", "")) for p in found]
    created = sorted(str(p["created"]) for p in found if p.get("created"))
    names = sorted({n for p in found for n in p.get("packages") or {}})
    packages = [
        f"{n} {_versions([(p.get('packages') or {}).get(n) for p in found])}" for n in names
    ]
    return [
        len(found),
        _versions([c[:12] + ("-dirty" if c.endswith("-dirty") else "") for c in commits]),
        f"{created[0]} … {created[-1]}" if created else "-",
        _versions([p.get("machine") for p in found]),
        _versions([p.get("python") for p in found]),
        "; ".join(packages) or "-",
    ]


def provenance_rows(folder: Path) -> list[list]:
    """One row per ``<experiment>/<profile>`` of ``folder`` whose records carry provenance (see
    :func:`_provenance_cells`); no path is shown."""
    rows = []
    for profile_dir in sorted(p for p in folder.glob("*/*") if p.is_dir()):
        experiment, profile = profile_dir.parent.name, profile_dir.name
        records = read_records(experiment, profile, "*.json", folder=folder)
        found = [r["provenance"] for r in records if isinstance(r.get("provenance"), dict)]
        if found:
            rows.append([experiment, profile, *_provenance_cells(found)])
    return rows


def provenance_markdown(folder: Path) -> str:
    """The provenance section: :func:`provenance_rows` as one table."""
    header = [
        "experiment",
        "profile",
        "records",
        "git commits",
        "created (first … last)",
        "machine",
        "python",
        "packages",
    ]
    return (
        "# Provenance of the numbers\n\nPer experiment and profile, from each record's "
        "`provenance` (`results/<experiment>/<profile>/*.json`).\n\n"
        + markdown_table(header, provenance_rows(folder))
    )


def _sections(pages: Sequence[Path], folder: Path) -> list[tuple[str, str, str]]:
    """(anchor, title, body) of every section, in reading order."""
    sections = [(p.name.replace(".", "-"), page_title(p), page_html(p)) for p in pages]
    if not any(p.name == REPRODUCTION_PAGE for p in pages):
        note = "No reproduction check in these results: `make reproduce` writes one.\n"
        sections.append(("reproduction_check-md", "Reproduction check", _MARKDOWN(note)))
    sections.append(
        ("decisions", "Decisions register", _MARKDOWN(DECISIONS.read_text(encoding="utf-8")))
    )
    sections.append(("provenance", "Provenance", _MARKDOWN(provenance_markdown(folder))))
    return sections


def report_html(pages: Sequence[Path], folder: Path) -> str:
    """The report page for the tables and figures ``pages`` and the results ``folder``."""
    sections = _sections(pages, folder)
    contents = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>\n' for a, t, _ in sections)
    body = "".join(f'<section id="{a}">\n{b}</section>\n' for a, _, b in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{TITLE}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{TITLE}</h1>\n"
        f'<nav id="contents">\n<h2>Contents</h2>\n<ul>\n{contents}</ul>\n</nav>\n{body}'
        "</body>\n</html>\n"
    )


def write_report(out: Path | None = None) -> Path:
    """Build every table and figure from the results in use into ``out``'s folder and write the
    report page to ``out`` (None: ``report.html`` in :func:`~semalign_core.paths.figures_dir`)."""
    out = Path(out) if out is not None else figures_dir() / "report.html"
    pages = build_all(out.parent)
    out.write_text(report_html(pages, results_dir()), encoding="utf-8")
    return out


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) executables on PATH, None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextmanager
def open_in_chromium(page: Path) -> Iterator:
    """A selenium driver of headless Chromium showing the file ``page``; quit on exit."""
    # selenium is needed only to look at the page, not to write it
    from selenium import webdriver

    found = find_chromium()
    if found is None:
        raise ArtifactError(
            "chromium and chromedriver are needed: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={SCREEN[0]},{SCREEN[1]}",
    ):
        options.add_argument(flag)  # --no-sandbox: Chromium refuses to run as root without it
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(found[1]))
    try:
        driver.get(Path(page).resolve().as_uri())
        yield driver
    finally:
        driver.quit()


def save_screenshot(page: Path, png: Path) -> Path:
    """What headless Chromium shows of ``page`` first, saved as the PNG ``png``."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    with open_in_chromium(page) as driver:
        if not driver.save_screenshot(str(png)):
            raise ArtifactError(f"chromium could not take a screenshot of {page}")
    return png


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m semalign_core.report.html", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results to read (default: SEMALIGN_RESULTS_DIR, else results/)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the HTML file (default: report.html in figures/ beside the results)",
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        help="also save a headless-Chromium screenshot of the page here",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report (and its screenshot when asked); 2 with a one-line error."""
    args = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        with reading(args.results):
            written = [write_report(args.out)]
        if args.screenshot is not None:
            written.append(save_screenshot(written[0], args.screenshot))
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


__all__ = [
    "find_chromium",
    "main",
    "open_in_chromium",
    "page_html",
    "provenance_rows",
    "report_html",
    "save_screenshot",
    "write_report",
]


if __name__ == "__main__":  # importing the module (docs, tests) must not build
    sys.exit(main())
