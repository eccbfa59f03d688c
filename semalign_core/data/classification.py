"""The text-classification suite used for layer-freezing (SALF) fine-tuning.

Files ``classification/<task>/<split>.jsonl`` (from jianguda/arc). Labels in the files are
strings: integers ("0", "1", ... or 1-based "1".."4" for agnews/dbpedia) or names
("entailment", ...) for rte/cb. Each task maps its raw label values, in order, to 0-based
indices into ``label_words``; the choices and the evidence for them are in
docs/decisions.md ("Verbalizers").
"""

from __future__ import annotations

from dataclasses import dataclass

from semalign_core.data.benchmarks import Split, check_choice, make_split, read_jsonl
from semalign_core.errors import InvalidParameterError


@dataclass(frozen=True)
class ClassificationTask:
    """One task: its verbalizer, its text fields and the splits present on disk."""

    name: str
    label_words: tuple[str, ...]  # verbalizer; index i is label i
    text_fields: tuple[str, ...]  # one field, or (premise, hypothesis) for pair tasks
    splits: tuple[str, ...]  # every split file present
    label_values: tuple[str, ...]  # raw label strings in the files, in label_words order
    unlabeled_splits: tuple[str, ...] = ()  # splits whose labels are absent or placeholders

    @property
    def labeled_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.splits if s not in self.unlabeled_splits)


_BINARY = ("0", "1")
_SENTENCE = ("sentence",)

CLASSIFICATION_TASKS: dict[str, ClassificationTask] = {
    t.name: t
    for t in (
        # sst2/test is the GLUE test set: no gold labels; every row carries the placeholder "0".
        ClassificationTask(
            "sst2",
            ("negative", "positive"),
            _SENTENCE,
            ("dev", "dev_subsample", "test"),
            _BINARY,
            ("test",),
        ),
        ClassificationTask(
            "cr", ("negative", "positive"), _SENTENCE, ("train", "test", "dev_subsample"), _BINARY
        ),
        ClassificationTask(
            "mr", ("negative", "positive"), _SENTENCE, ("train", "test", "dev_subsample"), _BINARY
        ),
        ClassificationTask(
            "mpqa", ("negative", "positive"), _SENTENCE, ("train", "test", "dev_subsample"), _BINARY
        ),
        # 0 = subjective (review sentences), 1 = objective (plot summaries).
        ClassificationTask(
            "subj",
            ("subjective", "objective"),
            _SENTENCE,
            ("train", "test", "dev_subsample"),
            _BINARY,
        ),
        ClassificationTask(
            "trec",
            ("description", "entity", "abbreviation", "human", "location", "number"),
            _SENTENCE,
            ("train", "test", "dev_subsample"),
            ("0", "1", "2", "3", "4", "5"),
        ),
        # 1-based labels; classes.txt: 1 World, 2 Sports, 3 Business, 4 Science/Tech.
        ClassificationTask(
            "agnews",
            ("world", "sports", "business", "technology"),
            _SENTENCE,
            ("test", "dev_subsample"),
            ("1", "2", "3", "4"),
        ),
        # 1-based labels in classes.txt order (Company, EducationalInstitution, Artist, ...).
        ClassificationTask(
            "dbpedia",
            (
                "company",
                "school",
                "artist",
                "athlete",
                "politics",
                "transportation",
                "building",
                "nature",
                "village",
                "animal",
                "plant",
                "album",
                "film",
                "book",
            ),
            _SENTENCE,
            ("dev_subsample",),
            tuple(str(i) for i in range(1, 15)),
        ),
        # GLUE order: entailment, not_entailment.
        ClassificationTask(
            "rte",
            ("yes", "no"),
            ("sentence_1", "sentence_2"),
            ("train", "dev", "dev_subsample", "test"),
            ("entailment", "not_entailment"),
            ("test",),
        ),
        # SuperGLUE order: entailment, contradiction, neutral.
        ClassificationTask(
            "cb",
            ("yes", "no", "maybe"),
            ("premise", "hypothesis"),
            ("train", "dev", "dev_subsample", "test"),
            ("entailment", "contradiction", "neutral"),
            ("test",),
        ),
    )
}

# The labelled split each task is scored on: test when it has labels, else dev, else the
# 256-example dev subsample (dbpedia has nothing else here).
CLS_EVAL_SPLIT: dict[str, str] = {
    name: next(s for s in ("test", "dev", "dev_subsample") if s in spec.labeled_splits)
    for name, spec in CLASSIFICATION_TASKS.items()
}


def pair_text(premise: str, hypothesis: str) -> str:
    """Render an entailment pair as one text: 'premise\\nQuestion: hypothesis?'."""
    return f"{premise.strip()}\nQuestion: {hypothesis.strip().rstrip('.!? ')}?"


def _classification_record(task: ClassificationTask, row: dict, where: str) -> dict:
    """Raw fields plus "text", "label" (0-based), "label_word" and "raw_label" (as in the file)."""
    raw = row.get("label")
    if raw not in task.label_values:
        raise InvalidParameterError(f"unexpected label {raw!r} in {where}")
    label = task.label_values.index(raw)
    fields = [row[f] for f in task.text_fields]
    text = fields[0] if len(fields) == 1 else pair_text(*fields)
    # Raw fields first so that the normalised keys win (the raw "label" is a string).
    return {
        **row,
        "text": text,
        "label": label,
        "label_word": task.label_words[label],
        "raw_label": raw,
    }


def load_classification(
    task: str, split: str, limit: int | None = None, seed: int | None = None
) -> Split:
    """Labelled records {"text", "label", "label_word", raw fields...} of one task split."""
    check_choice("classification task", task, tuple(CLASSIFICATION_TASKS))
    spec = CLASSIFICATION_TASKS[task]
    check_choice(f"{task} split", split, spec.splits)
    if split in spec.unlabeled_splits:
        raise InvalidParameterError(
            f"{task}/{split} has no labels (its label field is absent or a placeholder); "
            f"use one of: {', '.join(spec.labeled_splits)}"
        )
    relpath = f"classification/{task}/{split}.jsonl"
    sources: dict[str, str] = {}
    records = [_classification_record(spec, r, relpath) for r in read_jsonl(relpath, sources)]
    return make_split(f"classification/{task}", split, records, sources, limit, seed)
