"""Profiles: one parameter selects the scale; the same code path runs at every scale.

A profile names the models of each role; the budgets of each experiment at each profile are in
:mod:`semalign_core.experiments.budgets`. Notebooks take ``profile`` as a Papermill parameter and
read everything else from those two places, so no scale is hard-coded in a notebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from semalign_core.errors import InvalidParameterError

TRAIN_ENGINES = ("single", "fsdp")


@dataclass(frozen=True)
class Profile:
    """The models of one scale (its budgets: :mod:`semalign_core.experiments.budgets`).

    Attributes:
        name: profile name (``smoke``, ``cpu``, ``gpu-small``, ``paper``).
        semalign_source: registry name of the larger (teacher) model for SemAlign.
        semalign_target: registry name of the smaller (student) model: same vocabulary, no
            more layers than the source (``tests/test_profiles_valid.py`` checks every profile).
        salf_models: registry names of the models SALF analyses and fine-tunes.
        needs_hub: whether the models come from the Hugging Face hub (refused offline).
        dtype: default compute dtype.
        notes: one line on where the profile runs, printed by every notebook.
        extra_models: further models the profile needs (e.g. Table 2's hub teachers at ``paper``).
        cell_timeout_s: default per-cell timeout of a notebook run (``--timeout`` overrides); it
            stops a hung cell, so it is about twice the longest cell measured or expected.
        generation_backend: how the benchmarks' generation (GSM8K, HumanEval, MBPP) runs:
            ``"hf"`` (lm-eval's HFLM), ``"vllm"`` (lm-eval's vLLM wrapper; an error where vLLM or
            a GPU is missing) or ``"auto"`` (vLLM where it is installed and a GPU is visible, HF
            otherwise): :func:`semalign_core.evaluation.backends.choose_backend`. Records name
            the backend that ran.
        train_engine: how a transfer cell's full fine-tuning runs where one GPU is not enough:
            ``"single"`` (one process) or ``"fsdp"`` (where several GPUs are visible, the cell
            runs in one process per GPU started by ``accelerate launch``, the model sharded with
            FSDP: :mod:`semalign_core.lm.sharding`; one process otherwise).
    """

    name: str
    semalign_source: str
    semalign_target: str
    salf_models: tuple[str, ...]
    needs_hub: bool = False
    dtype: str = "float32"
    notes: str = ""
    extra_models: tuple[str, ...] = field(default_factory=tuple)
    cell_timeout_s: int = 3600
    generation_backend: str = "hf"
    train_engine: str = "single"

    def __post_init__(self) -> None:
        if self.train_engine not in TRAIN_ENGINES:
            raise InvalidParameterError(
                f"train_engine must be one of {', '.join(TRAIN_ENGINES)}, not {self.train_engine!r}"
            )

    def models(self) -> tuple[str, ...]:
        names = (self.semalign_source, self.semalign_target, *self.salf_models, *self.extra_models)
        return tuple(dict.fromkeys(names))  # unique, in order


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            "smoke",
            "tiny-source",
            "tiny-target",
            ("tiny-source",),
            notes="seeded random tiny models; seconds per notebook; numbers are meaningless",
            cell_timeout_s=30 * 60,  # cells take seconds; 30 min still allows a slow CI machine
        ),
        Profile(
            "cpu",
            "smollm2-135m-instruct",
            "smollm2-derived-24l",
            ("smollm2-135m-instruct", "gemma3-270m"),
            notes="real small models from PyPI wheels, offline, 2 CPU cores",
            cell_timeout_s=2 * 3600,  # notebook 06's compute cell takes ~55 min at reproduce-full
        ),
        # SemAlign needs a target no deeper than its source with the same vocabulary: Qwen2.5
        # 1.5B (28 layers) -> 0.5B (24) is; SmolLM2-1.7B (24) -> 360M (32) is not.
        Profile(
            "gpu-small",
            "qwen2.5-1.5b-instruct",
            "qwen2.5-0.5b-instruct",
            ("qwen2.5-0.5b-instruct", "smollm2-360m-instruct"),
            needs_hub=True,
            dtype="bfloat16",
            notes="one 24 GB GPU with native bf16 (L4, A10G), hub models; a 16 GB T4 computes "
            "in fp32 and fits SALF's notebooks only (`cli check --dtype float32`)",
            cell_timeout_s=6 * 3600,  # a Table 1 cell trains 1.5B/0.5B models, fp32 on a T4
            generation_backend="auto",
        ),
        Profile(
            "paper",
            "llama2-13b-chat",
            "llama2-7b-chat",
            ("qwen2-7b", "gemma2-9b", "llama3-8b"),
            needs_hub=True,
            dtype="bfloat16",
            extra_models=("codellama-13b-python", "wizardcoder-python-13b"),
            notes="A100/H100 class, the papers' setting",
            cell_timeout_s=48 * 3600,  # one Table 1 cell trains and evaluates 13B/7B models
            generation_backend="auto",
            train_engine="fsdp",  # full fine-tuning of the 7B target: ~112 GiB (the planner)
        ),
    ]
}

# Largest first: a report that shows one profile shows the largest one that has records.
PROFILE_PREFERENCE: tuple[str, ...] = ("paper", "gpu-small", "cpu", "smoke")


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidParameterError(
            f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}"
        ) from None
