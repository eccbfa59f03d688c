"""Sources that are only read go where accelerate's ``device_map`` puts them when several GPUs
are visible and ``SEMALIGN_SPREAD_SOURCES=1`` asks for it (``devices.inference_device``); the
loader's ``device="auto"`` path, run here on the CPU (where accelerate maps every layer to it),
gives the same model as a plain load."""

from __future__ import annotations

import torch

from semalign_core import devices
from semalign_core.models.registry import load_model
from semalign_core.models.tiny import tiny_model


def test_auto_placement_loads_the_same_model(tmp_path):
    model = tiny_model("llama", seed=3, vocab_size=96, hidden_size=32, num_layers=2)
    model.save_pretrained(tmp_path)
    from semalign_core.models.registry import load_tokenizer

    load_tokenizer("tiny-target").save_pretrained(tmp_path)
    plain = load_model(str(tmp_path), verbose=False).model
    mapped = load_model(str(tmp_path), device="auto", verbose=False).model
    assert getattr(mapped, "hf_device_map", None)  # placed by accelerate, not moved by us
    assert set(mapped.hf_device_map.values()) <= {"cpu", 0, "cuda:0"}
    ids = torch.tensor([[1, 5, 7, 9]])
    torch.testing.assert_close(mapped(ids).logits, plain(ids).logits, rtol=0, atol=1e-6)


def test_built_models_ignore_auto_and_one_device_stays_default(monkeypatch):
    tiny = load_model("tiny-target", device="auto", verbose=False).model
    assert next(tiny.parameters()).device.type == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert devices.inference_device() == devices.default_device()  # opt-in only
    monkeypatch.setenv(devices.SPREAD_ENV, "1")
    assert devices.inference_device() == "auto"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert devices.inference_device() == devices.default_device()
