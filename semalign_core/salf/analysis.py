"""SALF's semantic analysis: label prompts, labels' semantic bases, transition traces, deviations.

Spec, Method 1–3. A classification example becomes a prompt that ends where its label word would
come (``"{text}\\nSentiment:"``); the label is the next token, the label word with a leading
space. One forward pass without gradients records the last prompt token's hidden state in all
L+1 latent spaces (embedding output, then after each block): the *transition trace*. Deviation
in space k compares that state with the label's semantic basis ``s_y`` (row y of
``pinv(W_Uᵀ)``, :func:`semalign_core.lm.semantics.semantic_bases`).

Batches are right-padded and the last real token is gathered by the attention mask: real tokens
then see exactly what they would see unpadded (causal attention never looks right), with the
model's default position ids, and no query row is fully masked (which left padding would cause).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from semalign_core.data import CLASSIFICATION_TASKS, cls_template, format_cls_prompt
from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.lm.nethook import capture_hidden
from semalign_core.lm.semantics import semantic_bases

EPS = 1e-12
LABEL_TOKEN_MODES = ("first", "mean")
DEVIATIONS = ("cos", "cos_normed", "logit_lens_ce")


class LabelTokenError(ArtifactError, ValueError):
    """A label word is not one token where single-token labels are required."""


# --------------------------------------------------------------------------- prompts and labels


def format_prompt(text: str, task: str | None = None, template: str | None = None) -> str:
    """SALF's prompt of one example: ``template``, else the task's in the "salf" style of
    :mod:`semalign_core.data.prompts` (the generic cue for an unknown task), filled in."""
    return format_cls_prompt(text, task, "salf", template)


@dataclass(frozen=True)
class LabelTokens:
    """Token ids of each label word (with a leading space), in label order."""

    words: tuple[str, ...]
    ids: tuple[tuple[int, ...], ...]
    mode: str = "first"

    @property
    def first(self) -> list[int]:
        """The first token of every label (the next-token target of the label-token loss)."""
        return [t[0] for t in self.ids]

    @property
    def single_token(self) -> bool:
        return all(len(t) == 1 for t in self.ids)


def label_token_ids(
    tokenizer, label_words: Sequence[str], mode: str = "first", require_single_token: bool = False
) -> LabelTokens:
    """Tokenise ``" " + word`` for each label; a split word is an error when single tokens are
    required."""
    if mode not in LABEL_TOKEN_MODES:
        raise InvalidParameterError(
            f"label token mode must be one of {', '.join(LABEL_TOKEN_MODES)}, got {mode!r}"
        )
    ids = []
    for word in label_words:
        toks = tuple(tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"])
        if not toks:
            raise LabelTokenError(f"label word {word!r} tokenises to nothing")
        if require_single_token and len(toks) > 1:
            pieces = tokenizer.convert_ids_to_tokens(list(toks))
            raise LabelTokenError(
                f"label word {word!r} splits into {len(toks)} tokens {pieces}; use another "
                "verbalizer or allow multi-token labels (label_token_mode='first' or 'mean')"
            )
        ids.append(toks)
    firsts = [t[0] for t in ids]
    if len(set(firsts)) < len(firsts):
        raise LabelTokenError(
            f"label words {list(label_words)} share a first token; they cannot be told apart"
        )
    return LabelTokens(words=tuple(label_words), ids=tuple(ids), mode=mode)


def encode_prompts(
    tokenizer, prompts: Sequence[str], max_length: int | None = None
) -> list[list[int]]:
    """Token ids per prompt; a prompt longer than ``max_length`` loses tokens from the left
    (after a leading BOS), so the cue before the label word is always kept."""
    out = []
    bos = getattr(tokenizer, "bos_token_id", None)
    for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]:
        if max_length is not None and len(ids) > max_length:
            head = [ids[0]] if bos is not None and ids[0] == bos else []
            ids = head + ids[len(ids) - (max_length - len(head)) :]
        out.append(list(ids))
    return out


def pad_right(
    batch: Sequence[Sequence[int]], pad_id: int = 0, device=None
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` (right padding) and ``last_index`` (last real position)."""
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    last = mask.sum(1) - 1
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "last_index": last.to(device),
    }


def pad_token_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def gather_last(hidden: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """(..., batch, seq, d) → (..., batch, d) at each row's last real position."""
    idx = last_index.to(hidden.device).view(*([1] * (hidden.dim() - 3)), -1, 1, 1)
    idx = idx.expand(*hidden.shape[:-2], 1, hidden.shape[-1])
    return hidden.gather(-2, idx).squeeze(-2)


# --------------------------------------------------------------------------- semantic bases


def label_bases(model, labels: LabelTokens) -> torch.Tensor:
    """Unit semantic bases of the labels (n_labels, d): row y of pinv(W_Uᵀ); the normalised mean
    of the label's token rows in ``mean`` mode."""
    bases = semantic_bases(surgery.unembedding(model).weight)
    rows = []
    for toks in labels.ids:
        use = toks[:1] if labels.mode == "first" else toks
        v = bases[list(use)].mean(0)
        rows.append(v / v.norm().clamp_min(EPS))
    return torch.stack(rows)


# --------------------------------------------------------------------------- transition traces


@dataclass
class TransitionTrace:
    """Last-prompt-token states in every latent space: ``states`` (n, L+1, d), fp32, CPU."""

    states: torch.Tensor
    labels: torch.Tensor  # (n,) label index per example
    label_tokens: LabelTokens
    lengths: torch.Tensor  # (n,) prompt lengths in tokens
    meta: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.states.shape[1] - 1


@torch.no_grad()
def transition_trace(
    model,
    tokenizer,
    records: Sequence[dict],
    task: str | None = None,
    label_words: Sequence[str] | None = None,
    template: str | None = None,
    label_token_mode: str = "first",
    require_single_token: bool = False,
    batch_size: int = 16,
    max_length: int | None = 128,
) -> TransitionTrace:
    """One no-grad forward over ``records`` ({"text", "label"}), batched and right-padded,
    keeping the last real token's state in all L+1 latent spaces."""
    if label_words is None:
        if task not in CLASSIFICATION_TASKS:
            raise InvalidParameterError(
                "transition_trace needs label_words or a known classification task"
            )
        label_words = CLASSIFICATION_TASKS[task].label_words
    if not records:
        raise InvalidParameterError("transition_trace got no records")
    labels = label_token_ids(tokenizer, label_words, label_token_mode, require_single_token)
    prompts = [format_prompt(r["text"], task, template) for r in records]
    encoded = encode_prompts(tokenizer, prompts, max_length)
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    backbone = surgery.backbone(model)  # not .base_model: Gemma3ForCausalLM returns itself
    chunks, shapes = [], []
    for start in range(0, len(encoded), batch_size):
        batch = pad_right(encoded[start : start + batch_size], pad, device)
        shapes.append(list(batch["input_ids"].shape))
        with capture_hidden(model, None, ("block_in", "block_out")) as trace:
            # The backbone only: the LM head over every position would cost |V| x T per example.
            backbone(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            )
        states = trace.latent_states()  # (L+1, b, T, d)
        chunks.append(gather_last(states, batch["last_index"]).transpose(0, 1).float().cpu())
    return TransitionTrace(
        states=torch.cat(chunks),
        labels=torch.tensor([int(r["label"]) for r in records]),
        label_tokens=labels,
        lengths=torch.tensor([len(x) for x in encoded]),
        meta={
            "task": task,
            "template": template or cls_template(task, "salf"),
            "max_length": max_length,
            "label_token_mode": label_token_mode,
            "padding": "right",
            "batch_shapes": shapes,  # (examples, padded length) per batch: the pass's cost
        },
    )


# --------------------------------------------------------------------------- deviations


@torch.no_grad()
def deviations(
    model, trace: TransitionTrace, kind: str = "cos_normed", chunk: int = 64
) -> torch.Tensor:
    """Per-example deviations (n, L+1) of the trace from each example's label, in every space.

    ``cos``: 1 − cos(h_k, s_y); ``cos_normed``: 1 − cos(final_norm(h_k), s_y) (the head reads
    normed states, so that is where s_y lives); ``logit_lens_ce``: cross-entropy of the label
    under logit_lens(h_k) (mean over the label's tokens in ``mean`` mode).
    """
    if kind not in DEVIATIONS:
        raise InvalidParameterError(
            f"deviation must be one of {', '.join(DEVIATIONS)}, got {kind!r}"
        )
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    states = trace.states
    n, k1, d = states.shape
    if kind in ("cos", "cos_normed"):
        bases = label_bases(model, trace.label_tokens).float().cpu()[trace.labels]  # (n, d)
        h = states
        if kind == "cos_normed":
            norm = surgery.final_norm(model)
            h = torch.cat(
                [
                    norm(states[i : i + chunk].to(device, dtype)).float().cpu()
                    for i in range(0, n, chunk)
                ]
            )
        return 1.0 - F.cosine_similarity(h, bases[:, None, :], dim=-1, eps=EPS)
    out = torch.empty(n, k1)
    # at most 64M logits at once
    chunk = max(1, min(chunk, (1 << 26) // (k1 * surgery.vocab_size(model))))
    ids = trace.label_tokens.ids
    use = [t[:1] if trace.label_tokens.mode == "first" else t for t in ids]
    for i in range(0, n, chunk):
        h = states[i : i + chunk].to(device, dtype)
        logp = torch.log_softmax(surgery.logit_lens(model, h).float(), dim=-1)  # (b, L+1, V)
        for j in range(h.shape[0]):
            toks = list(use[int(trace.labels[i + j])])
            out[i + j] = -logp[j][:, toks].mean(-1).cpu()
    return out


def block_influence(trace: TransitionTrace) -> torch.Tensor:
    """Per-example block influence (n, L): 1 − cos(h_k, h_{k−1}) of the last prompt token
    (ShortGPT's signal, taken at the position the label is predicted from)."""
    s = trace.states
    return 1.0 - F.cosine_similarity(s[:, 1:], s[:, :-1], dim=-1, eps=EPS)


def block_params(model) -> list[int]:
    """Parameter count of each decoder block (LoRA adapters excluded)."""
    return [
        sum(p.numel() for name, p in layer.named_parameters() if "lora_" not in name)
        for layer in surgery.decoder_layers(model)
    ]
