"""The published tables carry the paper's rows: Table 2 shows its Llama2-7B-Chat target beside
the code teachers (numbers copied from the paper, not from results/paper/)."""

from __future__ import annotations

import re

from semalign_core.paths import REPO_ROOT
from semalign_core.report import teacher_table

# SemAlign paper, Llama2-7B-Chat on HumanEval / MBPP (pass@1, %): the target of Table 2.
TARGET_HUMANEVAL, TARGET_MBPP = 14.05, 17.80


def test_published_table2_frame_has_the_target_row():
    frame = teacher_table.published()
    target = [name for name in frame.index if name.startswith("Llama2-7B-Chat (target")]
    assert len(target) == 1 and frame.index[0] == target[0]  # the target opens the table
    assert frame.loc[target[0]].tolist() == [TARGET_HUMANEVAL, TARGET_MBPP]
    assert "published" in frame.attrs["caption"]


def test_rendered_published_table2_shows_the_target_numbers(monkeypatch):
    # The committed records, read only: the page is rendered only beside reproduced rows.
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(REPO_ROOT / "results"))
    published = teacher_table.teacher_table_markdown().split("## Published", 1)[1]
    row = re.search(r"^\| Llama2-7B-Chat \(target[^|]*\|([^|]+)\|([^|]+)\|$", published, re.M)
    assert row, published
    assert [float(cell) for cell in row.groups()] == [TARGET_HUMANEVAL, TARGET_MBPP]
