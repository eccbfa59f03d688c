"""Per-task evaluation limits (TASK_BUDGETS: Table 1's MMLU at cpu gets more fixed items)."""

from __future__ import annotations

import pytest

from semalign_core.experiments.budgets import transfer_budget
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


def test_the_cpu_table_shows_each_task_s_own_number_of_items():
    cpu = get_profile("cpu")
    assert [transfer_budget(cpu, t).eval_limit for t in ("mmlu", "gsm", "humaneval", "mbpp")] == [
        100,
        20,
        20,
        20,
    ]
