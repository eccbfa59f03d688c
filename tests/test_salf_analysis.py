"""SALF analysis and gains: constructed traces with known answers, budgets, padding, traces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.salf import analysis, gains

L = 6
PARAMS = [100] * L


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- gains (pure)


def power_trace(alpha=0.5, c=4.0, bump_block=None, bump=0.0):
    cum = np.cumsum(PARAMS).astype(float)
    d = c * cum**-alpha
    d0 = 2 * d[0]
    dev = np.concatenate([[d0], d])
    if bump_block is not None:  # block k removes an extra `bump` of deviation
        dev[bump_block:] -= bump
    return dev


def test_drop_gain_and_eof_known_answer():
    dev = [1.0, 0.95, 0.9, 0.5, 0.45, 0.44, 0.43]  # block 3 drops most
    g = gains.compute_gains(dev, PARAMS, "drop")
    np.testing.assert_allclose(g, [0.05, 0.05, 0.4, 0.05, 0.01, 0.01])
    assert gains.choose_eof(g) == 3


def test_fit_power_law_recovers_exponent():
    dev = power_trace(alpha=0.7)
    fit = gains.fit_power_law(dev[1:], np.cumsum(PARAMS))
    assert fit.alpha == pytest.approx(0.7, abs=1e-9)


def test_scaling_kaplan_finds_the_block_beating_the_law():
    # A pure power law has zero excess everywhere except block 1 (D_0 is not on the law);
    # a bump at block 4 is the largest excess drop beyond the law.
    dev = power_trace(alpha=0.5, bump_block=4, bump=0.05)
    g = gains.compute_gains(dev, PARAMS, "scaling_kaplan")
    assert gains.choose_eof(g[1:]) + 1 == 4  # ignoring block 1 (whose law-drop is undefined)
    pure = gains.compute_gains(power_trace(alpha=0.5), PARAMS, "scaling_kaplan")
    np.testing.assert_allclose(pure[1:], 0.0, atol=1e-12)


def test_scaling_fit_is_the_smoothed_predicted_drop():
    dev = power_trace(alpha=0.5)
    g = gains.compute_gains(dev, PARAMS, "scaling_fit")
    np.testing.assert_allclose(
        g, dev[:-1] - dev[1:], atol=1e-12
    )  # exact law → predicted == observed
    assert np.all(np.diff(g[1:]) < 0)  # monotone for equal-size blocks (documented degeneracy)


def test_zhang_gain_uses_the_irreducible_offset():
    cum = np.cumsum(PARAMS).astype(float)
    e = 0.3
    dev = np.concatenate([[2.0], e + 3.0 * cum**-0.8])
    fit = gains.fit_zhang(dev, PARAMS)
    assert fit.offset == pytest.approx(e, abs=1e-3)
    g = gains.compute_gains(dev, PARAMS, "zhang_finetune")
    expected = (dev[:-1] - dev[1:]) / (dev[:-1] - fit.offset)
    np.testing.assert_allclose(g, expected)


def test_every_registered_gain_returns_one_value_per_block():
    dev = power_trace(bump_block=2, bump=0.1)
    for name in gains.GAINS:
        g = gains.compute_gains(dev, PARAMS, name)
        assert g.shape == (L,) and np.all(np.isfinite(g)), name
        assert 1 <= gains.choose_eof(g) <= L - 1


def test_choose_eof_never_freezes_everything_by_default():
    g = [0.0, 0.1, 0.2, 0.3, 0.4, 0.9]
    assert gains.choose_eof(g) == L - 1
    assert gains.choose_eof(g, allow_full_freeze=True) == L


def test_eof_per_example():
    m = np.array([[1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], [1.0, 0.9, 0.8, 0.2, 0.1, 0.05, 0.0]])
    assert gains.eof_per_example(m, PARAMS).tolist() == [1, 3]


def test_budgets_raise_eof():
    assert gains.apply_budget(1, L, gains.Budget(max_trainable=2)) == 4
    assert gains.apply_budget(5, L, gains.Budget(max_trainable=2)) == 5
    assert gains.apply_budget(0, L, gains.Budget(fraction=0.5)) == 3
    flops = lambda e: float(L - e)  # noqa: E731 - cost proportional to trained layers
    assert gains.apply_budget(0, L, gains.Budget(flops_fraction=0.5), flops, float(L)) == 3


@pytest.mark.parametrize(
    "budget",
    [gains.Budget(max_trainable=0), gains.Budget(fraction=0.1), gains.Budget(flops_fraction=0.01)],
)
def test_budget_that_leaves_nothing_trainable_is_one_clear_line(budget):
    with pytest.raises(InvalidParameterError) as err:
        gains.apply_budget(1, L, budget, lambda e: float(L - e), float(L))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("eof", [-1, L + 1, 2.5])
def test_eof_out_of_range(eof):
    with pytest.raises(InvalidParameterError, match="eof must be an integer in 0..6"):
        gains.check_eof(eof, L)


def test_unknown_gain():
    with pytest.raises(InvalidParameterError, match="unknown gain"):
        gains.compute_gains([1, 0.5], [1], "nope")


def test_padding_strategies():
    eofs = [1, 3, 1, 3, 2, 2, 3]
    plans = gains.plan_batches(eofs, 2, "min", seed=0)
    assert sorted(i for p in plans for i in p.indices) == list(range(7))
    assert all(p.eof == min(eofs[i] for i in p.indices) for p in plans)
    buckets = gains.plan_batches(eofs, 2, "bucket", seed=0)
    assert sorted(i for p in buckets for i in p.indices) == list(range(7))
    assert all(all(eofs[i] == p.eof for i in p.indices) for p in buckets)
    with pytest.raises(InvalidParameterError):
        gains.plan_batches(eofs, 2, "max")


# --------------------------------------------------------------------------- analysis on a model


@pytest.fixture(scope="module")
def tiny():
    from semalign_core.models.registry import load_model

    lm = load_model("tiny-source", verbose=False)
    return lm.model, lm.tokenizer


RECORDS = [
    {"text": "a wonderful, moving film", "label": 1},
    {"text": "dull", "label": 0},
    {"text": "the plot never comes together and the acting is wooden throughout", "label": 0},
    {"text": "great fun", "label": 1},
    {"text": "I would not watch it again, not even for free, it was that bad", "label": 0},
]
WORDS = ("negative", "positive")


def test_split_label_word_is_a_one_line_error(tiny):
    _, tok = tiny
    with pytest.raises(analysis.LabelTokenError) as err:
        analysis.label_token_ids(tok, ["positive", "xqzvblorf"], require_single_token=True)
    assert isinstance(err.value, ArtifactError) and "\n" not in str(err.value)
    assert "xqzvblorf" in str(err.value)
    labels = analysis.label_token_ids(tok, ["positive", "xqzvblorf"], mode="mean")
    assert len(labels.ids[1]) > 1 and not labels.single_token


def test_prompt_format():
    assert analysis.format_prompt(" good ", "sst2") == "good\nSentiment:"
    assert analysis.format_prompt("x", None) == "x\nAnswer:"
    with pytest.raises(InvalidParameterError):
        analysis.format_prompt("x", template="no slot")


def test_trace_respects_padding_and_matches_model(tiny):
    model, tok = tiny
    batched = analysis.transition_trace(model, tok, RECORDS, "sst2", WORDS, batch_size=5)
    single = analysis.transition_trace(model, tok, RECORDS, "sst2", WORDS, batch_size=1)
    n_layers = surgery.num_layers(model)
    assert batched.states.shape == (5, n_layers + 1, surgery.hidden_size(model))
    torch.testing.assert_close(batched.states, single.states, atol=1e-5, rtol=1e-5)
    # The last latent state through the head is the model's own next-token logits.
    ids = tok(analysis.format_prompt(RECORDS[2]["text"], "sst2"), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model(input_ids=ids).logits[0, -1]
        lens = surgery.logit_lens(model, batched.states[2, -1])
    torch.testing.assert_close(lens, ref, atol=1e-4, rtol=1e-4)


def test_deviation_kinds(tiny):
    model, tok = tiny
    trace = analysis.transition_trace(model, tok, RECORDS, "sst2", WORDS)
    n_layers = surgery.num_layers(model)
    for kind in analysis.DEVIATIONS:
        dev = analysis.deviations(model, trace, kind)
        assert dev.shape == (5, n_layers + 1) and torch.isfinite(dev).all()
    cos = analysis.deviations(model, trace, "cos")
    assert ((cos >= 0) & (cos <= 2)).all()
    ce = analysis.deviations(model, trace, "logit_lens_ce")
    with torch.no_grad():
        logp = torch.log_softmax(surgery.logit_lens(model, trace.states[:, -1]), -1)
    expected = -logp[
        torch.arange(5), torch.tensor([trace.label_tokens.first[y] for y in trace.labels])
    ]
    torch.testing.assert_close(ce[:, -1], expected, atol=1e-4, rtol=1e-4)
    # cos against the label's basis: s_y is row y of the unit semantic bases
    bases = analysis.label_bases(model, trace.label_tokens)
    torch.testing.assert_close(bases.norm(dim=-1), torch.ones(2))
    bi = analysis.block_influence(trace)
    assert bi.shape == (5, n_layers)
    with pytest.raises(InvalidParameterError):
        analysis.deviations(model, trace, "l2")


def test_analyse_end_to_end(tiny):
    from semalign_core import salf

    model, tok = tiny
    out = salf.analyse(model, tok, RECORDS, "sst2", WORDS, gain="scaling_kaplan")
    assert len(out["deviation"]) == surgery.num_layers(model) + 1
    assert len(out["gains"]) == surgery.num_layers(model)
    assert 1 <= out["eof"] < surgery.num_layers(model) and len(out["example_eofs"]) == 5


def test_space_zero_is_the_same_state_for_every_example(tiny):
    # Every SALF prompt ends in the template's ":", so the embedding-space state (space 0) is one
    # vector for all examples: D_0 depends on the label alone, hence gains.FIRST_BLOCK = 2.
    model, tok = tiny
    trace = analysis.transition_trace(model, tok, RECORDS, "sst2", WORDS)
    space0 = trace.states[:, 0]
    torch.testing.assert_close(space0, space0[:1].expand_as(space0), atol=0, rtol=0)
    assert not torch.allclose(trace.states[:, 1], trace.states[:1, 1].expand_as(space0))
    dev = analysis.deviations(model, trace, "cos_normed")[:, 0]
    labels = trace.labels
    for y in labels.unique():
        assert torch.allclose(dev[labels == y], dev[labels == y][0])


def test_first_block_leaves_block_one_out():
    dev = [1.0, 0.2, 0.18, 0.1, 0.09, 0.08, 0.07]  # block 1 drops most, then block 3
    g = gains.compute_gains(dev, PARAMS, "drop")
    assert gains.choose_eof(g) == 1
    assert gains.choose_eof(g, first_block=2) == 3
    assert gains.eof_per_example([dev, dev], PARAMS, first_block=2).tolist() == [3, 3]
    assert gains.eof_by_gain(dev, PARAMS, first_block=2)["drop"] == 3
    assert set(gains.eof_by_gain(dev, PARAMS)) == set(gains.GAINS)


def test_eof_stability_counts_resamples_by_hand():
    rng = np.random.default_rng(1)
    # Examples of two kinds: block 3 wins on the mean, block 5 for a minority of examples.
    a = np.array([1.0, 0.95, 0.9, 0.5, 0.45, 0.44, 0.43])
    b = np.array([1.0, 0.95, 0.9, 0.85, 0.8, 0.2, 0.19])
    m = np.stack([a] * 7 + [b] * 3) + rng.normal(0, 1e-3, (10, 7))
    out = gains.eof_stability(m, PARAMS, "drop", resamples=300, seed=4)
    draws = np.random.default_rng(4)
    expected = [
        gains.choose_eof(np.diff(-m[draws.integers(0, 10, 10)].mean(0))) for _ in range(300)
    ]
    assert out["eof"] == 3 and out["resamples"] == 300
    assert out["share"] == pytest.approx(np.mean(np.array(expected) == 3))
    assert 0.5 < out["share"] < 1.0  # the minority sometimes wins: not a certain decision
    assert sum(out["counts"].values()) == 300
    with pytest.raises(InvalidParameterError):
        gains.eof_stability(m[:1], PARAMS, "drop")
