"""Semantic bases, decomposition/recomposition, aligned logits and the SemAlign losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from semalign_core.errors import IncompatibleModelsError, InvalidParameterError
from semalign_core.lm import semantics as sem


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


@pytest.fixture(autouse=True)
def _fresh_lru():
    sem.clear_bases_cache()
    yield
    sem.clear_bases_cache()


# --------------------------------------------------------------------------- bases


def test_bases_are_unit_rows_of_pinv_of_WT(tmp_path):
    W = randn(300, 24, seed=1, dtype=torch.float32)
    S = sem.semantic_bases(W, cache_dir=tmp_path)
    ref = torch.linalg.pinv(W.T)
    ref = ref / ref.norm(dim=-1, keepdim=True)
    assert S.shape == (300, 24) and S.dtype == torch.float32
    torch.testing.assert_close(S, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(S.norm(dim=-1), torch.ones(300), rtol=1e-5, atol=1e-5)
    raw = sem.semantic_bases(W, cache_dir=tmp_path, normalize=False)
    # dual frame: S_rawᵀ W = I_d, so h = S_rawᵀ (W h) for every h
    torch.testing.assert_close(raw.T @ W, torch.eye(24), rtol=1e-4, atol=1e-4)


def test_bases_disk_cache_is_keyed_by_content(tmp_path):
    W = randn(50, 8, seed=2, dtype=torch.float32)
    S1 = sem.semantic_bases(W, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    sem.clear_bases_cache()
    torch.testing.assert_close(sem.semantic_bases(W, cache_dir=tmp_path), S1)  # from disk
    W2 = W.clone()
    W2[0, 0] += 1.0  # a changed head must not reuse the stale file
    S2 = sem.semantic_bases(W2, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    torch.testing.assert_close(S2, sem.semantic_bases(W2, disk_cache=False))
    assert not torch.allclose(S1, S2)
    # bf16 weights hash and compute fine (fp32 result)
    assert sem.semantic_bases(W.to(torch.bfloat16), cache_dir=tmp_path).dtype == torch.float32


def test_input_side_bases_unit_rows():
    E = randn(20, 6, seed=3)
    B = sem.input_side_bases(E)
    torch.testing.assert_close(B.norm(dim=-1), torch.ones(20))
    torch.testing.assert_close(B.double(), E / E.norm(dim=-1, keepdim=True), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- decompose / recompose


def tight_frame(m, d, seed=0):
    """m stacked random orthogonal d x d blocks: unit rows and WᵀW = m·I (a tight frame)."""
    blocks = [torch.linalg.qr(randn(d, d, seed=seed + i))[0] for i in range(m)]
    return torch.cat(blocks)


def test_recompose_with_identical_heads_returns_direction_tight_frame():
    # For a tight frame pinv(Wᵀ) = W/m, unit rows = W, SᵀS = m·I: Sᵀ(S h/|h|) = m h/|h| exactly.
    W = tight_frame(4, 16)
    S = sem.semantic_bases(W, disk_cache=False).double()
    h = randn(5, 16, seed=9)
    h_tilde = sem.transfer_state(h, S, S)
    torch.testing.assert_close(
        F.cosine_similarity(h_tilde, h, dim=-1), torch.ones(5, dtype=torch.float64)
    )
    torch.testing.assert_close(h_tilde, 4 * h / h.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-5)


def test_recompose_with_identical_heads_random_full_rank_head():
    # V ≫ d Gaussian head: unit bases are near-isotropic, SᵀS ≈ (V/d)·I, cosine ≈ 1 − O(d/V).
    W = randn(2048, 16, seed=4, dtype=torch.float32)
    S = sem.semantic_bases(W, disk_cache=False)
    h = randn(8, 16, seed=5, dtype=torch.float32)
    cos = sem.decomposition_fidelity(h, S)
    assert cos.shape == (8,)
    assert cos.min() > 0.97


def test_chunked_equals_unchunked():
    Ss, St = sem._unit_rows(randn(1000, 12, seed=6)), sem._unit_rows(randn(1000, 20, seed=7))
    h = randn(2, 3, 12, seed=8)
    full = (h / h.norm(dim=-1, keepdim=True)) @ Ss.T @ St
    for chunk in (1000, 4096, 333, 7):
        torch.testing.assert_close(sem.transfer_state(h, Ss, St, chunk_size=chunk), full)
        a = sem.decompose(h, Ss, chunk_size=chunk)
        assert a.shape == (2, 3, 1000)
        torch.testing.assert_close(a, sem.decompose(h, Ss, chunk_size=10_000))
        torch.testing.assert_close(sem.recompose(a, St, chunk_size=chunk), full)
    torch.testing.assert_close(sem.vds_logits(h, Ss), a)
    # coefficients are cosines
    assert a.abs().max() <= 1 + 1e-12


def test_transfer_state_rescale_and_zero_state():
    Ss, St = sem._unit_rows(randn(200, 8, seed=10)), sem._unit_rows(randn(200, 6, seed=11))
    h = randn(4, 8, seed=12) * 7
    raw = sem.transfer_state(h, Ss, St)
    src = sem.transfer_state(h, Ss, St, rescale="source_norm")
    torch.testing.assert_close(src.norm(dim=-1), h.norm(dim=-1))
    torch.testing.assert_close(
        F.cosine_similarity(src, raw, dim=-1), torch.ones(4, dtype=torch.float64)
    )
    norms = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(
        sem.transfer_state(h, Ss, St, rescale="target_norm", target_norm=norms).norm(dim=-1), norms
    )
    torch.testing.assert_close(
        sem.transfer_state(h, Ss, St, rescale="target_norm", target_norm=2.5).norm(dim=-1),
        torch.full((4,), 2.5, dtype=torch.float64),
    )
    assert torch.equal(
        sem.transfer_state(torch.zeros(1, 8, dtype=torch.float64), Ss, St),
        torch.zeros(1, 6, dtype=torch.float64),
    )
    with pytest.raises(InvalidParameterError):
        sem.transfer_state(h, Ss, St, rescale="target_norm")
    with pytest.raises(InvalidParameterError):
        sem.transfer_state(h, Ss, St, rescale="bogus")


def test_vocab_mismatch_and_vocab_limit():
    Ss, St = sem._unit_rows(randn(101, 8, seed=13)), sem._unit_rows(randn(100, 6, seed=14))
    h = randn(3, 8, seed=15)
    with pytest.raises(IncompatibleModelsError) as err:
        sem.transfer_state(h, Ss, St)
    msg = str(err.value)
    assert "101" in msg and "100" in msg and "\n" not in msg
    out = sem.transfer_state(h, Ss, St, vocab_limit=100)
    torch.testing.assert_close(out, sem.transfer_state(h, Ss[:100], St))
    with pytest.raises(IncompatibleModelsError):
        sem.transfer_state(h, Ss, St, vocab_limit=101)


def test_fidelity_output_side_high_input_side_low():
    # Fig. 2 analogue. Rows of a head that share one dominant direction μ (the anisotropy seen in
    # real embedding matrices) plus small isotropic noise. Input-side bases = those rows (tied
    # embeddings): EᵀE ≈ V·|μ|²·μ̂μ̂ᵀ, so E ᵀE h points along μ and its cosine with a generic h is
    # ≈ |cos(h, μ)| ~ 1/√d. Output-side bases pinv(Wᵀ) = W(WᵀW)⁻¹ whiten the head: the μ direction
    # is divided by its large eigenvalue, the rows become near-isotropic, and the fidelity is high.
    d, V = 64, 4096
    mu = randn(d, seed=16)
    mu = mu / mu.norm()
    W = 5 * mu + 0.3 * randn(V, d, seed=17) / math.sqrt(d)
    h = randn(32, d, seed=18)
    out_side = sem.decomposition_fidelity(
        h, sem.semantic_bases(W, disk_cache=False).double()
    ).mean()
    in_side = sem.decomposition_fidelity(h, sem.input_side_bases(W).double()).mean()
    assert out_side > 0.95
    assert in_side < 0.3


def test_fidelity_low_when_bases_do_not_span_the_space():
    # V < d random bases span only a V-dim subspace: the reconstruction keeps h's projection on
    # it, cosine ≈ √(V/d) = 0.125 here.
    E = randn(8, 512, seed=19)
    h = randn(64, 512, seed=20)
    cos = sem.decomposition_fidelity(h, sem.input_side_bases(E).double()).mean()
    assert cos < 0.3


# --------------------------------------------------------------------------- logits


def test_aligned_logits_through_norm_and_head():
    W = randn(30, 8, seed=21, dtype=torch.float32)
    norm = torch.nn.LayerNorm(8, dtype=torch.float32)
    h = randn(2, 8, seed=22, dtype=torch.float32)
    torch.testing.assert_close(sem.aligned_logits(h, norm, W), norm(h) @ W.T)
    torch.testing.assert_close(sem.aligned_logits(h, None, W), h @ W.T)
    capped = sem.aligned_logits(h * 100, None, W, softcap=5.0)
    assert capped.abs().max() <= 5.0
    torch.testing.assert_close(capped, 5.0 * torch.tanh((h * 100) @ W.T / 5.0))


# --------------------------------------------------------------------------- losses


def kl_tempered(z, p_tilde, tau):
    log_q = torch.log_softmax(z / tau, dim=-1)
    return (p_tilde * (p_tilde.log() - log_q)).sum()


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_surrogate_is_second_order_expansion_of_kl(tau):
    V = 7
    z_tilde = randn(V, seed=23)
    delta = randn(V, seed=24)
    p_tilde = torch.softmax(z_tilde / tau, dim=-1)
    H = torch.autograd.functional.hessian(lambda z: kl_tempered(z, p_tilde, tau), z_tilde)
    expected = 0.5 * delta @ H @ delta
    got = sem.fisher_quadratic_surrogate(z_tilde + delta, z_tilde, tau=tau)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # the spec's literal formula (δ = z − z~ unscaled) is the τ²-scaled variant
    lit = sem.fisher_quadratic_surrogate(z_tilde + delta, z_tilde, tau=tau, tau_squared=True)
    dp = (p_tilde * delta).sum()
    torch.testing.assert_close(
        lit, 0.5 * ((p_tilde * delta**2).sum() - dp**2), rtol=1e-9, atol=1e-12
    )


def test_surrogate_approaches_kl_for_small_delta():
    V = 50
    z_tilde = randn(V, seed=25)
    direction = randn(V, seed=26)
    p_tilde = torch.softmax(z_tilde, dim=-1)
    for eps in (1e-1, 1e-2, 1e-3):
        kl = kl_tempered(z_tilde + eps * direction, p_tilde, 1.0)
        sur = sem.fisher_quadratic_surrogate(z_tilde + eps * direction, z_tilde)
        assert abs(sur - kl) / kl < 3 * eps  # error is third order: relative error O(eps)


def test_surrogate_mask_grad_and_shape_invariance():
    z_tilde = randn(2, 3, 11, seed=27)
    z = randn(2, 3, 11, seed=28).requires_grad_()
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]])
    loss = sem.fisher_quadratic_surrogate(z, z_tilde, mask=mask)
    per = [
        sem.fisher_quadratic_surrogate(z[b, t], z_tilde[b, t]) for b, t in [(0, 0), (0, 1), (1, 1)]
    ]
    torch.testing.assert_close(loss, torch.stack(per).mean())
    loss.backward()
    assert z.grad[0, 2].abs().max() == 0 and z.grad[0, 0].abs().max() > 0
    # invariant to adding a constant to all logits of a position (softmax shift invariance)
    torch.testing.assert_close(
        sem.fisher_quadratic_surrogate(z + 3.0, z_tilde), sem.fisher_quadratic_surrogate(z, z_tilde)
    )
    assert sem.fisher_quadratic_surrogate(z_tilde, z_tilde) == 0


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_output_kl_matches_torch_kl_div(tau):
    t, s = randn(2, 4, 9, seed=29), randn(2, 4, 9, seed=30)
    ref = F.kl_div(
        torch.log_softmax(s / tau, -1).reshape(-1, 9),
        torch.log_softmax(t / tau, -1).reshape(-1, 9),
        log_target=True,
        reduction="batchmean",
    )
    torch.testing.assert_close(sem.output_kl(t, s, tau=tau), ref * tau**2)
    torch.testing.assert_close(sem.output_kl(t, s, tau=tau, tau_squared=False), ref)
    mask = torch.zeros(2, 4)
    mask[0, 1] = mask[1, 3] = 1
    ref_m = F.kl_div(
        torch.log_softmax(s[mask.bool()] / tau, -1),
        torch.log_softmax(t[mask.bool()] / tau, -1),
        log_target=True,
        reduction="batchmean",
    )
    torch.testing.assert_close(sem.output_kl(t, s, tau=tau, mask=mask, tau_squared=False), ref_m)


def test_output_kl_vocab_mismatch():
    t, s = randn(3, 10, seed=31), randn(3, 9, seed=32)
    with pytest.raises(IncompatibleModelsError, match="10.*9"):
        sem.output_kl(t, s)
    torch.testing.assert_close(sem.output_kl(t, s, vocab_limit=9), sem.output_kl(t[:, :9], s))
