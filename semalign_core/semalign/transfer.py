"""SemAlign training: attribution → pairing → shallow-to-deep frontier alignment (spec, Method 5-7).

``transfer(source, target, train_records, attribution_records, config, tokenizer)``:

1. semantic bases of both LM heads (cached by :mod:`semalign_core.lm.semantics`);
2. layer attribution of the source on ``attribution_records`` → one source layer per target layer;
3. ONE source pass over the training batches: the paired layers' states, mapped into the target
   space, and the teacher's output logits (for the output KL) are cached in memory, and on disk
   under ``checkpoint_dir`` keyed by a hash of source, pairing and data;
4. frontier: for k = 1..L_target only target layer k trains. The frozen prefix is constant within
   a stage, so the input of layer k is computed once per stage per batch (no grad) and a step runs
   layer k alone (replayed with the keyword arguments the model passed it: masks, rotary
   embeddings) plus the LM-head readout its loss needs; the final stage (and every stage with
   ``output_kl_every_stage``) also runs the layers after k for the output KL.

A checkpoint after every stage (the trained layer + progress, atomically written) lets
``transfer(..., resume=True)`` continue after the last completed stage with the same numbers as
an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semalign_core.lm import semantics, surgery
from semalign_core.semalign.attribution import (
    interpolation_plan,
    layer_attribution,
    pair_layers,
    supervised_positions,
)
from semalign_core.data.batching import collate
from semalign_core.data.formatting import build_sft_example
from semalign_core.errors import IncompatibleModelsError, InvalidParameterError
from semalign_core.lm.nethook import capture_hidden, run_to_layers
from semalign_core.semalign.pairing import Pairing
from semalign_core.records import atomic_write

EPS = 1e-12
PROGRESS_FILE = "progress.json"


@dataclass
class SemAlignConfig:
    """Everything that defines a SemAlign run (recorded with the results).

    Attributes:
        objective: "acl" (camera-ready default: Fisher-weighted quadratic surrogate on aligned
            logits + output KL at the final stage), "v2" (1 − linear CKA of the layer's residual
            contribution + output KL), "v1" ((1 − cos(h_k, h~)) + (1 − cos(z, one-hot label)) on
            the MLP sublayer output, no output KL).
        reading: for "acl": "aligned_logits" (z~ = target head on the recomposed state, z = logit
            lens of layer k) or "vds" (z~ = source cosine coefficients, z = target cosine
            coefficients of h_k; the coefficients lie in [-1, 1], so use a small tau).
        tau: temperature of the surrogate and of the output KL.
        layer_weight, output_kl_weight: weights of the layer term and of the output-KL term.
        output_kl_every_stage: add the output KL at every stage, not only the last one.
        rescale: "none" or "source_norm" for the recomposed state h~ (see semantics.transfer_state).
        steps_per_stage: optimizer steps per frontier stage; step s uses batch s mod n_batches.
        lr, weight_decay, grad_clip: AdamW settings; grad_clip None disables clipping. The
            optimizer is rebuilt at every stage (after the trainable set is known), so no Adam
            moments carry over between layers.
        batch_size, max_length, prompt_style, loss_on: how records become SFT batches.
        trainable: "full" (every weight of layer k) or "lora" (rank ``lora_r`` adapters on every
            Linear of layer k, merged into the layer after its stage).
        lora_r, lora_alpha: LoRA rank and scale numerator (alpha / r).
        pairing, window: pairing strategy ("attributed", "floor", "uniform", "interpolate") and
            the widening of the attribution windows.
        attribution_aggregate, attribution_method, attribution_granularity: see attribution.py.
        max_cached_logits_bytes: the teacher's output logits (fp32, supervised positions only)
            are cached when they fit in this many bytes; otherwise its final-normed hidden states
            are cached and its LM head is re-applied at every step that needs the KL. The same
            budget decides whether a stage keeps its aligned logits z~ (constant within a stage)
            or recomputes them at each step.
        eval_batches: how many of a stage's batches measure the stage loss before and after the
            stage (0 disables the measurement).
        seed: seeds every stage (``seed + k``), so a resumed run repeats the same numbers.
        checkpoint_dir: where stage checkpoints and the source-state cache go (None: nowhere).
        progress: show tqdm progress bars.
    """

    objective: Literal["acl", "v2", "v1"] = "acl"
    reading: Literal["aligned_logits", "vds"] = "aligned_logits"
    tau: float = 1.0
    layer_weight: float = 1.0
    output_kl_weight: float = 1.0
    output_kl_every_stage: bool = False
    rescale: Literal["none", "source_norm"] = "none"
    steps_per_stage: int = 4
    lr: float = 3e-5
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    batch_size: int = 4
    max_length: int = 256
    prompt_style: str = "transfer"
    loss_on: str = "response"
    trainable: Literal["full", "lora"] = "full"
    lora_r: int = 16
    lora_alpha: int = 32
    pairing: Literal["attributed", "floor", "uniform", "interpolate"] = "attributed"
    window: int | None = None
    attribution_aggregate: str = "sum_abs"
    attribution_method: Literal["captum", "hooks"] = "captum"
    attribution_granularity: str = "channel"
    max_cached_logits_bytes: int = 1 << 30
    eval_batches: int = 1
    seed: int = 0
    checkpoint_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        choices = {"objective": ("acl", "v2", "v1"), "reading": ("aligned_logits", "vds"),
                   "rescale": ("none", "source_norm"), "trainable": ("full", "lora")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InvalidParameterError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.steps_per_stage < 1 or self.batch_size < 1 or self.tau <= 0 or self.lr <= 0:
            raise InvalidParameterError("steps_per_stage and batch_size must be >= 1; tau and lr positive")

    def identity(self) -> dict[str, Any]:
        """The fields that change the numbers (not where files go or whether bars show)."""
        d = asdict(self)
        d.pop("checkpoint_dir"), d.pop("progress")
        return d

    def kl_at(self, stage: int, n_stages: int) -> bool:
        """Whether stage ``stage`` (1-based) adds the output KL."""
        if self.output_kl_every_stage:
            return True
        return stage == n_stages and self.objective in ("acl", "v2")


@dataclass
class TransferResult:
    """The trained target, the pairing, per-stage loss records with costs, and run totals."""

    model: nn.Module
    pairing: Pairing
    scores: list[float] | None
    stages: list[dict]
    cost: dict
    config: dict
    resumed_after_stage: int = 0
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def sft_batches(records: Sequence[dict], tokenizer, batch_size: int, max_length: int,
                style: str = "transfer", loss_on: str = "response") -> list[dict[str, Tensor]]:
    """Records with ``messages`` → padded batches in record order (see batching.collate)."""
    if not records:
        raise InvalidParameterError("no records to build batches from")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = [build_sft_example(tokenizer, r["messages"], style=style, loss_on=loss_on, max_length=max_length)
                for r in records]
    return [collate(examples[i:i + batch_size], pad) for i in range(0, len(examples), batch_size)]


# --------------------------------------------------------------------------- small utilities


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _model_fingerprint(model: nn.Module) -> str:
    sd = model.state_dict()
    return _sha(*[x for name in sorted(sd) for x in (name, sd[name])])


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _first(output) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _softcap(model: nn.Module) -> float | None:
    return getattr(surgery.unwrap(model).config, "final_logit_softcapping", None) or None


def check_compatible(source: nn.Module, target: nn.Module) -> None:
    """One-line IncompatibleModelsError unless the pair can be aligned (before any work)."""
    n_s, n_t = surgery.num_layers(source), surgery.num_layers(target)
    if n_t > n_s:
        raise IncompatibleModelsError(
            f"target is deeper than source ({n_t} > {n_s} layers): SemAlign pairs one source layer per target layer")
    v_s, v_t = surgery.vocab_size(source), surgery.vocab_size(target)
    if v_s != v_t:
        raise IncompatibleModelsError(
            f"vocabularies differ: source LM head has {v_s} rows, target {v_t}; SemAlign needs index-aligned vocabularies")


# --------------------------------------------------------------------------- source supervision


class Supervision:
    """Per target layer j and batch i, the supervisory state (B, T, d) and the teacher output.

    ``states[j][i]``: the recomposed source state in target space (d_target); for
    ``reading="vds"`` the raw source state (d_source), decomposed at each step. ``teacher[i]``:
    teacher logits at the supervised positions (n_i, V) or, when those do not fit in
    ``max_cached_logits_bytes``, the teacher's final-normed hidden states there (n_i, d_source).
    """

    def __init__(self, states: dict[int, list[Tensor]], teacher: list[Tensor] | None, teacher_kind: str):
        self.states, self.teacher, self.teacher_kind = states, teacher, teacher_kind

    def save(self, path: Path, key: str) -> None:
        from safetensors.torch import save_file

        tensors = {f"state.{j}.{i}": t.contiguous() for j, ts in self.states.items() for i, t in enumerate(ts)}
        for i, t in enumerate(self.teacher or []):
            tensors[f"teacher.{i}"] = t.contiguous()
        meta = {"key": key, "teacher_kind": self.teacher_kind}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: Path, key: str) -> "Supervision | None":
        from safetensors import safe_open

        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != key:
                    return None
                states: dict[int, dict[int, Tensor]] = {}
                teacher: dict[int, Tensor] = {}
                for name in f.keys():
                    parts = name.split(".")
                    if parts[0] == "state":
                        states.setdefault(int(parts[1]), {})[int(parts[2])] = f.get_tensor(name)
                    else:
                        teacher[int(parts[1])] = f.get_tensor(name)
        except Exception:  # a truncated or foreign file: recompute
            return None
        return cls({j: [d[i] for i in sorted(d)] for j, d in sorted(states.items())},
                   [teacher[i] for i in sorted(teacher)] or None, meta.get("teacher_kind", "none"))


def composite_map(bases_src: Tensor, bases_tgt: Tensor) -> Tensor:
    """``M = S_srcᵀ S_tgt`` (d_src × d_tgt): transfer_state of the identity, chunked over |V|.

    ``transfer_state(h) = (h/‖h‖) S_srcᵀ S_tgt`` is linear after the normalisation, so one
    d_src × d_tgt matrix replaces the |V|·(d_src + d_tgt) work per token.
    """
    eye = torch.eye(bases_src.shape[1], dtype=torch.float32, device=bases_src.device)
    return semantics.transfer_state(eye, bases_src, bases_tgt)


def map_states(h: Tensor, m: Tensor, rescale: str) -> Tensor:
    """Recompose source states (..., d_src) into the target space with the composite map."""
    x = h.float()
    norm = x.norm(dim=-1, keepdim=True)
    out = (x / norm.clamp_min(EPS)) @ m
    if rescale == "source_norm":
        out = out / out.norm(dim=-1, keepdim=True).clamp_min(EPS) * norm
    return out


def _source_point(objective: str) -> tuple[str, ...]:
    return {"acl": ("block_out",), "v2": ("block_in", "block_out"), "v1": ("mlp_out",)}[objective]


def source_supervision(source: nn.Module, batches: list[dict], pairing: Pairing, config: SemAlignConfig,
                       m: Tensor, need_teacher: bool) -> Supervision:
    """Run the source once over ``batches``, capturing only the paired layers (see Supervision)."""
    plan = interpolation_plan(pairing)
    layers0 = sorted({s - 1 for mix in plan.values() for s, _ in mix})
    points = _source_point(config.objective)
    n_sup = sum(int(supervised_positions(b["labels"])[0].sum()) for b in batches)
    keep_logits = n_sup * surgery.vocab_size(source) * 4 <= config.max_cached_logits_bytes
    teacher_kind = ("logits" if keep_logits else "hidden") if need_teacher else "none"
    states: dict[int, list[Tensor]] = {j: [] for j in plan}
    teacher: list[Tensor] = []
    device = next(source.parameters()).device
    cap = _softcap(source)
    for batch in batches:
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device),
                  "use_cache": False}
        with torch.no_grad():
            # Without the KL the pass stops after the deepest paired layer.
            with capture_hidden(source, layers0, points, stop_after_deepest=not need_teacher) as trace:
                out = source(**inputs, output_hidden_states=need_teacher, logits_to_keep=1)
            if need_teacher:
                rows, cols = supervised_positions(batch["labels"].to(device))[0].nonzero(as_tuple=True)
                final = out.hidden_states[-1][rows, cols].float()
                if keep_logits:
                    head = surgery.unembedding(source)
                    logits = head(final.to(head.weight.dtype)).float()  # bf16 heads need bf16 inputs
                    teacher.append(torch.tanh(logits / cap) * cap if cap else logits)
                else:
                    teacher.append(final)
            for j, mix in plan.items():
                raw = sum(w * _source_state(trace, config.objective, s - 1) for s, w in mix)
                states[j].append(raw.float() if config.reading == "vds" and config.objective == "acl"
                                 else map_states(raw, m, config.rescale))
    return Supervision(states, teacher if need_teacher else None, teacher_kind)


def _source_state(trace, objective: str, k0: int) -> Tensor:
    if objective == "acl":
        return trace["block_out"][k0].float()
    if objective == "v2":
        return trace["block_out"][k0].float() - trace["block_in"][k0].float()
    return trace["mlp_out"][k0].float()


# --------------------------------------------------------------------------- frontier inputs


class LayerInputs:
    """For every batch: the residual stream entering layer ``index`` (0-based, no grad) and the
    arguments the model passes to each decoder layer (masks, rotary embeddings), captured once."""

    def __init__(self, model: nn.Module, batches: list[dict], index: int):
        self.model, self.index = model, index
        self.blocks = surgery.decoder_layers(model)
        self.hidden: list[Tensor] = []
        self.layer_args: list[list[tuple[tuple, dict]]] = []
        device = next(model.parameters()).device
        for batch in batches:
            calls: dict[int, tuple[tuple, dict]] = {}
            handles = [blk.register_forward_pre_hook(self._recorder(calls, k), with_kwargs=True)
                       for k, blk in enumerate(self.blocks)]
            try:
                with torch.no_grad():
                    trace = run_to_layers(model, {"input_ids": batch["input_ids"].to(device),
                                                  "attention_mask": batch["attention_mask"].to(device)},
                                          layers=[index, len(self.blocks) - 1], points=("block_in",))
            finally:
                for h in handles:
                    h.remove()
            self.hidden.append(trace["block_in"][index])
            self.layer_args.append([calls[k] for k in range(len(self.blocks))])

    @staticmethod
    def _recorder(calls: dict, k: int):
        def hook(module, args, kwargs):
            kwargs = {n: v for n, v in kwargs.items() if n != "hidden_states"}
            calls[k] = (tuple(args[1:]), kwargs)

        return hook

    def run_layer(self, k0: int, hidden: Tensor, i: int) -> Tensor:
        """Layer ``k0`` (0-based) on ``hidden`` with batch i's captured arguments."""
        args, kwargs = self.layer_args[i][k0]
        return _first(self.blocks[k0](hidden, *args, **kwargs))

    def advance(self) -> None:
        """After layer ``index`` is trained: its outputs become the inputs of the next layer."""
        with torch.no_grad():
            self.hidden = [self.run_layer(self.index, h, i) for i, h in enumerate(self.hidden)]
        self.index += 1


# --------------------------------------------------------------------------- trainable set


def _freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def make_trainable(layer: nn.Module, config: SemAlignConfig) -> list[nn.Parameter]:
    """Unfreeze layer k (or give it LoRA adapters); the caller froze everything else first."""
    if config.trainable == "full":
        for p in layer.parameters():
            p.requires_grad_(True)
        return list(layer.parameters())
    from peft import LoraConfig, inject_adapter_in_model

    names = sorted({n.rsplit(".", 1)[-1] for n, mod in layer.named_modules() if isinstance(mod, nn.Linear)})
    if not names:
        raise InvalidParameterError(f"trainable='lora' needs nn.Linear modules in {type(layer).__name__}")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=names, bias="none")
    inject_adapter_in_model(lora, layer)  # adapters on this layer's Linears only
    params = [p for n, p in layer.named_parameters() if "lora_" in n]
    for n, p in layer.named_parameters():
        p.requires_grad_("lora_" in n)
    return params


def merge_lora(layer: nn.Module) -> None:
    """Fold the LoRA adapters into the base weights and put the plain Linears back."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(layer.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = layer.get_submodule(parent_name) if parent_name else layer
            setattr(parent, child, module.get_base_layer())


# --------------------------------------------------------------------------- stage loss


def linear_cka_loss(x: Tensor, y: Tensor, keep: Tensor) -> Tensor:
    """Mean over examples of 1 − linear CKA between x and y (B, T, d) on the kept tokens.

    Token-centred features, ``CKA = ‖XᵀY‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`` — equal to the cosine of the
    normalised token–token Gram matrices of X and Y.
    """
    losses = []
    for b in range(x.shape[0]):
        sel = keep[b]
        xb, yb = x[b, sel].float(), y[b, sel].float()
        xb, yb = xb - xb.mean(0, keepdim=True), yb - yb.mean(0, keepdim=True)
        num = (xb.T @ yb).square().sum()
        den = (xb.T @ xb).norm() * (yb.T @ yb).norm()
        losses.append(1.0 - num / den.clamp_min(EPS))
    return torch.stack(losses).mean()


class StageLoss:
    """Computes the loss of stage k on batch i (see SemAlignConfig.objective)."""

    def __init__(self, target: nn.Module, sup: Supervision, inputs: LayerInputs, batches: list[dict],
                 config: SemAlignConfig, bases_src: Tensor, bases_tgt: Tensor, source_head: nn.Module,
                 source_cap: float | None):
        self.target, self.sup, self.inputs, self.batches, self.config = target, sup, inputs, batches, config
        self.bases_src, self.bases_tgt = bases_src, bases_tgt
        self.source_head, self.source_cap = source_head, source_cap
        self.n_layers = surgery.num_layers(target)
        self.head = surgery.unembedding(target)
        self.norm = surgery.final_norm(target)
        self.cap = _softcap(target)
        device = next(target.parameters()).device
        self.positions = []
        for b in batches:
            mask, tgt = supervised_positions(b["labels"].to(device))
            rows, cols = mask.nonzero(as_tuple=True)
            self.positions.append((rows, cols, tgt[rows, cols], b["attention_mask"].to(device).bool()))
        n_sup = sum(len(p[0]) for p in self.positions)
        self._cache_aligned = n_sup * surgery.vocab_size(target) * 4 <= config.max_cached_logits_bytes
        self._aligned: dict[int, Tensor] = {}

    def aligned(self, stage: int, i: int, h_tilde: Tensor) -> Tensor:
        """Aligned logits z~ of batch i: constant within a stage, so computed once and kept when
        all batches' z~ fit in ``max_cached_logits_bytes`` (else recomputed at each step)."""
        if i in self._aligned:
            return self._aligned[i]
        with torch.no_grad():
            z = semantics.aligned_logits(h_tilde, self.norm, self.head.weight, self.cap, self.head.bias).float()
        if self._cache_aligned:
            self._aligned[i] = z
        return z

    def teacher_logits(self, i: int) -> Tensor:
        t = self.sup.teacher[i]
        if self.sup.teacher_kind == "logits":
            return t
        with torch.no_grad():
            z = self.source_head(t.to(self.source_head.weight.dtype)).float()
            return torch.tanh(z / self.source_cap) * self.source_cap if self.source_cap else z

    def __call__(self, stage: int, i: int) -> tuple[Tensor, dict[str, float]]:
        cfg, k0 = self.config, stage - 1
        rows, cols, labels, keep = self.positions[i]
        h_in = self.inputs.hidden[i]
        layer = self.inputs.blocks[k0]
        sub_out = {}
        handle = None
        if cfg.objective == "v1":
            hook = lambda mod, args, out: sub_out.__setitem__("h", _first(out))  # noqa: E731
            handle = surgery.mlp_residual_module(layer).register_forward_hook(hook)
        try:
            h_out = self.inputs.run_layer(k0, h_in, i)
        finally:
            if handle is not None:
                handle.remove()
        sup = self.sup.states[stage][i]
        parts: dict[str, Tensor] = {}
        z = None
        if cfg.objective == "acl" and cfg.reading == "aligned_logits":
            z = surgery.logit_lens(self.target, h_out[rows, cols]).float()
            z_tilde = self.aligned(stage, i, sup[rows, cols])
            parts["layer"] = semantics.fisher_quadratic_surrogate(z, z_tilde, cfg.tau)
        elif cfg.objective == "acl":  # reading "vds": cosine coefficients on both sides
            z_vds = semantics.vds_logits(h_out[rows, cols], self.bases_tgt)
            with torch.no_grad():
                a = semantics.decompose(sup[rows, cols], self.bases_src)
            parts["layer"] = semantics.fisher_quadratic_surrogate(z_vds, a, cfg.tau)
        elif cfg.objective == "v2":
            parts["layer"] = linear_cka_loss(h_out - h_in, sup, keep)
        else:  # v1
            h_sub = sub_out["h"][rows, cols].float()
            cos_state = F.cosine_similarity(h_sub, sup[rows, cols], dim=-1, eps=EPS)
            z = surgery.logit_lens(self.target, h_out[rows, cols]).float()
            cos_label = z.gather(1, labels[:, None]).squeeze(1) / z.norm(dim=-1).clamp_min(EPS)
            parts["layer"] = (1.0 - cos_state).mean() + (1.0 - cos_label).mean()
        loss = cfg.layer_weight * parts["layer"]
        if cfg.kl_at(stage, self.n_layers):
            if stage == self.n_layers and z is not None and not (cfg.objective == "acl" and cfg.reading == "vds"):
                z_final = z  # the last layer's logit lens is the model's output
            else:
                h = h_out
                for kk in range(stage, self.n_layers):  # frozen layers after k, gradient flows through
                    h = self.inputs.run_layer(kk, h, i)
                z_final = surgery.logit_lens(self.target, h[rows, cols]).float()
            parts["kl"] = semantics.output_kl(self.teacher_logits(i), z_final, cfg.tau)
            loss = loss + cfg.output_kl_weight * parts["kl"]
        return loss, {name: float(v.detach()) for name, v in parts.items()}

    def evaluate(self, stage: int, batch_ids: Sequence[int]) -> float:
        with torch.no_grad():
            return sum(float(self(stage, i)[0]) for i in batch_ids) / max(1, len(batch_ids))


def step_flops(target: nn.Module, stage: int, batch: dict, config: SemAlignConfig, d_source: int) -> float:
    """Analytic FLOPs of one stage step (matmuls only; approximate, documented in decisions)."""
    n_layers = surgery.num_layers(target)
    blocks = surgery.decoder_layers(target)
    tokens = int(batch["attention_mask"].sum())
    bsz, seq = batch["input_ids"].shape
    n_sup = int(supervised_positions(batch["labels"])[0].sum())
    d, vocab = surgery.hidden_size(target), surgery.vocab_size(target)
    layer_params = sum(p.numel() for p in blocks[stage - 1].parameters() if p.dim() > 1)
    attn = 4 * bsz * seq * seq * d  # scores and weighted values, forward
    flops = 3 * (2 * layer_params * tokens + attn)  # forward + backward (input and weight grads)
    head_fwd = 2 * d * vocab * n_sup
    flops += 2 * head_fwd + head_fwd  # logit lens forward + input-grad backward; aligned logits
    if config.kl_at(stage, n_layers):
        later = sum(p.numel() for blk in list(blocks)[stage:] for p in blk.parameters() if p.dim() > 1)
        flops += 2 * (2 * later * tokens + (n_layers - stage) * attn)  # forward + input-grad backward
        flops += 2 * d_source * vocab * n_sup  # teacher head when its logits are recomputed
    return float(flops)


# --------------------------------------------------------------------------- checkpoints


def _progress_path(config: SemAlignConfig) -> Path | None:
    return Path(config.checkpoint_dir) / PROGRESS_FILE if config.checkpoint_dir else None


def _save_stage(config: SemAlignConfig, stage: int, layer: nn.Module, progress: dict) -> None:
    from safetensors.torch import save_file

    root = Path(config.checkpoint_dir)
    sd = {k: v.detach().contiguous().clone() for k, v in layer.state_dict().items()}
    atomic_write(root / f"stage-{stage:03d}.safetensors", lambda tmp: save_file(sd, tmp))
    atomic_write(root / PROGRESS_FILE, lambda tmp: Path(tmp).write_text(json.dumps(progress, indent=1)))


def _load_progress(config: SemAlignConfig, run_key: str) -> dict | None:
    path = _progress_path(config)
    if path is None or not path.is_file():
        return None
    progress = json.loads(path.read_text())
    if progress.get("run_key") != run_key:
        raise InvalidParameterError(
            f"checkpoint in {config.checkpoint_dir} was made by a different run (config, models or data); "
            "use another checkpoint_dir or resume=False")
    return progress


# --------------------------------------------------------------------------- driver


def transfer(
    source: nn.Module,
    target: nn.Module,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: SemAlignConfig,
    tokenizer,
    resume: bool = False,
    stop_after_stage: int | None = None,
) -> TransferResult:
    """SemAlign transfer from ``source`` into ``target`` (trained in place; see module docstring).

    ``resume=True`` continues after the last stage checkpointed in ``config.checkpoint_dir``
    (made by the same config, models and data). ``stop_after_stage`` ends the run after that
    stage (time-budgeted runs; the interruption test).
    """
    check_compatible(source, target)
    if resume and not config.checkpoint_dir:
        raise InvalidParameterError("resume=True needs config.checkpoint_dir")
    t_start = time.perf_counter()
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    source.eval(), target.eval()  # no dropout anywhere: the runs are deterministic
    n_t = surgery.num_layers(target)
    train_batches = sft_batches(train_records, tokenizer, config.batch_size, config.max_length,
                                config.prompt_style, config.loss_on)
    attr_batches = sft_batches(attribution_records, tokenizer, config.batch_size, config.max_length,
                               config.prompt_style, config.loss_on)
    data_key = _sha(*[b[k] for b in train_batches for k in ("input_ids", "labels")])
    attr_key = _sha(*[b[k] for b in attr_batches for k in ("input_ids", "labels")])
    source_key = _model_fingerprint(source)
    run_key = _sha(config.identity(), source_key, _model_fingerprint(target), data_key, attr_key)
    progress = _load_progress(config, run_key) if resume else None
    cost: dict[str, Any] = {}

    # 1. semantic bases (fp32, cached on disk and in-process by semantics.py)
    t0 = time.perf_counter()
    bases_src = semantics.semantic_bases(surgery.unembedding(source).weight)
    bases_tgt = semantics.semantic_bases(surgery.unembedding(target).weight)
    m = composite_map(bases_src, bases_tgt)
    cost["bases_s"] = time.perf_counter() - t0

    # 2. attribution -> pairing (taken from the checkpoint when resuming)
    t0 = time.perf_counter()
    if progress is not None:
        scores = progress["scores"]
        pairing = Pairing({int(j): s for j, s in progress["pairing"].items()}, progress["pairing_strategy"],
                          surgery.num_layers(source), n_t, tuple(progress["pairing_notes"]))
    else:
        scores = None
        if config.pairing == "attributed":
            scores = layer_attribution(source, attr_batches, config.attribution_aggregate,
                                       config.attribution_method, config.attribution_granularity).tolist()
        pairing = pair_layers(scores, n_t, config.pairing, config.window, n_source=surgery.num_layers(source))
    cost["attribution_s"] = time.perf_counter() - t0

    # 3. source supervision: one pass, cached
    t0 = time.perf_counter()
    need_teacher = any(config.kl_at(k, n_t) for k in range(1, n_t + 1))
    sup_key = _sha("supervision-v1", source_key, semantics.weight_key(surgery.unembedding(target).weight),
                   pairing.as_table(), config.objective, config.reading, config.rescale,
                   config.max_cached_logits_bytes, need_teacher, data_key)
    sup_path = Path(config.checkpoint_dir) / f"supervision-{sup_key[:16]}.safetensors" if config.checkpoint_dir else None
    sup = Supervision.load(sup_path, sup_key) if sup_path is not None else None
    cost["supervision_cached"] = sup is not None
    if sup is None:
        sup = source_supervision(source, train_batches, pairing, config, m, need_teacher)
        if sup_path is not None:
            sup.save(sup_path, sup_key)
    cost["source_pass_s"] = time.perf_counter() - t0

    # 4. frontier
    flags = {n: p.requires_grad for n, p in target.named_parameters()}
    blocks = surgery.decoder_layers(target)
    done = 0
    stages: list[dict] = []
    if progress is not None:
        done, stages = int(progress["completed_stage"]), list(progress["stages"])
        from safetensors.torch import load_file

        for k in range(1, done + 1):
            blocks[k - 1].load_state_dict(load_file(str(Path(config.checkpoint_dir) / f"stage-{k:03d}.safetensors")))
    last = n_t if stop_after_stage is None else min(n_t, stop_after_stage)
    inputs = None
    source_head = surgery.unembedding(source)
    d_source = surgery.hidden_size(source)
    try:
        _freeze_all(target)
        bar = tqdm(range(done + 1, last + 1), desc="SemAlign stages", disable=not config.progress)
        for stage in bar:
            t_stage = time.perf_counter()
            if inputs is None:  # first stage of this process: one no-grad pass through the prefix
                inputs = LayerInputs(target, train_batches, stage - 1)
            loss_fn = StageLoss(target, sup, inputs, train_batches, config, bases_src, bases_tgt,
                                source_head, _softcap(source))
            torch.manual_seed(config.seed + stage)
            _freeze_all(target)
            layer = blocks[stage - 1]
            params = make_trainable(layer, config)
            optim = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)  # rebuilt per stage
            used = sorted({s % len(train_batches) for s in range(config.steps_per_stage)})
            eval_ids = used[: config.eval_batches]
            before = loss_fn.evaluate(stage, eval_ids) if eval_ids else None
            record: dict[str, Any] = {"stage": stage, "target_layer": stage,
                                      "source_layers": [[s, w] for s, w in interpolation_plan(pairing)[stage]],
                                      "losses": [], "layer_losses": [], "kl_losses": [],
                                      "tokens": 0, "flops": 0.0}
            for step in tqdm(range(config.steps_per_stage), desc=f"stage {stage}", leave=False,
                             disable=not config.progress):
                i = step % len(train_batches)
                loss, parts = loss_fn(stage, i)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optim.step()
                record["losses"].append(float(loss.detach()))
                record["layer_losses"].append(parts["layer"])
                if "kl" in parts:
                    record["kl_losses"].append(parts["kl"])
                record["tokens"] += int(train_batches[i]["attention_mask"].sum())
                record["flops"] += step_flops(target, stage, train_batches[i], config, d_source)
            del optim
            record["loss_before"] = before
            record["loss_after"] = loss_fn.evaluate(stage, eval_ids) if eval_ids else None
            if config.trainable == "lora":
                merge_lora(layer)
            _freeze_all(target)
            if stage < n_t:
                inputs.advance()  # the trained layer's outputs feed the next stage
            record["wall_s"] = time.perf_counter() - t_stage
            record["peak_rss_mb"] = _peak_rss_mb()
            stages.append(record)
            bar.set_postfix(loss=f"{record['losses'][-1]:.4g}")
            if config.checkpoint_dir:
                _save_stage(config, stage, layer, {
                    "run_key": run_key, "completed_stage": stage, "stages": stages, "scores": scores,
                    "pairing": {str(j): s for j, s in pairing.target_to_source.items()},
                    "pairing_strategy": pairing.strategy, "pairing_notes": list(pairing.notes)})
    finally:
        for n, p in target.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])
    cost.update({
        "wall_s": time.perf_counter() - t_start,
        "peak_rss_mb": _peak_rss_mb(),
        "tokens": sum(r["tokens"] for r in stages),
        "flops": sum(r["flops"] for r in stages),
        "train_batches": len(train_batches),
        "teacher_cache": sup.teacher_kind,
    })
    return TransferResult(model=target, pairing=pairing, scores=scores, stages=stages, cost=cost,
                          config=asdict(config), resumed_after_stage=done)
