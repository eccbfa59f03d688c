"""Source supervision: ONE source pass that caches, per target layer, the paired source states
mapped into the target space, and the teacher's output for the output KL (spec, Method 5)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from semalign_core.lm import semantics, surgery
from semalign_core.lm.nethook import capture_hidden
from semalign_core.records import atomic_write
from semalign_core.semalign.attribution import interpolation_plan, supervised_positions
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.pairing import Pairing

EPS = 1e-12


class Supervision:
    """Per target layer j and training batch i, the supervisory state (B, T, d) and the teacher
    output, for the batches the stages use only (``SemAlignConfig.batches_used``).

    ``states[j][i]``: the recomposed source state in target space (d_target, fp32: what the loss
    reads); for ``reading="vds"`` the raw source state (d_source), decomposed at each step.
    ``teacher[i]``: teacher logits at the supervised positions (n_i, V) or, when those do not fit
    in ``max_cached_logits_bytes``, the teacher's final-normed hidden states there (n_i, d_source).
    Both are kept on the CPU; :meth:`state` and :meth:`teacher_at` copy one onto the device for
    the step that uses it, so the device never holds more than one batch of them.
    """

    def __init__(
        self,
        states: dict[int, dict[int, Tensor]],
        teacher: dict[int, Tensor] | None,
        teacher_kind: str,
    ):
        self.states, self.teacher, self.teacher_kind = states, teacher, teacher_kind

    def state(self, j: int, i: int, device: torch.device) -> Tensor:
        """Target layer j's supervisory state for batch i, on ``device``."""
        return self.states[j][i].to(device)

    def teacher_at(self, i: int, device: torch.device) -> Tensor:
        """The teacher's cached output for batch i, on ``device``."""
        return self.teacher[i].to(device)

    def save(self, path: Path, key: str) -> None:
        tensors = {
            f"state.{j}.{i}": t.contiguous() for j, ts in self.states.items() for i, t in ts.items()
        }
        for i, t in (self.teacher or {}).items():
            tensors[f"teacher.{i}"] = t.contiguous()
        meta = {"key": key, "teacher_kind": self.teacher_kind}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: Path, key: str) -> Supervision | None:
        """The supervision saved under ``key`` at ``path``; None when absent, foreign or broken."""
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
        return cls(states, teacher or None, meta.get("teacher_kind", "none"))


def composite_map(bases_src: Tensor, bases_tgt: Tensor, decomposition: str = "cosine") -> Tensor:
    """The d_src × d_tgt map M with ``h~ = (h/‖h‖) M`` (see SemAlignConfig.decomposition).

    "cosine" and "gain_folded": ``M = S_srcᵀ S_tgt``, transfer_state of the identity, chunked
    over |V| (gain_folded differs only in its bases, see :func:`decomposition_bases`). "dual":
    ``M = (S_srcᵀ S_src)⁺ S_srcᵀ S_tgt`` (:func:`semantics.dual_map`). Either way the map is
    linear after the normalisation, so one d_src × d_tgt matrix replaces the |V|·(d_src + d_tgt)
    work per token.
    """
    if decomposition == "dual":
        return semantics.dual_map(bases_src, bases_tgt)
    eye = torch.eye(bases_src.shape[1], dtype=torch.float32, device=bases_src.device)
    return semantics.transfer_state(eye, bases_src, bases_tgt)


def decomposition_bases(model: nn.Module, decomposition: str = "cosine") -> Tensor:
    """Unit semantic bases (|V| × d, fp32, cached by semantics.py) a decomposition uses: of the
    LM head, or for "gain_folded" of the head with the final-norm gain folded in."""
    if decomposition == "gain_folded":
        return semantics.semantic_bases(semantics.gain_folded_head(model))
    return semantics.semantic_bases(surgery.unembedding(model).weight)


def semantic_maps(
    source: nn.Module, target: nn.Module, decomposition: str = "cosine"
) -> tuple[Tensor, Tensor, Tensor]:
    """(source bases, target bases, composite map) of a decomposition: what a run's supervision
    and its vds reading use."""
    bases_src = decomposition_bases(source, decomposition)
    bases_tgt = decomposition_bases(target, decomposition)
    return bases_src, bases_tgt, composite_map(bases_src, bases_tgt, decomposition)


def map_states(h: Tensor, m: Tensor, rescale: str) -> Tensor:
    """Recompose source states (..., d_src) into the target space with the composite map."""
    x = h.float()
    norm = x.norm(dim=-1, keepdim=True)
    out = (x / norm.clamp_min(EPS)) @ m
    if rescale == "source_norm":
        out = out / out.norm(dim=-1, keepdim=True).clamp_min(EPS) * norm
    return out


def paired_source_layers(pairing: Pairing) -> list[int]:
    """0-based source layers that some target layer is aligned to (the only ones captured)."""
    return sorted({s - 1 for mix in interpolation_plan(pairing).values() for s, _ in mix})


def teacher_kind(
    source: nn.Module, batches: list[dict], config: SemAlignConfig, need_teacher: bool
) -> str:
    """What the pass keeps of the teacher: "logits" when they fit the budget, else "hidden"."""
    if not need_teacher:
        return "none"
    n_sup = sum(int(supervised_positions(b["labels"])[0].sum()) for b in batches)
    fits = n_sup * surgery.vocab_size(source) * 4 <= config.max_cached_logits_bytes
    return "logits" if fits else "hidden"


def _source_point(objective: str) -> tuple[str, ...]:
    return {"acl": ("block_out",), "v2": ("block_in", "block_out"), "v1": ("mlp_out",)}[objective]


def _source_state(trace, objective: str, k0: int) -> Tensor:
    if objective == "acl":
        return trace["block_out"][k0].float()
    if objective == "v2":
        return trace["block_out"][k0].float() - trace["block_in"][k0].float()
    return trace["mlp_out"][k0].float()


def teacher_logits(unembed: surgery.Unembed, final: Tensor) -> Tensor:
    """Soft-capped fp32 teacher logits of final-normed states (cached or recomputed per step)."""
    head = unembed.head
    # Cap after the fp32 cast (not in the head's dtype): the recorded numbers were made this way.
    return unembed.softcap(head(final.to(head.weight.dtype)).float())


def source_supervision(
    source: nn.Module,
    batches: list[dict],
    pairing: Pairing,
    config: SemAlignConfig,
    m: Tensor,
    need_teacher: bool,
    batch_ids: Sequence[int] | None = None,
) -> Supervision:
    """Run the source once over ``batches[i]`` for i in ``batch_ids`` (default: all), capturing
    only the paired layers (see Supervision). Whether the teacher's logits are kept is decided
    over all ``batches``, as before the supervision was restricted to the used ones."""
    kind = teacher_kind(source, batches, config, need_teacher)
    plan, layers0 = interpolation_plan(pairing), paired_source_layers(pairing)  # once for all
    states: dict[int, dict[int, Tensor]] = {j: {} for j in plan}
    teacher: dict[int, Tensor] = {}
    for i in range(len(batches)) if batch_ids is None else batch_ids:
        layer_states, teacher_out = _batch_supervision(
            source, batches[i], plan, layers0, config, m, kind
        )
        for j, state in layer_states.items():
            states[j][i] = state.cpu()  # the device holds one batch's supervision at a time
        if teacher_out is not None:
            teacher[i] = teacher_out.cpu()
    return Supervision(states, teacher if need_teacher else None, kind)


def _batch_supervision(
    source: nn.Module,
    batch: dict,
    plan: dict[int, list[tuple[int, float]]],
    layers0: list[int],
    config: SemAlignConfig,
    m: Tensor,
    kind: str,
) -> tuple[dict[int, Tensor], Tensor | None]:
    """One batch's supervisory state per target layer of ``plan`` (target layer → [(source
    layer, weight)], reading the 0-based source layers ``layers0``) and teacher output (None
    without KL)."""
    need_teacher = kind != "none"
    device = next(source.parameters()).device
    inputs = {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": batch["attention_mask"].to(device),
        "use_cache": False,
    }
    stop = not need_teacher  # without the KL the pass stops after the deepest paired layer
    teacher = None
    with torch.no_grad():
        points = _source_point(config.objective)
        with capture_hidden(source, layers0, points, stop_after_deepest=stop) as trace:
            out = source(**inputs, output_hidden_states=need_teacher, logits_to_keep=1)
        if need_teacher:
            mask = supervised_positions(batch["labels"].to(device))[0]
            final = out.hidden_states[-1][mask.nonzero(as_tuple=True)].float()
            teacher = final if kind == "hidden" else teacher_logits(surgery.Unembed(source), final)
        states = {}
        for j, mix in plan.items():
            raw = sum(w * _source_state(trace, config.objective, s - 1) for s, w in mix)
            states[j] = (
                raw.float() if config.layer_readout == "vds" else map_states(raw, m, config.rescale)
            )
    return states, teacher
