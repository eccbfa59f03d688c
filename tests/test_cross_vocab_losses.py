"""Cross-vocabulary stage losses (issue 19, item 3): ULD and bridged KL against hand-computed
values; on tiny random models with the real Gemma-3 and SmolLM2 tokenizers, the layer and
output losses against an independent float64 computation on hand-aligned positions; through
the identity bridge, the same-vocabulary numbers."""

from __future__ import annotations

import math

import pytest
import torch

from semalign_core.errors import InvalidParameterError
from semalign_core.lm import semantics, surgery
from semalign_core.models.tiny import tiny_model
from semalign_core.semalign.crossvocab.cross_losses import (
    CROSS_OUTPUT_LOSSES,
    cross_layer_loss,
    cross_output_loss,
    uld_loss,
)
from semalign_core.semalign.crossvocab.token_alignment import (
    align_positions,
    batch_positions,
    encode_with_offsets,
)
from semalign_core.semalign.crossvocab.vocab_bridge import (
    VocabBridge,
    bridged_semantic_maps,
    build_bridge,
)
from semalign_core.semalign.supervision import map_states, semantic_maps

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["Hello world, naïve café", "x = 12345\n  y"]
# (Gemma position, SmolLM2 position) pairs read off the offsets (test_cross_vocab_alignment.py)
HAND_PAIRS = [
    [(1, 1), (2, 2), (3, 3), (4, 5), (5, 6)],
    [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 8), (11, 10)],
]
TAU = 2.0


@pytest.fixture(scope="module")
def tokenizers():
    from semalign_core.models.registry import load_tokenizer

    return load_tokenizer("gemma3-270m"), load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(autouse=True)
def bases_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_CACHE_DIR", str(tmp_path))  # pinv caches stay out of the repo
    semantics.clear_bases_cache()


def _logits_of(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


def test_uld_by_hand():
    teacher = _logits_of([[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]])
    student = _logits_of([[0.1, 0.6, 0.1, 0.2], [0.25, 0.25, 0.25, 0.25]])
    # sorted: [.5 .3 .2 0] vs [.6 .2 .1 .1] → 0.4;  [⅓ ⅓ ⅓ 0] vs [¼ ¼ ¼ ¼] → 3/12 + 1/4 = 0.5
    assert float(uld_loss(teacher, student)) == pytest.approx(0.45, abs=1e-6)
    # symmetric in which side has the larger vocabulary
    assert float(uld_loss(student, teacher)) == pytest.approx(0.45, abs=1e-6)


def test_bridged_kl_by_hand():
    bridge = VocabBridge(
        source_ids=torch.tensor([0, 1, 2]),
        target_ids=torch.tensor([1, 1, 0]),
        weights=torch.ones(3),
        source_size=4,
        target_size=3,
        mode="projection",
        n_exact=1,
    )
    teacher = _logits_of([[0.4, 0.2, 0.3, 0.1]])
    student = _logits_of([[0.2, 0.5, 0.3]])
    # bridged teacher (0.3, 0.6, 0) of mass 0.9 → (1/3, 2/3, 0)
    expected = (1 / 3) * math.log((1 / 3) / 0.2) + (2 / 3) * math.log((2 / 3) / 0.5)
    got = cross_output_loss("bridged_kl", teacher, student, bridge, tau=1.0)
    assert float(got) == pytest.approx(expected, abs=1e-6)
    # a position whose teacher mass the bridge cannot see does not enter the mean
    blind = torch.cat([teacher, torch.tensor([[-1e9, -1e9, -1e9, 0.0]], dtype=torch.float64)])
    both = cross_output_loss("bridged_kl", blind, student.expand(2, 3), bridge, tau=1.0)
    assert float(both) == pytest.approx(expected, abs=1e-6)
    assert bridge.mass_coverage(torch.softmax(blind, -1)) == pytest.approx((0.9 + 0.0) / 2)


def test_output_losses_are_selected_by_name():
    assert CROSS_OUTPUT_LOSSES == ("bridged_kl", "uld")
    z = torch.zeros(1, 3)
    with pytest.raises(InvalidParameterError, match="valid: bridged_kl, uld"):
        cross_output_loss("wasserstein", z, z, None)
    with pytest.raises(InvalidParameterError, match="bridge"):
        cross_output_loss("bridged_kl", z, z, None)
    with pytest.raises(InvalidParameterError):
        uld_loss(z, z, tau=0.0)


# --------------------------------------------------------------------------- tiny models


def _padded(encodings, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(e.ids) for e in encodings)
    ids = torch.full((len(encodings), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    return ids, mask


@pytest.fixture(scope="module")
def tiny_cross(tokenizers):
    """A 3-block width-48 source with Gemma's vocabulary, a 2-block width-32 target with
    SmolLM2's, both run on the same two texts."""
    gem, smol = tokenizers
    source = tiny_model("llama", seed=1, vocab_size=len(gem), hidden_size=48, num_layers=3)
    target = tiny_model("llama", seed=2, vocab_size=len(smol), hidden_size=32, num_layers=2)
    enc_s = [encode_with_offsets(gem, t) for t in TEXTS]
    enc_t = [encode_with_offsets(smol, t) for t in TEXTS]
    with torch.no_grad():
        ids, mask = _padded(enc_s, 0)
        out_s = source(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        ids, mask = _padded(enc_t, 0)
        out_t = target(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    alignments = [align_positions(a, b) for a, b in zip(enc_s, enc_t)]
    return source, target, out_s, out_t, alignments


def _unit_pinv_rows(head: torch.Tensor) -> torch.Tensor:
    s = torch.linalg.pinv(head.double().T)
    return s / s.norm(dim=-1, keepdim=True)


def _rms_norm(h: torch.Tensor, norm) -> torch.Tensor:
    return (
        h
        * torch.rsqrt(h.square().mean(-1, keepdim=True) + norm.variance_epsilon)
        * (norm.weight.double())
    )


@torch.no_grad()
def _reference_layer_loss(source, target, h_src, h_tgt, bridge) -> float:
    """Decompose each aligned source state on all source bases, carry the coefficients to the
    target vocabulary through the bridge's entries, recompose, read out, and take the Fisher
    quadratic form ½[Σ p̃ δ² − (Σ p̃ δ)²] with δ = (z − z̃)/τ; float64, one position at a time."""
    s_src, s_tgt = _unit_pinv_rows(source.lm_head.weight), _unit_pinv_rows(target.lm_head.weight)
    w_tgt, norm = target.lm_head.weight.double(), target.model.norm
    losses = []
    for b, pairs in enumerate(HAND_PAIRS):
        for ps, pt in pairs:
            x = h_src[b, ps].double()
            a = s_src @ (x / x.norm())
            c = torch.zeros(bridge.target_size, dtype=torch.float64)
            c.index_put_((bridge.target_ids,), a[bridge.source_ids], accumulate=True)
            z_tilde = w_tgt @ _rms_norm(s_tgt.T @ c, norm)
            z = w_tgt @ _rms_norm(h_tgt[b, pt].double(), norm)
            p = torch.softmax(z_tilde / TAU, -1)
            delta = (z - z_tilde) / TAU
            losses.append(0.5 * ((p * delta**2).sum() - (p * delta).sum() ** 2))
    return float(torch.stack(losses).mean())


@torch.no_grad()
def _reference_outputs(z_src, z_tgt, bridge) -> tuple[float, float]:
    """(bridged KL · τ², ULD) over the hand-aligned positions, float64."""
    kls, ulds = [], []
    for b, pairs in enumerate(HAND_PAIRS):
        for ps, pt in pairs:
            p = torch.softmax(z_src[b, ps].double() / TAU, -1)
            log_q = torch.log_softmax(z_tgt[b, pt].double() / TAU, -1)
            bridged = torch.zeros(bridge.target_size, dtype=torch.float64)
            bridged.index_put_((bridge.target_ids,), p[bridge.source_ids], accumulate=True)
            p_hat = bridged / bridged.sum()
            on = p_hat > 0
            kls.append((p_hat[on] * (p_hat[on].log() - log_q[on])).sum() * TAU**2)
            q = log_q.exp()
            p_sorted = torch.sort(p, descending=True).values
            q_sorted = torch.cat(
                [torch.sort(q, descending=True).values, q.new_zeros(len(p) - len(q))]
            )
            ulds.append((p_sorted - q_sorted).abs().sum())
    return float(torch.stack(kls).mean()), float(torch.stack(ulds).mean())


def test_tiny_models_alignment_is_the_hand_one(tiny_cross):
    *_, alignments = tiny_cross
    assert [a.pairs for a in alignments] == HAND_PAIRS


@pytest.mark.parametrize("mode", ["exact", "projection"])
def test_cross_family_losses_equal_an_independent_computation(tokenizers, tiny_cross, mode):
    source, target, out_s, out_t, alignments = tiny_cross
    bridge = build_bridge(*tokenizers, mode)
    positions = batch_positions(alignments)
    rows, src_cols, tgt_cols = positions
    h_src, h_tgt = out_s.hidden_states[2], out_t.hidden_states[1]  # blocks 2 and 1: not normed
    _, _, m = bridged_semantic_maps(source, target, bridge)
    layer = cross_layer_loss(h_tgt, h_src, positions, m, surgery.Unembed(target), tau=TAU)
    assert float(layer.detach()) == pytest.approx(
        _reference_layer_loss(source, target, h_src, h_tgt, bridge), rel=1e-4
    )
    z_src, z_tgt = out_s.logits[rows, src_cols], out_t.logits[rows, tgt_cols]
    kl_ref, uld_ref = _reference_outputs(out_s.logits, out_t.logits, bridge)
    kl = cross_output_loss("bridged_kl", z_src, z_tgt, bridge, tau=TAU)
    assert float(kl) == pytest.approx(kl_ref, rel=1e-4)
    assert float(cross_output_loss("uld", z_src, z_tgt, None, tau=TAU)) == pytest.approx(
        uld_ref, rel=1e-4
    )


def test_identity_bridge_gives_the_same_family_numbers(tokenizers):
    """One vocabulary on both sides: the cross losses through the identity bridge and the
    boundary alignment (every text position) equal the same-vocabulary SemAlign terms."""
    _, smol = tokenizers
    source = tiny_model("llama", seed=3, vocab_size=len(smol), hidden_size=48, num_layers=2)
    target = tiny_model("llama", seed=4, vocab_size=len(smol), hidden_size=32, num_layers=2)
    enc = encode_with_offsets(smol, TEXTS[0])
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        out_s = source(input_ids=ids, output_hidden_states=True)
        out_t = target(input_ids=ids, output_hidden_states=True)
    al = align_positions(enc, enc)
    assert al.pairs == [(k, k) for k in range(1, len(enc.ids))]  # all but the BOS
    positions = batch_positions([al])
    rows, cols, _ = positions
    bridge = build_bridge(smol, smol, "exact")
    h_src, h_tgt = out_s.hidden_states[1], out_t.hidden_states[1]
    u = surgery.Unembed(target)
    _, _, m_bridged = bridged_semantic_maps(source, target, bridge)
    cross = cross_layer_loss(h_tgt, h_src, positions, m_bridged, u, tau=TAU)
    _, _, m = semantic_maps(source, target)
    z_tilde = semantics.aligned_logits(
        map_states(h_src[rows, cols], m, "none"), u.norm, u.head.weight, u.cap, u.head.bias
    )
    same = semantics.fisher_quadratic_surrogate(u(h_tgt[rows, cols]).float(), z_tilde, TAU)
    assert float(cross.detach()) == pytest.approx(float(same.detach()), abs=1e-6)
    z_s, z_t = out_s.logits[rows, cols], out_t.logits[rows, cols]
    kl = cross_output_loss("bridged_kl", z_s, z_t, bridge, tau=TAU)
    assert float(kl) == pytest.approx(float(semantics.output_kl(z_s, z_t, TAU)), abs=1e-6)
