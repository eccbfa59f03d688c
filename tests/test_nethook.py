"""Hidden-state capture: agreement with output_hidden_states, residual identity, hook hygiene."""

import pytest
import torch

from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.lm.nethook import POINTS, StopForward, capture_hidden, run_to_layers
from semalign_core.models.tiny import ARCHITECTURES, tiny_model

_MODELS: dict = {}


def model_of(arch):
    """One shared tiny model per architecture (tests must not modify it)."""
    if arch not in _MODELS:
        _MODELS[arch] = tiny_model(arch)
    return _MODELS[arch]


def token_ids(batch=2, seq=12):
    return torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(0))


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_capture_matches_output_hidden_states(arch):
    model, L = model_of(arch), 4
    with torch.no_grad(), capture_hidden(model, points=POINTS) as trace:
        hs = model(input_ids=token_ids(), output_hidden_states=True).hidden_states
    assert len(hs) == L + 1
    assert torch.equal(hs[0], trace["block_in"][0]) and torch.equal(hs[0], trace["embed"][0])
    for k in range(L - 1):
        assert torch.equal(hs[k + 1], trace["block_out"][k])
        assert torch.equal(trace["block_out"][k], trace["block_in"][k + 1])
    # transformers 4.57 returns the last hidden state *after* the final norm, in every arch here.
    torch.testing.assert_close(hs[L], surgery.final_norm(model)(trace["block_out"][L - 1]))
    assert not torch.allclose(hs[L], trace["block_out"][L - 1])
    latent = trace.latent_states()
    assert latent.shape == (L + 1, 2, 12, 64)
    assert torch.equal(latent[:L], torch.stack(hs[:L]))
    assert trace.stack("mlp_out").shape == (L, 2, 12, 64)


@pytest.mark.parametrize(
    "arch, overrides",
    [(a, {}) for a in ARCHITECTURES] + [("gpt_neox", {"use_parallel_residual": False})],
)
def test_residual_identity(arch, overrides):
    model = tiny_model(arch, **overrides) if overrides else model_of(arch)
    with (
        torch.no_grad(),
        capture_hidden(model, points=("block_in", "attn_out", "mlp_out", "block_out")) as t,
    ):
        model(input_ids=token_ids())
    parts = t.stack("block_in") + t.stack("attn_out") + t.stack("mlp_out")
    torch.testing.assert_close(parts, t.stack("block_out"), rtol=0, atol=1e-5)


def test_gemma_embed_point_includes_sqrt_d_scaling():
    model, ids = model_of("gemma2"), token_ids()
    with torch.no_grad(), capture_hidden(model, layers=[], points=("embed",)) as trace:
        model(input_ids=ids)
        raw = surgery.input_embeddings(model)(ids)
    torch.testing.assert_close(trace["embed"][0], raw * 64**0.5)


def test_stop_after_deepest_skips_deeper_layers():
    model, ids = model_of("llama"), token_ids()
    calls = []
    counter = surgery.decoder_layers(model)[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            with capture_hidden(
                model, layers=[0, 1], points=("block_out",), stop_after_deepest=True
            ) as t:
                model(input_ids=ids)
                pytest.fail("the forward pass should have been stopped")
            trace = run_to_layers(
                model, {"input_ids": ids}, layers=[1], points=("block_in", "block_out")
            )
        assert calls == []
        with torch.no_grad():
            full = model(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        counter.remove()
    assert calls == [1]
    assert torch.equal(t["block_out"][0], full[1]) and torch.equal(t["block_out"][1], full[2])
    assert torch.equal(trace["block_in"][1], full[1]) and torch.equal(
        trace["block_out"][1], full[2]
    )
    assert hook_count(model) == 0


def test_stop_with_output_hidden_states_leaves_no_patched_forward():
    # transformers' @check_model_inputs monkey-patches layer.forward and does not restore it when
    # the forward raises; capture_hidden cleans that up.
    model = tiny_model("llama")
    with torch.no_grad():
        model(input_ids=token_ids(), output_hidden_states=True)  # leaves bound-method forwards
        for _ in range(2):
            with capture_hidden(model, layers=[1], stop_after_deepest=True):
                model(input_ids=token_ids(), output_hidden_states=True)
    for module in model.modules():
        forward = vars(module).get("forward")
        assert forward is None or getattr(forward, "__func__", None) is type(module).forward


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hooks_removed_on_exit_and_on_exception(arch):
    model = model_of(arch)
    before = hook_count(model)
    with torch.no_grad(), capture_hidden(model, points=POINTS) as trace:
        assert hook_count(model) > before
        model(input_ids=token_ids())
    assert hook_count(model) == before and len(trace["block_out"]) == 4
    with pytest.raises(RuntimeError, match="boom"):
        with capture_hidden(model, points=POINTS, stop_after_deepest=True):
            raise RuntimeError("boom")
    assert hook_count(model) == before
    with pytest.raises(InvalidParameterError):
        with capture_hidden(model, layers=[7]):
            pass
    assert hook_count(model) == before


def test_detach_false_keeps_graph_and_detach_true_drops_it():
    model = tiny_model("llama")
    model.zero_grad()
    trace = run_to_layers(model, {"input_ids": token_ids()}, layers=[1], detach=False)
    hidden = trace["block_out"][1]
    assert hidden.requires_grad
    hidden.pow(2).mean().backward()
    grad = surgery.decoder_layers(model)[0].mlp.down_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert surgery.decoder_layers(model)[2].mlp.down_proj.weight.grad is None  # never ran
    with capture_hidden(model, layers=[1]) as detached:
        model(input_ids=token_ids())
    assert not detached["block_out"][1].requires_grad


def test_trace_api_and_parameter_errors():
    model = model_of("qwen2")
    with torch.no_grad(), capture_hidden(model, layers=[-1, 1], points="block_out") as trace:
        model(input_ids=token_ids())
    assert trace.layers == (1, 3) and sorted(trace["block_out"]) == [1, 3]
    assert torch.equal(trace.stack("block_out")[1], trace["block_out"][3])
    with pytest.raises(InvalidParameterError):
        trace["mlp_out"]
    with pytest.raises(InvalidParameterError):
        trace.latent_states()  # not every layer captured
    with pytest.raises(InvalidParameterError):
        capture_hidden(model, points=("resid",))
    assert issubclass(StopForward, Exception)
