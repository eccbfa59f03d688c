"""Cross-vocabulary transfer methods (issue 19) through the registry, on tiny random models with
the real Gemma-3 and SmolLM2 tokenizers: the stage losses of SemAlign-cross and the first step
of ULD / bridged KL against an independent float64 computation on hand-aligned positions; the
identity bridge against the same-family SemAlign; the errors that send each pair to its path."""

from __future__ import annotations

import pytest
import torch

from semalign_core.errors import IncompatibleModelsError, InvalidParameterError
from semalign_core.lm import semantics
from semalign_core.models.tiny import tiny_model
from semalign_core.semalign.crossvocab.trainer import CrossSemAlignConfig
from semalign_core.semalign.crossvocab.vocab_bridge import build_bridge
from semalign_core.transfer.registry import run_method

pytestmark = pytest.mark.usefixtures("one_thread")

QA = [("Say hi", "Hi there!"), ("2+2?", "4, I think: naïve.")]
RECORDS = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for q, a in QA
]
# (Gemma position, SmolLM2 position) of every supervised SmolLM2 position that ends a token at
# the same character as a Gemma token, read off the offsets of "<|user|>\n{q}\n\n<|assistant|>\n
# {a}\n\n": the response starts at the last prompt token ("\n"); SmolLM2's "Ġna" (chars 40-43 of
# the second text) has no Gemma token ending there ("▁naïve" ends at 46).
HAND_PAIRS = [
    [(13, 17), (14, 18), (15, 19), (16, 20), (17, 21)],
    [(15, 19), (16, 20), (17, 21), (18, 22), (19, 23), (20, 24), (21, 26), (22, 27), (23, 28)],
]
N_SUPERVISED = 5 + 10
TAU = 2.0
BASE = dict(
    steps_per_stage=1,
    batch_size=2,
    max_length=64,
    lr=1e-2,
    tau=TAU,
    pairing="floor",
    eval_batches=0,
    progress=False,
)


@pytest.fixture(scope="module")
def tokenizers():
    from semalign_core.models.registry import load_tokenizer

    return load_tokenizer("gemma3-270m"), load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(autouse=True)
def bases_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_CACHE_DIR", str(tmp_path))  # pinv caches stay out of the repo
    semantics.clear_bases_cache()


def _gemma_source(gem):
    return tiny_model("llama", seed=1, vocab_size=len(gem), hidden_size=48, num_layers=2)


def _smol_target(smol, num_layers=3):
    return tiny_model("llama", seed=2, vocab_size=len(smol), hidden_size=32, num_layers=num_layers)


# --------------------------------------------------------------------------- the reference


def _encode(tok, text: str) -> list[int]:
    return tok(text)["input_ids"] + [tok.eos_token_id]


def _forward(model, tok):
    """Own right-padded forward of both texts with all hidden states (and the raw output of the
    last block, which ``hidden_states`` gives after the final norm)."""
    seqs = [_encode(tok, f"<|user|>\n{q}\n\n<|assistant|>\n{a}\n\n") for q, a in QA]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, : len(s)], mask[b, : len(s)] = torch.tensor(s), 1
    raw = {}
    handle = model.model.layers[-1].register_forward_hook(
        lambda mod, args, out: raw.__setitem__("h", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    finally:
        handle.remove()
    states = list(out.hidden_states[:-1]) + [raw["h"]]  # states[k]: output of block k
    return states, out.logits


def _unit_pinv_rows(head: torch.Tensor) -> torch.Tensor:
    s = torch.linalg.pinv(head.double().T)
    return s / s.norm(dim=-1, keepdim=True)


def _rms_norm(h: torch.Tensor, norm) -> torch.Tensor:
    var = h.square().mean(-1, keepdim=True)
    return h * torch.rsqrt(var + norm.variance_epsilon) * norm.weight.double()


def _fisher(z: torch.Tensor, z_tilde: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(z_tilde / TAU, -1)
    delta = (z - z_tilde) / TAU
    return 0.5 * ((p * delta**2).sum() - (p * delta).sum() ** 2)


def _bridged_kl(z_s: torch.Tensor, z_t: torch.Tensor, bridge) -> torch.Tensor:
    p = torch.softmax(z_s.double() / TAU, -1)
    carried = torch.zeros(bridge.target_size, dtype=torch.float64)
    carried.index_put_((bridge.target_ids,), p[bridge.source_ids], accumulate=True)
    p_hat = carried / carried.sum()
    log_q = torch.log_softmax(z_t.double() / TAU, -1)
    on = p_hat > 0
    return (p_hat[on] * (p_hat[on].log() - log_q[on])).sum() * TAU**2


def _uld(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(z_s.double() / TAU, -1).sort(descending=True).values
    q = torch.softmax(z_t.double() / TAU, -1).sort(descending=True).values
    return (p - torch.cat([q, q.new_zeros(len(p) - len(q))])).abs().sum()


@torch.no_grad()
def _reference_stage_loss(source, stage_model, tokenizers, bridge, stage: int, mix):
    """Stage ``stage``'s loss: the Fisher form between the logit lens of target block ``stage``
    and the mixture ``mix`` [(source block, weight)] of source states decomposed on all source
    bases, carried through
    the bridge's entries and recomposed on the target bases, read out by the target's norm and
    head, and at the last stage the bridged KL of the outputs (None before): (layer term, KL),
    each the mean over hand-aligned pairs."""
    gem, smol = tokenizers
    h_src, z_src = _forward(source, gem)
    h_tgt, z_tgt = _forward(stage_model, smol)
    s_src = _unit_pinv_rows(source.lm_head.weight)
    s_tgt = _unit_pinv_rows(stage_model.lm_head.weight)
    w_tgt, norm = stage_model.lm_head.weight.double(), stage_model.model.norm
    last = stage == len(stage_model.model.layers)
    layer, kl = [], []
    for b, pairs in enumerate(HAND_PAIRS):
        for ps, pt in pairs:
            x = sum(w * h_src[s][b, ps].double() for s, w in mix)
            a = s_src @ (x / x.norm())
            c = torch.zeros(bridge.target_size, dtype=torch.float64)
            c.index_put_((bridge.target_ids,), a[bridge.source_ids], accumulate=True)
            z_tilde = w_tgt @ _rms_norm(s_tgt.T @ c, norm)
            z = w_tgt @ _rms_norm(h_tgt[stage][b, pt].double(), norm)
            layer.append(_fisher(z, z_tilde))
            if last:
                kl.append(_bridged_kl(z_src[b, ps], z_tgt[b, pt], bridge))
    return float(torch.stack(layer).mean()), float(torch.stack(kl).mean()) if last else None


def _model_before_stage(trained, fresh, stage: int):
    """The target as stage ``stage`` saw it: blocks before it trained, the rest untouched."""
    for k in range(stage - 1):
        fresh.model.layers[k].load_state_dict(trained.model.layers[k].state_dict())
    return fresh


# --------------------------------------------------------------------------- the tests


# Many-to-one plans of a 2-block source and a 3-block target, by hand: floor ⌊2j/3⌋ (at least
# 1); interpolation u = 2j/3 between source blocks a = 1 and b = 2 with λ = clip(u − 1, 0, 1).
PLANS = {
    "floor": {1: [(1, 1.0)], 2: [(1, 1.0)], 3: [(2, 1.0)]},
    "interpolate": {1: [(1, 1.0)], 2: [(1, 2 / 3), (2, 1 / 3)], 3: [(2, 1.0)]},
}


@pytest.mark.parametrize("pairing", sorted(PLANS))
def test_cross_family_stage_losses_equal_an_independent_computation(tokenizers, pairing):
    """Gemma-vocabulary source (2 blocks) → deeper SmolLM2-vocabulary target (3 blocks), paired
    many-to-one; exact bridge, bridged KL at the last stage."""
    gem, smol = tokenizers
    source, target = _gemma_source(gem), _smol_target(smol)
    config = CrossSemAlignConfig(**{**BASE, "pairing": pairing}, output_loss="bridged_kl")
    result = run_method(
        "semalign_cross", source, target, RECORDS, RECORDS, config, smol, source_tokenizer=gem
    )
    assert result.pairing.many_to_one
    assert result.cost["aligned_share"] == pytest.approx(14 / N_SUPERVISED)
    bridge = build_bridge(gem, smol, "exact")
    for stage, mix in PLANS[pairing].items():
        model = _model_before_stage(result.model, _smol_target(smol), stage)
        layer, kl = _reference_stage_loss(source, model, tokenizers, bridge, stage, mix)
        record = result.stages[stage - 1]
        assert record["layer_losses"][0] == pytest.approx(layer, rel=1e-4), f"stage {stage}"
        assert record["kl_losses"] == ([] if kl is None else [pytest.approx(kl, rel=1e-4)])
        assert record["losses"][0] == pytest.approx(layer + (kl or 0.0), rel=1e-4)
    assert result.cost["flops"] > 0 and result.cost["wall_s"] > 0


@pytest.mark.parametrize("method", ["uld", "bridged_kl"])
def test_cross_distillation_first_step_equals_an_independent_computation(tokenizers, method):
    gem, smol = tokenizers
    source, target = _gemma_source(gem), _smol_target(smol)
    _, z_src = _forward(source, gem)
    _, z_tgt = _forward(target, smol)
    bridge = build_bridge(gem, smol, "exact")
    per_example = []
    for b, pairs in enumerate(HAND_PAIRS):
        terms = [
            _uld(z_src[b, ps], z_tgt[b, pt])
            if method == "uld"
            else _bridged_kl(z_src[b, ps], z_tgt[b, pt], bridge)
            for ps, pt in pairs
        ]
        per_example.append(torch.stack(terms).mean())
    expected = float(torch.stack(per_example).mean())
    result = run_method(
        method,
        source,
        target,
        RECORDS,
        [],
        tokenizer=smol,
        source_tokenizer=gem,
        tau=TAU,
        epochs=1,
        batch_size=2,
        micro_batch_size=1,
        max_length=64,
        progress=False,
    )
    assert result.stages[0]["losses"][0] == pytest.approx(expected, rel=1e-4)
    assert result.cost["aligned_share"] == pytest.approx(14 / N_SUPERVISED)
    assert result.cost["flops"] > 0 and result.cost["prepare_s"] > 0


def test_identity_bridge_gives_the_same_family_stage_losses(tokenizers):
    """One tokenizer on both sides: SemAlign-cross (identity bridge, every supervised position
    aligned) repeats the same-family SemAlign's stage losses."""
    _, smol = tokenizers
    records = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in [("Say hi", "Hi there!"), ("2+2?", "4, I think.")]
    ]
    runs = {}
    for name, overrides in (("semalign", {}), ("semalign_cross", {"output_loss": "bridged_kl"})):
        source = tiny_model("llama", seed=3, vocab_size=len(smol), hidden_size=48, num_layers=3)
        target = _smol_target(smol, num_layers=2)
        runs[name] = run_method(
            name,
            source,
            target,
            records,
            records,
            tokenizer=smol,
            **{**BASE, "steps_per_stage": 2, "pairing": "attributed", "eval_batches": 1},
            attribution_method="hooks",
            **overrides,
        )
    same, cross = runs["semalign"], runs["semalign_cross"]
    assert cross.pairing.target_to_source == same.pairing.target_to_source
    assert cross.cost["aligned_share"] == 1.0
    for a, b in zip(same.stages, cross.stages, strict=True):
        for key in ("losses", "layer_losses", "kl_losses"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
        for key in ("loss_before", "loss_after"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key


def test_each_pair_is_sent_to_its_path(tokenizers):
    gem, smol = tokenizers
    source, target = _gemma_source(gem), _smol_target(smol, num_layers=2)
    for method in ("semalign", "output_kl"):
        with pytest.raises(IncompatibleModelsError, match="vocabularies differ.*semalign_cross"):
            run_method(method, source, target, RECORDS, RECORDS, tokenizer=smol, progress=False)
    with pytest.raises(IncompatibleModelsError, match="source_tokenizer="):
        run_method("semalign_cross", source, target, RECORDS, RECORDS, tokenizer=smol)
    with pytest.raises(InvalidParameterError, match="same text"):
        CrossSemAlignConfig(prompt_style="model")
    with pytest.raises(InvalidParameterError, match="objective='acl'"):
        CrossSemAlignConfig(objective="v2")
    with pytest.raises(InvalidParameterError, match="bridge"):
        run_method("bridged_kl", source, target, RECORDS, [], tokenizer=smol, bridge="fuzzy")


def test_interrupted_cross_run_resumes_to_the_same_numbers(tokenizers, tmp_path):
    """A deeper target's many-to-one pairing comes back from the checkpoint (no attribution)."""
    gem, smol = tokenizers
    source = _gemma_source(gem)
    kwargs = dict(tokenizer=smol, source_tokenizer=gem, **BASE)
    whole = run_method("semalign_cross", source, _smol_target(smol), RECORDS, RECORDS, **kwargs)
    kwargs["checkpoint_dir"] = str(tmp_path)
    target = _smol_target(smol)
    run_method("semalign_cross", source, target, RECORDS, RECORDS, stop_after_stage=1, **kwargs)
    resumed = run_method(
        "semalign_cross", source, _smol_target(smol), RECORDS, RECORDS, resume=True, **kwargs
    )
    assert resumed.resumed_after_stage == 1 and resumed.pairing.many_to_one
    assert [s["losses"] for s in resumed.stages] == [s["losses"] for s in whole.stages]
    for p, q in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(p, q)
