"""Layer attribution (captum vs hooks, one pass for all layers), batching, pairing dispatch."""

import pytest
import torch

from semalign_core.data.batching import collate
from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.models.tiny import tiny_model
from semalign_core.semalign.attribution import (
    grad_x_activation,
    interpolation_plan,
    layer_attribution,
    pair_layers,
    response_loss,
)
from semalign_core.semalign.pairing import floor_grid


def _random_batches(vocab=128, seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        lengths = [12, 9, 7]
        examples = []
        for length in lengths:
            ids = torch.randint(0, vocab, (length,), generator=g).tolist()
            labels = [-100] * (length // 2) + ids[length // 2 :]
            examples.append({"input_ids": ids, "labels": labels})
        batches.append(collate(examples, pad_token_id=0))
    return batches


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", vocab_size=128, num_layers=4)


# --------------------------------------------------------------------------- batching


def test_collate_right_pads_with_mask_and_ignored_labels():
    b = collate(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}],
        pad_token_id=2,
    )
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    with pytest.raises(InvalidParameterError):
        collate([], 0)
    with pytest.raises(InvalidParameterError):
        collate([{"input_ids": [1, 2], "labels": [1]}], 0)


def test_padding_does_not_change_the_loss(llama):
    ex = {"input_ids": [3, 4, 5, 6, 7, 8], "labels": [-100, -100, 5, 6, 7, 8]}
    alone = collate([ex], 0)
    padded = collate([ex, {"input_ids": list(range(1, 10)), "labels": list(range(1, 10))}], 0)
    with torch.no_grad():
        a = response_loss(llama, **alone)
        b = response_loss(llama, **padded)
        ref = llama(**alone).logits[0, 1:-1]
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    expected = torch.nn.functional.cross_entropy(ref, torch.tensor([5, 6, 7, 8]))
    torch.testing.assert_close(a[0], expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- attribution


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_captum_and_hooks_give_the_same_grad_x_activation(arch):
    model = tiny_model(arch, vocab_size=128, num_layers=3)
    batch = _random_batches()[0]
    a = grad_x_activation(model, batch, "captum")
    b = grad_x_activation(model, batch, "hooks")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x.shape == (3, 12, 64)
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("granularity", ["channel", "token", "example"])
@pytest.mark.parametrize("aggregate", ["sum_abs", "mean_signed"])
def test_layer_scores_captum_equals_hooks(llama, aggregate, granularity):
    batches = _random_batches()
    s1 = layer_attribution(llama, batches, aggregate, "captum", granularity)
    s2 = layer_attribution(llama, batches, aggregate, "hooks", granularity)
    assert s1.shape == (4,) and s1.dtype == torch.float64
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-9)


def test_one_forward_and_one_backward_per_batch_for_all_layers(llama, monkeypatch):
    counts = {"forward": 0, "backward": 0}
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        counts["backward"] += 1
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    handle = surgery.decoder_layers(llama)[0].register_forward_hook(
        lambda *a: counts.__setitem__("forward", counts["forward"] + 1)
    )
    try:
        for method in ("captum", "hooks"):
            counts.update(forward=0, backward=0)
            layer_attribution(llama, _random_batches(n=3), method=method)
            assert counts == {"forward": 3, "backward": 3}, method
    finally:
        handle.remove()
    assert all(p.grad is None for p in llama.parameters())  # activations only: no weight grads


def test_aggregates_are_consistent(llama):
    batches = _random_batches()
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    n_examples = sum(b["input_ids"].shape[0] for b in batches)
    for g, n in (("channel", n_tokens), ("token", n_tokens), ("example", n_examples)):
        total = layer_attribution(llama, batches, "sum_abs", "hooks", g)
        torch.testing.assert_close(
            layer_attribution(llama, batches, "mean_abs", "hooks", g), total / n
        )
    signed = [
        layer_attribution(llama, batches, "sum_signed", "hooks", g)
        for g in ("channel", "token", "example")
    ]
    torch.testing.assert_close(signed[0], signed[1])
    torch.testing.assert_close(signed[0], signed[2])
    # |.| per channel >= |.| per token >= |.| per example >= |signed sum|
    c, t, e = (
        layer_attribution(llama, batches, "sum_abs", "hooks", g)
        for g in ("channel", "token", "example")
    )
    assert (
        torch.all(c >= t - 1e-12)
        and torch.all(t >= e - 1e-12)
        and torch.all(e >= signed[0].abs() - 1e-12)
    )


def test_last_layer_token_attribution_vanishes_behind_final_rmsnorm(llama):
    """Euler: the final RMSNorm is scale-invariant, so grad·h summed over channels is 0 at the
    last block; per-channel magnitudes (the default granularity) are not."""
    batches = _random_batches()
    tok = layer_attribution(llama, batches, "sum_abs", "hooks", "token")
    chan = layer_attribution(llama, batches, "sum_abs", "hooks", "channel")
    assert tok[-1] < 1e-3 * tok[:-1].max()
    assert chan[-1] > 0.05 * chan[:-1].max()


def test_attribution_works_on_a_frozen_model_and_restores_mode():
    model = tiny_model("llama", vocab_size=128, num_layers=2)
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    scores = layer_attribution(model, _random_batches(n=1), method="hooks")
    assert torch.all(scores > 0) and model.training


def test_bad_options_are_one_line_errors(llama):
    for kwargs in ({"aggregate": "max"}, {"method": "ig"}, {"granularity": "head"}):
        with pytest.raises(InvalidParameterError):
            layer_attribution(llama, _random_batches(n=1), **kwargs)


# --------------------------------------------------------------------------- pairing


def test_pair_layers_dispatch():
    scores = [0.1, 0.9, 0.2, 0.3, 0.8, 0.1, 0.5, 0.4, 0.0, 1.0]
    p = pair_layers(scores, 5)
    # windows (0,2],(2,4],(4,6],(6,8],(8,10]: argmax in each
    assert p.source_layers == [2, 4, 5, 7, 10] and p.strategy == "attribution" and p.is_monotone
    assert pair_layers(torch.tensor(scores), 5).source_layers == [2, 4, 5, 7, 10]
    assert pair_layers(scores, 5, "floor").source_layers == floor_grid(10, 5)
    assert pair_layers(None, 4, "uniform", n_source=6).source_layers == [2, 3, 5, 6]
    interp = pair_layers(None, 4, "interpolate", n_source=6)
    assert interp.strategy == "interpolate" and interp.source_layers == floor_grid(6, 4)
    plan = interpolation_plan(interp)
    assert plan[1] == [(1, 0.5), (2, 0.5)] and plan[4] == [(6, 1.0)]
    assert interpolation_plan(p)[3] == [(5, 1.0)]
    with pytest.raises(InvalidParameterError):
        pair_layers(None, 4, "attributed", n_source=6)
    with pytest.raises(InvalidParameterError):
        pair_layers(scores, 4, "nearest")
