"""Stand-ins for hub models (issue 16): with SEMALIGN_STANDINS=1 every hub model of gpu-small and
paper loads offline as a tiny random model of its real config class, depth and vocabulary, with
a tokenizer whose ids fit; SEMALIGN_SHRINK=1 shrinks those profiles' budgets to smoke's sizes.

The reference shapes are the hub configs as published (written out here, not read from the
registry). Stand-ins are built once into the model cache (seconds) and reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from transformers import Gemma2Config, LlamaConfig, Qwen2Config

from semalign_core.cli import main as cli_main
from semalign_core.experiments import budgets
from semalign_core.experiments.notebook import require_models
from semalign_core.models import standins
from semalign_core.models.registry import REGISTRY, is_standin, load_model, model_identity
from semalign_core.models.teacher_recipe import TeacherRecipe
from semalign_core.models.teachers import teacher_dir, teacher_model_identity
from semalign_core.paths import model_cache_dir
from semalign_core.profiles import PROFILES
from semalign_core.semalign.result import check_compatible

# stand-ins without a cached tokenizer borrow SmolLM2's; making every stand-in: make test-scale
pytestmark = [pytest.mark.realmodel, pytest.mark.slow]

# hub model -> (config class, layers, vocabulary) of its published config.json
PUBLISHED = {
    "qwen2.5-1.5b-instruct": (Qwen2Config, 28, 151936),
    "qwen2.5-0.5b-instruct": (Qwen2Config, 24, 151936),
    "smollm2-360m-instruct": (LlamaConfig, 32, 49152),
    "llama2-13b-chat": (LlamaConfig, 40, 32000),
    "llama2-7b-chat": (LlamaConfig, 32, 32000),
    "codellama-13b-python": (LlamaConfig, 40, 32000),
    "wizardcoder-python-13b": (LlamaConfig, 40, 32001),
    "qwen2-7b": (Qwen2Config, 28, 152064),
    "gemma2-9b": (Gemma2Config, 42, 256000),
    "llama3-8b": (LlamaConfig, 32, 128256),
}
HUB_PROFILES = ("gpu-small", "paper")
HUB_MODELS = sorted(
    {m for p in HUB_PROFILES for m in PROFILES[p].models() if REGISTRY[m].kind == "hub"}
)
TEXTS = [
    "The capital of France is Paris.",
    "def add(a, b):\n    return a  +  b\n",
    "Résumé: naïve café, 日本語のテキスト, emoji 🙂 and digits 1234567890.",
    "Question: Natalia sold clips to 48 of her friends in April. How many?\nAnswer:",
]


@pytest.fixture(autouse=True)
def standins_on(monkeypatch):
    monkeypatch.setenv(standins.STANDINS_ENV, "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def loaded():
    """name -> LoadedModel of its stand-in (built once per cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(standins.STANDINS_ENV, "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        return {name: load_model(name, verbose=False) for name in HUB_MODELS}


def test_every_hub_model_of_the_hub_profiles_has_a_published_reference():
    assert set(HUB_MODELS) == set(PUBLISHED)


@pytest.mark.parametrize("name", HUB_MODELS)
def test_standin_has_the_real_config_class_depth_and_vocabulary(loaded, name):
    config_class, layers, vocab = PUBLISHED[name]
    model = loaded[name].model
    assert type(model.config) is config_class
    assert (model.config.num_hidden_layers, model.config.vocab_size) == (layers, vocab)
    assert model.get_input_embeddings().weight.shape == (vocab, 64)  # the stand-in width
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 2
    assert loaded[name].origin == "standin"


@pytest.mark.parametrize("name", HUB_MODELS)
def test_standin_tokenizer_ids_fit_the_vocabulary(loaded, name):
    tokenizer, vocab = loaded[name].tokenizer, PUBLISHED[name][2]
    assert len(tokenizer) <= vocab
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": TEXTS[0]}], tokenize=False, add_generation_prompt=True
    )
    for text in [*TEXTS, chat]:
        ids = tokenizer(text)["input_ids"]
        assert ids and max(ids) < vocab, (name, text)


def test_gemma2_standin_uses_the_eager_kernel(loaded):
    assert loaded["gemma2-9b"].stats["attention"] == "eager"  # soft-capping needs it


@pytest.mark.parametrize("profile", HUB_PROFILES)
def test_semalign_pair_of_the_standins_is_compatible(loaded, profile):
    prof = PROFILES[profile]
    check_compatible(loaded[prof.semalign_source].model, loaded[prof.semalign_target].model)


def test_cut_tokenizer_keeps_the_first_ids_and_their_merges(loaded):
    """Llama-2's 32,000-id stand-in tokenizer is SmolLM2's cut at 32,000: a text whose full
    tokenization has only ids below 32,000 tokenizes identically (every merge on the way made a
    lower id), and any other text still encodes, into smaller pieces."""
    full = loaded["smollm2-360m-instruct"].tokenizer  # SmolLM2's whole (49,152 ids)
    cut = loaded["llama2-7b-chat"].tokenizer
    compared = 0
    for text in [*TEXTS, " the of and to in is that for it"]:
        ids = full(text)["input_ids"]
        if max(ids) < 32000:
            assert cut(text)["input_ids"] == ids, text
            compared += 1
        assert cut.decode(cut(text)["input_ids"], skip_special_tokens=True) == text
    assert compared >= 2


def test_standin_identity_says_standin_and_differs_from_the_hub(loaded, monkeypatch):
    ident = model_identity("llama2-7b-chat")
    assert ident["origin"].startswith("standin of meta-llama/Llama-2-7b-chat-hf")
    assert ident["weights_sha256"] and ident["tokenizer_sha256"]
    monkeypatch.delenv(standins.STANDINS_ENV)
    assert not is_standin("llama2-7b-chat")
    assert model_identity("llama2-7b-chat")["origin"].startswith("hub meta-llama/")


def test_teachers_made_from_a_standin_are_cached_apart(monkeypatch):
    recipe = TeacherRecipe("qwen2.5-1.5b-instruct")
    assert teacher_dir(recipe).parent == standins.standin_root()
    assert teacher_model_identity(recipe)["origin"].endswith("from a standin")
    monkeypatch.delenv(standins.STANDINS_ENV)
    assert teacher_dir(recipe).parent == model_cache_dir()


@pytest.mark.parametrize("profile", HUB_PROFILES)
def test_hub_profiles_are_runnable_offline_with_standins(profile, capsys):
    require_models(PROFILES[profile])  # raised offline before stand-ins existed
    assert cli_main(["check", "--profile", profile]) == 0


# --------------------------------------------------------------------------- SEMALIGN_SHRINK

SHRUNK = """
import json
from dataclasses import asdict
from semalign_core.experiments import budgets as b
from semalign_core.profiles import get_profile
out = {}
for p in ("gpu-small", "paper"):
    prof = get_profile(p)
    out[p] = {
        "transfer": {t: asdict(b.transfer_budget(prof, t)) for t in ("gsm", "mbpp", "sst2")},
        "analysis": asdict(b.SEMALIGN_ANALYSIS_BUDGETS[p]),
        "salf_analysis": b.SALF_ANALYSIS_EXAMPLES[p],
        "salf": asdict(b.SALF_DEFAULTS[p]),
        "timing": b.TIMING[p],
        "seeds": {e: s[p] for e, s in b.DEFAULT_SEEDS.items()},
        "recipe": asdict(b.TEACHER_RECIPES[p]) if p in b.TEACHER_RECIPES else None,
    }
print(json.dumps(out))
"""


def shrunk_budgets(flag: str) -> dict:
    env = {**os.environ, budgets.SHRINK_ENV: flag}
    proc = subprocess.run(
        [sys.executable, "-c", SHRUNK], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def test_shrink_gives_the_hub_profiles_smokes_sizes():
    shrunk = shrunk_budgets("1")
    for profile in HUB_PROFILES:
        got = shrunk[profile]
        for task, budget in got["transfer"].items():
            # smoke's sizes, written out (TRANSFER_BUDGETS / CLS_BUDGETS["smoke"])
            want = (4, 2, 48, 32) if task != "sst2" else (8, 4, 64, 1)
            sizes = ("n_train", "n_extract", "max_length", "max_new_tokens")
            assert tuple(budget[k] for k in sizes) == want, (profile, task)
            assert budget["steps_per_stage"] == 1 and budget["epochs"] == 1
        assert got["analysis"]["n_examples"] == 4 and got["salf_analysis"] == 8
        assert got["salf"]["budget"]["n_train"] == 8 and len(got["salf"]["tasks"]) == 1
        assert got["timing"]["repeats"] == 1
        assert all(len(seeds) <= 2 for seeds in got["seeds"].values())
    assert shrunk["gpu-small"]["recipe"]["n_train"] == 16
    assert shrunk["gpu-small"]["recipe"]["base"] == "qwen2.5-1.5b-instruct"
    # settings stay the profile's: paper's per-task learning rates (SemAlign Table 5)
    paper_mbpp = shrunk["paper"]["transfer"]["mbpp"]
    assert paper_mbpp["method_config"]["sft"] == {"lr": 3e-4}


def test_without_shrink_the_budgets_are_the_profiles():
    got = shrunk_budgets("")
    assert got["gpu-small"]["transfer"]["gsm"]["n_train"] is None
    assert got["paper"]["transfer"]["mbpp"]["n_train"] == 300
    assert got["paper"]["salf"]["budget"]["n_train"] == 1500
