"""The generation backend: which one a profile's choice selects on a machine, the export of a
model trained in memory to the folder vLLM loads, and the backend named in every record.

vLLM is not installed here (and there is no GPU): its presence is faked where the selection
depends on it, and its lm-eval wrapper is replaced by lm-eval's HFLM over the exported folder,
so the vLLM path's export, settings and records are checked against the HF path's own numbers.
The vLLM run itself is checked on a GPU machine with vLLM installed (docs/decisions.md).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from semalign_core.errors import InvalidParameterError  # noqa: E402
from semalign_core.evaluation import backends  # noqa: E402
from semalign_core.evaluation.backends import choose_backend, export_for_vllm  # noqa: E402
from semalign_core.evaluation.harness import evaluate  # noqa: E402
from semalign_core.experiments import transfer_tables  # noqa: E402
from semalign_core.profiles import PROFILES, get_profile  # noqa: E402

TASKS = "semalign_gsm8k,semalign_cls_sst2"  # one generation and one log-likelihood task
EVAL = dict(limit=2, max_new_tokens=4, batch_size=2, keep_samples=True)

# --------------------------------------------------------------------------- selection


@pytest.fixture
def fake_vllm(monkeypatch):
    """``find_spec("vllm")`` finds a package (every other lookup is the real one)."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "vllm":
            return importlib.machinery.ModuleSpec("vllm", None)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_vllm_is_not_installed_here():
    """The premise of the other tests: the selection without vLLM is this machine's own."""
    assert not backends.vllm_installed()


def test_auto_without_vllm_is_hf_with_the_reason():
    assert choose_backend("auto") == ("hf", "auto: vllm is not installed")


def test_auto_with_vllm_but_no_gpu_is_hf(fake_vllm, no_cuda):
    assert backends.vllm_installed()
    assert choose_backend("auto") == ("hf", "auto: no CUDA GPU is visible")


def test_auto_with_vllm_and_a_gpu_is_vllm(fake_vllm, cuda):
    backend, reason = choose_backend("auto")
    assert backend == "vllm" and reason.startswith("auto:")


def test_hf_is_hf_anywhere(fake_vllm, cuda):
    assert choose_backend("hf") == ("hf", "requested")


def test_explicit_vllm_where_it_cannot_run_says_how_to_install():
    with pytest.raises(InvalidParameterError) as err:
        choose_backend("vllm")
    message = str(err.value)
    assert "vllm is not installed" in message and 'pip install -e ".[vllm]"' in message
    assert "\n" not in message


def test_explicit_vllm_without_a_gpu_is_an_error(fake_vllm, no_cuda):
    with pytest.raises(InvalidParameterError, match="no CUDA GPU is visible"):
        choose_backend("vllm")


def test_explicit_vllm_where_it_can_run(fake_vllm, cuda):
    assert choose_backend("vllm") == ("vllm", "requested")


@pytest.mark.parametrize("bad", ["vLLM", "", "gguf"])
def test_unknown_choice_is_an_error(bad):
    with pytest.raises(InvalidParameterError, match="auto, hf, vllm"):
        choose_backend(bad)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_names_a_valid_backend(profile):
    choice = get_profile(profile).generation_backend
    assert choice in backends.CHOICES
    assert choose_backend(choice)[0] in backends.BACKENDS  # and resolves here without error


def test_hub_profiles_use_vllm_where_it_runs():
    assert {p: PROFILES[p].generation_backend for p in PROFILES} == {
        "smoke": "hf",
        "cpu": "hf",
        "gpu-small": "auto",
        "paper": "auto",
    }


# --------------------------------------------------------------------------- export


@pytest.fixture
def trained():
    """The tiny source with its tokenizer, trained in memory by one Adam step (so the export
    must carry weights that exist nowhere on disk)."""
    from semalign_core.models.registry import load_model

    loaded = load_model("tiny-source", verbose=False)
    model = loaded.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(
        0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)
    )
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the optimizer step changed no weight"
    return model, loaded.tokenizer


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_export_reloads_to_the_same_logits(trained, tmp_path):
    model, tokenizer = trained
    folder = export_for_vllm(model, tokenizer, tmp_path / "export")
    assert folder == tmp_path / "export"
    names = {p.name for p in folder.iterdir()}
    assert "config.json" in names
    assert any(n.endswith(".safetensors") for n in names), names
    assert not any(n.endswith(".bin") for n in names), names
    assert {"tokenizer_config.json", "tokenizer.json"} <= names, names
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary sibling left

    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer("The answer is 42, and the question is unknown.", return_tensors="pt")
    ids = ids["input_ids"]
    torch.testing.assert_close(_logits(reloaded, ids), _logits(model, ids), atol=1e-6, rtol=0)


def test_export_replaces_a_folder_and_a_failed_one_keeps_it(trained, tmp_path, monkeypatch):
    model, tokenizer = trained
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "stale.txt").write_text("old")
    export_for_vllm(model, tokenizer, folder)
    assert not (folder / "stale.txt").exists() and (folder / "config.json").exists()
    before = sorted(p.name for p in folder.iterdir())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        export_for_vllm(model, tokenizer, folder)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


# --------------------------------------------------------------------------- evaluate


def test_default_backend_is_hf_in_every_record(trained):
    model, tokenizer = trained
    records = evaluate(model, TASKS, tokenizer=tokenizer, **EVAL)
    assert {name: rec["backend"] for name, rec in records.items()} == {
        "semalign_gsm8k": "hf",
        "semalign_cls_sst2": "hf",
    }


def test_vllm_backend_evaluates_the_exported_model(trained, tmp_path, monkeypatch):
    """With vLLM faked by HFLM over the exported folder: the export happened under the cache
    with the in-memory weights, the wrapper got the HF path's settings, the folder is gone
    afterwards, every record says "vllm", and the numbers are the HF path's."""
    model, tokenizer = trained
    monkeypatch.setenv("SEMALIGN_CACHE_DIR", str(tmp_path / "cache"))
    calls, released = [], []

    def fake_vllm_lm(folder, batch_size, dtype, max_length, seed, **kwargs):
        names = {p.name for p in folder.iterdir()}
        calls.append(dict(folder=folder, names=names, batch_size=batch_size, dtype=dtype))
        calls[-1].update(max_length=max_length, seed=seed, **kwargs)
        reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        return HFLM(
            pretrained=reloaded,
            tokenizer=tokenizer,
            batch_size=batch_size,
            add_bos_token=kwargs["add_bos_token"],
            max_length=max_length,
        )

    monkeypatch.setattr(backends, "vllm_lm", fake_vllm_lm)
    monkeypatch.setattr(backends, "release", released.append)
    hf = evaluate(model, TASKS, tokenizer=tokenizer, **EVAL)
    vllm = evaluate(model, TASKS, tokenizer=tokenizer, backend="vllm", **EVAL)

    (call,) = calls
    assert call["folder"].is_relative_to(tmp_path / "cache")
    assert "config.json" in call["names"] and "tokenizer.json" in call["names"]
    assert (call["batch_size"], call["dtype"], call["seed"]) == (2, "float32", 0)
    assert call["max_length"] == model.config.max_position_embeddings
    assert call["add_bos_token"] == hf["semalign_gsm8k"]["add_bos_token"]
    assert not call["folder"].exists() and len(released) == 1
    assert {rec["backend"] for rec in vllm.values()} == {"vllm"}
    for name, rec in vllm.items():
        assert rec["metrics"] == hf[name]["metrics"], name
        assert rec["samples"] == hf[name]["samples"], name
        same = {
            k: v for k, v in rec.items() if k not in ("backend", "provenance", "wall_s_all_tasks")
        }
        other = {
            k: v
            for k, v in hf[name].items()
            if k not in ("backend", "provenance", "wall_s_all_tasks")
        }
        assert same == other, name


def test_unknown_backend_and_a_passed_lm_with_vllm_are_errors(trained):
    model, tokenizer = trained
    with pytest.raises(InvalidParameterError, match="unknown backend 'auto'"):
        evaluate(model, TASKS, tokenizer=tokenizer, backend="auto", **EVAL)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2)
    with pytest.raises(InvalidParameterError, match="runs as it is"):
        evaluate(lm, TASKS, tokenizer=tokenizer, backend="vllm", **EVAL)
    assert (
        evaluate(lm, "semalign_cls_sst2", tokenizer=tokenizer, limit=2)["semalign_cls_sst2"][
            "backend"
        ]
        == "hf"
    )


# --------------------------------------------------------------------------- transfer tables


def _fake_out(task: str, backend: str) -> dict:
    return {
        "metrics": {"exact_match": 0.5, "bits_per_byte": 1.0},
        "stderr": {},
        "n": 2,
        "prompt_style": "transfer",
        "decoding": {"method": "greedy"},
        "samples": [],
        "data": {"sources": {}},
        "backend": backend,
    }


@pytest.mark.parametrize(
    ("profile", "task", "installed", "expected"),
    [
        ("gpu-small", "gsm", True, "vllm"),
        ("gpu-small", "gsm", False, "hf"),
        ("gpu-small", "mmlu", True, "hf"),  # log-likelihood only: HF
        ("smoke", "gsm", True, "hf"),  # the profile says hf
    ],
)
def test_a_transfer_cell_evaluates_through_its_profiles_backend(
    profile, task, installed, expected, monkeypatch, request
):
    if installed:
        request.getfixturevalue("fake_vllm")
        request.getfixturevalue("cuda")
    seen = []

    def fake_evaluate(model, tasks, **kwargs):
        seen.append(kwargs.get("backend", "hf"))
        return {t: _fake_out(t, seen[-1]) for t in tasks}

    monkeypatch.setattr(transfer_tables, "evaluate", fake_evaluate)
    cell = transfer_tables.make_cell(get_profile(profile), "target", task)
    metrics = transfer_tables._evaluation_metrics(cell, None, None, None, {})
    assert seen == [expected]
    assert metrics["backend"] == expected
    assert {m["backend"] for m in metrics.get("secondary", {}).values()} <= {expected}
