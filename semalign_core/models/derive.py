"""A smaller student of the same vocabulary, derived from a source by structured pruning.

SemAlign needs a cross-scale pair that shares one vocabulary. Offline on a CPU the only real
models are single sizes, so the `cpu` profile derives the target from the source (Minitron-style,
Muralidharan et al. 2024), choosing what to keep by measured importance on calibration text:

- depth: block influence BI_k = 1 - cos(h_in, h_out) of each block (ShortGPT, Men et al. 2024);
  the most influential blocks are kept, in their original order;
- width of the residual stream: mean |activation| of each channel at the inputs of every
  attention and MLP sublayer (the normalised states the weights actually read);
- attention: whole key/value groups (with their query heads) are kept or dropped, ranked by the
  summed magnitude of their heads' outputs, so head structure (head_dim, GQA ratio) is intact;
- MLP: intermediate neurons ranked by mean |act(gate) * up|, the input of ``down_proj``.

The pruned model is optionally healed by a short LM fine-tuning on training corpora, and its
perplexity on held-out text is measured before and after. Llama-family layouts only (Llama,
Mistral, Qwen2: q/k/v/o and gate/up/down projections, RMSNorm).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from semalign_core.data.corpora import HELDOUT_CORPUS, TRAIN_CORPORA, token_blocks
from semalign_core.errors import InvalidParameterError, UnknownModelError
from semalign_core.lm import surgery

SUPPORTED = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class DeriveConfig:
    """Shape of the student and the budget of importance measurement and healing.

    Attributes:
        num_layers: decoder blocks kept (most influential first, kept in depth order).
        hidden_size: residual-stream channels kept.
        num_kv_groups: key/value heads kept, each with its query heads (None keeps all).
        intermediate_size: MLP neurons kept per block.
        calib_blocks, calib_seq_len: calibration text for the importance measures.
        heal_steps: LM fine-tuning steps after pruning (0 skips healing).
        heal_batch, heal_seq_len, heal_lr: healing batch shape and AdamW learning rate.
        eval_blocks: held-out windows (of heal_seq_len tokens) for perplexity.
        train_corpora: corpora for calibration and healing; held-out text is never among them.
        seed: seeds calibration sampling and healing.
    """

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_kv_groups: int | None = None
    calib_blocks: int = 16
    calib_seq_len: int = 256
    heal_steps: int = 150
    heal_batch: int = 4
    heal_seq_len: int = 256
    heal_lr: float = 3e-4
    eval_blocks: int = 16
    train_corpora: tuple[str, ...] = TRAIN_CORPORA
    seed: int = 0


@dataclass
class Importance:
    layers: torch.Tensor  # (L,) block influence
    channels: torch.Tensor  # (d,)
    kv_groups: torch.Tensor  # (L, n_kv)
    neurons: torch.Tensor  # (L, d_ff)


def _check(model: nn.Module, cfg: DeriveConfig) -> None:
    arch = surgery.architecture(model)
    if arch not in SUPPORTED:
        raise UnknownModelError(
            f"derive_student supports {', '.join(SUPPORTED)} layouts, not {arch!r}"
        )
    c = surgery.unwrap(model).config
    limits = {
        "num_layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_kv_groups": c.num_key_value_heads,
    }
    for key, top in limits.items():
        value = getattr(cfg, key)
        if value is not None and not 1 <= value <= top:
            raise InvalidParameterError(
                f"derive: {key}={value} must be between 1 and the source's {top}"
            )


@torch.no_grad()
def measure_importance(
    model: nn.Module, input_ids: torch.Tensor, batch_size: int = 4
) -> Importance:
    """One pass over calibration text with hooks; returns every importance score at once."""
    config = surgery.unwrap(model).config
    layers = surgery.decoder_layers(model)
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    sums = {
        "bi": torch.zeros(len(layers)),
        "ch": torch.zeros(config.hidden_size),
        "kv": torch.zeros(len(layers), n_kv),
        "ff": torch.zeros(len(layers), config.intermediate_size),
    }
    handles = []

    def block_hook(k):
        def hook(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            sums["bi"][k] += (1 - torch.cosine_similarity(h_in, h_out, dim=-1)).mean().float()

        return hook

    def norm_hook(module, args, output):
        sums["ch"] += output.abs().float().mean(dim=(0, 1))

    def o_proj_hook(k):
        def hook(module, args):
            per_head = args[0].abs().float().mean(dim=(0, 1)).view(n_heads, head_dim).sum(-1)
            sums["kv"][k] += per_head.view(n_kv, n_heads // n_kv).sum(-1)

        return hook

    def down_proj_hook(k):
        def hook(module, args):
            sums["ff"][k] += args[0].abs().float().mean(dim=(0, 1))

        return hook

    try:
        for k, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(block_hook(k), with_kwargs=True))
            handles.append(layer.input_layernorm.register_forward_hook(norm_hook))
            handles.append(layer.post_attention_layernorm.register_forward_hook(norm_hook))
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(o_proj_hook(k)))
            handles.append(layer.mlp.down_proj.register_forward_pre_hook(down_proj_hook(k)))
        for batch in input_ids.split(batch_size):
            model(input_ids=batch)
    finally:
        for handle in handles:
            handle.remove()
    return Importance(sums["bi"], sums["ch"], sums["kv"], sums["ff"])


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in ascending index order (keeps original layout)."""
    return torch.sort(torch.topk(scores, k).indices).values


def prune(model: nn.Module, imp: Importance, cfg: DeriveConfig) -> nn.Module:
    """A new, smaller model whose weights are slices of ``model``'s (same vocabulary)."""
    base = surgery.unwrap(model)
    src = base.config
    n_heads, n_kv = src.num_attention_heads, src.num_key_value_heads
    group = n_heads // n_kv
    head_dim = getattr(src, "head_dim", None) or src.hidden_size // n_heads
    kv_keep = cfg.num_kv_groups or n_kv
    new_config = src.__class__.from_dict(
        {
            **src.to_dict(),
            "num_hidden_layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_key_value_heads": kv_keep,
            "num_attention_heads": kv_keep * group,
            "head_dim": head_dim,
        }
    )
    student = AutoModelForCausalLM.from_config(new_config, torch_dtype=torch.float32)
    ch = _top(imp.channels, cfg.hidden_size)
    kept_layers = _top(imp.layers, cfg.num_layers)
    with torch.no_grad():
        surgery.input_embeddings(student).weight.copy_(surgery.input_embeddings(base).weight[:, ch])
        if not src.tie_word_embeddings:
            surgery.unembedding(student).weight.copy_(surgery.unembedding(base).weight[:, ch])
        surgery.final_norm(student).weight.copy_(surgery.final_norm(base).weight[ch])
        for new_layer, k in zip(surgery.decoder_layers(student), kept_layers.tolist()):
            kv_groups = _top(imp.kv_groups[k], kv_keep)
            neurons = _top(imp.neurons[k], cfg.intermediate_size)
            _copy_layer(
                surgery.decoder_layers(base)[k], new_layer, ch, kv_groups, neurons, group, head_dim
            )
    student.config.semalign_derived = {"kept_layers": kept_layers.tolist()}
    return student.eval()


def _rows(groups: torch.Tensor, per_group: int, head_dim: int) -> torch.Tensor:
    """Row indices of the projection rows belonging to the kept groups of heads."""
    heads = (groups[:, None] * per_group + torch.arange(per_group)).flatten()
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _copy_layer(old, new, ch, kv_groups, neurons, group: int, head_dim: int) -> None:
    q_rows, kv_rows = _rows(kv_groups, group, head_dim), _rows(kv_groups, 1, head_dim)
    pairs = [
        (old.self_attn.q_proj, new.self_attn.q_proj, q_rows, ch),
        (old.self_attn.k_proj, new.self_attn.k_proj, kv_rows, ch),
        (old.self_attn.v_proj, new.self_attn.v_proj, kv_rows, ch),
        (old.self_attn.o_proj, new.self_attn.o_proj, ch, q_rows),
        (old.mlp.gate_proj, new.mlp.gate_proj, neurons, ch),
        (old.mlp.up_proj, new.mlp.up_proj, neurons, ch),
        (old.mlp.down_proj, new.mlp.down_proj, ch, neurons),
    ]
    for src, dst, rows, cols in pairs:
        dst.weight.copy_(src.weight[rows][:, cols])
        if src.bias is not None:  # Qwen2 has q/k/v biases
            dst.bias.copy_(src.bias[rows])
    new.input_layernorm.weight.copy_(old.input_layernorm.weight[ch])
    new.post_attention_layernorm.weight.copy_(old.post_attention_layernorm.weight[ch])


@torch.no_grad()
def perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 4) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in blocks.split(batch_size):
        loss = model(input_ids=batch, labels=batch).loss
        n = batch.numel() - batch.shape[0]
        total, count = total + loss.item() * n, count + n
    return math.exp(total / count)


def heal(model: nn.Module, blocks: torch.Tensor, cfg: DeriveConfig) -> list[float]:
    """Short LM fine-tuning of the whole pruned model; returns the loss of every step."""
    torch.manual_seed(cfg.seed)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.heal_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / 10))
    model.train()
    losses = []
    for step in tqdm(range(cfg.heal_steps), desc="healing", leave=False):
        batch = blocks[(step * cfg.heal_batch) % len(blocks) :][: cfg.heal_batch]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step(), schedule.step(), optim.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def derive_student(model: nn.Module, tokenizer, cfg: DeriveConfig) -> tuple[nn.Module, dict]:
    """Prune ``model`` to ``cfg``'s shape, heal it, and report perplexities and costs."""
    _check(model, cfg)
    start = time.perf_counter()
    calib = token_blocks(
        tokenizer, cfg.train_corpora, cfg.calib_seq_len, cfg.calib_blocks, seed=cfg.seed
    )
    heldout = token_blocks(
        tokenizer, (HELDOUT_CORPUS,), cfg.heal_seq_len, cfg.eval_blocks, seed=cfg.seed
    )
    imp = measure_importance(model, calib)
    student = prune(model, imp, cfg)
    report = {
        "config": asdict(cfg),
        "kept_layers": student.config.semalign_derived["kept_layers"],
        "block_influence": [round(x, 6) for x in (imp.layers / len(calib.split(4))).tolist()],
        "ppl_source": perplexity(model, heldout),
        "ppl_pruned": perplexity(student, heldout),
        "parameters_source": sum(p.numel() for p in model.parameters()),
        "parameters_student": sum(p.numel() for p in student.parameters()),
    }
    if cfg.heal_steps:
        needed = cfg.heal_steps * cfg.heal_batch
        train = token_blocks(
            tokenizer, cfg.train_corpora, cfg.heal_seq_len, needed, seed=cfg.seed + 1
        )
        report["heal_losses"] = [round(x, 4) for x in heal(student, train, cfg)]
        report["heal_tokens"] = int(train.numel())
    report["ppl_student"] = perplexity(student, heldout)
    report["wall_s"] = round(time.perf_counter() - start, 2)
    return student.eval(), report
