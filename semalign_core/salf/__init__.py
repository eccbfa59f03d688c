"""SALF: semantic-aware layer freezing (spec: ../shared/papers/SALF.md; choices: docs/decisions.md).

analysis  label prompts, labels' semantic bases, transition traces, deviations
gains     gain formulas (registry), eof choice, budgets, padding strategies
policies  freezing policies (full, SALF, fixed fractions, random, layer signals, AutoFreeze,
          LISA, LoRA)
finetune  the training loop: block replay, prefix cache, cost accounting, evaluation
"""

from semalign_core.salf.analysis import (
    DEVIATIONS,
    LabelTokenError,
    LabelTokens,
    TransitionTrace,
    block_influence,
    block_params,
    deviations,
    format_prompt,
    label_bases,
    label_token_ids,
    transition_trace,
)
from semalign_core.salf.finetune import (
    FinetuneConfig,
    FinetuneResult,
    evaluate,
    macro_f1,
    measured_saving,
    predict,
)
from semalign_core.salf.finetune import finetune as run_finetune  # keeps salf.finetune the module
from semalign_core.salf.gains import (
    FIRST_BLOCK,
    GAINS,
    Budget,
    apply_budget,
    check_eof,
    choose_eof,
    compute_gains,
    eof_by_gain,
    eof_per_example,
    eof_stability,
    plan_batches,
    register_gain,
)
from semalign_core.salf.policies import (
    POLICIES,
    AutoFreeze,
    FixedEof,
    FullFinetune,
    Lisa,
    Lora,
    Policy,
    RandomEof,
    SignalEof,
    Trainable,
    block_influence_policy,
    logit_lens_policy,
    make_policy,
    salf_policy,
)


def analyse(
    model,
    tokenizer,
    records,
    task=None,
    label_words=None,
    deviation="cos_normed",
    gain="scaling_kaplan",
    template=None,
    max_length=128,
    batch_size=16,
    first_block=FIRST_BLOCK,
) -> dict:
    """Deviation per space (mean and per example), gains per block and eof (argmax from block
    ``first_block``; 2 leaves space 0 out, see ``gains.FIRST_BLOCK``), in one call."""
    trace = transition_trace(
        model,
        tokenizer,
        records,
        task,
        label_words,
        template,
        batch_size=batch_size,
        max_length=max_length,
    )
    dev = deviations(model, trace, deviation)
    params = block_params(model)
    mean = dev.mean(0).numpy()
    g = compute_gains(mean, params, gain)
    return {
        "deviation_kind": deviation,
        "gain_kind": gain,
        "deviation": mean.tolist(),
        "gains": g.tolist(),
        "eof": choose_eof(g, first_block=first_block),
        "first_block": first_block,
        "eof_stability": eof_stability(dev.numpy(), params, gain, first_block)
        if len(records) > 1
        else None,
        "example_eofs": eof_per_example(
            dev.numpy(), params, gain, first_block=first_block
        ).tolist(),
        "per_example_deviation": dev.tolist(),
        "n": len(records),
        "meta": trace.meta,
    }


__all__ = [
    "FIRST_BLOCK",
    "AutoFreeze",
    "Budget",
    "DEVIATIONS",
    "FinetuneConfig",
    "FinetuneResult",
    "FixedEof",
    "FullFinetune",
    "GAINS",
    "LabelTokenError",
    "LabelTokens",
    "Lisa",
    "Lora",
    "POLICIES",
    "Policy",
    "RandomEof",
    "SignalEof",
    "Trainable",
    "TransitionTrace",
    "analyse",
    "apply_budget",
    "block_influence",
    "block_influence_policy",
    "block_params",
    "check_eof",
    "choose_eof",
    "compute_gains",
    "deviations",
    "eof_by_gain",
    "eof_per_example",
    "eof_stability",
    "evaluate",
    "format_prompt",
    "label_bases",
    "label_token_ids",
    "logit_lens_policy",
    "macro_f1",
    "make_policy",
    "measured_saving",
    "plan_batches",
    "predict",
    "register_gain",
    "run_finetune",
    "salf_policy",
    "transition_trace",
]
