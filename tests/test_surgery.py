"""Tiny models and model surgery: every supported architecture, plus a PEFT-wrapped llama."""

import types

import pytest
import torch
from torch import nn

from semalign_core.errors import ArtifactError, UnknownModelError
from semalign_core.lm import surgery
from semalign_core.lm.nethook import capture_hidden
from semalign_core.models.tiny import ARCHITECTURES, tiny_config, tiny_model

_MODELS: dict = {}


def model_of(arch):
    """One shared tiny model per architecture (tests must not modify it)."""
    if arch not in _MODELS:
        _MODELS[arch] = tiny_model(arch)
    return _MODELS[arch]


def token_ids(batch=2, seq=12, vocab=128):
    # seq > tiny SLIDING_WINDOW so local-attention layers really mask something
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_model_is_deterministic_per_seed(arch):
    a, b, c = tiny_model(arch, seed=0), model_of(arch), tiny_model(arch, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(
        not torch.equal(sa[k], sc[k])
        for k in sa
        if sa[k].is_floating_point() and sa[k].numel() > 64
    )
    assert not a.training and a.dtype == torch.float32
    assert a.config._attn_implementation == "eager"


def test_tiny_model_leaves_caller_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_model("llama", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_config_overrides_and_unknown_arch():
    cfg = tiny_config("gemma3", num_layers=2, sliding_window=4)
    assert (
        cfg.model_type == "gemma3_text" and cfg.num_hidden_layers == 2 and cfg.sliding_window == 4
    )
    assert cfg.head_dim == 16
    assert tiny_config("gpt2", hidden_size=32).n_embd == 32
    with pytest.raises(UnknownModelError, match="llama"):
        tiny_config("bert")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_surgery_finds_every_part(arch):
    model = model_of(arch)
    assert surgery.architecture(model) == arch
    layers = surgery.decoder_layers(model)
    assert isinstance(layers, nn.ModuleList) and len(layers) == surgery.num_layers(model) == 4
    assert surgery.hidden_size(model) == 64 and surgery.vocab_size(model) == 128
    assert isinstance(surgery.input_embeddings(model), nn.Embedding)
    assert isinstance(surgery.unembedding(model), nn.Linear)
    assert surgery.unembedding(model).weight.shape == (128, 64)
    assert isinstance(surgery.final_norm(model), nn.Module)
    assert surgery.final_norm(model) not in list(layers.modules())
    for layer in layers:
        attn, mlp = surgery.attention_module(layer), surgery.mlp_module(layer)
        assert "Attention" in type(attn).__name__ and "MLP" in type(mlp).__name__
        assert surgery.attention_residual_module(layer) in list(layer.children())
        assert surgery.mlp_residual_module(layer) in list(layer.children())


LLAMA_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
LINEARS = {
    "gpt2": ["c_attn", "c_fc", "c_proj"],
    "gpt_neox": ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"],
}
BELOW_BLOCK_0 = {
    "gpt2": ["transformer.wte.weight", "transformer.wpe.weight"],
    "gpt_neox": ["gpt_neox.embed_in.weight"],
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_block_linear_names_and_embedding_parameters(arch):
    model = model_of(arch)
    assert surgery.block_linear_names(model) == LINEARS.get(arch, LLAMA_LINEARS)
    names = {id(p): n for n, p in model.named_parameters()}
    below = [names[id(p)] for p in surgery.embedding_parameters(model)]
    assert below == BELOW_BLOCK_0.get(arch, ["model.embed_tokens.weight"])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logit_lens_of_last_block_equals_model_logits(arch):
    model, ids = model_of(arch), token_ids()
    with torch.no_grad(), capture_hidden(model, layers=[-1]) as trace:
        logits = model(input_ids=ids).logits
    lens = surgery.logit_lens(model, trace["block_out"][3])
    torch.testing.assert_close(lens, logits, rtol=0, atol=1e-5)


def test_logit_lens_applies_gemma2_softcapping():
    model = tiny_model("gemma2", final_logit_softcapping=0.5)  # small cap: capping dominates
    with torch.no_grad(), capture_hidden(model, layers=[-1]) as trace:
        logits = model(input_ids=token_ids()).logits
    assert logits.abs().max() <= 0.5
    torch.testing.assert_close(
        surgery.logit_lens(model, trace["block_out"][3]), logits, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_model_stats(arch):
    model = model_of(arch)
    stats = surgery.model_stats(model)
    assert stats["architecture"] == arch
    assert (stats["layers"], stats["hidden"], stats["vocab"], stats["heads"]) == (4, 64, 128, 4)
    assert stats["intermediate"] == 128
    assert stats["kv_heads"] == (4 if arch in ("gpt2", "gpt_neox") else 2)
    assert stats["parameters"] == sum(p.numel() for p in model.parameters())
    assert stats["tied_embeddings"] == bool(model.config.tie_word_embeddings)


def test_unknown_architecture_is_a_one_line_artifact_error():
    fake = nn.Linear(2, 2)
    fake.config = types.SimpleNamespace(model_type="bert")
    with pytest.raises(ArtifactError) as info:
        surgery.decoder_layers(fake)
    message = str(info.value)
    assert "\n" not in message and "'bert'" in message and "gpt_neox" in message
    assert not message.startswith('"')  # not KeyError's quoted repr


def test_peft_lora_llama_is_seen_through():
    peft = pytest.importorskip("peft")
    base = tiny_model("llama")
    wrapped = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    wrapped.eval()
    assert surgery.unwrap(wrapped) is base
    assert surgery.architecture(wrapped) == "llama"
    assert surgery.decoder_layers(wrapped) is surgery.decoder_layers(base)
    assert surgery.final_norm(wrapped) is base.model.norm
    assert surgery.unembedding(wrapped) is base.lm_head
    stats = surgery.model_stats(wrapped)
    assert stats["parameters"] > sum(
        p.numel() for n, p in base.named_parameters() if "lora_" not in n
    )
    ids = token_ids()
    with (
        torch.no_grad(),
        capture_hidden(wrapped, layers=[-1], points=("block_in", "block_out")) as trace,
    ):
        logits = wrapped(input_ids=ids).logits
    torch.testing.assert_close(
        surgery.logit_lens(wrapped, trace["block_out"][3]), logits, rtol=0, atol=1e-5
    )
