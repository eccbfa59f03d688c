"""Block replay and Unembed on every tiny architecture, padded batches longer than the sliding
window; SALF fine-tuning through them on every architecture."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from semalign_core.errors import InvalidParameterError
from semalign_core.lm import nethook, surgery
from semalign_core.lm.nethook import capture_hidden, record_block_calls
from semalign_core.lm.replay import BlockReplay
from semalign_core.models.tiny import ARCHITECTURES, tiny_config, tiny_model
from semalign_core.salf import finetune as ft
from semalign_core.salf import policies

pytestmark = pytest.mark.usefixtures("one_thread")

WINDOWED = ("mistral", "gemma2", "gemma3")
WINDOW, SEQ, LAYERS = 4, 12, 4  # SEQ > WINDOW: sliding-window layers mask real tokens
CAP = 0.5  # Gemma soft-capping small enough to dominate the tiny models' logits
WORDS = ("negative", "positive")
TRAIN = [
    {"text": "a wonderful, moving film", "label": 1},
    {"text": "dull", "label": 0},
    {"text": "the plot never comes together and the acting is wooden", "label": 0},
    {"text": "sharp, funny and warm", "label": 1},
]


def model_for(arch: str, **overrides) -> torch.nn.Module:
    kw = {"sliding_window": WINDOW} if arch in WINDOWED else {}
    if arch in ("gemma2", "gemma3"):
        kw["final_logit_softcapping"] = CAP
    return tiny_model(arch, num_layers=LAYERS, seed=2, **{**kw, **overrides})


def padded_batch(padding: str, vocab: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, vocab, (3, SEQ), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    lengths = (SEQ, 9, 5)  # row 0 unpadded; rows 1-2 padded, row 1 still longer than WINDOW
    for row, n in enumerate(lengths):
        if padding == "right":
            mask[row, n:] = 0
        else:
            mask[row, : SEQ - n] = 0
    return ids, mask


def reference(model, ids, mask):
    """The model's own logits and the states entering each block (hooks on its forward)."""
    with torch.no_grad(), capture_hidden(model, points=("block_in", "block_out")) as trace:
        logits = model(input_ids=ids, attention_mask=mask).logits
    entering = [trace["block_in"][k] for k in range(LAYERS)] + [trace["block_out"][LAYERS - 1]]
    return logits, entering


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_replayed_suffix_equals_model_logits(arch, padding):
    model = model_for(arch)
    ids, mask = padded_batch(padding)
    logits, entering = reference(model, ids, mask)
    with torch.no_grad():
        replay = BlockReplay(model, ids, mask)
        unembed = surgery.Unembed(model)
        torch.testing.assert_close(replay.embedding_output, entering[0], rtol=0, atol=0)
        for start in range(LAYERS + 1):
            out = unembed(replay.run(entering[start], start=start))
            torch.testing.assert_close(out, logits, rtol=0, atol=1e-5)
            prefix = replay.run(replay.embedding_output, stop=start)
            torch.testing.assert_close(prefix, entering[start], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_replay_under_sdpa_attention_and_no_padding(arch):
    # Real checkpoints load with SDPA, whose masks are boolean or None (is_causal).
    kw = {"sliding_window": WINDOW} if arch in WINDOWED else {}
    config = tiny_config(arch, num_layers=LAYERS, **kw)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    ids, _ = padded_batch("right")
    for mask in (None, torch.ones_like(ids)):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            replay = BlockReplay(model, ids, mask)
            out = surgery.Unembed(model)(replay.run(replay.embedding_output))
        torch.testing.assert_close(out, logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", WINDOWED)
def test_the_sliding_window_matters_in_these_batches(arch):
    ids, mask = padded_batch("right")
    windowed = model_for(arch)(input_ids=ids, attention_mask=mask).logits
    wide = model_for(arch, sliding_window=4 * SEQ)(input_ids=ids, attention_mask=mask).logits
    assert (windowed - wide).abs().max() > 1e-3  # else the replay test would not see masks


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_unembed_of_last_block_equals_model_logits(arch):
    model = model_for(arch)
    ids, mask = padded_batch("right")
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        _, entering = reference(model, ids, mask)
        unembed = surgery.Unembed(model)
        torch.testing.assert_close(unembed(entering[-1]), out.logits, rtol=0, atol=1e-5)
        # hidden_states[-1] is the final-normed last state
        normed = unembed.decode_normed(out.hidden_states[-1])
        torch.testing.assert_close(normed, out.logits, rtol=0, atol=1e-5)
    if arch in ("gemma2", "gemma3"):
        assert out.logits.abs().max() <= CAP and unembed.cap == CAP


def test_softcap_against_the_formula():
    z = torch.linspace(-40, 40, 81)
    torch.testing.assert_close(surgery.softcap_logits(z, 30.0), 30.0 * torch.tanh(z / 30.0))
    assert surgery.softcap_logits(z, None) is z


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_embedding_output_keeps_the_graph_under_grad(arch):
    model = copy.deepcopy(model_for(arch))
    ids, mask = padded_batch("right")
    replay = BlockReplay(model, ids, mask)
    surgery.Unembed(model)(replay.run(replay.embedding_output)).sum().backward()
    assert surgery.input_embeddings(model).weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert not BlockReplay(model, ids, mask).embedding_output.requires_grad


def test_recording_runs_no_block_and_restores_forwards():
    model = model_for("gemma3")
    ids, mask = padded_batch("left")
    called = []  # pre-hooks: which modules were entered
    modules = {
        **{f"block{k}": block for k, block in enumerate(surgery.decoder_layers(model))},
        **{
            f"attn{k}": surgery.attention_module(block)
            for k, block in enumerate(surgery.decoder_layers(model))
        },
        "norm": surgery.final_norm(model),
    }
    handles = [
        m.register_forward_pre_hook(lambda *a, name=name: called.append(name))
        for name, m in modules.items()
    ]
    try:
        with torch.no_grad(), record_block_calls(model, stop=2) as recorded:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    # Blocks 0-1 were entered (their recorders ran), no attention computed, nothing after block 1.
    assert len(recorded.calls) == 2 and called == ["block0", "block1"]
    assert all("forward" not in vars(block) for block in surgery.decoder_layers(model))
    logits, _ = reference(model, ids, mask)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, logits)
    replay = BlockReplay(model, ids, mask, stop=2)
    with pytest.raises(InvalidParameterError, match="recorded"):
        replay.run(replay.embedding_output, start=0, stop=3)
    with pytest.raises(InvalidParameterError, match="out of range"):
        record_block_calls(model, stop=LAYERS + 1)
    assert nethook.first_tensor((logits,)) is logits


# --------------------------------------------------------------------------- SALF on every family


@pytest.fixture(scope="module")
def tokenizer():
    from semalign_core.models.registry import load_model

    return load_model("tiny-source", verbose=False).tokenizer


def salf_model(arch: str, tokenizer) -> torch.nn.Module:
    return model_for(arch, vocab_size=len(tokenizer))


def finetune(model, tokenizer, policy, **config):
    cfg = ft.FinetuneConfig(
        **{"epochs": 1, "batch_size": 2, "lr": 1e-2, "max_length": 24, **config}
    )
    return ft.finetune(model, tokenizer, TRAIN, TRAIN, policy, cfg, label_words=WORDS)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_salf_finetune_smoke(arch, tokenizer):
    model = salf_model(arch, tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = finetune(model, tokenizer, policies.salf_policy())
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    eof = result.policy["eof"]
    trained = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert trained and set(result.grad_params) == trained
    frozen = {id(p) for block in surgery.decoder_layers(model)[:eof] for p in block.parameters()}
    frozen |= {id(p) for p in surgery.embedding_parameters(model)}
    assert not {n for n, p in model.named_parameters() if id(p) in frozen} & trained
    assert result.metrics["n"] == len(TRAIN) and 0 <= result.metrics["accuracy"] <= 1


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "gemma3"])
def test_lora_adapts_every_linear_layer_of_the_suffix(arch, tokenizer):
    result = finetune(salf_model(arch, tokenizer), tokenizer, policies.Lora(eof=2, r=2))
    assert result.grad_params and all("lora_" in n for n in result.grad_params)
    adapted = {n.split(".lora_")[0] for n in result.grad_params}
    blocks = {int(re.search(r"\.(?:h|layers)\.(\d+)\.", n).group(1)) for n in adapted}
    assert blocks == {2, 3} and len(adapted) >= 2 * 4  # attention and MLP layers of both blocks


def test_full_finetune_trains_gpt2_position_embeddings(tokenizer):
    model = salf_model("gpt2", tokenizer)
    wpe = model.transformer.wpe.weight.detach().clone()
    result = finetune(model, tokenizer, policies.FullFinetune())
    assert "transformer.wpe.weight" in result.grad_params
    assert not torch.equal(model.transformer.wpe.weight, wpe)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "gpt_neox"])
def test_cached_prefix_and_uncached_training_give_identical_parameters(arch, tokenizer):
    base = salf_model(arch, tokenizer)
    runs, params = {}, {}
    for cache in (True, False):
        model = copy.deepcopy(base)
        policy = policies.FixedEof(eof=2)
        runs[cache] = finetune(model, tokenizer, policy, epochs=2, cache_prefix=cache)
        params[cache] = dict(model.named_parameters())
    assert runs[True].cost["cache_hits"] == 2 and runs[False].cost["cache_hits"] == 0
    assert runs[True].losses == runs[False].losses
    assert all(torch.equal(p, params[False][n]) for n, p in params[True].items())
