"""Every experiment by name: its notebook, its record folder and the fixed layout of its tables.

An experiment writes ``results/<experiment>/<profile>/<run>.json``; the report finds records by
these names, so this module imports nothing heavy (no torch: the report reads it). How much each
experiment runs at each profile is in :mod:`semalign_core.experiments.budgets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from semalign_core.errors import InvalidParameterError
from semalign_core.models.teacher_recipe import FINETUNED_CROSS

# --------------------------------------------------------------------------- experiments

MODELS, DATA = "models", "data"
SEMALIGN_ANALYSES, SALF_ANALYSIS = "semalign_analyses", "salf_analysis"
SEMALIGN_TRANSFER, FINETUNED_TEACHER = "semalign_transfer", "semalign_finetuned_teacher"
SEMALIGN_ABLATIONS = "semalign_ablations"
SEMALIGN_CROSS_FAMILY = "semalign_cross_family"  # beyond the papers: another family's teacher
SALF_MAIN, SALF_COST_BENEFIT = "salf_main", "salf_cost_benefit"
SALF_TIMING = "salf_timing"  # timing repeats of notebook 07, each run in its own process

# Transfer methods that FSDP shards where a profile trains with it (lm/sharding.py): full
# fine-tuning through `controls.fine_tune` (hidden distillation's maps sharded beside the
# target; LaTen, Seeking and SemAlign stay in one process: docs/decisions.md, "More than one
# GPU"), in the experiments whose cells run in their own processes.
SHARDED_METHODS = ("sft", "output_kl", "hidden_distill")
SHARDED_EXPERIMENTS = (SEMALIGN_TRANSFER, FINETUNED_TEACHER)

# experiment (its results folder) → the notebook that runs it
NOTEBOOKS: dict[str, str] = {
    MODELS: "00_models_and_data",
    DATA: "00_models_and_data",
    SEMALIGN_ANALYSES: "01_semalign_analyses",
    SALF_ANALYSIS: "02_salf_deviation_gain",
    SEMALIGN_TRANSFER: "03_semalign_transfer",
    FINETUNED_TEACHER: "04_semalign_finetuned_teacher",
    SEMALIGN_ABLATIONS: "05_semalign_ablations",
    SEMALIGN_CROSS_FAMILY: "05b_semalign_cross_family",
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
class TrainedRow:
    """A row of a transfer table trained by a registry method under its own name.

    Attributes:
        method: the registry method that trains it (``transfer.registry``, cross-vocabulary
            methods included).
        method_config: its config fields beyond the budget's (e.g. the vocabulary bridge).
        budget_of: the method whose per-method budget settings (``TransferBudget.method_config``,
            e.g. the learning rate) it takes: a cross-vocabulary method takes its same-family
            counterpart's, so the two train alike.
    """

    method: str
    method_config: dict[str, Any] = field(default_factory=dict)
    budget_of: str | None = None


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
        secondary: the secondary columns (:data:`SECONDARY`) its cells evaluate.
        rows: the rows trained under their own names (None: every method of the transfer
            registry's ``METHODS``, each its own row).
        copies: rows that are another setting's records, copied rather than recomputed (the same
            model trained the same way, evaluated on the same items): row -> (setting, row).
        teacher: the teacher name its rows read (None: the profile's teachers of each task).
        compare_with: rows every trained row is also compared with (beside the target and SFT).
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
    rows: dict[str, TrainedRow] | None = None
    copies: dict[str, tuple[str, str]] = field(default_factory=dict)
    teacher: str | None = None
    compare_with: tuple[str, ...] = ()

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
    # Beyond the papers (issue 19): a teacher of another family (another tokenizer and
    # vocabulary) fine-tuned on an informative task -> the profile's target. Target, SFT and the
    # same-family SemAlign are Table 2's records of the same target on the same items.
    "cross_family": TransferSetting(
        name="cross_family",
        experiment=SEMALIGN_CROSS_FAMILY,
        tasks=dict(CLS_TASKS),
        columns={"sst2": "SST-2", "trec": "TREC"},
        source_row="teacher",
        target_row="target",
        chance={"sst2": 50.0},
        published="",
        title="Cross-family transfer",
        rows={
            "uld": TrainedRow("uld", budget_of="output_kl"),
            "bridged_kl": TrainedRow("bridged_kl", {"bridge": "projection"}, "output_kl"),
            "semalign_cross_exact": TrainedRow("semalign_cross", {"bridge": "exact"}, "semalign"),
            "semalign_cross_projection": TrainedRow(
                "semalign_cross", {"bridge": "projection"}, "semalign"
            ),
        },
        copies={
            "target": ("finetuned", "target"),
            "sft": ("finetuned", "sft"),
            "semalign_same_family": ("finetuned", "semalign"),
        },
        teacher=FINETUNED_CROSS,
        compare_with=("uld",),  # the published cross-tokenizer distillation
    ),
}
# the cross-family table's rows in order: reference rows, copied rows, trained rows
_CROSS = SETTINGS["cross_family"]
CROSS_FAMILY_ROWS = tuple(dict.fromkeys((*_CROSS.reference_rows, *_CROSS.copies, *_CROSS.rows)))


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
    "CROSS_FAMILY_ROWS",
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
    "SEMALIGN_CROSS_FAMILY",
    "SEMALIGN_TRANSFER",
    "SETTINGS",
    "SHARDED_EXPERIMENTS",
    "SHARDED_METHODS",
    "SWEEP_GROUPS",
    "TrainedRow",
    "TransferSetting",
    "ZERO_SHOT",
    "get_setting",
]
