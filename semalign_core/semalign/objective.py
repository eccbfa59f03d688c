"""The loss of stage k on one batch: the layer term (acl / v2 / v1, see SemAlignConfig.objective)
plus, where the config asks for it, the output KL against the teacher (spec, Method 6-7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semalign_core.lm import semantics, surgery
from semalign_core.lm.nethook import capture_hidden
from semalign_core.semalign.attribution import supervised_positions
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.frontier import LayerInputs
from semalign_core.semalign.supervision import EPS, Supervision, teacher_logits


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


def aligned_logits_fit(n_positions: int, vocab: int, config: SemAlignConfig) -> bool:
    """Whether a stage keeps its aligned logits z~ (fp32, all batches) within the cache budget."""
    return n_positions * vocab * 4 <= config.max_cached_logits_bytes


class StageLoss:
    """The loss of stage k on batch i (see SemAlignConfig.objective)::

        loss_fn = StageLoss(target, sup, inputs, batches, config, s_src, s_tgt, Unembed(source))
        loss, parts = loss_fn(stage, i)  # parts: {"layer": float, "kl": float (when on)}

    Layer k runs alone on its cached input (``inputs``); the layers after it run only for the
    output KL. Target and teacher logits are read through one ``surgery.Unembed`` each.
    """

    def __init__(
        self,
        target: nn.Module,
        sup: Supervision,
        inputs: LayerInputs,
        batches: list[dict],
        config: SemAlignConfig,
        bases_src: Tensor,
        bases_tgt: Tensor,
        source_unembed: surgery.Unembed,
    ):
        self.target, self.sup, self.inputs, self.config = target, sup, inputs, config
        self.bases_src, self.bases_tgt = bases_src, bases_tgt
        self.source_unembed = source_unembed
        self.n_layers = surgery.num_layers(target)
        self.unembed = surgery.Unembed(target)
        self.device = device = next(target.parameters()).device
        self.positions = []
        for b in batches:
            mask, tgt = supervised_positions(b["labels"].to(device))
            rows, cols = mask.nonzero(as_tuple=True)
            keep = b["attention_mask"].to(device).bool()
            self.positions.append((rows, cols, tgt[rows, cols], keep))
        n_sup = sum(len(p[0]) for p in self.positions)
        self._cache_aligned = aligned_logits_fit(n_sup, surgery.vocab_size(target), config)
        self._aligned: dict[int, Tensor] = {}

    def aligned(self, stage: int, i: int, h_tilde: Tensor) -> Tensor:
        """Aligned logits z~ of batch i: constant within a stage, so computed once and kept when
        all batches' z~ fit in ``max_cached_logits_bytes`` (else recomputed at each step)."""
        if i in self._aligned:
            return self._aligned[i]
        u = self.unembed
        with torch.no_grad():
            z = semantics.aligned_logits(h_tilde, u.norm, u.head.weight, u.cap, u.head.bias).float()
        if self._cache_aligned:
            self._aligned[i] = z
        return z

    def teacher_logits(self, i: int) -> Tensor:
        t = self.sup.teacher_at(i, self.device)
        if self.sup.teacher_kind == "logits":
            return t
        with torch.no_grad():
            return teacher_logits(self.source_unembed, t)

    def __call__(
        self, stage: int, i: int, weights: tuple[float, float] = (1.0, 1.0)
    ) -> tuple[Tensor, dict[str, float]]:
        """The loss of batch i, its layer term and output KL scaled by ``weights`` (the batch's
        shares of its step: :meth:`term_weights`; 1 for a whole batch, which leaves every value
        bit-identical)."""
        cfg = self.config
        h_in = self.inputs.hidden[i]
        h_out, h_sub = self._run_layer(stage - 1, h_in, i)
        layer_term, z = self._layer_term(stage, i, h_in, h_out, h_sub)
        parts = {"layer": weights[0] * layer_term}
        loss = cfg.layer_weight * parts["layer"]
        if cfg.kl_at(stage, self.n_layers):
            parts["kl"] = weights[1] * self._output_kl(stage, i, h_out, z)
            loss = loss + cfg.output_kl_weight * parts["kl"]
        return loss, {name: float(v.detach()) for name, v in parts.items()}

    def term_weights(self, batch_ids: Sequence[int]) -> list[tuple[float, float]]:
        """Per micro-batch of one step, the shares (layer term, output KL) that make the
        weighted sum of their losses the loss of the step's whole batch: each term is a mean
        over supervised positions, except v2's CKA, a mean over examples."""
        positions = [len(self.positions[i][0]) for i in batch_ids]
        examples = [len(self.positions[i][3]) for i in batch_ids]
        per_layer = examples if self.config.objective == "v2" else positions
        return [
            (n_layer / max(1, sum(per_layer)), n_pos / max(1, sum(positions)))
            for n_layer, n_pos in zip(per_layer, positions, strict=True)
        ]

    def step_loss(self, stage: int, batch_ids: Sequence[int]) -> float:
        """A step's loss on its batches without gradients (the stage's before/after measure)."""
        with torch.no_grad():
            weights = self.term_weights(batch_ids)
            return sum(float(self(stage, i, w)[0]) for i, w in zip(batch_ids, weights))

    def evaluate(self, stage: int, groups: Sequence[Sequence[int]]) -> float:
        """Mean step loss over ``groups`` (each one step's batches)."""
        return sum(self.step_loss(stage, ids) for ids in groups) / max(1, len(groups))

    def _run_layer(self, k0: int, h_in: Tensor, i: int) -> tuple[Tensor, Tensor | None]:
        """Layer k's output, and for v1 its MLP sublayer output (what it adds to the residual)."""
        if self.config.objective != "v1":
            return self.inputs.run_layer(k0, h_in, i), None
        with capture_hidden(self.target, layers=[k0], points=("mlp_out",), detach=False) as trace:
            h_out = self.inputs.run_layer(k0, h_in, i)
        return h_out, trace["mlp_out"][k0]

    def _layer_term(
        self, stage: int, i: int, h_in: Tensor, h_out: Tensor, h_sub: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """The layer loss and, when it reads the logit lens, those logits (reused by the KL)."""
        cfg = self.config
        rows, cols, labels, keep = self.positions[i]
        sup = self.sup.state(stage, i, self.device)
        if cfg.objective == "acl" and cfg.reading == "aligned_logits":
            z = self.unembed(h_out[rows, cols]).float()
            z_tilde = self.aligned(stage, i, sup[rows, cols])
            return semantics.fisher_quadratic_surrogate(z, z_tilde, cfg.tau), z
        if cfg.objective == "acl":  # reading "vds": cosine coefficients on both sides
            z_vds = semantics.vds_logits(h_out[rows, cols], self.bases_tgt)
            with torch.no_grad():
                a = semantics.decompose(sup[rows, cols], self.bases_src)
            return semantics.fisher_quadratic_surrogate(z_vds, a, cfg.tau), None
        if cfg.objective == "v2":
            return linear_cka_loss(h_out - h_in, sup, keep), None
        cos_state = F.cosine_similarity(h_sub[rows, cols].float(), sup[rows, cols], dim=-1, eps=EPS)
        z = self.unembed(h_out[rows, cols]).float()
        cos_label = z.gather(1, labels[:, None]).squeeze(1) / z.norm(dim=-1).clamp_min(EPS)
        return (1.0 - cos_state).mean() + (1.0 - cos_label).mean(), z

    def _output_kl(self, stage: int, i: int, h_out: Tensor, z: Tensor | None) -> Tensor:
        """KL(teacher ‖ target output); the layers after k run with gradients flowing through."""
        rows, cols, _, _ = self.positions[i]
        if self.config.kl_reuses_layer_logits(stage, self.n_layers):
            z_final = z  # the last layer's logit lens is the model's output
        else:
            h = h_out
            for kk in range(stage, self.n_layers):  # frozen layers after k
                h = self.inputs.run_layer(kk, h, i)
            z_final = self.unembed(h[rows, cols]).float()
        return self.output_term(self.teacher_logits(i), z_final)

    def output_term(self, teacher: Tensor, student: Tensor) -> Tensor:
        """The output loss between the teacher's and the target's logits at the same positions
        (a subclass across vocabularies replaces it)."""
        return semantics.output_kl(teacher, student, self.config.tau)
