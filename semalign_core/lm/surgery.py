"""Model surgery: find the parts of a causal LM (layers, norms, embeddings, sublayers) by family.

Like tuned-lens's ``model_surgery``: method code never spells ``model.model.layers`` or
``transformer.h``; it asks this module, which knows the layout of each supported family and sees
through PEFT wrappers (``PeftModel``) and ``torch.compile``. Everything works on the
``*ForCausalLM`` object, i.e. the model with its LM head.

Per-family layout (decoder layers; final norm; what each block adds to the residual stream):

- llama, mistral, qwen2: ``model.layers``; ``model.norm``; ``self_attn`` and ``mlp`` outputs.
- gemma2, gemma3 (text): ``model.layers``; ``model.norm``; outputs of the post-sublayer norms
  ``post_attention_layernorm`` and ``post_feedforward_layernorm`` ("sandwich" norms).
- gpt2: ``transformer.h``; ``transformer.ln_f``; ``attn`` and ``mlp`` outputs (dropout inside).
- gpt_neox: ``gpt_neox.layers``; ``gpt_neox.final_layer_norm``; outputs of
  ``post_attention_dropout`` and ``post_mlp_dropout`` (parallel or sequential residual).

LM heads: ``lm_head`` everywhere except gpt_neox (``embed_out``); found via
``get_output_embeddings()``. :class:`Unembed` decodes states as the model does (final norm, head,
Gemma's final-logit soft-capping): every caller that reads logits off a hidden state uses it.

Gemma scales token embeddings by sqrt(hidden_size) *inside* the embedding module
(``Gemma*ScaledWordEmbedding``) or the backbone; the hidden state entering layer 0 is therefore not
``embedding.weight[token]``. Code that needs "the embedding as the model sees it" should take the
input of layer 0 (see :mod:`semalign_core.lm.nethook`), never the raw embedding matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from semalign_core.errors import UnknownModelError


class UnsupportedArchitectureError(UnknownModelError):
    """The model's architecture (config.model_type) has no known layout."""


@dataclass(frozen=True)
class _Layout:
    """Attribute names of one architecture family (relative to the ``*ForCausalLM`` model)."""

    backbone: str  # the decoder stack without LM head
    layers: str  # ModuleList of decoder blocks, on the backbone
    final_norm: str  # on the backbone


_LLAMA_LIKE = _Layout(backbone="model", layers="layers", final_norm="norm")
_LAYOUTS = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3": _LLAMA_LIKE,
    "gpt2": _Layout(backbone="transformer", layers="h", final_norm="ln_f"),
    "gpt_neox": _Layout(backbone="gpt_neox", layers="layers", final_norm="final_layer_norm"),
}
SUPPORTED_ARCHITECTURES = tuple(_LAYOUTS)

# config.model_type values that name a supported family differently.
_MODEL_TYPE_ALIASES = {"gemma3_text": "gemma3"}

# Sublayer attribute names on a decoder block, tried in order.
_ATTENTION_NAMES = ("self_attn", "attn", "attention")
_MLP_NAMES = ("mlp",)
# What each sublayer adds to the residual stream, when that is not the sublayer's own output:
# Gemma 2/3 normalise each sublayer output before the residual add ("sandwich" norms);
# GPT-NeoX applies a dropout module after each sublayer (identity in eval mode, but the dropout
# output is the exact addend in training mode too). GPT-2 keeps its dropouts inside attn/mlp.
_ATTENTION_RESIDUAL_NAMES = ("post_attention_dropout",)
_MLP_RESIDUAL_NAMES = ("post_feedforward_layernorm", "post_mlp_dropout")
_GEMMA_STYLE_MARKER = "post_feedforward_layernorm"  # Gemma's post_attention_layernorm is post-attn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain transformers model under PEFT (``PeftModel``) and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):  # PeftModel
            model = model.get_base_model()
        else:
            return model


def architecture(model: nn.Module) -> str:
    """The supported family of ``model``: its ``config.model_type`` (gemma3_text → gemma3)."""
    config = getattr(unwrap(model), "config", None)
    model_type = getattr(config, "model_type", None)
    arch = _MODEL_TYPE_ALIASES.get(model_type, model_type)
    if arch not in _LAYOUTS:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def _layout(model: nn.Module) -> _Layout:
    return _LAYOUTS[architecture(model)]


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack under the LM head (embedding, blocks, final norm): ``model.model``."""
    return getattr(unwrap(model), _layout(model).backbone)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks, in depth order."""
    return getattr(backbone(model), _layout(model).layers)


def input_embeddings(model: nn.Module) -> nn.Embedding:
    """The token embedding module (for Gemma it scales its output by sqrt(hidden_size))."""
    return unwrap(model).get_input_embeddings()


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied after the last decoder block, before the LM head."""
    return getattr(backbone(model), _layout(model).final_norm)


def unembedding(model: nn.Module) -> nn.Linear:
    """The LM head (``lm_head`` / ``embed_out``): hidden state → vocabulary logits."""
    _layout(model)  # fail early and clearly on an unsupported architecture
    return unwrap(model).get_output_embeddings()


def _first_attribute(layer: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    for name in names:
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    raise UnsupportedArchitectureError(
        f"cannot find the {what} of {type(layer).__name__}; supported: "
        f"{', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def attention_module(layer: nn.Module) -> nn.Module:
    """The self-attention sublayer of a decoder block."""
    return _first_attribute(layer, _ATTENTION_NAMES, "attention sublayer")


def mlp_module(layer: nn.Module) -> nn.Module:
    """The feed-forward (MLP) sublayer of a decoder block."""
    return _first_attribute(layer, _MLP_NAMES, "MLP sublayer")


def attention_residual_module(layer: nn.Module) -> nn.Module:
    """The module whose output the block adds to the residual stream for its attention part.

    The attention sublayer itself, except Gemma 2/3 (``post_attention_layernorm``, a post-norm)
    and GPT-NeoX (``post_attention_dropout``). Its output may be a tuple (first item = tensor).
    """
    if hasattr(layer, _GEMMA_STYLE_MARKER):
        return layer.post_attention_layernorm
    names = _ATTENTION_RESIDUAL_NAMES + _ATTENTION_NAMES
    return _first_attribute(layer, names, "attention residual output")


def mlp_residual_module(layer: nn.Module) -> nn.Module:
    """The module whose output the block adds to the residual stream for its MLP part."""
    return _first_attribute(layer, _MLP_RESIDUAL_NAMES + _MLP_NAMES, "MLP residual output")


def block_linear_names(model: nn.Module) -> list[str]:
    """Attribute names of the linear layers inside the decoder blocks (``nn.Linear`` and GPT-2's
    ``Conv1D``), sorted: ``q_proj``, ``c_attn``, ``query_key_value``… (LoRA targets)."""
    kinds = (nn.Linear, Conv1D)
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in decoder_layers(model).named_modules()
            if isinstance(module, kinds)
        }
    )


def num_layers(model: nn.Module) -> int:
    """Number of decoder blocks."""
    return len(decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream."""
    return input_embeddings(model).weight.shape[1]


def vocab_size(model: nn.Module) -> int:
    """Rows of the unembedding (may exceed the tokenizer's vocabulary because of padding)."""
    return unembedding(model).weight.shape[0]


def softcap_logits(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Final-logit soft-capping ``cap * tanh(logits / cap)`` (Gemma 2/3); no cap: unchanged."""
    return torch.tanh(logits / cap) * cap if cap else logits


class Unembed:
    """Decode residual-stream states as the model decodes its last one: final norm, LM head, then
    the config's ``final_logit_softcapping`` (Gemma 2/3). Applied to the output of the last block
    this equals ``model(...).logits``::

        unembed = Unembed(model)
        logits = unembed(trace["block_out"][num_layers(model) - 1])
        logits = unembed.decode_normed(out.hidden_states[-1])  # states already final-normed

    A view on the model's own modules (nothing is copied), so it follows training.
    """

    def __init__(self, model: nn.Module):
        self.norm = final_norm(model)
        self.head = unembedding(model)
        self.cap: float | None = getattr(unwrap(model).config, "final_logit_softcapping", None)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decode_normed(self.norm(hidden))

    def decode_normed(self, normed: torch.Tensor) -> torch.Tensor:
        """Logits of states that already went through the final norm."""
        # A bf16 head needs bf16 inputs; a no-op when the dtypes already match.
        return self.softcap(self.head(normed.to(self.head.weight.dtype)))

    def softcap(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's soft-capping alone (for logits computed from selected head rows)."""
        return softcap_logits(logits, self.cap)


def logit_lens(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``Unembed(model)(hidden)``; of the last block's output it is ``model(...).logits``."""
    return Unembed(model)(hidden)


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter below block 0: the token embedding first, then any other (GPT-2's position
    embedding). A head tied to the token embedding does not count it twice."""
    token = input_embeddings(model).weight
    above = [*decoder_layers(model).parameters(), *final_norm(model).parameters()]
    above_ids = {id(p) for p in above} | {id(unembedding(model).weight), id(token)}
    return [token] + [p for p in unwrap(model).parameters() if id(p) not in above_ids]


def model_stats(model: nn.Module) -> dict:
    """Shape summary for results records: architecture, sizes, parameter count, tying."""
    config = unwrap(model).config
    hidden = hidden_size(model)
    heads = config.num_attention_heads
    intermediate = (
        getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    )
    return {
        "architecture": architecture(model),
        "layers": num_layers(model),
        "heads": heads,
        "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "hidden": hidden,
        "intermediate": intermediate,
        "vocab": vocab_size(model),
        "parameters": sum(p.numel() for p in model.parameters()),  # shared tensors counted once
        "tied_embeddings": unembedding(model).weight is input_embeddings(model).weight,
    }
