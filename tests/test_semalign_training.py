"""SemAlign frontier training on the smoke models (tiny-source 6×64 → tiny-target 4×48)."""

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from semalign_core.costs import FLOP_MODEL
from semalign_core.data.batching import sft_batches
from semalign_core.errors import IncompatibleModelsError, InvalidParameterError
from semalign_core.lm import semantics, surgery
from semalign_core.lm.nethook import capture_hidden
from semalign_core.models.tiny import ARCHITECTURES, tiny_model
from semalign_core.semalign.attribution import pair_layers, supervised_positions
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.frontier import LayerInputs
from semalign_core.semalign.objective import linear_cka_loss
from semalign_core.semalign.supervision import (
    composite_map,
    map_states,
    source_supervision,
    teacher_logits,
)
from semalign_core.semalign.transfer import transfer

BASE = SemAlignConfig(steps_per_stage=3, lr=1e-3, batch_size=2, max_length=40, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tiny_transfer_pair):
    return tiny_transfer_pair(n_train=2)


def run(pair, config=BASE, **kwargs):
    src, tgt, tok, train, extract = pair
    target = copy.deepcopy(tgt)
    return transfer(src, target, train, extract, config, tok, **kwargs)


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_stage_losses_fall(result):
    for rec in result.stages:
        assert rec["losses"][-1] < rec["losses"][0], rec
        assert rec["loss_after"] < rec["loss_before"], rec


# --------------------------------------------------------------------------- acl (default)


@pytest.fixture(scope="module")
def full_run(pair, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("full")
    return run(pair, replace(BASE, checkpoint_dir=str(ckpt))), ckpt


def test_acl_losses_fall_and_layers_move_toward_aligned_states(full_run, pair):
    result, _ = full_run
    assert [r["stage"] for r in result.stages] == [1, 2, 3, 4]
    assert result.pairing.n_source == 6 and result.pairing.is_monotone
    assert len(result.scores) == 6
    assert_stage_losses_fall(result)
    assert (
        result.stages[-1]["kl_losses"] and not result.stages[0]["kl_losses"]
    )  # KL only at the last stage
    for rec in result.stages:
        assert rec["tokens"] >= rec["real_tokens"] > 0 and rec["flops"] > 0 and rec["wall_s"] > 0
        assert rec["peak_rss_mb"] > 0 and rec["rss_scope"] in ("block", "process")
    assert result.cost["teacher_cache"] == "logits"


# ------------------------------------------------------------------- costs (costs.py's FLOP model)

HAND = dict(d=48, ff=96, heads=4, kv_heads=2, head_dim=12, vocab=49152, d_source=64)  # tiny pair


def hand_costs(batch, lora_r=None):
    """Per-token block FLOPs and per-readout head FLOPs of tiny-target, counted by hand."""
    d, ff, hd, vocab = HAND["d"], HAND["ff"], HAND["head_dim"], HAND["vocab"]
    q, kv = HAND["heads"] * hd, HAND["kv_heads"] * hd
    linears = [(d, q), (d, kv), (d, kv), (q, d), (d, ff), (d, ff), (ff, d)]  # q k v o gate up down
    block = sum(i * o for i, o in linears) + 2 * d  # + two RMSNorm gains
    lora = lora_r * sum(i + o for i, o in linears) if lora_r else 0
    bsz, seq = batch["input_ids"].shape
    n_sup = int((batch["labels"][:, 1:] != -100).sum())  # positions that predict a label
    attn = 4 * seq * q  # QKᵀ and AV, per token
    return dict(
        tokens=bsz * seq,
        block=block,
        lora=lora,
        attn=attn,
        n_sup=n_sup,
        head=2 * d * vocab * n_sup,
        source_head=2 * HAND["d_source"] * vocab * n_sup,
    )


def test_stage_step_flops_equal_a_hand_count(full_run, pair):
    result, _ = full_run
    _, tgt, tok, train, _ = pair
    assert tgt.config.hidden_size == HAND["d"] and tgt.config.vocab_size == HAND["vocab"]
    (batch,) = sft_batches(train, tok, BASE.batch_size, BASE.max_length)  # 2 records: one batch
    c = hand_costs(batch)
    trained = c["tokens"] * ((2 * c["block"] + c["attn"]) + (4 * c["block"] + 2 * c["attn"]))
    # stage 1: block 1 on its cached input, the logit lens after it (forward + input gradient);
    # z~ is kept for the stage, so it is set-up work, not step work
    assert result.stages[0]["step_flops"] == [pytest.approx(trained + 2 * c["head"], rel=1e-12)] * 3
    # stage 4 (last): the output KL reuses the layer's logit lens; the teacher's logits are cached
    assert result.stages[3]["step_flops"] == [pytest.approx(trained + 2 * c["head"], rel=1e-12)] * 3
    cost = result.cost
    assert cost["flop_model"] == FLOP_MODEL and cost["rss_scope"] in ("block", "process")
    assert cost["flops"] == pytest.approx(
        cost["flops_attribution"]
        + cost["flops_source_pass"]
        + sum(r["flops"] for r in result.stages),
        rel=1e-12,
    )
    for rec in result.stages:
        assert rec["flops"] == pytest.approx(sum(rec["step_flops"]) + rec["setup_flops"], rel=1e-12)


def test_kl_stage_step_flops_equal_a_hand_count(pair):
    """Stage 2 of 4 with the KL on, the teacher kept as hidden states and z~ not kept."""
    _, _, tok, train, _ = pair
    cfg = replace(
        BASE,
        steps_per_stage=1,
        eval_batches=0,
        output_kl_every_stage=True,
        max_cached_logits_bytes=0,
    )
    result = run(pair, cfg, stop_after_stage=2)
    (batch,) = sft_batches(train, tok, cfg.batch_size, cfg.max_length)
    c = hand_costs(batch)
    fwd = 2 * c["block"] + c["attn"]
    expected = (
        c["tokens"] * (fwd + 4 * c["block"] + 2 * c["attn"])  # block 2 trains
        + 2 * c["tokens"] * (fwd + 2 * c["block"] + 2 * c["attn"])  # blocks 3-4: input grads
        + 2 * 2 * c["head"]  # logit lens after block 2 and at the top, forward + input grad
        + c["head"]  # z~ recomputed (no grad)
        + c["source_head"]
    )  # the teacher's head on its cached final states
    assert result.stages[1]["step_flops"] == [pytest.approx(expected, rel=1e-12)]
    assert result.cost["teacher_cache"] == "hidden"


def test_each_layer_changes_only_in_its_own_stage(full_run, pair):
    from safetensors.torch import load_file

    result, ckpt = full_run
    _, tgt, *_ = pair
    before, after = params(tgt), params(result.model)
    for name in before:
        if ".layers." not in name:  # embeddings, final norm, head: never trained
            assert torch.equal(before[name], after[name]), name
    for k, layer in enumerate(surgery.decoder_layers(result.model), start=1):
        saved = load_file(str(ckpt / f"stage-{k:03d}.safetensors"))  # written right after stage k
        for name, value in layer.state_dict().items():
            assert torch.equal(saved[name], value), (k, name)  # unchanged after its stage
        assert any(
            not torch.equal(p, q)
            for p, q in zip(layer.parameters(), surgery.decoder_layers(tgt)[k - 1].parameters())
        )
    assert all(p.requires_grad for p in result.model.parameters())  # flags restored


def test_interrupted_run_resumes_to_the_same_numbers(full_run, pair, tmp_path):
    full, _ = full_run
    cfg = replace(BASE, checkpoint_dir=str(tmp_path))
    src, tgt, tok, train, extract = pair
    target = copy.deepcopy(tgt)
    part = transfer(src, target, train, extract, cfg, tok, stop_after_stage=2)
    assert [r["stage"] for r in part.stages] == [1, 2]
    # same seed, second run: identical numbers; only layers 1-2 have changed so far
    for a, b in zip(part.stages, full.stages):
        assert a["losses"] == b["losses"] and a["loss_after"] == b["loss_after"]
    before, now = params(tgt), params(target)
    for name in before:
        trained = ".layers.0." in name or ".layers.1." in name
        assert torch.equal(before[name], now[name]) != trained, name
    resumed = transfer(src, copy.deepcopy(tgt), train, extract, cfg, tok, resume=True)
    assert resumed.resumed_after_stage == 2 and resumed.cost["supervision_cached"]
    assert [r["stage"] for r in resumed.stages] == [1, 2, 3, 4]
    for a, b in zip(resumed.stages, full.stages):
        torch.testing.assert_close(
            torch.tensor(a["losses"]), torch.tensor(b["losses"]), rtol=1e-6, atol=1e-7
        )
    for (n, p), q in zip(resumed.model.named_parameters(), full.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)
    with pytest.raises(InvalidParameterError):  # a checkpoint of another config is refused
        transfer(src, copy.deepcopy(tgt), train, extract, replace(cfg, lr=2e-3), tok, resume=True)


# --------------------------------------------------------------------------- variants


def test_v2_objective_losses_fall(pair):
    result = run(pair, replace(BASE, objective="v2", steps_per_stage=2))
    assert_stage_losses_fall(result)
    assert result.stages[-1]["kl_losses"]


def test_v1_objective_losses_fall(pair):
    result = run(
        pair, replace(BASE, objective="v1", lr=3e-3, steps_per_stage=2), stop_after_stage=2
    )
    assert_stage_losses_fall(result)
    assert not any(r["kl_losses"] for r in result.stages)


def test_lora_trains_adapters_and_merges_them(pair):
    _, tgt, *_ = pair
    result = run(
        pair, replace(BASE, trainable="lora", lr=3e-3, steps_per_stage=2), stop_after_stage=2
    )
    assert_stage_losses_fall(result)
    before, after = params(tgt), params(result.model)
    assert set(before) == set(after)  # adapters merged away: same parameter names
    for name in before:
        in_trained = ".layers.0." in name or ".layers.1." in name
        if not in_trained or "norm" in name:  # LoRA touches only the stage layer's Linears
            assert torch.equal(before[name], after[name]), name
    assert not torch.equal(
        before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"]
    )
    assert all(type(m) is nn.Linear for n, m in result.model.named_modules() if n.endswith("_proj"))
    _, _, tok, train, _ = pair
    c = hand_costs(sft_batches(train, tok, BASE.batch_size, BASE.max_length)[0], lora_r=BASE.lora_r)
    step = (
        c["tokens"]
        * (
            (2 * c["block"] + c["attn"] + 2 * c["lora"])  # base + adapters forward
            + (2 * c["block"] + 4 * c["lora"] + 2 * c["attn"])
        )
        + 2 * c["head"]
    )
    assert result.stages[0]["step_flops"] == [pytest.approx(step, rel=1e-12)] * 2


@pytest.mark.slow
def test_vds_reading_interpolated_pairing_and_kl_every_stage(pair):
    cfg = replace(
        BASE,
        reading="vds",
        tau=0.05,
        pairing="interpolate",
        output_kl_every_stage=True,
        lr=3e-3,
        steps_per_stage=2,
    )
    result = run(pair, cfg, stop_after_stage=1)
    assert result.pairing.strategy == "interpolate" and result.scores is None
    assert result.stages[0]["source_layers"] == [[1, 0.5], [2, 0.5]]
    assert result.stages[0]["kl_losses"]
    assert_stage_losses_fall(result)


@pytest.mark.slow
def test_teacher_hidden_fallback_gives_the_same_kl(pair):
    cfg = replace(BASE, steps_per_stage=1, output_kl_every_stage=True, eval_batches=0)
    a = run(pair, cfg, stop_after_stage=1)
    b = run(pair, replace(cfg, max_cached_logits_bytes=0), stop_after_stage=1)
    assert a.cost["teacher_cache"] == "logits" and b.cost["teacher_cache"] == "hidden"
    torch.testing.assert_close(
        torch.tensor(a.stages[0]["kl_losses"]),
        torch.tensor(b.stages[0]["kl_losses"]),
        rtol=1e-5,
        atol=1e-7,
    )


def test_incompatible_pairs_fail_before_any_work(pair):
    src, tgt, tok, train, extract = pair
    with pytest.raises(IncompatibleModelsError, match="deeper"):
        transfer(tgt, src, train, extract, BASE, tok)
    other = tiny_model("llama", vocab_size=128, num_layers=2, hidden_size=32)
    with pytest.raises(IncompatibleModelsError, match="vocabularies differ"):
        transfer(src, other, train, extract, BASE, tok)
    with pytest.raises(InvalidParameterError):
        SemAlignConfig(objective="v3")
    with pytest.raises(InvalidParameterError):
        transfer(
            src, copy.deepcopy(tgt), train, extract, BASE, tok, resume=True
        )  # no checkpoint_dir


def test_each_decomposition_trains_on_its_own_supervision(pair, tmp_path):
    """config.decomposition reaches the composite map (the stage loss moves) and the supervision
    cache key (a dual run never reads the cosine run's cached supervision, and vice versa)."""
    cfg = replace(BASE, steps_per_stage=1, eval_batches=0, checkpoint_dir=str(tmp_path))
    results = {}
    for name, decomposition in (("cosine", "cosine"), ("dual", "dual"), ("again", "dual")):
        config = replace(cfg, decomposition=decomposition)
        results[name] = run(pair, config, stop_after_stage=1)
    assert [results[n].cost["supervision_cached"] for n in results] == [False, False, True]
    loss = {n: r.stages[0]["losses"][0] for n, r in results.items()}
    assert loss["dual"] == loss["again"] and abs(loss["dual"] - loss["cosine"]) > 1e-6


# --------------------------------------------------------------------------- pieces


def test_composite_map_equals_transfer_state():
    g = torch.Generator().manual_seed(0)
    s_src = semantics.semantic_bases(torch.randn(500, 16, generator=g), disk_cache=False)
    s_tgt = semantics.semantic_bases(torch.randn(500, 12, generator=g), disk_cache=False)
    h = torch.randn(3, 5, 16, generator=g)
    m = composite_map(s_src, s_tgt)
    torch.testing.assert_close(
        map_states(h, m, "none"), semantics.transfer_state(h, s_src, s_tgt), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        map_states(h, m, "source_norm"),
        semantics.transfer_state(h, s_src, s_tgt, rescale="source_norm"),
        rtol=1e-4,
        atol=1e-5,
    )


def test_linear_cka_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 5, generator=g)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 5:] = False
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    # invariant to rotation, scale and a per-example shift of the features
    assert float(linear_cka_loss(x, 3.0 * x @ q + 1.0, keep)) < 1e-5
    assert float(linear_cka_loss(x, torch.randn(2, 7, 5, generator=g), keep)) > 0.05


@pytest.mark.parametrize(
    "max_cached_logits_bytes", [None, 0], ids=["teacher-logits", "teacher-hidden"]
)
def test_bfloat16_models_train_with_finite_losses(pair, max_cached_logits_bytes):
    """gpu-small/paper run in bf16: the fp32 teacher states must meet the bf16 LM head's dtype."""
    src, tgt, tok, train, extract = pair
    src16, tgt16 = copy.deepcopy(src).to(torch.bfloat16), copy.deepcopy(tgt).to(torch.bfloat16)
    cfg = replace(BASE, steps_per_stage=1, output_kl_every_stage=True, eval_batches=0)
    if max_cached_logits_bytes is not None:
        cfg = replace(cfg, max_cached_logits_bytes=max_cached_logits_bytes)
    result = transfer(src16, tgt16, train, extract, cfg, tok, stop_after_stage=1)
    losses = [x for rec in result.stages for x in rec["losses"] + rec["kl_losses"]]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


# --------------------------------------------------------------------------- model access


def padded_batch(vocab: int = 128) -> dict:
    """Two rows of 10 tokens, row 1 left-padded but still longer than a 4-token window."""
    ids = torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :5] = -100  # the second half is the "response"
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_layer_inputs_replay_the_models_own_forward(arch):
    windowed = {"sliding_window": 4} if arch in ("mistral", "gemma2", "gemma3") else {}
    model = tiny_model(arch, num_layers=3, seed=3, **windowed)
    batch = padded_batch()
    with torch.no_grad(), capture_hidden(model, points=("block_in", "block_out")) as ref:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    inputs = LayerInputs(model, [batch], index=1)
    close = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inputs.hidden[0], ref["block_in"][1], **close)
    with torch.no_grad():
        torch.testing.assert_close(
            inputs.run_layer(1, inputs.hidden[0], 0), ref["block_out"][1], **close
        )
    inputs.advance()
    assert inputs.index == 2 and not inputs.hidden[0].requires_grad
    torch.testing.assert_close(inputs.hidden[0], ref["block_in"][2], **close)
    inputs.run_layer(2, inputs.hidden[0], 0).square().sum().backward()  # the step's graph
    block = surgery.decoder_layers(model)[2]
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)


@pytest.mark.parametrize("cache", [1 << 30, 0], ids=["teacher-logits", "teacher-hidden"])
def test_teacher_output_is_the_soft_capped_model_output(cache):
    """Gemma-2's soft cap: the cached teacher (or its states through the head) = model logits."""
    src = tiny_model("gemma2", num_layers=4, seed=4, final_logit_softcapping=0.5)
    tgt = tiny_model("gemma2", num_layers=2, seed=5, hidden_size=32)
    batch = padded_batch()
    config = replace(BASE, max_cached_logits_bytes=cache)
    pairing = pair_layers(None, 2, "floor", n_source=4)
    bases = [
        semantics.semantic_bases(surgery.unembedding(m).weight, disk_cache=False)
        for m in (src, tgt)
    ]
    sup = source_supervision(src, [batch], pairing, config, composite_map(*bases), True)
    mask = supervised_positions(batch["labels"])[0]
    with torch.no_grad():
        reference = src(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        expected = reference.logits[mask]
        got = sup.teacher[0]
        if sup.teacher_kind == "hidden":
            got = teacher_logits(surgery.Unembed(src), got)
    assert sup.teacher_kind == ("logits" if cache else "hidden")
    assert float(expected.abs().max()) < 0.5  # capped: |logits| below the cap
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
