"""Executed notebooks keep no machine paths: run_notebook scrubs every cell output, and the
committed executed notebooks under results/notebooks/ name no folder of the machine that ran
them."""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

from semalign_core.paths import REPO_ROOT
from semalign_core.run_notebook import strip_machine_paths

ANSI = re.compile(r"\x1b\[[\d;]*m")
# An absolute path starts a word: not inside a URL, a longer path or after a placeholder.
_START = r"(?<![\w>.:/-])"
MACHINE_PATH = re.compile(
    rf"{_START}/(?:work|tmp|root|home)\b|{_START}/usr/local/lib/python"
    rf"|{_START}/[^\s'\"<>]*site-packages"
)
PNG = "iVBORw0KGgo/tmp/work/home+/root/x=="  # base64 data that only looks like paths


def strings(value) -> list[str]:
    """Every string inside a JSON value."""
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [text for item in items for text in strings(item)]


def machine_paths(notebook: dict) -> list[str]:
    return [m.group() for s in strings(notebook) for m in MACHINE_PATH.finditer(ANSI.sub("", s))]


@pytest.fixture
def outputs_with_paths(monkeypatch, tmp_path):
    run = tmp_path / "run"
    monkeypatch.setenv("SEMALIGN_RUN_DIR", str(run))
    venv, home, tmp = sys.prefix, str(Path.home()), tempfile.gettempdir()
    traceback = [f"\x1b[0;32m{venv}/lib/m.py\x1b[0m in f()", f"File {REPO_ROOT}/semalign_core/x.py"]
    return run, [
        nbformat.v4.new_output("stream", name="stdout", text=f"saved {run}/results/a.json\n"),
        nbformat.v4.new_output("stream", name="stderr", text=f"{venv}/lib/w.py:3: Warning\n"),
        nbformat.v4.new_output(
            "execute_result",
            data={"text/plain": f"'{home}/notes'", "text/html": f"<td>{tmp}/t.csv</td>"},
            execution_count=1,
        ),
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "fig"}),
        nbformat.v4.new_output("error", ename="OSError", evalue=f"{tmp}/x", traceback=traceback),
        nbformat.v4.new_output("stream", name="stdout", text="/elsewhere/proj/.cache/models/m\n"),
    ]


def test_every_machine_path_in_outputs_becomes_a_placeholder(tmp_path, outputs_with_paths):
    run, outputs = outputs_with_paths
    cell = nbformat.v4.new_code_cell("1")
    cell.outputs = outputs
    path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    strip_machine_paths(path)
    scrubbed = path.read_text()
    assert PNG in scrubbed
    scrubbed = scrubbed.replace(PNG, "")
    for folder in (run, REPO_ROOT, sys.prefix, tempfile.gettempdir(), Path.home()):
        assert f"{folder}/" not in scrubbed, folder
    for expected in (
        "saved <run>/results/a.json",
        "<venv>/lib/w.py:3",
        "<home>/notes",
        "<td><tmp>/t.csv</td>",
        "<venv>/lib/m.py",
        "File <repo>/semalign_core/x.py",
        '"evalue": "<tmp>/x"',
        "<cache>/models/m",
    ):
        assert expected in scrubbed, expected
    assert not machine_paths(json.loads(scrubbed))


def test_committed_executed_notebooks_hold_no_machine_paths():
    executed = sorted((REPO_ROOT / "results" / "notebooks").glob("*/*.ipynb"))
    assert executed
    for path in executed:
        found = machine_paths(json.loads(path.read_text()))
        assert not found, (path.relative_to(REPO_ROOT), found[:3])


def test_the_leak_pattern_sees_paths_and_skips_placeholders_and_urls():
    leaks = ["\x1b[0;32m/work/a.py", "at /tmp/x", "'/root/y'", "/usr/local/lib/python3.11/z"]
    leaks += ["/opt/conda/lib/python3.11/site-packages/t.py"]
    clean = ["<venv>/lib/python3.11/site-packages/t.py", "https://host.io/home/x", "<tmp>/x"]
    assert all(machine_paths([s]) for s in leaks)
    assert not machine_paths(clean)
