"""Per-task evaluation limits of the transfer budgets (Table 1's MMLU at cpu: more fixed items)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from semalign_core.errors import InvalidParameterError
from semalign_core.experiments.budgets import TRANSFER_BUDGETS, transfer_budget
from semalign_core.experiments.transfer_tables import cell_config, make_cell
from semalign_core.profiles import get_profile

# The cpu GSM8K cell's evaluation config before per-task limits existed (as committed records
# hold it): it must not change, or every GSM8K record would be recomputed.
CPU_GSM_EVAL = {
    "answer_extraction": {"order": ["hashes", "last_number"], "version": 2},
    "batch_size": 10,
    "decoding": "greedy",
    "limit": 20,
    "max_new_tokens": 96,
    "prompt_style": "transfer",
    "secondary": {"gsm_nll": ["semalign_gsm8k_nll", "bits_per_byte"]},
    "seed": 0,
}


def test_limit_for_falls_back_to_eval_limit():
    budget = replace(TRANSFER_BUDGETS["smoke"], eval_limit=7, eval_limits={"mmlu": 11})
    assert budget.limit_for("gsm") == 7 and budget.limit_for("sst2") == 7
    assert budget.limit_for("mmlu") == 11
    whole = replace(budget, eval_limits={"mmlu": None})  # None: the whole test set
    assert whole.limit_for("mmlu") is None and whole.limit_for("gsm") == 7


@pytest.mark.parametrize("method", ["target", "sft"])
def test_cpu_mmlu_cells_evaluate_100_items_and_gsm8k_cells_stay_at_20(method):
    cpu = get_profile("cpu")
    mmlu = cell_config(make_cell(cpu, method, "mmlu"))["eval"]
    gsm = cell_config(make_cell(cpu, method, "gsm"))["eval"]
    assert mmlu == {
        "batch_size": 10,
        "decoding": "loglikelihood",
        "limit": 100,
        "max_new_tokens": 96,
        "prompt_style": "plain",
        "secondary": {"mmlu_cloze": ["semalign_mmlu_cloze", "acc_norm"]},
        "seed": 0,
    }
    assert gsm == CPU_GSM_EVAL


def test_smoke_keeps_one_limit_for_every_task():
    smoke = get_profile("smoke")
    for task in ("mmlu", "gsm", "humaneval", "mbpp"):
        assert cell_config(make_cell(smoke, "target", task))["eval"]["limit"] == 4


@pytest.mark.parametrize(
    "limits", [{"mnli": 10}, {"mmlu": 0}, {"mmlu": -5}, {"mmlu": 2.5}, {"mmlu": True}]
)
def test_invalid_overrides_raise(limits):
    with pytest.raises(InvalidParameterError, match="eval_limits"):
        replace(TRANSFER_BUDGETS["cpu"], eval_limits=limits)
    with pytest.raises(InvalidParameterError, match="eval_limits"):
        transfer_budget(get_profile("cpu"), "mmlu", eval_limits=limits)
