"""Stage losses between models with different vocabularies, on aligned positions (issue 19,
item 3): the output term (bridged KL or ULD, selectable by name) and the ACL layer term.

    rows, src_cols, tgt_cols = token_alignment.batch_positions(alignments)
    kl = cross_output_loss("bridged_kl", teacher_logits[rows, src_cols],
                           student_logits[rows, tgt_cols], bridge, tau)
    layer = cross_layer_loss(h_target, h_source, (rows, src_cols, tgt_cols), m, Unembed(target))

``m`` is the composite map through the bridge (``vocab_bridge.bridged_semantic_maps``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from semalign_core.errors import InvalidParameterError
from semalign_core.lm import semantics, surgery
from semalign_core.semalign.crossvocab.vocab_bridge import VocabBridge
from semalign_core.semalign.supervision import EPS, map_states

CROSS_OUTPUT_LOSSES = ("bridged_kl", "uld")


def _check_tau(tau: float) -> None:
    if tau <= 0:
        raise InvalidParameterError(f"tau must be positive, got {tau}")


def bridged_kl(
    teacher_logits: Tensor,
    student_logits: Tensor,
    bridge: VocabBridge,
    tau: float = 1.0,
    tau_squared: bool = True,
) -> Tensor:
    """Mean over the positions the bridge sees of :func:`bridged_kl_terms`."""
    values, seen = bridged_kl_terms(teacher_logits, student_logits, bridge, tau, tau_squared)
    return values[seen].sum() / seen.sum().clamp_min(1)


def bridged_kl_terms(
    teacher_logits: Tensor,
    student_logits: Tensor,
    bridge: VocabBridge,
    tau: float = 1.0,
    tau_squared: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per position (n,): KL(p̂ ‖ softmax(z_student/τ)) with p̂ the teacher's tempered
    distribution carried to the student's vocabulary by the bridge and renormalised over the
    mass the bridge covers.

    Renormalised because the student's distribution sums to one: comparing it with a
    sub-stochastic p̂ would reward putting mass on tokens the bridge cannot see. A position whose
    covered mass is zero carries no signal and is left out of the mean (the covered mass is
    reported separately by ``VocabBridge.mass_coverage``). τ² as in ``semantics.output_kl``.
    Inputs: logits (n, V_teacher) and (n, V_student) at aligned positions; fp32. Returns the
    values and whether the bridge saw any teacher mass at each position.
    """
    _check_tau(tau)
    p = torch.softmax(teacher_logits.detach().float() / tau, dim=-1)
    q_bridged = bridge.map_probs(p)
    mass = q_bridged.sum(-1, keepdim=True)
    p_hat = q_bridged / mass.clamp_min(EPS)
    log_q = torch.log_softmax(student_logits.float() / tau, dim=-1)
    # xlogy: tokens the bridge gives no mass contribute 0, not 0·log 0 = nan
    per_position = (torch.special.xlogy(p_hat, p_hat) - p_hat * log_q).sum(-1)
    seen = mass.squeeze(-1) > 0
    return (per_position * tau**2 if tau_squared else per_position), seen


def uld_loss(teacher_logits: Tensor, student_logits: Tensor, tau: float = 1.0) -> Tensor:
    """Mean over positions of :func:`uld_terms`."""
    return uld_terms(teacher_logits, student_logits, tau).mean()


def uld_terms(teacher_logits: Tensor, student_logits: Tensor, tau: float = 1.0) -> Tensor:
    """Universal Logit Distillation (Boizard et al., arXiv 2402.12030), per position (n,).

    Both tempered distributions sorted in decreasing order, the shorter vocabulary padded with
    zeros, and the L1 distance between the sorted vectors: the closed-form Wasserstein distance
    for a cost that is uniform between distinct ranks, which needs no map between vocabularies.
    """
    _check_tau(tau)
    p = torch.softmax(teacher_logits.detach().float() / tau, dim=-1).sort(-1, descending=True)[0]
    q = torch.softmax(student_logits.float() / tau, dim=-1).sort(-1, descending=True)[0]
    width = max(p.shape[-1], q.shape[-1])
    p, q = F.pad(p, (0, width - p.shape[-1])), F.pad(q, (0, width - q.shape[-1]))
    return (p - q).abs().sum(-1)


def cross_output_loss(
    name: str,
    teacher_logits: Tensor,
    student_logits: Tensor,
    bridge: VocabBridge | None,
    tau: float = 1.0,
) -> Tensor:
    """The output term named ``name`` (``CROSS_OUTPUT_LOSSES``) on aligned positions' logits,
    the mean of :func:`cross_output_terms` over the positions it keeps."""
    values, kept = cross_output_terms(name, teacher_logits, student_logits, bridge, tau)
    return values[kept].sum() / kept.sum().clamp_min(1)


def cross_output_terms(
    name: str,
    teacher_logits: Tensor,
    student_logits: Tensor,
    bridge: VocabBridge | None,
    tau: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per position (n,): the output term named ``name`` and whether the position counts (the
    bridged KL leaves out positions whose teacher mass the bridge cannot see); ``bridge`` is
    needed by "bridged_kl" only."""
    if name == "bridged_kl":
        if bridge is None:
            raise InvalidParameterError("output loss 'bridged_kl' needs a vocabulary bridge")
        return bridged_kl_terms(teacher_logits, student_logits, bridge, tau)
    if name == "uld":
        values = uld_terms(teacher_logits, student_logits, tau)
        return values, torch.ones_like(values, dtype=torch.bool)
    raise InvalidParameterError(
        f"unknown cross-vocabulary output loss {name!r}; valid: {', '.join(CROSS_OUTPUT_LOSSES)}"
    )


def cross_layer_loss(
    target_states: Tensor,
    source_states: Tensor,
    positions: tuple[Tensor, Tensor, Tensor],
    m: Tensor,
    target_unembed: surgery.Unembed,
    tau: float = 1.0,
    rescale: str = "none",
) -> Tensor:
    """The ACL layer term (``StageLoss``, reading "aligned_logits") on aligned positions.

    ``target_states`` (B, T_t, d_t) and ``source_states`` (B, T_s, d_s) of one paired layer;
    ``positions`` = (rows, source columns, target columns) of the aligned pairs. The source state
    at each pair is recomposed in the target's space through the bridged map ``m``, read out by
    the target's final norm and head (z̃, no gradient), and the target's logit lens z there is
    fitted with the Fisher-weighted quadratic surrogate of KL(softmax(z̃/τ) ‖ softmax(z/τ)).
    """
    rows, src_cols, tgt_cols = (p.to(target_states.device) for p in positions)
    u = target_unembed
    with torch.no_grad():
        h_tilde = map_states(source_states[rows, src_cols], m, rescale)
        z_tilde = semantics.aligned_logits(h_tilde, u.norm, u.head.weight, u.cap, u.head.bias)
    z = u(target_states[rows, tgt_cols]).float()
    return semantics.fisher_quadratic_surrogate(z, z_tilde.float(), tau)
