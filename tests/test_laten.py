"""LaTen (PrePKT) on the smoke models: attribution, hypernetwork shapes, loss terms, injection."""

import copy
from dataclasses import replace

import pytest
import torch

from semalign_core.baselines import laten
from semalign_core.baselines.controls import pad_id, tokenize
from semalign_core.baselines.laten import Hypernetworks, LatenConfig, LatenObjective
from semalign_core.data.batching import collate
from semalign_core.errors import IncompatibleModelsError, InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.semalign.attribution import supervised_positions
from semalign_core.semalign.pairing import uniform_pairing

BASE = LatenConfig(max_length=40, align_per_step=3, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tiny_transfer_pair):
    return tiny_transfer_pair(n_train=4)


@pytest.fixture(scope="module")
def setup(pair):
    """Plan + objective on a private copy of the target, and one batch."""
    src, tgt, tok, train, extract = pair
    target = copy.deepcopy(tgt)
    batch = collate(tokenize(extract, tok, BASE), pad_id(tok))
    pairing = uniform_pairing(6, 4)
    s_scores = laten.neuron_scores(src, [batch], range(6), laten.GROUPS)
    t_scores = laten.neuron_scores(target, [batch], range(4), laten.GROUPS)
    plan = laten.build_plan(src, target, pairing, s_scores, t_scores, BASE)
    hyper = Hypernetworks(["up", "down", "v", "o"], 64, 48, None, 1e-5, seed=0)
    for p in target.parameters():
        p.requires_grad_(False)
    return target, plan, hyper, batch


def test_hypernetwork_outputs_have_the_targets_shapes(setup):
    target, plan, hyper, _ = setup
    deltas = hyper(plan.inputs)
    block = surgery.decoder_layers(target)[0]
    k_ffn, k_attn = plan.target_neurons["ffn"].shape[1], plan.target_neurons["attn"].shape[1]
    assert (
        k_ffn == 10 and k_attn == 5
    )  # ceil(0.1 * 96) target FFN neurons; ceil(0.1 * 48) o channels
    assert deltas["up"].shape == (
        4,
        k_ffn,
        block.mlp.up_proj.weight.shape[1],
    )  # rows of up_proj: width d_T
    assert deltas["down"].shape == (
        4,
        k_ffn,
        block.mlp.down_proj.weight.shape[0],
    )  # columns of down_proj
    assert deltas["v"].shape == (4, k_attn, block.self_attn.v_proj.weight.shape[1])
    assert deltas["o"].shape == (4, k_attn, block.self_attn.o_proj.weight.shape[0])
    assert plan.inputs["up"].shape == (4, k_ffn, 64) and plan.inputs["o"].shape == (4, k_attn, 64)
    net = hyper.nets["up"]
    assert (net[0].in_features, net[0].out_features, net[2].out_features) == (
        64,
        64,
        48,
    )  # d_S → d_S → d_T
    assert float(net[0].weight.detach().std()) < 3e-5 and not net[0].bias.any()


def test_scores_equal_the_directional_derivative_of_the_target_logprob(pair):
    """Brute force per neuron: d/dε log p(y | final_norm(h + ε·a_i·w_i)) at ε = 0
    (torch.func.jvp)."""
    src, _, tok, _, extract = pair
    batch = collate(tokenize(extract[:1], tok, BASE), pad_id(tok))
    layer = 2
    scores = laten.neuron_scores(src, [batch], [layer], ("ffn",))[("ffn", layer)]
    mask, tgt = supervised_positions(batch["labels"])
    rows, cols = mask.nonzero(as_tuple=True)
    store = {}
    down = surgery.decoder_layers(src)[layer].mlp.down_proj
    hs = [
        down.register_forward_pre_hook(lambda m, a: store.__setitem__("a", a[0][rows, cols])),
        surgery.final_norm(src).register_forward_pre_hook(
            lambda m, a: store.__setitem__("h", a[0][rows, cols])
        ),
    ]
    with torch.no_grad():
        src(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for h in hs:
        h.remove()
    y = tgt[rows, cols]

    def logp(h):
        return torch.log_softmax(surgery.logit_lens(src, h), -1).gather(1, y[:, None]).squeeze(1)

    for i in (0, 5, 77, int(scores.argmax())):
        direction = store["a"][:, i : i + 1] * down.weight[:, i].detach()
        _, jvp = torch.func.jvp(logp, (store["h"],), (direction,))
        torch.testing.assert_close(scores[i], jvp.mean(), rtol=1e-4, atol=1e-6)


def test_logit_score_gathers_only_target_rows_and_matches_full_head(pair):
    src, _, tok, _, extract = pair
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 64, generator=g)
    y = torch.tensor([1, 7, 7, 300, 49000])
    u = laten.direct_gradient(src, h, y, "logit")
    hh = h.clone().requires_grad_(True)
    surgery.logit_lens(src, hh).gather(1, y[:, None]).sum().backward()
    torch.testing.assert_close(u, hh.grad)


def test_penalty_and_lm_terms_both_enter_the_loss(setup):
    target, plan, hyper, batch = setup
    h = copy.deepcopy(hyper)
    with torch.no_grad():  # larger weights, so both terms have visible gradients
        for p in h.parameters():
            p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))

    def grads(lm_weight, mse_weight):
        obj = LatenObjective(
            target, plan, h, replace(BASE, lm_weight=lm_weight, mse_weight=mse_weight)
        )
        h.zero_grad(set_to_none=True)
        obj.loss(batch).backward()
        return torch.cat([p.grad.reshape(-1) for p in h.parameters()])

    both, lm_only, pen_only = grads(1.0, 1000.0), grads(1.0, 0.0), grads(0.0, 1000.0)
    assert lm_only.abs().sum() > 0 and pen_only.abs().sum() > 0
    torch.testing.assert_close(both, lm_only + pen_only, rtol=1e-4, atol=1e-9)
    assert not torch.allclose(both, lm_only) and not torch.allclose(both, pen_only)
    assert not torch.allclose(grads(1.0, 10.0), both)


def test_gradients_reach_the_hypernetworks_and_nothing_else(setup):
    target, plan, hyper, batch = setup
    obj = LatenObjective(target, plan, hyper, BASE)
    hyper.zero_grad(set_to_none=True)
    obj.loss(batch).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hyper.parameters())
    assert all(not p.requires_grad and p.grad is None for p in target.parameters())


def test_hooked_deltas_equal_baked_weights(setup):
    target, plan, hyper, batch = setup
    model = copy.deepcopy(target)
    h = copy.deepcopy(hyper)
    with torch.no_grad():
        for p in h.parameters():
            p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(2))
    obj = LatenObjective(model, plan, h, BASE)
    ids = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        plain = model(**ids).logits
        with obj.injected(obj.deltas()):
            hooked = model(**ids).logits
        assert not torch.allclose(plain, hooked)
        before = {n: p.clone() for n, p in model.named_parameters()}
        obj.bake()
        torch.testing.assert_close(model(**ids).logits, hooked, rtol=1e-4, atol=1e-5)
    for n, p in model.named_parameters():  # only the selected rows/columns of up, down, v, o moved
        changed = not torch.equal(before[n], p)
        assert changed == any(k in n for k in ("up_proj", "down_proj", "v_proj", "o_proj")), n
    up = (
        before["model.layers.0.mlp.up_proj.weight"]
        != model.get_submodule("model.layers.0.mlp.up_proj").weight
    )
    rows = set(up.any(1).nonzero().flatten().tolist())
    assert rows == set(plan.target_neurons["ffn"][0].tolist())


def test_step_schedule_is_one_extract_plus_align_examples():
    steps = laten.step_schedule(3, 20, LatenConfig())
    assert [s[0] for s in steps] == [0, 1, 2] and all(len(s) == 16 for s in steps)
    assert all(len(set(s[1:])) == 15 and min(s[1:]) >= 3 for s in steps)
    small = laten.step_schedule(2, 4, LatenConfig())
    assert all(sorted(s[1:]) == [2, 3, 4, 5] for s in small)


def test_transfer_trains_records_costs_and_is_deterministic(pair):
    src, tgt, tok, train, extract = pair
    cfg = replace(BASE, init_std=1e-2, lr=1e-3)
    a = laten.transfer(src, copy.deepcopy(tgt), train, extract, cfg, tok)
    b = laten.transfer(src, copy.deepcopy(tgt), train, extract, cfg, tok)
    locate, rec = a.stages
    assert locate["stage"] == "locate" and rec["steps"] == 2 and len(rec["parts"]["lm"]) == 2
    assert len(rec["parts"]["mse"]) == 2 and rec["flops"] > 0
    assert a.pairing.strategy == "uniform" and a.config["method"] == "laten"
    for key in ("wall_s", "peak_rss_mb", "tokens", "flops"):
        assert a.cost[key] > 0, key
    changed = 0
    for (n, p), q, r in zip(a.model.named_parameters(), b.model.parameters(), tgt.parameters()):
        assert torch.equal(p, q), n
        changed += not torch.equal(p, r)
    assert changed == 4 * 4  # up, down, v, o of every target layer
    assert all(p.requires_grad for p in a.model.parameters()) and all(
        p.requires_grad for p in src.parameters()
    )


def test_incompatible_pairs_and_bad_configs(pair):
    src, tgt, tok, train, extract = pair
    with pytest.raises(IncompatibleModelsError, match="deeper"):
        laten.transfer(tgt, src, train, extract, BASE, tok)
    with pytest.raises(InvalidParameterError):
        LatenConfig(groups=("ffn", "mlp"))
    with pytest.raises(InvalidParameterError):
        LatenConfig(top_fraction=0.0)
