"""Every per-profile budget of every experiment, and the seeds each one runs by default.

One table per experiment, keyed by profile (``smoke``, ``cpu``, ``gpu-small``, ``paper``): how
much data, how many steps and which seeds. A notebook parameter left at ``None`` means the value
here, so changing a scale is an edit of this file only. Each run's record holds the values it
used in its config. Imports nothing heavy (no torch): the report reads it.

``SEMALIGN_SHRINK=1`` shrinks every budget of the hub profiles (gpu-small, paper) to smoke's
sizes at import (:func:`shrink_budgets`), so their notebooks run end to end in minutes on stand-in
models (``SEMALIGN_STANDINS=1``); shrunk runs record the sizes they used, as every run does.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from semalign_core.errors import InvalidParameterError
from semalign_core.experiments.catalog import (
    CLS_TASKS,
    FINETUNED_TEACHER,
    MAIN_POLICIES,
    SALF_COST_BENEFIT,
    SALF_MAIN,
    SALF_TIMING,
    SEMALIGN_ABLATIONS,
    SEMALIGN_CROSS_FAMILY,
    SEMALIGN_TRANSFER,
)
from semalign_core.models.teacher_recipe import FINETUNED, TEACHER_VERSION, TeacherRecipe
from semalign_core.profiles import PROFILES, Profile

# --------------------------------------------------------------------------- seeds

DEFAULT_SEEDS: dict[str, dict[str, tuple[int, ...]]] = {
    # Greedy generation dominates Table 1 (887 s per seed at cpu): one seed by default.
    SEMALIGN_TRANSFER: {"smoke": (0,), "cpu": (0,), "gpu-small": (0,), "paper": (0,)},
    FINETUNED_TEACHER: {
        "smoke": (0,),
        "cpu": (0, 1, 2),
        "gpu-small": (0, 1, 2),
        "paper": (0, 1, 2),
    },
    # Fewer seeds at cpu keep the notebook near 5 minutes on 2 cores (the caption says so).
    SEMALIGN_ABLATIONS: {"smoke": (0,), "cpu": (0,), "gpu-small": (0, 1, 2), "paper": (0, 1, 2)},
    # Table 2's seeds: its target, SFT and same-family SemAlign rows are Table 2's records
    SEMALIGN_CROSS_FAMILY: {
        "smoke": (0,),
        "cpu": (0, 1, 2),
        "gpu-small": (0, 1, 2),
        "paper": (0, 1, 2),
    },
    SALF_MAIN: {"smoke": (0, 1), "cpu": (0, 1, 2), "gpu-small": (0, 1, 2), "paper": (0, 1, 2)},
    SALF_COST_BENEFIT: {"smoke": (0,), "cpu": (0,), "gpu-small": (0,), "paper": (0,)},
    SALF_TIMING: {"smoke": (0,), "cpu": (0,), "gpu-small": (0,), "paper": (0,)},
}

# `make reproduce-full`: every seed of the committed results (Table 1 at cpu has seeds 1-2 too).
FULL_SEEDS: dict[str, dict[str, tuple[int, ...]]] = {
    **DEFAULT_SEEDS,
    SEMALIGN_TRANSFER: {**DEFAULT_SEEDS[SEMALIGN_TRANSFER], "cpu": (0, 1, 2)},
}

# `make reproduce`: every table and figure at least once within its hour on 2 cores, so Table 2
# (two informative tasks since TREC joined SST-2), the cross-family table and the SALF main table
# run one training seed there; their three seeds are the notebooks' default and
# `make reproduce-full`'s.
HEADLINE_SEEDS: dict[str, dict[str, tuple[int, ...]]] = {
    **DEFAULT_SEEDS,
    FINETUNED_TEACHER: {**DEFAULT_SEEDS[FINETUNED_TEACHER], "cpu": (0,)},
    SEMALIGN_CROSS_FAMILY: {**DEFAULT_SEEDS[SEMALIGN_CROSS_FAMILY], "cpu": (0,)},
    SALF_MAIN: {**DEFAULT_SEEDS[SALF_MAIN], "cpu": (0,)},
}

# The seeds each `make` tier runs (every tier runs every notebook): tier → (profile, seeds table).
REPRODUCE_TIERS: dict[str, tuple[str, dict[str, dict[str, tuple[int, ...]]]]] = {
    "test": ("smoke", DEFAULT_SEEDS),
    "reproduce": ("cpu", HEADLINE_SEEDS),
    "reproduce-full": ("cpu", FULL_SEEDS),
}
# Notebook parameters a tier adds at its own profile (cpu: sized to 2 cores), by experiment.
# `jobs`: cells computed at once, each in its own one-thread process: on 2 cores two one-thread
# processes finish two Table 1 cells 1.37x sooner than one two-thread process runs them in turn
# (bench/bench_jobs.py, results/bench/jobs.json). SALF's main table deals its runs to two
# one-thread processes (a scored run's config has no thread count; its clean times are the
# timing repeats', which keep theirs). Short cells (Table 2) gain nothing.
# SALF in `make reproduce`: the main table on SmolLM2 x TREC only and the timing repeats of four
# policies (every table and figure at least once within the hour); `make reproduce-full` runs
# both models on both tasks and times every policy of TIMING.
SALF_HEADLINE = {"models": ["smollm2-135m-instruct"], "tasks": ["trec"]}
SALF_HEADLINE_TIMING = {"timing_policies": ["full_embeddings", "full", "freeze_1_2", "salf"]}
# The ablations in `make reproduce` on SST-2 alone (the figure at least once; TREC's ablations,
# 3 min of the hour, are `make reproduce-full`'s, as are Table 2's seeds 1-2).
ABLATIONS_HEADLINE = {"tasks": ["sst2"]}
TIER_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "reproduce": {
        SEMALIGN_TRANSFER: {"jobs": 2},
        SEMALIGN_ABLATIONS: ABLATIONS_HEADLINE,
        SALF_MAIN: {**SALF_HEADLINE, "jobs": 2},
        SALF_COST_BENEFIT: SALF_HEADLINE_TIMING,
    },
    "reproduce-full": {SEMALIGN_TRANSFER: {"jobs": 2}, SALF_MAIN: {"jobs": 2}},
}


def default_seeds(experiment: str, profile: str, first: int = 0) -> tuple[int, ...]:
    """The seeds ``experiment`` runs at ``profile`` when a notebook's ``seeds`` is None: the
    profile's default seeds, counted from ``first`` (the notebook's ``seed``)."""
    return tuple(first + s for s in DEFAULT_SEEDS[experiment][profile])


def _overridden(base, kind: str, overrides: dict[str, Any]):
    """``base`` (a budget dataclass) with the non-None ``overrides`` (unknown fields: an error)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - set(asdict(base)))
    if unknown:
        raise InvalidParameterError(f"{kind} has no field(s) {', '.join(unknown)}")
    return replace(base, **changes)


# --------------------------------------------------------------------------- SemAlign analyses


@dataclass(frozen=True)
class SemAlignAnalysisBudget:
    """How much data and alignment the SemAlign analyses (Fig. 2, Figs. 4-6) use at one profile.

    Attributes:
        n_examples: conversations whose tokens are measured.
        max_length: tokens per conversation (longer ones are truncated).
        max_tokens: measured token positions at most (seeded subsample): bounds the CKA Grams.
        n_align: conversations of the ``align`` split the short alignment trains on
            (attribution uses as many of ``extract``, at most the split's size).
        steps_per_stage, batch_size, lr: the short alignment's SemAlign settings.
    """

    n_examples: int
    max_length: int
    max_tokens: int
    n_align: int
    steps_per_stage: int
    batch_size: int
    lr: float


SEMALIGN_ANALYSIS_BUDGETS: dict[str, SemAlignAnalysisBudget] = {
    # Tiny random models need a large step for the alignment to move them visibly.
    "smoke": SemAlignAnalysisBudget(4, 48, 256, 2, 2, 2, 1e-3),
    "cpu": SemAlignAnalysisBudget(16, 128, 1024, 8, 2, 2, 3e-5),
    "gpu-small": SemAlignAnalysisBudget(64, 256, 2048, 32, 4, 4, 3e-5),
    "paper": SemAlignAnalysisBudget(128, 512, 2048, 64, 8, 4, 3e-5),
}

# SALF traces the training data (spec, Method 2): examples per task; None = the whole split.
SALF_ANALYSIS_EXAMPLES: dict[str, int | None] = {
    "smoke": 8,
    "cpu": 64,
    "gpu-small": 1000,
    "paper": None,
}

# --------------------------------------------------------------------------- SemAlign Tables 1-2


@dataclass(frozen=True)
class TransferBudget:
    """How much transfer training and evaluation one cell of Table 1 or 2 uses at one profile.

    Attributes:
        n_train: ``train`` examples the method trains on (None: the whole split).
        n_extract: ``extract`` examples for attribution (at most the split's size).
        max_length: tokens per training conversation.
        batch_size, micro_batch_size: training batch (SemAlign uses ``batch_size``).
        epochs: epochs of the epoch-based methods (seeking, sft, output_kl, hidden_distill).
        max_steps: cap on optimizer steps of the step-based methods (None: no cap).
        steps_per_stage: SemAlign steps per target layer.
        eval_limit: benchmark examples evaluated (seeded subset; None: the whole test set).
        max_new_tokens: greedy generation length of GSM8K / HumanEval / MBPP.
        eval_batch_size: evaluation batch size.
        prompt_style: how the methods render training records ("transfer": LaTen's chat tags;
            "plain": the classification evaluation's own text).
        eval_seed: seed of the evaluation subset (None: the cell's seed; an integer fixes one
            subset for every seed, so seeds vary the training only).
        method_config: per method, config fields that differ from the method's defaults at this
            budget (e.g. a learning rate sized to few steps); recorded in each cell's config.
    """

    n_train: int | None
    n_extract: int
    max_length: int
    batch_size: int
    micro_batch_size: int
    epochs: int
    max_steps: int | None
    steps_per_stage: int
    eval_limit: int | None
    max_new_tokens: int
    eval_batch_size: int
    prompt_style: str = "transfer"
    eval_seed: int | None = None
    method_config: dict[str, dict[str, Any]] = field(default_factory=dict)

    def method_overrides(self, method: str, seed: int, config_class: type) -> dict[str, Any]:
        """The budget as fields of ``method``'s config (only those ``config_class`` has)."""
        wanted = {
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "micro_batch_size": self.micro_batch_size,
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "steps_per_stage": self.steps_per_stage,
            "attribution_batch_size": self.micro_batch_size,
            "prompt_style": self.prompt_style,
            "seed": seed,
            "progress": False,
            **self.method_config.get(method, {}),
        }
        known = {f.name for f in fields(config_class)}
        return {k: v for k, v in wanted.items() if k in known}


TRANSFER_BUDGETS: dict[str, TransferBudget] = {
    "smoke": TransferBudget(
        n_train=4,
        n_extract=2,
        max_length=48,
        batch_size=2,
        micro_batch_size=2,
        epochs=1,
        max_steps=2,
        steps_per_stage=1,
        eval_limit=4,
        max_new_tokens=32,
        eval_batch_size=4,
        eval_seed=0,
    ),
    # Every profile evaluates one fixed subset (eval_seed 0) for every method and training seed:
    # seeds vary the training only, and the untrained rows are evaluated once.
    # cpu: sized so that all four tasks at one seed take ~15 min on 2 cores (measured: a GSM8K
    # evaluation of n=20 at 128 new tokens takes 30 s on the derived target, 60 s on the source).
    "cpu": TransferBudget(
        n_train=8,
        n_extract=4,
        max_length=192,
        batch_size=4,
        micro_batch_size=4,
        epochs=1,
        max_steps=None,
        steps_per_stage=1,
        eval_limit=20,
        max_new_tokens=96,
        eval_batch_size=10,
        eval_seed=0,
    ),
    # gpu-small trains on whole train splits (gsm/mmlu/humaneval 1000 records, mbpp 300): the
    # sizes of the paper's Table 5, and exactly the records a limit of 1000 kept where it fit.
    "gpu-small": TransferBudget(
        n_train=None,
        n_extract=64,
        max_length=512,
        batch_size=16,
        micro_batch_size=2,
        epochs=1,
        max_steps=None,
        steps_per_stage=16,
        eval_limit=None,
        max_new_tokens=512,
        eval_batch_size=16,
        eval_seed=0,
    ),
    "paper": TransferBudget(
        n_train=None,
        n_extract=64,
        max_length=512,
        batch_size=64,
        micro_batch_size=4,
        epochs=3,
        max_steps=None,
        steps_per_stage=32,
        eval_limit=None,
        max_new_tokens=512,
        eval_batch_size=16,
        eval_seed=0,
    ),
}

# Classification transfer (sst2): short texts (median 31 tokens, max 67 with the template), one
# supervised token (the label word), evaluation by log-likelihood on a fixed held-out subset.
# Full-weight methods get lr 3e-4 at cpu (Seeking's): at 16 optimizer steps their default lrs
# (2e-5, 3e-5) leave the target where it started (measured). Seeking (LoRA, 3e-4) and LaTen (its
# spec) keep theirs. gpu-small (≈70 steps, not run yet) uses 1e-4; paper the methods' defaults.
_FULL_WEIGHT = ("semalign", "sft", "output_kl", "hidden_distill")
_CLS_LR = {m: {"lr": 3e-4} for m in _FULL_WEIGHT}
CLS_BUDGETS: dict[str, TransferBudget] = {
    "smoke": TransferBudget(
        n_train=8,
        n_extract=4,
        max_length=64,
        batch_size=4,
        micro_batch_size=4,
        epochs=1,
        max_steps=2,
        steps_per_stage=1,
        eval_limit=8,
        max_new_tokens=1,
        eval_batch_size=8,
        prompt_style="plain",
        eval_seed=0,
        method_config={m: {"lr": 1e-3} for m in _CLS_LR},
    ),
    "cpu": TransferBudget(
        n_train=64,
        n_extract=4,
        max_length=64,
        batch_size=4,
        micro_batch_size=4,
        epochs=1,
        max_steps=None,
        steps_per_stage=4,
        eval_limit=200,
        max_new_tokens=1,
        eval_batch_size=32,
        prompt_style="plain",
        eval_seed=0,
        method_config=_CLS_LR,
    ),
    "gpu-small": TransferBudget(
        n_train=None,
        n_extract=64,
        max_length=96,
        batch_size=16,
        micro_batch_size=16,
        epochs=2,
        max_steps=None,
        steps_per_stage=8,
        eval_limit=None,
        max_new_tokens=1,
        eval_batch_size=32,
        prompt_style="plain",
        eval_seed=0,
        method_config={m: {"lr": 1e-4} for m in _FULL_WEIGHT},
    ),
    "paper": TransferBudget(
        n_train=None,
        n_extract=64,
        max_length=96,
        batch_size=64,
        micro_batch_size=8,
        epochs=3,
        max_steps=None,
        steps_per_stage=16,
        eval_limit=None,
        max_new_tokens=1,
        eval_batch_size=32,
        prompt_style="plain",
        eval_seed=0,
    ),
}

# The paper's per-task settings (SemAlign Tables 4-5) at `paper`: alignment steps per stage and
# align size (Table 4: 2/4/3/8 and 32/64/48/128, lr 3e-5 = SemAlignConfig's default); training
# epochs, train size and lr of the methods that train on `train` (Table 5: 5/5/3/5, 1000/1000/1000/
# 300, 3e-4/3e-4/3e-5/3e-4). "align size" is read as the examples attribution/alignment sees.
_TABLE5_LR_METHODS = ("seeking", "sft", "output_kl", "hidden_distill")
PAPER_TASK_BUDGETS: dict[str, dict[str, Any]] = {
    task: {
        "steps_per_stage": steps,
        "n_extract": align,
        "epochs": epochs,
        "n_train": n_train,
        "method_config": {m: {"lr": lr} for m in _TABLE5_LR_METHODS},
    }
    for task, steps, align, epochs, n_train, lr in (
        ("mmlu", 2, 32, 5, 1000, 3e-4),
        ("gsm", 4, 64, 5, 1000, 3e-4),
        ("humaneval", 3, 48, 3, 1000, 3e-5),
        ("mbpp", 8, 128, 5, 300, 3e-4),
    )
}
# cpu: MMLU is log-likelihood only (letter + cloze), so it affords more fixed items than the
# generation tasks (one thread: n=100 takes 75 s on the derived target and 161 s on the source;
# n=20 18 s and 39 s).
TASK_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {"mmlu": {"eval_limit": 100}},
    "paper": PAPER_TASK_BUDGETS,
}


def transfer_budget(prof: Profile, task: str | None = None, **overrides) -> TransferBudget:
    """The profile's budget for ``task`` (classification tasks: :data:`CLS_BUDGETS`, others and
    None: :data:`TRANSFER_BUDGETS` with the profile's :data:`TASK_BUDGETS`) with ``overrides``
    (fields of :class:`TransferBudget`; None values are ignored)."""
    if task in CLS_TASKS:
        base = CLS_BUDGETS[prof.name]
    else:
        base = replace(TRANSFER_BUDGETS[prof.name], **TASK_BUDGETS.get(prof.name, {}).get(task, {}))
    return _overridden(base, "TransferBudget", overrides)


# --------------------------------------------------------------------------- fine-tuned teachers

MIN_GAP = 10.0  # points the teacher must lead the target by for Table 2 to tell methods apart

# A recipe per profile: seconds at smoke, about a minute on 2 CPU cores at cpu. gpu-small
# fine-tunes its source the same way (more data), and so does paper for its informative setting
# (its code setting uses the published hub teachers: TEACHERS). The evaluation settings equal
# the profile's CLS_BUDGETS, so Table 2's teacher row reuses the evaluation made with the teacher
# instead of repeating it.
TEACHER_RECIPES: dict[str, TeacherRecipe] = {
    "smoke": TeacherRecipe(
        "tiny-source",
        n_train=16,
        batch_size=8,
        micro_batch_size=8,
        lr=1e-3,
        eval_limit=8,
        eval_batch_size=8,
    ),
    "cpu": TeacherRecipe("smollm2-135m-instruct", n_train=128, batch_size=8, micro_batch_size=8),
    "gpu-small": TeacherRecipe(
        "qwen2.5-1.5b-instruct", n_train=None, epochs=2, lr=2e-5, eval_limit=None, dtype="bfloat16"
    ),
    # paper: the informative setting's teacher (Table 2 beside the hub code teachers, and the
    # ablations), made from the paper's 13B source as gpu-small makes its own
    "paper": TeacherRecipe(
        "llama2-13b-chat", n_train=None, epochs=2, lr=2e-5, eval_limit=None, dtype="bfloat16"
    ),
}
# The informative classification settings of each profile, chosen once here: tasks whose
# fine-tuned teacher (TEACHER_RECIPES) beats the untrained target by >= MIN_GAP points beyond the
# interval, so transfer methods can be told apart. Table 2, the ablations and any later transfer
# experiment use these. Measured at cpu on the fixed held-out items (n=200, eval_seed 0):
# SST-2 (binary) teacher 86.0, target 46.0, majority label 54.0; TREC (6 classes) teacher 61.5
# [54.5, 68.5], target 17.0 [12.0, 22.5], majority label 31.5. smoke keeps one (time budget).
# At paper, Table 2 runs them beside the published code setting (hub teachers, TEACHERS below),
# and they are the ablations' setting (the paper publishes no ablation numbers).
INFORMATIVE_TASKS: dict[str, tuple[str, ...]] = {
    "smoke": ("sst2",),
    "cpu": ("sst2", "trec"),
    "gpu-small": ("sst2", "trec"),
    "paper": ("sst2", "trec"),
}
# profile → task → teachers: FINETUNED (made from TEACHER_RECIPES) or registry names of hub models
TEACHERS: dict[str, dict[str, tuple[str, ...]]] = {
    **{p: {t: (FINETUNED,) for t in INFORMATIVE_TASKS[p]} for p in TEACHER_RECIPES},
    "paper": {
        **{t: (FINETUNED,) for t in INFORMATIVE_TASKS["paper"]},
        "humaneval": ("codellama-13b-python", "wizardcoder-python-13b"),
        "mbpp": ("codellama-13b-python", "wizardcoder-python-13b"),
    },
}

# Cross-family transfer (beyond the papers; notebooks/05b): the teacher is this model of another
# family (another tokenizer and vocabulary) fine-tuned with the profile's TEACHER_RECIPES
# settings on each task of CROSS_FAMILY_TASKS; the target is the profile's. Defined where the
# two families exist offline: at smoke a tiny model with Gemma 3's vocabulary, at cpu
# Gemma-3-270M (18 blocks) -> the 24-block SmolLM2 student (a deeper target). gpu-small and paper
# have no cross-family setting (their notebook says so and records nothing).
CROSS_FAMILY_BASES: dict[str, str] = {"smoke": "tiny-gemma-source", "cpu": "gemma3-270m"}
# Measured at cpu on Table 2's fixed held-out items (n=200), target 17.0 (TREC) and 46.0 (SST-2):
# TREC's Gemma teacher 58.0 (base 32.0) is informative; SST-2's is not (54.0 after fine-tuning,
# 61.0 before: no better than its majority label, 54.0), so SST-2 is left out.
CROSS_FAMILY_TASKS: dict[str, tuple[str, ...]] = {"smoke": ("sst2",), "cpu": ("trec",)}


def informative_tasks(prof: Profile) -> tuple[str, ...]:
    """The profile's informative classification tasks (a one-line error when it has none)."""
    tasks = INFORMATIVE_TASKS[prof.name]
    if not tasks:
        raise InvalidParameterError(
            f"profile {prof.name!r} has no informative classification task (INFORMATIVE_TASKS "
            "in semalign_core/experiments/budgets.py); its Table 2 is the published code setting"
        )
    return tasks


# --------------------------------------------------------------------------- SALF runs


@dataclass(frozen=True)
class SalfRunBudget:
    """Data and training of one SALF run at one profile (every policy of a table uses the same).

    Attributes:
        n_train: training examples (seeded subset of the training split).
        n_eval: held-out examples scored (fixed subset, ``salf_cells.EVAL_SEED``).
        epochs, batch_size, lr: the fine-tuning loop's settings (AdamW, label-token loss).
        max_length: prompt tokens kept (from the left; the label cue stays).
        model_lr: per model, a learning rate that replaces ``lr`` (a model that ``lr`` makes
            unstable); an explicit ``lr`` override applies to every model.
        eval_batch_size: evaluation batch size.
        loss: ``label_words`` (cross-entropy over the label words' logits: the decision that is
            scored) or ``label_token`` (over the whole vocabulary); see FinetuneConfig.loss.
    """

    n_train: int
    n_eval: int
    epochs: int
    batch_size: int
    lr: float
    max_length: int
    eval_batch_size: int = 16
    loss: str = "label_words"
    model_lr: dict[str, float] = field(default_factory=dict)

    def lr_for(self, model: str) -> float:
        """The learning rate of ``model``'s runs."""
        return self.model_lr.get(model, self.lr)


@dataclass(frozen=True)
class SalfDefaults:
    """What the SALF notebooks run at one profile unless told otherwise (their seeds:
    :data:`DEFAULT_SEEDS`).

    Attributes:
        models: SALF models (None: the profile's ``salf_models``).
        tasks: classification tasks.
        budget: the budget of every run.
        sweep_models, sweep_tasks: where the cost–benefit sweeps and timing repeats run (None:
            as the main table).
    """

    models: tuple[str, ...] | None
    tasks: tuple[str, ...]
    budget: SalfRunBudget
    sweep_models: tuple[str, ...] | None = None
    sweep_tasks: tuple[str, ...] | None = None


SALF_DEFAULTS: dict[str, SalfDefaults] = {
    # Tiny random models: a large step so that training visibly moves them.
    "smoke": SalfDefaults(None, INFORMATIVE_TASKS["smoke"], SalfRunBudget(8, 8, 1, 4, 1e-3, 32, 8)),
    # Both SALF models on the informative tasks. Sized so that full fine-tuning moves the score
    # far beyond its interval (measured: SmolLM2 on TREC 17.0 -> 75.5, on SST-2 71.0 -> 84.0
    # with 64 examples x 2 epochs at lr 1e-4), and two epochs so the prefix cache is used.
    # Gemma-3 at 1e-4 gave one-label models on SST-2 (full: -20.5 points); at 3e-5 it learns
    # (docs/decisions.md, "SALF learning rate per model").
    # The sweeps and timing repeats: SmolLM2 on TREC (the shortest prompts).
    "cpu": SalfDefaults(
        None,
        INFORMATIVE_TASKS["cpu"],
        SalfRunBudget(48, 200, 2, 8, 1e-4, 64, model_lr={"gemma3-270m": 3e-5}),
        ("smollm2-135m-instruct",),
        ("trec",),
    ),
    # Not run here (no GPU): sized to the splits (SST-2 carves 500 + 300 of its 872 dev examples;
    # CR has 1775 training examples, TREC 500 test examples).
    "gpu-small": SalfDefaults(
        None, ("sst2", "trec", "cr"), SalfRunBudget(500, 300, 2, 16, 3e-5, 128, 32)
    ),
    "paper": SalfDefaults(
        None, ("cr", "mr", "mpqa", "subj", "trec"), SalfRunBudget(1500, 500, 3, 16, 2e-5, 256, 32)
    ),
}

# Settings of the main table's baselines (the same at every profile).
LORA = {"r": 8, "alpha": 16, "lr_scale": 5}  # adapters start at zero (B = 0): a larger step
LISA = {"n_active": 2, "interval": 4}
# The timing repeats (notebook 07) per profile: every policy of the main table and the full
# (+ embeddings) reference, each run in its own process, in a seeded random order, ``repeats``
# times, so every policy's measured/analytic ratio comes from clean runs. smoke keeps two single
# runs (its time budget).
TIMING_POLICIES = MAIN_POLICIES
TIMING: dict[str, dict] = {
    "smoke": {"policies": ("full", "salf"), "repeats": 1, "order_seed": 0},
    **{
        p: {"policies": TIMING_POLICIES, "repeats": 3, "order_seed": 0}
        for p in ("cpu", "gpu-small", "paper")
    },
}
# AutoFreeze's checkpoints split the run into decisions + 2 parts (12 steps at cpu: windows of
# 1-2 batches, so its decisions are close to batch noise there; docs/decisions.md).
AUTOFREEZE = {"decisions": 6, "percentile": 50.0}


def salf_run_budget(prof: Profile, **overrides) -> SalfRunBudget:
    """The profile's SALF budget with ``overrides`` (fields of :class:`SalfRunBudget`; None values
    ignored); a one-line error for a count below 1 or a learning rate that is not positive."""
    for name in ("n_train", "n_eval", "epochs", "batch_size", "max_length", "eval_batch_size"):
        value = overrides.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise InvalidParameterError(f"parameter {name}={value!r} must be an integer >= 1")
    lr = overrides.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise InvalidParameterError(f"parameter lr={lr!r} must be a number > 0")
    if lr is not None:  # an explicit learning rate is every model's
        overrides = {**overrides, "model_lr": {}}
    return _overridden(SALF_DEFAULTS[prof.name].budget, "SalfRunBudget", overrides)


# --------------------------------------------------------------------------- SEMALIGN_SHRINK

SHRINK_ENV = "SEMALIGN_SHRINK"
SHRUNK_PROFILES = ("gpu-small", "paper")
SHRINK_FROM = "smoke"  # the sizes shrunk budgets take
# Fields that are settings, not sizes: a shrunk budget keeps its profile's.
_SETTINGS = ("lr", "loss", "model_lr", "prompt_style", "eval_seed", "method_config")
_RECIPE_SETTINGS = ("base", "task", "lr", "trainable", "seed", "dtype")


def shrink_requested() -> bool:
    """Whether ``SEMALIGN_SHRINK`` (1/true/yes/on) asks for shrunk hub-profile budgets."""
    return os.environ.get(SHRINK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _sized_as(small, budget, settings: tuple[str, ...] = _SETTINGS):
    """``budget`` (a budget dataclass) with every field but ``settings`` taken from ``small``."""
    sizes = {f.name: getattr(small, f.name) for f in fields(budget) if f.name not in settings}
    return replace(budget, **sizes)


def _shrunk_salf(profile: str) -> SalfDefaults:
    """SALF at smoke's sizes on the profile's first task; sweeps on its first model too."""
    defaults = SALF_DEFAULTS[profile]
    first_model = (defaults.models or PROFILES[profile].salf_models)[:1]
    return replace(
        defaults,
        tasks=defaults.tasks[:1],
        budget=_sized_as(SALF_DEFAULTS[SHRINK_FROM].budget, defaults.budget),
        sweep_models=first_model,
        sweep_tasks=defaults.tasks[:1],
    )


def shrink_budgets() -> None:
    """Replace, in place, every budget of :data:`SHRUNK_PROFILES` by one of smoke's sizes that
    keeps the profile's settings (learning rates, prompt style, evaluation seed): seeds, analysis
    sizes, transfer and classification budgets, per-task sizes, the teacher recipe, SALF runs
    (on one task) and timing repeats. Idempotent; called at import when requested."""
    small = SHRINK_FROM
    for profile in SHRUNK_PROFILES:
        for seeds in DEFAULT_SEEDS.values():
            seeds[profile] = seeds[small]
        SEMALIGN_ANALYSIS_BUDGETS[profile] = _sized_as(
            SEMALIGN_ANALYSIS_BUDGETS[small], SEMALIGN_ANALYSIS_BUDGETS[profile]
        )
        SALF_ANALYSIS_EXAMPLES[profile] = SALF_ANALYSIS_EXAMPLES[small]
        for table in (TRANSFER_BUDGETS, CLS_BUDGETS):
            table[profile] = _sized_as(table[small], table[profile])
        for task, settings in TASK_BUDGETS.get(profile, {}).items():
            TASK_BUDGETS[profile][task] = {k: v for k, v in settings.items() if k in _SETTINGS}
        if profile in TEACHER_RECIPES:
            TEACHER_RECIPES[profile] = _sized_as(
                TEACHER_RECIPES[small], TEACHER_RECIPES[profile], _RECIPE_SETTINGS
            )
        SALF_DEFAULTS[profile] = _shrunk_salf(profile)
        TIMING[profile] = TIMING[small]


if shrink_requested():
    shrink_budgets()


__all__ = [
    "CROSS_FAMILY_BASES",
    "CROSS_FAMILY_TASKS",
    "AUTOFREEZE",
    "CLS_BUDGETS",
    "DEFAULT_SEEDS",
    "FINETUNED",
    "FULL_SEEDS",
    "HEADLINE_SEEDS",
    "INFORMATIVE_TASKS",
    "LISA",
    "LORA",
    "MIN_GAP",
    "PAPER_TASK_BUDGETS",
    "REPRODUCE_TIERS",
    "SALF_ANALYSIS_EXAMPLES",
    "SALF_DEFAULTS",
    "SHRINK_ENV",
    "SHRUNK_PROFILES",
    "SEMALIGN_ANALYSIS_BUDGETS",
    "SalfDefaults",
    "SalfRunBudget",
    "SemAlignAnalysisBudget",
    "TASK_BUDGETS",
    "TEACHERS",
    "TIER_PARAMS",
    "TIMING",
    "informative_tasks",
    "TEACHER_RECIPES",
    "TEACHER_VERSION",
    "TRANSFER_BUDGETS",
    "TeacherRecipe",
    "TransferBudget",
    "default_seeds",
    "salf_run_budget",
    "shrink_budgets",
    "shrink_requested",
    "transfer_budget",
]
