"""Seeking (PostPKT) on the smoke models: block search, SVD → LoRA init, injection, training."""

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from semalign_core.baselines import seeking
from semalign_core.baselines.seeking import (
    SeekingConfig,
    best_block,
    block_sums,
    extract_block,
    lora_factors,
)
from semalign_core.errors import IncompatibleModelsError, InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.models.tiny import tiny_model

BASE = SeekingConfig(
    epochs=1, batch_size=2, micro_batch_size=2, lr=1e-3, max_length=40, progress=False
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tiny_transfer_pair):
    return tiny_transfer_pair(n_train=4)


def logits(model, tok, text="Question: 2 + 3 = ?\nAnswer: 5"):
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


# --------------------------------------------------------------------------- block search


@pytest.mark.parametrize(
    "shape,block",
    [
        ((5, 7), (2, 3)),
        ((6, 6), (6, 6)),
        ((9, 4), (1, 1)),
        ((3, 11), (3, 2)),
        ((8, 5), (7, 1)),
        ((1, 9), (1, 4)),
    ],
)
def test_summed_area_search_matches_brute_force(shape, block):
    g = torch.Generator().manual_seed(sum(shape) + sum(block))
    s = torch.rand(*shape, generator=g)
    sums = block_sums(s, *block)
    rows, cols = block
    brute = torch.tensor(
        [
            [
                float(s[a : a + rows, b : b + cols].double().sum())
                for b in range(shape[1] - cols + 1)
            ]
            for a in range(shape[0] - rows + 1)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(sums, brute)
    flat = int(torch.argmax(brute))
    assert best_block(s, *block) == (flat // brute.shape[1], flat % brute.shape[1])


def test_extract_block_pads_a_too_wide_target_dimension():
    w = torch.arange(12.0).reshape(3, 4)
    s = torch.zeros(3, 4)
    s[1:, 2:] = 1.0
    block, offset = extract_block(w, s, (2, 2))
    assert offset == (1, 2) and torch.equal(block, w[1:, 2:])
    block, offset = extract_block(w, s, (5, 2))  # target taller than the source
    assert block.shape == (5, 2) and torch.equal(block[:3], w[:, 2:]) and not block[3:].any()
    with pytest.raises(InvalidParameterError):
        block_sums(s, 4, 1)


def test_lora_factors_are_the_rank_r_svd():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(9, 6, generator=g)
    b, a = lora_factors(m, 3)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    torch.testing.assert_close(b @ a, (u[:, :3] * s[:3]) @ vh[:3])
    # A = V_rᵀ: orthonormal rows
    torch.testing.assert_close(a @ a.T, torch.eye(3), atol=1e-5, rtol=0)
    b, a = lora_factors(m, 8)  # rank above min(m, n): zero-padded, exact
    assert b.shape == (9, 8) and a.shape == (8, 6)
    torch.testing.assert_close(b @ a, m, atol=1e-5, rtol=1e-5)


def test_select_layers_keeps_the_top_layers_in_depth_order():
    assert seeking.select_layers([1.0, 5.0, 2.0, 9.0, 3.0, 0.5], 3) == [2, 4, 5]
    assert seeking.select_layers([1.0, 1.0, 1.0], 2) == [1, 2]


# --------------------------------------------------------------------------- injection and training


@pytest.mark.parametrize("alpha", [16, 32])
def test_target_is_functionally_unchanged_right_after_injection(pair, alpha):
    src, tgt, tok, train, extract = pair
    result = seeking.transfer(
        src,
        copy.deepcopy(tgt),
        train,
        extract,
        replace(BASE, lora_alpha=alpha),
        tok,
        post_train=False,
    )
    assert float((logits(result.model, tok) - logits(tgt, tok)).abs().max()) < 1e-4
    from peft.tuners.lora import LoraLayer

    loras = [m for m in result.model.modules() if isinstance(m, LoraLayer)]
    assert len(loras) == 7 * surgery.num_layers(tgt)  # q k v o gate up down in every layer
    nonzero = 0
    for m in loras:
        a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
        delta = b @ a * m.scaling["default"]
        nonzero += bool(delta.abs().sum() > 0)
        # W_base + BA = W: the delta sits in the adapters, its negative in the base weight
    assert nonzero == len(loras)
    sens = result.stages[0]
    assert (
        len(sens["layer_totals"]) == 6
        and sens["selected_source_layers"] == result.pairing.source_layers
    )
    assert result.pairing.is_monotone and len(result.stages[1]["offsets"]) == len(loras)


def test_injection_into_gpt2_conv1d_keeps_the_function(pair):
    """GPT-2's Conv1D stores (in, out): the adapters' delta must still cancel the base change."""
    from peft.tuners.lora import LoraLayer

    *_, tok, train, extract = pair
    src = tiny_model("gpt2", vocab_size=49152, num_layers=6, hidden_size=64, intermediate_size=128)
    tgt = tiny_model("gpt2", vocab_size=49152, num_layers=4, hidden_size=48, intermediate_size=96)
    before = {n: p.detach().clone() for n, p in tgt.named_parameters()}
    result = seeking.transfer(src, copy.deepcopy(tgt), train, extract, BASE, tok, post_train=False)
    assert float((logits(result.model, tok) - logits(tgt, tok)).abs().max()) < 1e-4
    loras = {n: m for n, m in result.model.named_modules() if isinstance(m, LoraLayer)}
    assert len(loras) == 4 * surgery.num_layers(tgt)  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    for name, m in loras.items():
        with torch.no_grad():
            delta = m.get_delta_weight("default")  # peft's own delta: transposed for Conv1D
            base = m.get_base_layer().weight
        original = before[name.removeprefix("base_model.model.") + ".weight"]
        torch.testing.assert_close(base + delta, original)  # injection took it off the base
        assert float(delta.abs().sum()) > 0, name


def test_post_training_changes_the_target_and_merges(pair):
    src, tgt, tok, train, extract = pair
    result = seeking.transfer(src, copy.deepcopy(tgt), train, extract, BASE, tok)
    assert result.model is not tgt and all(
        type(m) is nn.Linear for n, m in result.model.named_modules() if n.endswith("_proj")
    )
    assert set(dict(result.model.named_parameters())) == set(dict(tgt.named_parameters()))
    assert float((logits(result.model, tok) - logits(tgt, tok)).abs().max()) > 1e-3
    rec = result.stages[-1]
    assert rec["steps"] == 2 and len(rec["losses"]) == 2 and rec["tokens"] > 0 and rec["flops"] > 0
    for key in ("wall_s", "peak_rss_mb", "tokens", "flops"):
        assert result.cost[key] > 0, key
    assert result.config["method"] == "seeking"
    assert all(p.requires_grad for p in result.model.parameters())  # flags restored


def test_same_seed_gives_identical_parameters(pair):
    src, tgt, tok, train, extract = pair
    cfg = replace(BASE, max_steps=1)
    a = seeking.transfer(src, copy.deepcopy(tgt), train, extract, cfg, tok).model
    b = seeking.transfer(src, copy.deepcopy(tgt), train, extract, cfg, tok).model
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_incompatible_pairs_fail_before_any_work(pair):
    src, tgt, tok, train, extract = pair
    with pytest.raises(IncompatibleModelsError, match="deeper"):
        seeking.transfer(tgt, src, train, extract, BASE, tok)
    other = tiny_model("llama", vocab_size=128, num_layers=2, hidden_size=32)
    with pytest.raises(IncompatibleModelsError, match="vocabularies differ"):
        seeking.transfer(src, other, train, extract, BASE, tok)
    with pytest.raises(InvalidParameterError):
        seeking.transfer(src, copy.deepcopy(tgt), train, extract, BASE, tok, resume=True)


# --------------------------------------------------------------------------- sensitivity


def test_sensitivity_sums_each_batch_on_the_cpu_and_frees_every_gradient():
    """Σ over batches of |θ ⊙ ∇θ L_b| per block parameter, against torch.autograd.grad per
    batch (no hooks); the sums live on the CPU, no gradient is left on the model, and its
    requires_grad flags come back as they were."""
    model = tiny_model("llama", seed=3, vocab_size=64, hidden_size=16, num_layers=2, num_heads=2)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        ids = torch.randint(1, 64, (2, 7), generator=gen)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    blocks = surgery.decoder_layers(model)
    params = [(k, n, p) for k, blk in enumerate(blocks) for n, p in blk.named_parameters()]
    reference = {(k, n): torch.zeros_like(p) for k, n, p in params}
    for batch in batches:
        loss = seeking.ce_per_example(model, batch).mean()
        grads = torch.autograd.grad(loss, [p for _, _, p in params])
        for (k, n, p), g in zip(params, grads, strict=True):
            reference[(k, n)] += (p.detach() * g).abs()
    model.model.embed_tokens.weight.requires_grad_(False)
    got = seeking.sensitivity(model, batches)
    for (k, n), ref in reference.items():
        assert got[k][n].device.type == "cpu"
        torch.testing.assert_close(got[k][n], ref, rtol=1e-5, atol=1e-8)
    assert all(p.grad is None for p in model.parameters())
    assert not model.model.embed_tokens.weight.requires_grad
    assert all(p.requires_grad for _, _, p in params)
