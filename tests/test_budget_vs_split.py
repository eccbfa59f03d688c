"""A transfer budget that asks for more training records than a split holds is a one-line error
when a table's cells are made, naming the budget field and the split's size, before any model
loads (the loaders are replaced by ones that fail the test)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from semalign_core.data.benchmarks import benchmark_path
from semalign_core.errors import InvalidParameterError
from semalign_core.experiments import transfer_tables as tt
from semalign_core.experiments.budgets import transfer_budget
from semalign_core.profiles import get_profile

CPU = get_profile("cpu")
TOO_MANY = 10**6


def train_lines(task: str) -> int:
    """The records of a LaTen train split, counted from its file (the reference)."""
    text = benchmark_path(f"transfer-splits/{task}_train.jsonl").read_text(encoding="utf-8")
    return sum(1 for line in text.splitlines() if line.strip())


@pytest.fixture(autouse=True)
def no_model_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path / "results"))

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the budget was checked")

    monkeypatch.setattr(tt, "load_for", refuse)
    monkeypatch.setattr(tt, "load_profile_teacher", refuse)


def test_a_table_whose_n_train_exceeds_the_split_fails_before_loading():
    budget = replace(transfer_budget(CPU, "mbpp"), n_train=TOO_MANY)
    with pytest.raises(InvalidParameterError) as err:
        tt.run_table(CPU, ["sft"], ["mbpp"], [0], budget=budget, verbose=False)
    n = train_lines("mbpp")
    assert str(err.value) == (
        f"budget n_train={TOO_MANY} exceeds the {n} records of transfer/mbpp/train; "
        "lower n_train or set it to None (the whole split)"
    )


def test_one_cell_and_a_classification_pool_are_checked_too():
    budget = replace(transfer_budget(CPU, "gsm"), n_train=train_lines("gsm") + 1)
    with pytest.raises(InvalidParameterError, match=r"^budget n_train=\d+ exceeds .*gsm/train"):
        tt.run_cell(CPU, "sft", "gsm", budget=budget)
    budget = replace(transfer_budget(CPU, "sst2"), n_train=TOO_MANY)
    with pytest.raises(InvalidParameterError, match="classification-transfer/sst2/train"):
        tt.table_cells(CPU, ["sft"], ["sst2"], [0], budget, "finetuned", None)


def test_budgets_that_fit_and_n_extract_caps_pass():
    n = train_lines("mbpp")
    fits = replace(transfer_budget(CPU, "mbpp"), n_train=n, n_extract=TOO_MANY)  # extract: a cap
    assert tt.table_cells(CPU, ["sft"], ["mbpp"], [0], fits, "table1", None)
    whole = replace(fits, n_train=None)
    assert tt.table_cells(CPU, ["sft"], ["mbpp"], [0], whole, "table1", None)
