"""The official evaluation benchmarks (GSM8K, MMLU, HumanEval, MBPP) and the `Split` they load into.

Every loader reads the files in their published format (see shared/benchmarks/README.md),
records the sha256 of each file it read, and applies the same subsetting rule
(:func:`make_split`), so a result JSON can say exactly which examples were used.
The transfer and classification loaders reuse :class:`Split`, :func:`make_split` and
:func:`read_jsonl` from here.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from semalign_core.data.resolve import benchmark_path, sha256_file
from semalign_core.errors import InvalidParameterError

# ---------------------------------------------------------------------------------------------
# Split: the common return type
# ---------------------------------------------------------------------------------------------


@dataclass
class Split:
    """The records of one benchmark split, with what is needed to reproduce the selection."""

    benchmark: str
    split: str
    records: list[dict]
    n_available: int
    sources: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    seed: int | None = None
    limit: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.records[i]

    def provenance(self) -> dict[str, Any]:
        """JSON-able description of the selection, for result files."""
        return {
            "benchmark": self.benchmark,
            "split": self.split,
            "n": len(self.records),
            "n_available": self.n_available,
            "seed": self.seed,
            "limit": self.limit,
            "sources": dict(self.sources),
        }


def check_choice(kind: str, value: str, valid) -> None:
    """Raise InvalidParameterError unless ``value`` is one of ``valid``."""
    if value not in valid:
        raise InvalidParameterError(
            f"unknown {kind} {value!r}; valid: {', '.join(map(str, valid))}"
        )


def select_subset(records: list, limit: int | None, seed: int | None, label: str) -> list:
    """Apply the shared subsetting rule.

    ``limit=None`` keeps all; ``limit=k, seed=None`` keeps the first k; ``limit=k, seed=s``
    keeps ``random.Random(s).sample`` of k indices, returned in the original order (so the
    order never depends on the seed, only the membership). ``label`` names the split in errors.
    """
    n = len(records)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidParameterError(f"seed must be an integer or None, got {seed!r}")
    if limit is None:
        return list(records)
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidParameterError(f"limit must be a positive integer or None, got {limit!r}")
    if limit < 1:
        raise InvalidParameterError(f"limit must be at least 1, got limit={limit} for {label}")
    if limit > n:
        raise InvalidParameterError(f"limit={limit} exceeds the {n} records of {label}")
    if seed is None:
        return list(records[:limit])
    keep = sorted(random.Random(seed).sample(range(n), limit))
    return [records[i] for i in keep]


def make_split(
    benchmark: str,
    split: str,
    records: list[dict],
    sources: dict[str, str],
    limit: int | None,
    seed: int | None,
) -> Split:
    """Subset ``records`` and wrap them in a :class:`Split`."""
    chosen = select_subset(records, limit, seed, f"{benchmark}/{split}")
    return Split(benchmark, split, chosen, len(records), dict(sources), seed, limit)


def read_jsonl(relpath: str, sources: dict[str, str]) -> list[dict]:
    """Parse a (optionally .gz) JSON Lines benchmark file; record its sha256 in ``sources``."""
    path = benchmark_path(relpath)
    sources[relpath] = sha256_file(path)
    opener = gzip.open if relpath.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------
# GSM8K
# ---------------------------------------------------------------------------------------------

GSM8K_SPLITS = ("train", "test")


def gsm8k_target(answer: str) -> str:
    """The final answer after '####', thousands separators removed ("1,000" -> "1000")."""
    return answer.split("####")[-1].strip().replace(",", "")


def load_gsm8k(split: str = "test", limit: int | None = None, seed: int | None = None) -> Split:
    """GSM8K problems: {"question", "answer" (worked solution), "target" (final number)}."""
    check_choice("gsm8k split", split, GSM8K_SPLITS)
    sources: dict[str, str] = {}
    rows = read_jsonl(f"gsm8k/{split}.jsonl", sources)
    records = [
        {"question": r["question"], "answer": r["answer"], "target": gsm8k_target(r["answer"])}
        for r in rows
    ]
    return make_split("gsm8k", split, records, sources, limit, seed)


# ---------------------------------------------------------------------------------------------
# MMLU
# ---------------------------------------------------------------------------------------------

MMLU_SPLITS = ("dev", "val", "test")

# The 57 subjects of the final release, sorted. Listed here (not discovered from the folder) so
# that a data folder missing some subject files is an error rather than a silently smaller test.
MMLU_SUBJECTS = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)


def _mmlu_subjects(subjects: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Validate and sort the requested subjects (all when None)."""
    if subjects is None:
        return list(MMLU_SUBJECTS)
    if isinstance(subjects, str):
        subjects = [subjects]
    unknown = [s for s in subjects if s not in MMLU_SUBJECTS]
    if unknown:
        raise InvalidParameterError(
            f"unknown MMLU subject(s) {', '.join(map(repr, unknown))}; valid subjects include "
            f"{', '.join(MMLU_SUBJECTS[:5])}, ... ({len(MMLU_SUBJECTS)} in all, see MMLU_SUBJECTS)"
        )
    if not subjects:
        raise InvalidParameterError("subjects is empty; pass None for all 57 MMLU subjects")
    return sorted(set(subjects))


def _read_mmlu_csv(relpath: str, subject: str, sources: dict[str, str]) -> list[dict]:
    """One header-less MMLU CSV: rows of question, A, B, C, D, answer letter."""
    path = benchmark_path(relpath)
    sources[relpath] = sha256_file(path)
    # newline='' because some fields contain embedded newlines (README, MMLU format).
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    records = []
    for row in rows:
        if len(row) != 6 or row[5] not in ("A", "B", "C", "D"):
            raise InvalidParameterError(f"malformed MMLU row in {relpath}: {row[:1]!r}...")
        records.append(
            {"subject": subject, "question": row[0], "choices": row[1:5], "answer": row[5]}
        )
    return records


def load_mmlu(
    split: str = "test",
    subjects: str | list[str] | None = None,
    limit: int | None = None,
    seed: int | None = None,
) -> Split:
    """MMLU questions {"subject", "question", "choices": [A, B, C, D], "answer": letter}.

    Subjects are read in sorted order, rows in file order; ``limit``/``seed`` apply to the
    concatenation.
    """
    check_choice("MMLU split", split, MMLU_SPLITS)
    sources: dict[str, str] = {}
    records: list[dict] = []
    for subject in _mmlu_subjects(subjects):
        records += _read_mmlu_csv(f"mmlu/{split}/{subject}_{split}.csv", subject, sources)
    return make_split("mmlu", split, records, sources, limit, seed)


# ---------------------------------------------------------------------------------------------
# HumanEval
# ---------------------------------------------------------------------------------------------

HUMANEVAL_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def load_humaneval(limit: int | None = None, seed: int | None = None) -> Split:
    """The 164 HumanEval problems (a single test split), fields as in the official file."""
    sources: dict[str, str] = {}
    rows = read_jsonl("humaneval/HumanEval.jsonl.gz", sources)
    records = [{k: r[k] for k in HUMANEVAL_FIELDS} for r in rows]
    return make_split("humaneval", "test", records, sources, limit, seed)


# ---------------------------------------------------------------------------------------------
# MBPP
# ---------------------------------------------------------------------------------------------

# task_id ranges from the official mbpp/README.md; the sanitized subset uses the same ranges.
MBPP_SPLIT_RANGES = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}


def _mbpp_full_record(r: dict) -> dict:
    """Normalise a mbpp.jsonl row to the common schema."""
    return {
        "task_id": r["task_id"],
        "text": r["text"],
        "code": r["code"],
        "test_list": list(r["test_list"]),
        "test_setup_code": r.get("test_setup_code", ""),
        "test_imports": [],
        "challenge_test_list": list(r.get("challenge_test_list", [])),
    }


def _mbpp_sanitized_record(r: dict) -> dict:
    """Normalise a sanitized-mbpp.json row (its reworded ``prompt`` becomes ``text``)."""
    return {
        "task_id": r["task_id"],
        "text": r["prompt"],
        "code": r["code"],
        "test_list": list(r["test_list"]),
        "test_setup_code": "",
        "test_imports": list(r.get("test_imports", [])),
        "challenge_test_list": [],
    }


def load_mbpp(
    split: str = "test",
    sanitized: bool = False,
    limit: int | None = None,
    seed: int | None = None,
) -> Split:
    """MBPP problems of one split (by task_id range), full or sanitized, in one schema:
    {"task_id", "text", "code", "test_list", "test_setup_code", "test_imports",
    "challenge_test_list"}."""
    check_choice("MBPP split", split, tuple(MBPP_SPLIT_RANGES))
    lo, hi = MBPP_SPLIT_RANGES[split]
    sources: dict[str, str] = {}
    if sanitized:
        relpath = "mbpp/sanitized-mbpp.json"
        path = benchmark_path(relpath)
        sources[relpath] = sha256_file(path)
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)  # a single JSON array, not JSON Lines
        normalise, name = _mbpp_sanitized_record, "mbpp-sanitized"
    else:
        rows = read_jsonl("mbpp/mbpp.jsonl", sources)
        normalise, name = _mbpp_full_record, "mbpp"
    records = sorted(
        (normalise(r) for r in rows if lo <= r["task_id"] <= hi), key=lambda r: r["task_id"]
    )
    return make_split(name, split, records, sources, limit, seed)
