"""The decompositions of ``SemAlignConfig.decomposition`` (issue 13, item 9), each checked against
an independent computation written here in float64:

* cosine (the paper's, the default): ``M = S_srcᵀ S_tgt``, unchanged from the implementation the
  existing records were made with;
* dual: coefficients ``a = pinv(S_srcᵀ) x`` (explicit pinv / minimum-norm least squares),
  recombined as ``S_tgtᵀ a``; a model mapped onto itself gets back x = h/‖h‖;
* gain_folded: bases of ``W diag(g)``; folding the final-norm gain into the head (same model
  function) leaves the supervision and the aligned logits unchanged, the cosine one's not.
"""

from __future__ import annotations

import copy
from dataclasses import asdict

import pytest
import torch
from torch import nn

from semalign_core.errors import InvalidParameterError
from semalign_core.lm import semantics, surgery
from semalign_core.models.tiny import tiny_model
from semalign_core.semalign.attribution import pair_layers
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.supervision import (
    composite_map,
    decomposition_bases,
    map_states,
    semantic_maps,
    source_supervision,
)

pytestmark = pytest.mark.usefixtures("one_thread")

GEMMA_STYLE = ("gemma2",)  # final norm multiplies by (1 + weight)
ARCHS = ("llama", "gemma2", "gpt2")  # RMSNorm, Gemma's offset RMSNorm, LayerNorm with bias


@pytest.fixture(autouse=True)
def private_bases_cache(tmp_path, monkeypatch):
    """Bases cached on disk go to a temporary folder; the in-process cache starts empty."""
    monkeypatch.setenv("SEMALIGN_CACHE_DIR", str(tmp_path))
    semantics.clear_bases_cache()
    yield
    semantics.clear_bases_cache()


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def unit_rows(m: torch.Tensor) -> torch.Tensor:
    return m / m.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- dual


def test_dual_reconstructs_the_direction_when_source_is_target():
    head = randn(400, 24, seed=1).float()
    bases = semantics.semantic_bases(head, disk_cache=False)  # fp32, as a run uses them
    h = 5 * randn(50, 24, seed=2).float()
    x = h / h.norm(dim=-1, keepdim=True)
    dual = map_states(h, composite_map(bases, bases, "dual"), "none")
    assert float((dual - x).abs().max()) < 1e-6
    cosine = map_states(h, composite_map(bases, bases), "none")
    assert float(torch.cosine_similarity(cosine, x, dim=-1).min()) < 0.999  # not trivially so


@pytest.mark.parametrize("n_vocab", [300, 10], ids=["full-rank", "rank-deficient"])
def test_dual_map_equals_explicit_pinv_coefficients(n_vocab):
    s_src, s_tgt = unit_rows(randn(n_vocab, 24, seed=3)), unit_rows(randn(n_vocab, 16, seed=4))
    x = unit_rows(randn(7, 24, seed=5))
    a = torch.linalg.pinv(s_src.T) @ x.T  # (V, 7): the dual coefficients, one column per state
    expected = (s_tgt.T @ a).T
    if n_vocab > 24:  # full rank: the exact, minimum-norm solution of S_srcᵀ a = x
        lstsq = torch.linalg.lstsq(s_src.T, x.T, driver="gelsd").solution
        torch.testing.assert_close(lstsq, a, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(s_src.T @ a, x.T, rtol=1e-8, atol=1e-10)
    got = x @ semantics.dual_map(s_src, s_tgt, chunk_size=37).double()  # chunks that do not divide
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    from_fp32 = x @ composite_map(s_src.float(), s_tgt.float(), "dual").double()
    torch.testing.assert_close(from_fp32, expected, rtol=1e-4, atol=1e-5)


def test_dual_map_uses_only_the_shared_vocabulary():
    s_src, s_tgt = unit_rows(randn(120, 12, seed=6)), unit_rows(randn(121, 8, seed=7))
    x = unit_rows(randn(3, 12, seed=8))
    a = torch.linalg.pinv(s_src[:100].T) @ x.T
    expected = (s_tgt[:100].T @ a).T
    got = x @ semantics.dual_map(s_src, s_tgt, vocab_limit=100).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- cosine (default)


def test_cosine_map_is_the_existing_implementation():
    s_src = semantics.semantic_bases(randn(500, 16, seed=9).float(), disk_cache=False)
    s_tgt = semantics.semantic_bases(randn(500, 12, seed=10).float(), disk_cache=False)
    # composite_map as it was before the decompositions existed, verbatim
    before = semantics.transfer_state(torch.eye(16), s_src, s_tgt)
    assert torch.equal(composite_map(s_src, s_tgt), before)
    assert torch.equal(composite_map(s_src, s_tgt, "cosine"), before)
    assert torch.equal(composite_map(s_src, s_tgt, "gain_folded"), before)  # only its bases differ
    expected = s_src.double().T @ s_tgt.double()
    torch.testing.assert_close(before.double(), expected, rtol=1e-4, atol=1e-5)  # fp32 sums


# --------------------------------------------------------------------------- gain_folded


def norm_gain(model: nn.Module) -> torch.Tensor:
    """The final norm's gain, written out per family (not through semantics.final_norm_gain)."""
    weight = surgery.final_norm(model).weight.detach().double()
    return 1.0 + weight if surgery.architecture(model) in GEMMA_STYLE else weight


def with_random_gain(model: nn.Module, seed: int) -> nn.Module:
    """Final-norm gains in [0.5, 1.5]: the tiny models' are all ones, which folding leaves alone."""
    weight = surgery.final_norm(model).weight
    gain = 0.5 + torch.rand(weight.shape, generator=torch.Generator().manual_seed(seed))
    offset = 1.0 if surgery.architecture(model) in GEMMA_STYLE else 0.0
    with torch.no_grad():
        weight.copy_(gain - offset)
    return model


def folded(model: nn.Module) -> nn.Module:
    """The same function with the final-norm gain g moved into the head: W ← W diag(g), norm gain
    ← 1, and a LayerNorm bias b ← b/g (W(g⊙n + b) = W diag(g)(n + b/g))."""
    out = copy.deepcopy(model)
    norm, head = surgery.final_norm(out), surgery.unembedding(out)
    g = norm_gain(out).float()
    with torch.no_grad():
        head.weight.mul_(g)
        norm.weight.fill_(0.0 if surgery.architecture(out) in GEMMA_STYLE else 1.0)
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(g)
    return out


def tiny_pair(arch: str) -> tuple[nn.Module, nn.Module]:
    """Untied heads (folding a gain into a tied head would change the input embedding too)."""
    src = tiny_model(arch, num_layers=2, seed=11, tie_word_embeddings=False)
    tgt = tiny_model(arch, num_layers=2, seed=12, hidden_size=32, tie_word_embeddings=False)
    return with_random_gain(src, 13), with_random_gain(tgt, 14)


def batch(vocab: int = 128) -> dict:
    ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(15))
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def supervision_states(src: nn.Module, tgt: nn.Module, decomposition: str) -> torch.Tensor:
    """The recomposed supervision states of both target layers (floor pairing 2 → 2)."""
    config = SemAlignConfig(decomposition=decomposition, progress=False)
    m = semantic_maps(src, tgt, decomposition)[2]
    pairing = pair_layers(None, 2, "floor", n_source=2)
    sup = source_supervision(src, [batch()], pairing, config, m, need_teacher=False)
    return torch.cat([sup.states[j][0] for j in sorted(sup.states)])


@pytest.mark.parametrize("arch", ARCHS)
def test_gain_folded_bases_are_the_pinv_of_the_gain_folded_head(arch):
    src, _ = tiny_pair(arch)
    head = surgery.unembedding(src).weight.detach().double()
    expected = unit_rows(torch.linalg.pinv((head * norm_gain(src)).T))
    torch.testing.assert_close(
        decomposition_bases(src, "gain_folded").double(), expected, rtol=1e-4, atol=1e-5
    )
    assert torch.equal(
        decomposition_bases(src, "cosine"),
        semantics.semantic_bases(surgery.unembedding(src).weight),
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_gain_folded_supervision_is_unchanged_by_folding_the_gain(arch):
    src, tgt = tiny_pair(arch)
    src_f, tgt_f = folded(src), folded(tgt)
    ids = batch()["input_ids"]
    with torch.no_grad():  # folding keeps the function
        torch.testing.assert_close(src_f(input_ids=ids).logits, src(input_ids=ids).logits)
    same = supervision_states(src, tgt, "gain_folded")
    torch.testing.assert_close(
        supervision_states(src_f, tgt_f, "gain_folded"), same, rtol=1e-5, atol=1e-5
    )
    # target side of the aligned-logits reading: the target's own norm and head, folded or not
    z_tilde = surgery.Unembed(tgt)(same)
    torch.testing.assert_close(surgery.Unembed(tgt_f)(same), z_tilde, rtol=1e-5, atol=1e-5)
    # the paper's cosine decomposition reads the head alone, so folding moves its supervision
    cosine, cosine_f = (
        supervision_states(src, tgt, "cosine"),
        supervision_states(src_f, tgt_f, "cosine"),
    )
    assert float((cosine_f - cosine).norm() / cosine.norm()) > 1e-2


# --------------------------------------------------------------------------- config


def test_config_validates_decomposition_and_keeps_the_default_out_of_identity():
    with pytest.raises(InvalidParameterError, match="decomposition must be one of"):
        SemAlignConfig(decomposition="pinv")
    with pytest.raises(InvalidParameterError, match="reading='aligned_logits'"):
        SemAlignConfig(decomposition="dual", reading="vds")
    SemAlignConfig(decomposition="dual", reading="vds", objective="v2")  # no coefficients read
    SemAlignConfig(decomposition="gain_folded", reading="vds")  # cosine coefficients, other bases
    default = SemAlignConfig()
    before = {k: v for k, v in asdict(default).items() if k not in ("checkpoint_dir", "progress")}
    # the identity of every record made before these fields existed (micro-batches and
    # attribution passes as large as the batch)
    for field in ("decomposition", "micro_batch_size", "attribution_batch_size"):
        before.pop(field)
    assert default.identity() == before
    for option in ("dual", "gain_folded"):
        assert SemAlignConfig(decomposition=option).identity() == {
            **before,
            "decomposition": option,
        }
