"""Data layer: benchmark resolution, loaders returning a :class:`Split`, chat formatting and
the classification prompt table (:mod:`semalign_core.data.prompts`).

Every loader reads the official file formats from the first data folder that holds them
(``SEMALIGN_DATA_DIR``, ``<repo>/data``, ``<repo>/../shared/benchmarks``), records the sha256
of each file read, and subsets with one rule (``limit``, ``seed``).
"""

from semalign_core.data.benchmarks import (
    GSM8K_SPLITS,
    MBPP_SPLIT_RANGES,
    MMLU_SPLITS,
    MMLU_SUBJECTS,
    Split,
    gsm8k_target,
    load_gsm8k,
    load_humaneval,
    load_mbpp,
    load_mmlu,
    select_subset,
)
from semalign_core.data.classification import (
    CLASSIFICATION_TASKS,
    CLS_EVAL_SPLIT,
    ClassificationTask,
    load_classification,
    pair_text,
)
from semalign_core.data.formatting import (
    IGNORE_INDEX,
    TRANSFER_GENERATION_PROMPT,
    TRANSFER_MESSAGE_END,
    build_sft_example,
    prompt_and_response,
    render_model_chat,
    render_transfer_chat,
)
from semalign_core.data.prompts import (
    CLS_PROMPT_STYLES,
    CLS_PROMPTS,
    cls_template,
    format_cls_prompt,
)
from semalign_core.data.resolve import benchmark_path, data_root, sha256_file
from semalign_core.data.transfer import TRANSFER_SPLITS, TRANSFER_TASKS, load_transfer

__all__ = [
    "CLASSIFICATION_TASKS",
    "CLS_EVAL_SPLIT",
    "CLS_PROMPTS",
    "CLS_PROMPT_STYLES",
    "ClassificationTask",
    "GSM8K_SPLITS",
    "IGNORE_INDEX",
    "MBPP_SPLIT_RANGES",
    "MMLU_SPLITS",
    "MMLU_SUBJECTS",
    "Split",
    "TRANSFER_GENERATION_PROMPT",
    "TRANSFER_MESSAGE_END",
    "TRANSFER_SPLITS",
    "TRANSFER_TASKS",
    "benchmark_path",
    "build_sft_example",
    "cls_template",
    "data_root",
    "format_cls_prompt",
    "gsm8k_target",
    "load_classification",
    "load_gsm8k",
    "load_humaneval",
    "load_mbpp",
    "load_mmlu",
    "load_transfer",
    "pair_text",
    "prompt_and_response",
    "render_model_chat",
    "render_transfer_chat",
    "select_subset",
    "sha256_file",
]
