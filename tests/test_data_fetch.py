"""`make data`: the fetcher against a loopback copy of the official sources.

A threading http.server serves the real files of ../shared/benchmarks and ../shared/corpora under
their sources' URL paths (and a ``data.tar`` laid out as the official MMLU archive);
``SEMALIGN_DATA_MIRROR`` points every URL at it, so only the host changes.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from semalign_core import paths
from semalign_core.data import (
    load_classification,
    load_gsm8k,
    load_humaneval,
    load_mbpp,
    load_mmlu,
    load_transfer,
)
from semalign_core.data.corpora import CORPUS_FILES, corpus_path, corpus_text
from semalign_core.data.fetch import main
from semalign_core.data.sources import fetch_data, load_manifest
from semalign_core.errors import ChecksumError, DataNotFoundError, InvalidParameterError

SHARED = paths.REPO_ROOT.parent / "shared" / "benchmarks"
SHARED_CORPORA = paths.REPO_ROOT.parent / "shared" / "corpora"
pytestmark = pytest.mark.skipif(
    not (SHARED.is_dir() and SHARED_CORPORA.is_dir()), reason="needs ../shared/{benchmarks,corpora}"
)

RAW = "https://raw.githubusercontent.com"
# Sources as named in shared/benchmarks/README.md (full commit ids looked up in each repository).
GITHUB_SOURCES = {
    "gsm8k": "openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c"
    "/grade_school_math/data/{rest}",
    "humaneval": "openai/human-eval/6d43fb980f9fee3c892a914eda09951f772ad10d/data/{rest}",
    "classification": "jianguda/arc/3105a6fdcd4e7ae284ba3e8d3718cd1bc8a7ffc4/data/{rest}",
}
MBPP_SOURCES = {
    "mbpp/mbpp.jsonl": "patdfb/TPC-EES/30c8c572bfcd0fc5fa537210710d7fde134e4868/mbpp/mbpp.jsonl",
    "mbpp/sanitized-mbpp.json": "mrigankpawagi/PropertyEval/"
    "b2be813dcff867cc350c61b8d3ea57ec088ce1ac/sanitized-mbpp.json",
}
LATEN = "Trae1ounG/Neural_Incompatibility/bba32ea1b6f0b78d3b0ccbcd9c8dd0f08a23e318/data"
MMLU_TAR = "https://people.eecs.berkeley.edu/~hendrycks/data.tar"
# Repository @ commit and path of each corpus file, from shared/corpora/README.md.
CORPUS_SOURCES = {
    "tinyshakespeare/input.txt": "karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e"
    "/data/tinyshakespeare/input.txt",
    "gutenberg/1342-0.txt": "GITenberg/Pride-and-Prejudice_1342"
    "/81db45c9c48c592f0b77f01fc59e677ad0a5634e/1342-0.txt",
    "gutenberg/1661.txt": "GITenberg/The-Adventures-of-Sherlock-Holmes_1661"
    "/7e5dd2703fbf503c004063e96ab7c61262375e5f/1661.txt",
    "gutenberg/2600-0.txt": "GITenberg/War-and-Peace_2600"
    "/fa22ab90f00f627e83d14acabe32d91602d2365d/2600-0.txt",
    "gutenberg/2701-0.txt": "GITenberg/Moby-Dick--Or-The-Whale_2701"
    "/bdf1948e6cd00963730971e5624e764a35f238c3/2701-0.txt",
}


def _sums(folder: Path, prefix: str = "") -> dict[str, str]:
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    pairs = (line.split() for line in lines)
    return {prefix + path.removeprefix("./"): digest for digest, path in pairs}


def _shared_sums() -> dict[str, str]:
    """Every data path (corpora under ``corpora/``) -> its sha256 in the shared SHA256SUMS."""
    return _sums(SHARED) | _sums(SHARED_CORPORA, "corpora/")


def _shared_file(path: str) -> Path:
    top, rest = path.split("/", 1)
    return SHARED_CORPORA / rest if top == "corpora" else SHARED / path


def _expected_url(path: str) -> str:
    top, rest = path.split("/", 1)
    if top in GITHUB_SOURCES:
        return f"{RAW}/{GITHUB_SOURCES[top].format(rest=rest)}"
    if top == "mbpp":
        return f"{RAW}/{MBPP_SOURCES[path]}"
    if top == "corpora":
        return f"{RAW}/{CORPUS_SOURCES[rest]}"
    task, split = re.fullmatch(r"(\w+)_(extract|align|train)\.jsonl", rest).groups()
    return f"{RAW}/{LATEN}/{task}/{task}_{split}_split.jsonl"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_maps_every_file_to_its_source():
    manifest = load_manifest()
    sums = _shared_sums()
    assert {s.path: s.sha256 for s in manifest.files} == sums
    assert manifest.archives == {"mmlu-data-tar": MMLU_TAR}
    for s in manifest.files:
        if s.dataset == "mmlu":
            assert (s.archive, s.member, s.url) == ("mmlu-data-tar", "data/" + s.path[5:], None)
        else:
            assert s.url == _expected_url(s.path) and s.archive is None, s.path
    readme = (SHARED / "README.md").read_text()
    rebuilt = {"mmlu/" + p for p in re.findall(r"\| `mmlu/([^`]+)` \| \d+ \| rebuilt", readme)}
    by_level = {s.path for s in manifest.files if s.verified == "shared-copy"}
    assert len(rebuilt) == 43 and by_level == rebuilt
    assert {s.path for s in manifest.files if s.rebuild} == rebuilt | {"mbpp/sanitized-mbpp.json"}
    corpora = {s.path: s.verified for s in manifest.files if s.dataset == "corpora"}
    assert corpora == {f"corpora/{p}": "source" for p in CORPUS_FILES.values()}


class _Server:
    """Loopback server over ``root``, counting requests."""

    def __init__(self, root: Path):
        owner = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                owner.requests.append(self.path)
                super().do_GET()

        self.requests: list[str] = []
        handler = partial(Handler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _served_path(root: Path, url: str) -> Path:
    target = root / urlsplit(url).path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _publish(root: Path, corrupt: str | None = None) -> None:
    """Lay out the sources under ``root``; ``corrupt`` (a data path) gets one byte changed.

    sanitized-mbpp is served re-indented and one rebuilt MMLU file in another CSV dialect, as
    the real sources differ, so the documented rebuilds are exercised.
    """
    tar_files: dict[str, bytes] = {}
    for s in load_manifest().files:
        data = _shared_file(s.path).read_bytes()
        if s.path == "mbpp/sanitized-mbpp.json":
            data = json.dumps(json.loads(data), indent=2).encode()
        if s.path == "mmlu/test/nutrition_test.csv":
            data = _other_dialect(data)
        if s.path == corrupt:
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        if s.url:
            _served_path(root, s.url).write_bytes(data)
        else:
            tar_files[s.member] = data
    with tarfile.open(_served_path(root, MMLU_TAR), "w") as tar:
        for name, data in sorted(tar_files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _other_dialect(data: bytes) -> bytes:
    rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
    out = io.StringIO(newline="")
    csv.writer(out, quoting=csv.QUOTE_ALL).writerows(rows)  # quoted, \r\n
    assert out.getvalue().encode() != data
    return out.getvalue().encode()


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """serve(corrupt=None) -> server; the mirror variable points at it."""
    servers: list[_Server] = []

    def start(corrupt: str | None = None) -> _Server:
        root = tmp_path / f"served{len(servers)}"
        _publish(root, corrupt)
        servers.append(_Server(root))
        monkeypatch.setenv("SEMALIGN_DATA_MIRROR", servers[-1].url)
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty data folder the loaders read first; ../shared and <repo>/data hidden."""
    dest = tmp_path / "data"
    dest.mkdir()
    monkeypatch.setenv("SEMALIGN_DATA_DIR", str(dest))
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.delenv("SEMALIGN_FETCH_DATA", raising=False)
    monkeypatch.delenv("SEMALIGN_CORPUS_DIR", raising=False)
    return dest


def _leftovers(dest: Path) -> list[str]:
    return [str(p) for p in dest.rglob(".*")]


def test_fetch_everything_verify_load_and_skip(serve, data_dir, monkeypatch):
    server = serve()
    report = fetch_data(data_dir)
    sums = _shared_sums()
    assert report == {"fetched": sorted(sums), "skipped": []}
    assert {p: _sha(data_dir / p) for p in sums} == sums
    assert not _leftovers(data_dir)
    assert len(server.requests) == len(sums) - 171 + 1  # one per file, one for the tar

    assert load_gsm8k("train", limit=1).records and load_gsm8k("test", limit=1).records
    assert len(load_mmlu("dev")) == 285 and load_mmlu("test", "nutrition", limit=1).records
    assert load_humaneval(limit=1).records
    assert load_mbpp(limit=1).records and load_mbpp(sanitized=True, limit=1).records
    assert load_transfer("gsm", "extract", limit=1).records
    assert load_classification("sst2", "dev", limit=1).records
    monkeypatch.setenv("SEMALIGN_CORPUS_DIR", str(data_dir / "corpora"))
    assert corpus_path("moby_dick") == data_dir / "corpora" / "gutenberg" / "2701-0.txt"
    assert "Call me Ishmael." in corpus_text("moby_dick")

    server.requests.clear()
    again = fetch_data(data_dir)
    assert again == {"fetched": [], "skipped": sorted(sums)} and server.requests == []


@pytest.mark.parametrize("corrupt", ["gsm8k/test.jsonl", "mmlu/val/anatomy_val.csv"])
def test_corrupted_source_is_refused_and_leaves_nothing(serve, data_dir, corrupt, capsys):
    serve(corrupt=corrupt)
    dataset = corrupt.split("/")[0]
    with pytest.raises(ChecksumError) as err:
        fetch_data(data_dir, only=[dataset])
    assert "\n" not in str(err.value) and corrupt in str(err.value)
    assert not (data_dir / corrupt).exists() and not _leftovers(data_dir)

    assert main(["--dest", str(data_dir), "--only", dataset]) == 1  # the CLI: one line
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and corrupt in lines[0]


def test_a_different_file_in_place_is_not_overwritten(serve, data_dir):
    serve()
    (data_dir / "humaneval").mkdir()
    (data_dir / "humaneval" / "HumanEval.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    with pytest.raises(ChecksumError, match="HumanEval.jsonl.gz exists"):
        fetch_data(data_dir, only=["humaneval"])


def test_loaders_fetch_on_demand_only_when_asked(serve, data_dir, monkeypatch):
    server = serve()
    with pytest.raises(DataNotFoundError, match="make data"):
        load_humaneval(limit=1)
    assert server.requests == []
    monkeypatch.setenv("SEMALIGN_FETCH_DATA", "1")
    assert len(load_humaneval()) == 164
    assert (
        _sha(data_dir / "humaneval" / "HumanEval.jsonl.gz")
        == _shared_sums()["humaneval/HumanEval.jsonl.gz"]
    )
    assert len(server.requests) == 1  # humaneval alone: no corpus rides along


def test_only_corpora_lands_where_the_corpus_loader_looks(serve, data_dir, tmp_path, capsys):
    server = serve()
    repo_data = tmp_path / "repo" / "data"  # <repo>/data, the default --dest
    assert main(["--dest", str(repo_data), "--only", "corpora"]) == 0
    assert "5 fetched" in capsys.readouterr().out
    assert sorted(str(p.relative_to(repo_data)) for p in repo_data.rglob("*") if p.is_file()) == [
        f"corpora/{p}" for p in sorted(CORPUS_FILES.values())
    ]
    assert len(server.requests) == 5
    path = corpus_path("sherlock_holmes")
    assert path == repo_data / "corpora" / "gutenberg" / "1661.txt"
    assert _sha(path) == _shared_sums()["corpora/gutenberg/1661.txt"]


def test_corpus_loader_fetches_on_demand_only_when_asked(serve, data_dir, monkeypatch, tmp_path):
    server = serve()
    with pytest.raises(DataNotFoundError, match="make data"):
        corpus_path("shakespeare")
    assert server.requests == []
    monkeypatch.setenv("SEMALIGN_FETCH_DATA", "1")
    assert corpus_text("shakespeare").startswith("First Citizen:")
    fetched = tmp_path / "repo" / "data" / "corpora" / "tinyshakespeare" / "input.txt"
    assert _sha(fetched) == _shared_sums()["corpora/tinyshakespeare/input.txt"]
    assert len(server.requests) == len(CORPUS_FILES)  # the whole data set, nothing else
    assert not any(data_dir.iterdir())  # SEMALIGN_DATA_DIR is the benchmarks' root only


def test_unknown_dataset_and_unreachable_mirror(data_dir, monkeypatch, tmp_path):
    with pytest.raises(InvalidParameterError, match="gsm9k"):
        fetch_data(data_dir, only=["gsm9k"])
    dead = _Server(tmp_path)  # bound, then closed: nothing listens on that port
    dead.close()
    monkeypatch.setenv("SEMALIGN_DATA_MIRROR", dead.url)
    with pytest.raises(DataNotFoundError, match="could not download gsm8k/") as err:
        fetch_data(data_dir, only=["gsm8k"])
    assert "\n" not in str(err.value) and not _leftovers(data_dir)
