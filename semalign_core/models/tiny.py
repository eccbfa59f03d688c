"""Tiny random causal LMs built from configs: the models of the ``smoke`` profile and the tests.

Every architecture the method code supports has a tiny twin here, so a test that loops over
:data:`ARCHITECTURES` exercises each code path (GQA, post-sublayer norms, logit soft-capping,
parallel residuals, tuple-returning blocks) in milliseconds and without the hub.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from semalign_core.errors import UnknownModelError

ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma2", "gemma3", "gpt2", "gpt_neox")

# Small enough for fast tests, long enough that sliding-window layers actually mask something
# when a test uses more than SLIDING_WINDOW tokens.
MAX_POSITIONS = 256
SLIDING_WINDOW = 8
# Part of a tiny model's identity (records made with it): bump when the same config and seed
# would build different weights.
TINY_BUILDER_VERSION = 1


def tiny_config(
    arch: str,
    vocab_size: int = 128,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    **overrides,
) -> PretrainedConfig:
    """The transformers config of a tiny ``arch`` model; ``overrides`` set any config field.

    ``num_kv_heads`` is ignored by architectures without grouped-query attention (gpt2,
    gpt_neox). gemma3 is the text-only ``Gemma3TextConfig`` (``Gemma3ForCausalLM``), the class
    Gemma-3-270M uses.
    """
    if arch not in ARCHITECTURES:
        raise UnknownModelError(
            f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    head_dim = hidden_size // num_heads
    if arch == "gpt2":
        fields = dict(
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_inner=intermediate_size,
            n_positions=MAX_POSITIONS,
            # GPT-2's defaults (50256) would point outside a tiny vocabulary.
            bos_token_id=vocab_size - 1,
            eos_token_id=vocab_size - 1,
        )
    elif arch == "gpt_neox":
        fields = dict(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=MAX_POSITIONS,
        )
    else:
        fields = dict(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=MAX_POSITIONS,
            head_dim=head_dim,
        )
        if arch in ("mistral", "gemma2", "gemma3"):
            fields["sliding_window"] = SLIDING_WINDOW
        if arch in ("gemma2", "gemma3"):
            # Gemma's defaults assume head_dim=256; scale queries by the tiny head_dim instead.
            fields["query_pre_attn_scalar"] = head_dim
        if arch == "gemma3":
            # Alternate local and global attention so both code paths run in a 4-layer model.
            fields["layer_types"] = [
                "full_attention" if (i + 1) % 2 == 0 else "sliding_attention"
                for i in range(num_layers)
            ]
    fields.update(overrides)
    model_type = "gemma3_text" if arch == "gemma3" else arch
    return AutoConfig.for_model(model_type, **fields)


def tiny_model(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A randomly initialised tiny ``arch`` causal LM: fp32, eval mode, eager attention.

    Deterministic: the same ``seed`` and ``kwargs`` give identical weights. The global torch RNG
    of the caller is left untouched. ``kwargs`` go to :func:`tiny_config`.
    """
    config = tiny_config(arch, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation="eager", dtype=torch.float32
        )
    return model.eval()
