"""The report layer: one Markdown writer, output where it is told (never the repo's figures/ for
other results), and a rebuild from the committed results that equals the committed figures."""

from __future__ import annotations

import json
import os

import pandas as pd

from semalign_core.paths import REPO_ROOT, figures_dir, reference_figures_dir, run_dir
from semalign_core.report.build import BUILDERS, build_all, main
from semalign_core.report.markdown import frame_markdown, markdown_table, save_markdown

FIGURES = REPO_ROOT / "figures"


def _snapshot(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def test_markdown_table_is_a_pipe_table():
    expected = "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | None |\n"
    assert markdown_table(["a", "b"], [[1, "x"], [2.5, None]]) == expected


def test_frame_markdown_spreads_a_tuple_index_over_columns():
    index = pd.MultiIndex.from_tuples([("axis", "v1"), ("axis", "v2")], names=["axis", "variant"])
    frame = pd.DataFrame({"acc": ["50.0", "51.0"]}, index=index)
    expected = (
        "| axis | variant | acc |\n|---|---|---|\n| axis | v1 | 50.0 |\n| axis | v2 | 51.0 |\n"
    )
    assert frame_markdown(frame, ["axis", "variant"]) == expected


def test_save_markdown_writes_nothing_for_none(tmp_path):
    assert save_markdown(None, tmp_path / "x.md") == [] and not (tmp_path / "x.md").exists()
    assert save_markdown("t\n", tmp_path / "sub" / "x.md") == [tmp_path / "sub" / "x.md"]


def test_figures_dir_follows_the_results_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("SEMALIGN_RESULTS_DIR", raising=False)
    monkeypatch.delenv("SEMALIGN_FIGURES_DIR", raising=False)
    monkeypatch.delenv("SEMALIGN_RUN_DIR", raising=False)
    monkeypatch.delenv("SEMALIGN_REFERENCE_DIR", raising=False)
    assert figures_dir() == REPO_ROOT / "runs" / "default" / "figures" == run_dir() / "figures"
    assert reference_figures_dir() == FIGURES  # only promote and the report's CLI write here
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path / "results"))
    assert figures_dir() == tmp_path / "figures"
    monkeypatch.setenv("SEMALIGN_FIGURES_DIR", str(tmp_path / "elsewhere"))
    assert figures_dir() == tmp_path / "elsewhere"


def test_rebuild_from_committed_results_equals_committed_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(REPO_ROOT / "results"))
    written = build_all(tmp_path)
    html = {"report.html"}  # make report's page of these figures (tests/test_html_report.py)
    assert sorted(p.name for p in written) == sorted({p.name for p in FIGURES.iterdir()} - html)
    for path in written:
        assert path.read_bytes() == (FIGURES / path.name).read_bytes(), path.name


def test_main_writes_beside_other_results_not_into_the_repo(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.delenv("SEMALIGN_FIGURES_DIR", raising=False)
    before = _snapshot(FIGURES)
    assert main(["table3"]) == 0
    assert (tmp_path / "figures" / "table3_model_statistics.md").is_file()
    assert main(["--out", str(tmp_path / "out"), "table3", "table1"]) == 0  # table1: no records
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["table3_model_statistics.md"]
    assert main(["tabel1"]) == 2 and "unknown figure(s) tabel1" in capsys.readouterr().err
    assert _snapshot(FIGURES) == before


def test_main_reads_the_reference_results_by_default(tmp_path, monkeypatch):
    """Without SEMALIGN_RESULTS_DIR the command line reads the committed results (here a temp
    reference) and writes figures beside them, never a run folder; the setting does not leak."""
    monkeypatch.delenv("SEMALIGN_RESULTS_DIR", raising=False)
    monkeypatch.setenv("SEMALIGN_REFERENCE_DIR", str(tmp_path / "reference" / "results"))
    monkeypatch.setenv("SEMALIGN_RUN_DIR", str(tmp_path / "run"))
    assert main(["table3"]) == 0
    assert (tmp_path / "reference" / "figures" / "table3_model_statistics.md").is_file()
    assert not (tmp_path / "run").exists()
    assert "SEMALIGN_RESULTS_DIR" not in os.environ
    assert main(["--results", str(tmp_path / "other" / "results"), "table3"]) == 0
    assert (tmp_path / "other" / "figures" / "table3_model_statistics.md").is_file()


def test_every_group_writes_nothing_without_records_but_table3(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path / "results"))
    for name, build in BUILDERS.items():
        written = build(tmp_path / "out")
        expected = ["table3_model_statistics.md"] if name == "table3" else []
        assert [p.name for p in written] == expected, name


def test_report_notebook_writes_beside_its_results(smoke_reproduction):
    """notebooks/08 in the session's smoke run: every table and figure of the smoke results, in
    the run's figures folder (the repo's figures/ untouched: test_reproduce)."""
    assert (smoke_reproduction.figures / "table3_model_statistics.md").is_file()
    cells = json.dumps(smoke_reproduction.executed("08_report")["cells"])
    assert "figures/table3_model_statistics.md" in cells
    assert "figures/semalign_table1_transfer.md" in cells  # rendered from the smoke records
