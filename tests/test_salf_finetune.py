"""SALF fine-tuning: freezing, LISA/AutoFreeze, prefix cache, FLOPs accounting (block replay on
every architecture: test_replay.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from semalign_core import costs
from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.salf import finetune as ft
from semalign_core.salf import gains, policies

WORDS = ("negative", "positive")
TRAIN = [
    {"text": "a wonderful, moving film", "label": 1},
    {"text": "dull", "label": 0},
    {"text": "the plot never comes together and the acting is wooden", "label": 0},
    {"text": "great fun for the whole family", "label": 1},
    {"text": "I would not watch it again", "label": 0},
    {"text": "sharp, funny and warm", "label": 1},
    {"text": "a mess", "label": 0},
    {"text": "one of the best films of the year", "label": 1},
]
CFG = dict(epochs=2, batch_size=4, lr=1e-2, max_length=32, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    from semalign_core.models.registry import load_model

    lm = load_model("tiny-source", verbose=False)
    return lm.model, lm.tokenizer


def fresh(tiny):
    return copy.deepcopy(tiny[0]), tiny[1]


def run(tiny, policy, **kw):
    model, tok = fresh(tiny)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = ft.finetune(
        model, tok, TRAIN, TRAIN[:4], policy, ft.FinetuneConfig(**{**CFG, **kw}), label_words=WORDS
    )
    return result, before


# --------------------------------------------------------------------------- freezing


def block_names(model, blocks):
    layers = surgery.decoder_layers(model)
    ids = {id(p) for k in blocks for p in layers[k].parameters()}
    ids |= {id(p) for p in surgery.final_norm(model).parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_frozen_parameters_bit_identical_and_gradients_only_in_trainable_set(tiny):
    result, before = run(tiny, policies.FixedEof(eof=4))
    model = result.model
    trainable = block_names(model, [4, 5])
    after = dict(model.named_parameters())
    for name, old in before.items():
        if name in trainable:
            continue
        assert torch.equal(after[name], old), f"frozen {name} changed"
    assert any(not torch.equal(after[n], before[n]) for n in trainable)
    assert set(result.grad_params) == trainable
    assert result.cost["cache_hits"] == 2  # 2 batches cached in epoch 1, reused in epoch 2


def test_cached_prefix_gives_the_same_losses(tiny):
    cached, _ = run(tiny, policies.FixedEof(eof=3), cache_prefix=True)
    plain, _ = run(tiny, policies.FixedEof(eof=3), cache_prefix=False)
    assert cached.cost["cache_hits"] == 2 and plain.cost["cache_hits"] == 0
    torch.testing.assert_close(
        torch.tensor(cached.losses), torch.tensor(plain.losses), atol=1e-6, rtol=1e-6
    )
    assert cached.cost["flops_analytic"] < plain.cost["flops_analytic"]


def test_lisa_newly_active_layers_update(tiny):
    policy = policies.Lisa(n_active=1, interval=1, seed=1)
    result, before = run(tiny, policy)
    history = policy.history
    first = set(history[0][1])
    later = {k for _, active in history[1:] for k in active} - first
    assert later, "the seed should activate a new layer after step 0"
    after = dict(result.model.named_parameters())
    for k in later:
        names = [n for n in block_names(result.model, [k]) if ".layers." in n]
        assert any(not torch.equal(after[n], before[n]) for n in names), (
            f"LISA layer {k} never updated"
        )
    never = set(range(6)) - {k for _, a in history for k in a}
    for k in never:
        names = [n for n in block_names(result.model, [k]) if ".layers." in n]
        assert all(torch.equal(after[n], before[n]) for n in names)
    assert len(result.history) == len(history)  # one optimizer rebuild per switch


def test_autofreeze_never_unfreezes(tiny):
    policy = policies.AutoFreeze(interval=1, percentile=100.0)  # freezes one block per decision
    result, before = run(tiny, policy, epochs=3)
    boundaries = [b for _, b in policy.history]
    assert boundaries == sorted(boundaries) and boundaries[-1] > 0
    lows = [min(h["blocks"]) for h in result.history]
    assert lows == sorted(lows)
    after = dict(result.model.named_parameters())
    # the block frozen at the first decision never changes afterwards: it changed at most before
    assert all(torch.isfinite(p).all() for p in after.values())


def test_lora_trains_only_suffix_adapters(tiny):
    result, before = run(tiny, policies.Lora(eof=3, r=2))
    assert result.grad_params and all("lora_" in n for n in result.grad_params)
    assert all(int(n.split(".layers.")[1].split(".")[0]) >= 3 for n in result.grad_params)
    base = surgery.unwrap(result.model)
    for name, p in base.named_parameters():
        if "lora_" not in name:
            clean = name.replace(".base_layer", "")
            assert torch.equal(p, before[clean]), name


def test_salf_per_example_bucket_and_losses_variants(tiny):
    result, _ = run(tiny, policies.salf_policy(per_example=True, padding="bucket"), epochs=1)
    assert len(result.policy["example_eofs"]) == len(TRAIN)
    assert 0 <= result.metrics["accuracy"] <= 1 and result.metrics["n"] == 4
    for loss in ("label_words", "lm"):
        r, _ = run(tiny, policies.FixedEof(fraction=0.5), loss=loss, epochs=1)
        assert all(torch.isfinite(torch.tensor(r.losses)))


# --------------------------------------------------------------------------- FLOPs


def test_analytic_flops_of_a_frozen_run_match_the_formula(tiny):
    eof = 4
    result, _ = run(tiny, policies.FixedEof(eof=eof), batch_size=8, epochs=2)
    shape = costs.model_shape(result.model)
    tokens = result.cost["tokens"] // 2  # one batch of all 8 examples, two epochs
    T = tokens // 8
    V, d = shape.vocab, shape.hidden

    def blocks(ks, per):
        return sum(tokens * per(shape.blocks[k]) for k in ks)

    fwd_all = blocks(range(6), lambda b: 2 * b.params + 4 * T * b.attn_width)
    fwd_suffix = blocks(range(eof, 6), lambda b: 2 * b.params + 4 * T * b.attn_width)
    bwd = blocks(range(eof, 6), lambda b: 4 * b.params + 8 * T * b.attn_width)
    head = 2 * d * V * 8  # one logit position per example; activation gradient too, head frozen
    expected = (fwd_all + bwd + 2 * head) + (fwd_suffix + bwd + 2 * head)  # epoch 2 uses the cache
    layers, norm = surgery.decoder_layers(result.model), surgery.final_norm(result.model)
    norm_params = sum(p.numel() for p in norm.parameters())
    trained = sum(p.numel() for k in range(eof, 6) for p in layers[k].parameters()) + norm_params
    adamw = 2 * 16 * trained  # two AdamW steps of 16 elementwise FLOPs per trained parameter
    assert result.cost["flops_analytic"] == pytest.approx(expected + adamw, rel=1e-12)
    assert result.cost["flops_components"]["optimizer"] == adamw
    # the like-for-like reference: every block trained, embeddings and head frozen, no cache
    every = sum(p.numel() for layer in layers for p in layer.parameters()) + norm_params
    full = 2 * (blocks(range(6), lambda b: 6 * b.params + 12 * T * b.attn_width) + 2 * head)
    assert result.cost["flops_full_analytic"] == pytest.approx(full + 2 * 16 * every, rel=1e-12)


def test_freezing_e_of_l_equal_blocks_saves_two_thirds_e_over_l():
    shape = costs.ModelShape(
        blocks=tuple(costs.BlockCost(1000, 0) for _ in range(8)),
        hidden=1,
        vocab=1,
        embedding_params=1,
        head_params=1,
        tied=False,
    )
    full = costs.step_flops(
        shape, costs.TrainableSpec(frozenset(range(8)), embeddings=True), 10, 10, 0
    )
    for e in range(8):
        frozen = costs.step_flops(shape, costs.TrainableSpec(frozenset(range(e, 8))), 10, 10, 0)
        assert costs.saving_rate(frozen["total"], full["total"]) == pytest.approx(2 / 3 * e / 8)
    # a frozen block above a trained one still costs its activation gradients (2N)
    mid = costs.step_flops(shape, costs.TrainableSpec(frozenset({2})), 1, 1, 0)
    assert mid["backward"] == 4000 + 5 * 2000


# --------------------------------------------------------------------------- errors and helpers


def test_error_paths(tiny):
    model, tok = fresh(tiny)
    cfg = ft.FinetuneConfig(**CFG)
    with pytest.raises(InvalidParameterError, match="eof must be an integer"):
        ft.finetune(model, tok, TRAIN, None, policies.FixedEof(eof=7), cfg, label_words=WORDS)
    with pytest.raises(InvalidParameterError, match="leaves no layer"):
        ft.finetune(
            model,
            tok,
            TRAIN,
            None,
            policies.salf_policy(budget=gains.Budget(max_trainable=0)),
            cfg,
            label_words=WORDS,
        )
    result = ft.finetune(
        copy.deepcopy(model),
        tok,
        TRAIN,
        None,
        policies.FixedEof(eof=2, train_head=True),
        ft.FinetuneConfig(**{**CFG, "epochs": 1}),
        label_words=WORDS,
    )
    assert "lm_head.weight" in result.grad_params  # an untied head may train with a frozen prefix
    surgery.unwrap(model).lm_head.weight = surgery.input_embeddings(model).weight  # tie
    with pytest.raises(InvalidParameterError, match="tied"):
        ft.finetune(
            model,
            tok,
            TRAIN,
            None,
            policies.FixedEof(eof=2, train_head=True),
            cfg,
            label_words=WORDS,
        )
    with pytest.raises(InvalidParameterError, match="loss"):
        ft.finetune(
            model,
            tok,
            TRAIN,
            None,
            policies.FullFinetune(),
            ft.FinetuneConfig(loss="mse"),
            label_words=WORDS,
        )
    with pytest.raises(InvalidParameterError, match="unknown policy"):
        policies.make_policy("freeze-all")


def test_macro_f1():
    assert ft.macro_f1([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
    assert ft.macro_f1([0, 0, 1, 1], [0, 0, 0, 0]) == pytest.approx((2 * 2 / (4 + 2) + 0) / 2)


class _PerExample(policies.Policy):
    """Per-example eofs given by the test (batches disagree on eof: some train blocks that lie
    inside another batch's frozen prefix)."""

    name = "per_example_fixed"

    def __init__(self, eofs, padding):
        self.eofs, self.padding = tuple(eofs), padding

    def setup(self, ctx):
        state = policies.suffix_state(min(self.eofs), ctx.num_layers)
        return policies.replace(state, example_eofs=self.eofs, padding=self.padding)


@pytest.mark.parametrize("padding", gains.PADDING_STRATEGIES)
def test_per_example_cache_never_serves_a_state_that_training_changed(tiny, padding):
    # Batches with eof 1 train blocks 2..4, which lie inside the prefix of batches with eof 4: a
    # cache of those batches' state at their own eof would be stale from epoch 2 on.
    eofs = (4, 4, 4, 1, 4, 4, 4, 4)  # "min": the batch holding example 3 trains from 1
    results = {}
    for cache in (True, False):
        result, _ = run(tiny, _PerExample(eofs, padding), epochs=3, cache_prefix=cache)
        assert {plan.eof for plan in gains.plan_batches(eofs, 4, padding)} == {1, 4}
        results[cache] = {n: p.detach() for n, p in result.model.named_parameters()}
        if cache:
            assert result.cost["cache_hits"] > 0  # the cache is exercised
    for name, value in results[False].items():
        torch.testing.assert_close(results[True][name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("padding", gains.PADDING_STRATEGIES)
def test_optimizer_flops_count_only_parameters_a_batch_updates(tiny, padding):
    # Blocks below a batch's own eof get no gradient, and AdamW skips them: 16 FLOPs per
    # parameter of the blocks at or above each batch's eof (and the final norm), per step.
    eofs, epochs = (4, 4, 4, 1, 4, 4, 4, 4), 2
    result, _ = run(tiny, _PerExample(eofs, padding), epochs=epochs)
    layers, norm = surgery.decoder_layers(result.model), surgery.final_norm(result.model)
    norm_params = sum(p.numel() for p in norm.parameters())

    def updated(eof):
        return sum(p.numel() for k in range(eof, 6) for p in layers[k].parameters()) + norm_params

    plans = gains.plan_batches(eofs, CFG["batch_size"], padding)
    expected = epochs * sum(16 * updated(plan.eof) for plan in plans)
    assert result.cost["flops_components"]["optimizer"] == expected
    assert expected < epochs * len(plans) * 16 * updated(1)  # what counting every block gave


def test_bases_are_a_one_off_beside_the_per_run_analysis(tiny):
    # cosine deviations need the head's pseudo-inverse, cached per model: counted apart, once;
    # the logit lens reads the head instead and needs no bases
    result, _ = run(tiny, policies.salf_policy(), epochs=1)
    shape = costs.model_shape(result.model)
    v, d = shape.vocab, shape.hidden
    parts = result.cost["flops_components"]
    assert parts["bases_once"] == 8 * v * d * d + 20 * d**3
    assert parts["analysis"] > 0
    full = result.cost["flops_full_analytic"]
    assert result.cost["saving_analytic_with_analysis"] == pytest.approx(
        1 - (result.cost["flops_analytic"] + parts["analysis"]) / full
    )
    assert result.cost["saving_analytic_with_analysis_and_bases"] == pytest.approx(
        1 - (result.cost["flops_analytic"] + parts["analysis"] + parts["bases_once"]) / full
    )
    lens, _ = run(tiny, policies.logit_lens_policy(), epochs=1)
    assert lens.cost["flops_components"]["bases_once"] == 0


def test_autofreeze_interval_scales_with_the_run(tiny):
    # 8 examples, batch 2, 3 epochs: 12 steps split into decisions + 2 = 5 parts, checkpoints
    # after steps floor(12 i / 5) = 2, 4, 7, 9: the first sets the reference, the other three
    # decide (percentile 100 freezes at every decision), none after the last step.
    policy = policies.AutoFreeze(decisions=3, percentile=100.0)
    run(tiny, policy, epochs=3, batch_size=2)
    assert sorted(policy.checkpoints) == [2, 4, 7, 9]
    assert policy.history == [(0, 0), (4, 1), (7, 2), (9, 3)]


def test_autofreeze_never_decides_on_the_last_step(tiny):
    # a fixed interval of 3 over 12 steps: checkpoints 3, 6, 9 (not 12), so two decisions
    policy = policies.AutoFreeze(interval=3, percentile=100.0)
    run(tiny, policy, epochs=3, batch_size=2)
    assert policy.history == [(0, 0), (6, 1), (9, 2)]


def test_like_for_like_full_and_lisa_leave_embeddings_and_head_frozen(tiny):
    emb = "model.embed_tokens.weight"
    for policy in (policies.FullFinetune(embeddings=False), policies.Lisa(embeddings=False)):
        result, before = run(tiny, policy)
        assert emb not in result.grad_params
        assert torch.equal(dict(result.model.named_parameters())[emb], before[emb])
    result, before = run(tiny, policies.FullFinetune())
    assert emb in result.grad_params
