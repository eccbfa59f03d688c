"""Profiles that are right: Gemma2's attention kernel, a dtype each GPU has, per-profile timeouts.

No GPU and no download: a tiny Gemma2 is saved and loaded from a temporary folder, and CUDA's
answers are monkeypatched.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from semalign_core import devices, run_notebook
from semalign_core.errors import InvalidParameterError
from semalign_core.models.registry import load_model
from semalign_core.models.tiny import tiny_config
from semalign_core.profiles import PROFILES
from semalign_core.runs import build_parser

VOCAB = 128


def _save_tiny(folder, arch: str) -> None:
    """A random tiny ``arch`` model and a word-level tokenizer, saved as a local model folder."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size=VOCAB))
    model.save_pretrained(folder)
    words = {f"w{i}": i for i in range(VOCAB - 1)} | {"<unk>": VOCAB - 1}
    backend = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(folder)


def test_gemma2_loads_with_eager_attention_and_its_cap_matters(tmp_path):
    _save_tiny(tmp_path, "gemma2")
    loaded = load_model(str(tmp_path), verbose=False)
    assert loaded.model.config._attn_implementation == "eager"
    assert loaded.stats["attention"] == "eager"
    assert loaded.stats["dtype"] == "float32"
    # queries and keys scaled up so raw attention logits go well past the cap (50)
    with torch.no_grad():
        for layer in loaded.model.model.layers:
            layer.self_attn.q_proj.weight.mul_(300.0)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        capped = loaded.model(ids).logits
        # independent reference: the same weights with attention soft-capping switched off
        loaded.model.config.attn_logit_softcapping = None
        for layer in loaded.model.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        uncapped = loaded.model(ids).logits
    # float noise is ~1e-7; SDPA (which drops the cap) would give no difference at all
    assert (capped - uncapped).abs().max() > 1e-2


def test_other_architectures_keep_the_default_attention(tmp_path):
    _save_tiny(tmp_path, "llama")
    default = AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation
    assert load_model(str(tmp_path), verbose=False).stats["attention"] == default


@pytest.mark.parametrize(
    ("available", "native_bf16", "device", "asked", "expected"),
    [
        (True, False, "cuda", "bfloat16", "float32"),  # T4: no native bf16, no loss scaling
        (True, False, "cuda:0", "bfloat16", "float32"),
        (True, True, "cuda", "bfloat16", "bfloat16"),  # A100/H100
        (True, False, "cuda", "float32", "float32"),
        (True, False, "cuda", "float16", "float16"),  # asked for explicitly: kept
        (False, False, "cpu", "bfloat16", "bfloat16"),  # CPU keeps what the profile says
        (True, False, "cpu", "bfloat16", "bfloat16"),
    ],
)
def test_compute_dtype_per_gpu(monkeypatch, available, native_bf16, device, asked, expected):
    asked_emulation = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked_emulation.append(including_emulation)
        return native_bf16 or including_emulation  # torch counts T4's emulated bf16 by default

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert devices.compute_dtype(asked, device) == expected
    assert all(flag is False for flag in asked_emulation)


def test_cpu_and_smoke_profiles_load_as_they_say():
    for name in ("smoke", "cpu"):
        dtype = PROFILES[name].dtype
        assert devices.compute_dtype(dtype, "cpu") == dtype == "float32"


def test_cell_timeout_follows_the_profile_and_an_explicit_value_wins():
    expected = {"smoke": 1800, "cpu": 7200, "gpu-small": 6 * 3600, "paper": 48 * 3600}
    assert {name: run_notebook.cell_timeout(name) for name in PROFILES} == expected
    assert run_notebook.cell_timeout("paper", 60) == 60
    with pytest.raises(InvalidParameterError):
        run_notebook.cell_timeout("no-such-profile", 60)


def test_command_lines_leave_the_timeout_to_the_profile(monkeypatch):
    assert build_parser().parse_args(["reproduce"]).timeout is None
    assert build_parser().parse_args(["reproduce", "--timeout", "5"]).timeout == 5
    seen = []
    monkeypatch.setattr(
        run_notebook, "run", lambda nb, prof, seed, timeout, extra: seen.append(timeout)
    )
    run_notebook.main(["x.ipynb", "--profile", "smoke"])
    run_notebook.main(["x.ipynb", "--timeout", "9"])
    assert seen == [None, 9]
