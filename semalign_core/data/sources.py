"""The official sources of the benchmark files and corpora, and their sha256-checked download.

``sources.json`` beside this module lists every file under the data folder (the plain-text
corpora too, as the data set ``corpora``: :mod:`semalign_core.data.corpora` reads
``<data>/corpora``): its source URL at a pinned revision (or a member of an archive), the sha256
it must have on disk, and how far that sha256 is verified against the official bytes
(``verified``; the manifest defines each level). Each file is written to a temp file beside its
target, checked, then renamed into place: a wrong sha256 raises :class:`ChecksumError` and
leaves nothing behind. Files already present with the right sha256 are skipped without a
request. Where a source is known to differ from our file in serialisation only (the re-indented
sanitized MBPP copy, the 43 rebuilt MMLU CSVs), the documented ``rebuild`` is applied before the
check; the sha256 still decides.

The command line is :mod:`semalign_core.data.fetch` (``make data``).
``SEMALIGN_DATA_MIRROR=http://host:port[/prefix]`` replaces scheme and host of every source URL
and keeps its path (tests serve a loopback copy this way). ``SEMALIGN_FETCH_DATA=1`` lets the
loaders fetch a missing benchmark or corpus on demand (:func:`fetch_for`, called by
:func:`semalign_core.data.resolve.benchmark_path` and
:func:`semalign_core.data.corpora.corpus_path`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from semalign_core import paths
from semalign_core.errors import (
    ChecksumError,
    DataNotFoundError,
    InvalidParameterError,
)
from semalign_core.records import atomic_write

MANIFEST = Path(__file__).with_name("sources.json")
MIRROR_VAR = "SEMALIGN_DATA_MIRROR"
FETCH_VAR = "SEMALIGN_FETCH_DATA"
TIMEOUT_S = 60
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Source:
    """One file of the data folder: where it comes from and the sha256 it must end up with."""

    path: str  # relative to the data folder, e.g. "gsm8k/test.jsonl"
    sha256: str
    verified: str  # how far sha256 is checked against the official bytes (see sources.json)
    url: str | None = None
    archive: str | None = None  # name in the manifest's "archives"; then member is set
    member: str | None = None
    rebuild: str | None = None  # name in REBUILDS, applied when the raw bytes do not match

    @property
    def dataset(self) -> str:
        return self.path.split("/", 1)[0]


@dataclass(frozen=True)
class Manifest:
    files: tuple[Source, ...]
    archives: dict[str, str]  # archive name -> URL

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(sorted({s.dataset for s in self.files}))


def load_manifest(path: Path = MANIFEST) -> Manifest:
    """The committed manifest (``sources.json``)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    files = tuple(Source(**entry) for entry in raw["files"])
    return Manifest(files, {name: a["url"] for name, a in raw["archives"].items()})


def mirrored(url: str) -> str:
    """``url`` with scheme and host replaced by ``SEMALIGN_DATA_MIRROR`` when that is set."""
    mirror = os.environ.get(MIRROR_VAR)
    return mirror.rstrip("/") + urlsplit(url).path if mirror else url


def _json_compact(data: bytes) -> bytes:
    return json.dumps(json.loads(data)).encode("ascii")


def _mmlu_csv(data: bytes) -> bytes:
    rows = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("utf-8")


# The documented, deterministic re-serialisations (shared/benchmarks/README.md).
REBUILDS = {"json-compact": _json_compact, "mmlu-csv": _mmlu_csv}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checked(tmp: Path, source: Source) -> None:
    """Leave in ``tmp`` the bytes ``source`` must have (rebuilt if documented), or raise."""
    data = tmp.read_bytes()
    if _sha256(data) != source.sha256 and source.rebuild:
        try:
            data = REBUILDS[source.rebuild](data)
        except (ValueError, csv.Error):  # not even parseable: the checksum error below says so
            pass
        else:
            tmp.write_bytes(data)
    if _sha256(data) != source.sha256:
        raise ChecksumError(
            f"refusing {source.path}: sha256 {_sha256(data)[:16]}... is not the "
            f"{source.sha256[:16]}... recorded in sources.json (source corrupted or changed)"
        )


def _present(target: Path, source: Source) -> bool:
    """True if ``target`` already holds the right file; a different file there is refused."""
    if not target.is_file():
        return False
    if _sha256(target.read_bytes()) == source.sha256:  # benchmark files are a few MB at most
        return True
    raise ChecksumError(
        f"{target} exists but its sha256 differs from sources.json; move it away to fetch it"
    )


def _download(url: str, out, label: str) -> None:
    """Stream ``url`` into the open binary file ``out``, with a progress bar on a terminal."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=None) as bar:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as err:
        reason = " ".join(str(err).split())
        raise DataNotFoundError(f"could not download {label} from {url}: {reason}") from err


def _fetch_url(source: Source, target: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:
            _download(mirrored(source.url), out, source.path)
        _checked(Path(tmp), source)

    atomic_write(target, write)


def _fetch_archive(url: str, members: list[tuple[Source, Path]], dest: Path) -> None:
    """Download one archive into a temp folder in ``dest``, install each member checked."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmpdir:
        archive = Path(tmpdir) / "archive"
        with open(archive, "wb") as out:
            _download(mirrored(url), out, Path(urlsplit(url).path).name)
        with tarfile.open(archive) as tar:
            for source, target in members:
                data = _member_bytes(tar, source, url)
                atomic_write(target, partial(_install_bytes, data, source))


def _member_bytes(tar: tarfile.TarFile, source: Source, url: str) -> bytes:
    try:
        return tar.extractfile(source.member).read()
    except (KeyError, AttributeError) as err:  # absent, or not a regular file
        raise DataNotFoundError(f"{source.member} is not a file in {url}") from err


def _install_bytes(data: bytes, source: Source, tmp: str) -> None:
    Path(tmp).write_bytes(data)
    _checked(Path(tmp), source)


def _select(manifest: Manifest, only: Iterable[str] | None) -> list[Source]:
    if only is None:
        return list(manifest.files)
    wanted = set(only)
    unknown = sorted(wanted - set(manifest.datasets))
    if unknown:
        raise InvalidParameterError(
            f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(manifest.datasets)}"
        )
    return [s for s in manifest.files if s.dataset in wanted]


def fetch_data(
    dest: str | Path | None = None, only: Iterable[str] | None = None
) -> dict[str, list[str]]:
    """Fetch every manifest file (or those of the data sets ``only``) into ``dest``.

    ``dest`` defaults to ``<repo>/data``. Returns ``{"fetched": [...], "skipped": [...]}``
    (relative paths). Raises ChecksumError (wrong bytes) or DataNotFoundError (download failed).
    """
    manifest = load_manifest()
    root = Path(dest) if dest is not None else paths.REPO_ROOT / "data"
    chosen = _select(manifest, only)
    todo = [s for s in chosen if not _present(root / s.path, s)]
    for source in (s for s in todo if s.url):
        _fetch_url(source, root / source.path)
    for name, url in manifest.archives.items():
        members = [(s, root / s.path) for s in todo if s.archive == name]
        if members:
            _fetch_archive(url, members, root)
    fetched = {s.path for s in todo}
    return {
        "fetched": sorted(fetched),
        "skipped": sorted(s.path for s in chosen if s.path not in fetched),
    }


def fetch_for(relpath: str, dest: Path) -> None:
    """Fetch the data set(s) holding ``relpath`` (a file or folder) into ``dest``, if known."""
    prefix = relpath.rstrip("/") + "/"
    manifest = load_manifest()
    hits = {s.dataset for s in manifest.files if s.path == relpath or s.path.startswith(prefix)}
    if hits:
        fetch_data(dest, sorted(hits))
