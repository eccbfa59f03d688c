"""Every experiment by name: its notebook, its record folder and the fixed layout of its tables.

An experiment writes ``results/<experiment>/<profile>/<run>.json``; the report finds records by
these names, so this module imports nothing heavy (no torch: the report reads it). How much each
experiment runs at each profile is in :mod:`semalign_core.experiments.budgets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from semalign_core.errors import InvalidParameterError

# --------------------------------------------------------------------------- experiments

MODELS, DATA = "models", "data"
SEMALIGN_ANALYSES, SALF_ANALYSIS = "semalign_analyses", "salf_analysis"
SEMALIGN_TRANSFER, FINETUNED_TEACHER = "semalign_transfer", "semalign_finetuned_teacher"
SEMALIGN_ABLATIONS = "semalign_ablations"
SALF_MAIN, SALF_COST_BENEFIT = "salf_main", "salf_cost_benefit"
SALF_TIMING = "salf_timing"  # timing repeats of notebook 07, each run in its own process

# experiment (its results folder) → the notebook that runs it
NOTEBOOKS: dict[str, str] = {
    MODELS: "00_models_and_data",
    DATA: "00_models_and_data",
    SEMALIGN_ANALYSES: "01_semalign_analyses",
    SALF_ANALYSIS: "02_salf_deviation_gain",
    SEMALIGN_TRANSFER: "03_semalign_transfer",
    FINETUNED_TEACHER: "04_semalign_finetuned_teacher",
    SEMALIGN_ABLATIONS: "05_semalign_ablations",
    SALF_MAIN: "06_salf_main_table",
    SALF_COST_BENEFIT: "07_salf_cost_benefit",
    SALF_TIMING: "07_salf_cost_benefit",
}

# --------------------------------------------------------------------------- SemAlign Tables 1-2

EVAL_TASKS: dict[str, str] = {
    "gsm": "semalign_gsm8k",
    "mmlu": "semalign_mmlu",
    "humaneval": "semalign_humaneval",
    "mbpp": "semalign_mbpp",
}
COLUMNS: dict[str, str] = {
    "mmlu": "MMLU",
    "gsm": "GSM8K",
    "humaneval": "HumanEval",
    "mbpp": "MBPP",
}  # Table 1 order
# classification transfer (plain format); which are used at a profile: budgets.INFORMATIVE_TASKS
CLS_TASKS: dict[str, str] = {"sst2": "semalign_cls_sst2", "trec": "semalign_cls_trec"}
METRICS: dict[str, str] = {
    "semalign_gsm8k": "exact_match",
    "semalign_mmlu": "acc",
    "semalign_humaneval": "pass@1",
    "semalign_mbpp": "pass@1",
    "semalign_cls_sst2": "acc",
    "semalign_cls_trec": "acc",
}
# Metrics that move at small scale, evaluated in the same cells on the same fixed items as the
# paper's metric (docs/decisions.md, "Metrics that move"): column key -> (the cell's transfer
# task, lm-eval task, metric). MMLU by answer text (lm-eval's cloze form, acc_norm); GSM8K,
# HumanEval, MBPP by bits per byte of the reference solution (lower is better).
SECONDARY: dict[str, tuple[str, str, str]] = {
    "mmlu_cloze": ("mmlu", "semalign_mmlu_cloze", "acc_norm"),
    "gsm_nll": ("gsm", "semalign_gsm8k_nll", "bits_per_byte"),
    "humaneval_nll": ("humaneval", "semalign_humaneval_nll", "bits_per_byte"),
    "mbpp_nll": ("mbpp", "semalign_mbpp_nll", "bits_per_byte"),
}
SECONDARY_COLUMNS: dict[str, str] = {
    "mmlu_cloze": "MMLU cloze",
    "gsm_nll": "GSM8K ref. bits/byte ↓",
    "humaneval_nll": "HumanEval ref. bits/byte ↓",
    "mbpp_nll": "MBPP ref. bits/byte ↓",
}
PERCENT_METRICS = frozenset({"acc", "acc_norm", "exact_match", "pass@1"})  # shown in %
# % (4-way multiple choice); the others have no chance level above 0
CHANCE = {"mmlu": 25.0, "mmlu_cloze": 25.0}


@dataclass(frozen=True)
class TransferSetting:
    """One table of transfer results.

    Attributes:
        name: "table1" (profile source → target) or "finetuned" (fine-tuned teacher → target).
        experiment: results folder (``results/<experiment>/<profile>/``).
        tasks: task key → lm-eval task, in column order.
        columns: task key → column title.
        source_row: the untransferred source row ("source", or "teacher" in Table 2).
        target_row: the untransferred target row.
        chance: chance level (%) per task key, shown under the table.
        published: key of the published table in ``results/paper/semalign_published.json``.
        title: "Table 1" / "Table 2".
    """

    name: str
    experiment: str
    tasks: dict[str, str]
    columns: dict[str, str]
    source_row: str
    target_row: str
    chance: dict[str, float]
    published: str
    title: str
    secondary: tuple[str, ...] = ()

    @property
    def reference_rows(self) -> tuple[str, str]:
        """The rows evaluated without training: the source (or teacher), then the target."""
        return self.source_row, self.target_row

    def secondary_of(self, task: str) -> dict[str, tuple[str, str]]:
        """The secondary columns evaluated in ``task``'s cells: key -> (lm-eval task, metric)."""
        return {k: SECONDARY[k][1:] for k in self.secondary if SECONDARY[k][0] == task}

    @property
    def all_columns(self) -> dict[str, str]:
        """Column key -> title: the tasks, then the secondary columns."""
        return {**self.columns, **{k: SECONDARY_COLUMNS[k] for k in self.secondary}}


SETTINGS: dict[str, TransferSetting] = {
    "table1": TransferSetting(
        name="table1",
        experiment=SEMALIGN_TRANSFER,
        tasks=EVAL_TASKS,
        columns=COLUMNS,
        source_row="source",
        target_row="target",
        chance=CHANCE,
        published="table1_transfer",
        title="Table 1",
        secondary=tuple(SECONDARY),
    ),
    "finetuned": TransferSetting(
        name="finetuned",
        experiment=FINETUNED_TEACHER,
        tasks={
            **CLS_TASKS,
            "humaneval": EVAL_TASKS["humaneval"],
            "mbpp": EVAL_TASKS["mbpp"],
        },
        columns={"sst2": "SST-2", "trec": "TREC", "humaneval": "HumanEval", "mbpp": "MBPP"},
        source_row="teacher",
        target_row="target",
        chance={"sst2": 50.0},
        published="table2_finetuned_teachers",
        title="Table 2",
        secondary=("humaneval_nll", "mbpp_nll"),
    ),
}


def get_setting(name: str) -> TransferSetting:
    if name not in SETTINGS:
        raise InvalidParameterError(
            f"unknown setting {name!r}; choose one of {', '.join(SETTINGS)}"
        )
    return SETTINGS[name]


# --------------------------------------------------------------------------- SemAlign ablations

ABLATION_SETTING = "finetuned"  # around Table 2's runs, on each informative task
# axis → (SemAlignConfig field, values, the default first); frontier's values come from the budget
AXES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "objective": ("objective", ("acl", "v2", "v1")),
    "pairing": ("pairing", ("attributed", "floor", "uniform", "interpolate")),
    "granularity": ("attribution_granularity", ("channel", "token", "example")),
    "strength": ("layer_weight", (1.0, 0.0, 2.0)),
    "frontier": ("steps_per_stage", ()),  # the budget's steps per stage, half of it, twice it
    "decomposition": ("decomposition", ("cosine", "dual", "gain_folded")),
}

# --------------------------------------------------------------------------- SALF

ZERO_SHOT = "zero_shot"  # the untrained model, scored once per model × task
MAIN_POLICIES = (
    "full",
    "full_embeddings",
    "salf",
    "freeze_1_4",
    "freeze_1_2",
    "freeze_3_4",
    "random_matched",
    "logit_lens_ce",
    "block_influence",
    "autofreeze",
    "lisa",
    "lora_all",
    "lora_salf_suffix",
)
SWEEP_GROUPS = ("depth", "budget", "padding", "cache", "lora")  # the cost–benefit questions

__all__ = [
    "ABLATION_SETTING",
    "AXES",
    "CHANCE",
    "CLS_TASKS",
    "COLUMNS",
    "DATA",
    "EVAL_TASKS",
    "FINETUNED_TEACHER",
    "MAIN_POLICIES",
    "METRICS",
    "PERCENT_METRICS",
    "SECONDARY",
    "SECONDARY_COLUMNS",
    "MODELS",
    "NOTEBOOKS",
    "SALF_ANALYSIS",
    "SALF_COST_BENEFIT",
    "SALF_MAIN",
    "SALF_TIMING",
    "SEMALIGN_ABLATIONS",
    "SEMALIGN_ANALYSES",
    "SEMALIGN_TRANSFER",
    "SETTINGS",
    "SWEEP_GROUPS",
    "TransferSetting",
    "ZERO_SHOT",
    "get_setting",
]
