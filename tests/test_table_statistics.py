"""Tables 1-2 with intervals, paired comparisons and label diagnostics, from synthetic records.

Records are written, shaped like the real ones (``experiments/transfer_tables.py``), into a temp
results folder: ``metrics.items`` holds one ``{doc_id, gold, prediction, <metric>}`` per item, the
same items for every row and seed; multiple-choice predictions are one ``[loglikelihood,
is_greedy]`` per choice. Old records have no ``items``.
"""

from __future__ import annotations

import json

import pytest

from semalign_core.report import semalign_tables, teacher_table
from semalign_core.report.semalign_tables import ABOVE_SFT, ABOVE_TARGET, BELOW_TARGET

PROFILE = "smoke"
N = 60  # items per benchmark
GREEDY = {"max_new_tokens": 32, "method": "greedy", "num_samples": 1, "temperature": 0.0}
LOGLIK = {"method": "loglikelihood"}
METRIC = {"gsm": "exact_match", "mmlu": "acc", "humaneval": "pass@1", "sst2": "acc"}
EVAL_TASK = {
    "gsm": "semalign_gsm8k",
    "mmlu": "semalign_mmlu",
    "humaneval": "semalign_humaneval",
    "sst2": "semalign_cls_sst2",
}
LR = {
    "semalign": 3e-5,
    "seeking": 3e-4,
    "laten": 1e-5,
    "sft": 2e-5,
    "output_kl": 2e-5,
    "hidden_distill": 2e-5,
}


@pytest.fixture
def results(tmp_path, monkeypatch):
    folder = tmp_path / "results"
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(folder))
    return folder


def _choices(label: int, n_choices: int) -> list[list]:
    """Per-choice log-likelihoods whose highest is ``label``'s."""
    return [[-1.0 if c == label else -5.0 - c, c == label] for c in range(n_choices)]


def _items(task: str, scores) -> list[dict]:
    """Generated-answer items of ``task`` with ``scores`` (0/1) per item."""
    return [
        {
            "doc_id": f"{task}/{i}",
            "gold": "42",
            "prediction": ["42" if score else "[invalid]"],
            METRIC[task]: float(score),
        }
        for i, score in enumerate(scores)
    ]


def _mc_items(task: str, gold: list[int], predicted: list[int]) -> list[dict]:
    """Multiple-choice items: gold choice, per-choice log-likelihoods whose highest is the
    predicted choice, score 1 where they agree."""
    n_choices = 4 if task == "mmlu" else 2
    return [
        {
            "doc_id": f"{task}/{i}",
            "gold": g,
            "prediction": _choices(p, n_choices),
            METRIC[task]: float(g == p),
        }
        for i, (g, p) in enumerate(zip(gold, predicted))
    ]


def _cls(folder, method: str, seed, gold, predicted, macro_f1: float | None = None):
    """A Table 2 SST-2 record."""
    items = _mc_items("sst2", gold, predicted)
    _write(folder, method, "sst2", seed, items, setting="finetuned", macro_f1=macro_f1)


def _write(
    folder,
    method: str,
    task: str,
    seed: int | None,
    items: list[dict] | None = None,
    value: float | None = None,
    setting: str = "table1",
    macro_f1: float | None = None,
):
    """One record file; ``items`` None: an old record (``value`` given instead)."""
    metric = METRIC[task]
    if items is not None:
        value = sum(item[metric] for item in items) / len(items)
    decoding = LOGLIK if task in ("mmlu", "sst2") else GREEDY
    run = method + "__" + task + ("" if seed is None else f"__seed{seed}")
    config = {
        "dtype": "float32",
        "eval": {"decoding": "greedy", "limit": N, "prompt_style": "transfer", "seed": 0},
        "eval_task": EVAL_TASK[task],
        "method": method,
        "profile": PROFILE,
        "seed": seed,
        "source": "tiny-source",
        "target": "tiny-target",
        "task": task,
        "version": 1,
    }
    if method in LR:
        config["transfer"] = {"method_config": {"lr": LR[method], "seed": seed}, "n_train": 4}
    metrics = {
        "all": {metric: value},
        "decoding": decoding,
        "metric": metric,
        "n": len(items) if items is not None else N,
        "percent": None if value is None else 100 * value,
        "stderr": 0.05,
        "transfer": None,
        "value": value,
    }
    if macro_f1 is not None:
        metrics["all"]["macro_f1"] = macro_f1
    if items is not None:
        metrics["items"] = items
    record = {
        "config": config,
        "experiment": "semalign_transfer",
        "method": method,
        "metrics": metrics,
        "profile": PROFILE,
        "run": run,
        "seed": seed,
        "task": task,
    }
    if setting == "finetuned":
        run = f"ft-source__{run}"
        config["setting"] = "finetuned"
        record.update(
            experiment="semalign_finetuned_teacher",
            run=run,
            setting="finetuned",
            teacher="ft-source",
        )
    path = folder / record["experiment"] / PROFILE / f"{run}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True))


def _fraction(rate: float, shift: int = 0) -> list[int]:
    """``N`` 0/1 scores with ``rate`` of ones, rotated by ``shift``."""
    ones = round(rate * N)
    scores = [1] * ones + [0] * (N - ones)
    return scores[shift:] + scores[:shift]


def _table1_gsm(folder, semalign_rate: float, planted: bool = True):
    """GSM8K records: source and target once, semalign and sft at seeds 0-2."""
    target = _fraction(0.2)
    _write(folder, "source", "gsm", None, _items("gsm", _fraction(0.3)))
    _write(folder, "target", "gsm", None, _items("gsm", target))
    for seed in range(3):
        _write(folder, "sft", "gsm", seed, _items("gsm", _fraction(0.2, shift=seed)))
        semalign = _fraction(semalign_rate, shift=seed) if planted else target
        _write(folder, "semalign", "gsm", seed, _items("gsm", semalign))


def test_planted_large_difference_is_marked_and_listed(results):
    _table1_gsm(results, semalign_rate=0.8)
    frame = semalign_tables.table(PROFILE)
    cell = frame.loc["semalign", "GSM8K"]
    assert cell.startswith("80.0 [") and cell.endswith(
        f"(n={N}, 3 seeds) {ABOVE_TARGET}{ABOVE_SFT}"
    )
    assert (
        frame.loc["target", "GSM8K"].startswith("20.0 [")
        and "seeds" not in frame.loc["target", "GSM8K"]
    )
    assert ABOVE_TARGET not in frame.loc["sft", "GSM8K"]  # sft = target's rate, other items
    rows = {(r[0], r[1], r[2]): r for r in frame.attrs["comparisons"]}
    vs_target = rows[("semalign", "GSM8K", "target")]
    assert vs_target[3] == "+60.0" and vs_target[6] == "yes" and vs_target[5] == "<0.001"
    low, high = (float(x) for x in vs_target[4].strip("[]").split(", "))
    assert 0 < low < 60 < high
    assert rows[("semalign", "GSM8K", "sft")][6] == "yes"
    assert ("sft", "GSM8K", "sft") not in rows and ("target", "GSM8K", "target") not in rows
    assert ABOVE_TARGET in frame.attrs["legend"] and "not shown to differ" in frame.attrs["legend"]
    text = semalign_tables.reproduced_section(frame, "seeds")
    assert "| semalign | GSM8K | target | +60.0 |" in text
    assert "| row | task | vs | difference (points) | 95% interval | p | significant |" in text
    assert "Paired comparisons" in semalign_tables.side_by_side_html(frame, frame)


def test_identical_item_scores_are_not_marked(results):
    _table1_gsm(results, semalign_rate=0.2, planted=False)
    frame = semalign_tables.table(PROFILE)
    cell = frame.loc["semalign", "GSM8K"]
    assert cell == f"20.0 [10.0, 30.0] (n={N}, 3 seeds)"  # no mark
    rows = {tuple(r[:3]): r for r in frame.attrs["comparisons"]}
    assert rows[("semalign", "GSM8K", "target")][3:7] == ["+0.0", "[+0.0, +0.0]", "1.000", "no"]
    assert rows[("semalign", "GSM8K", "sft")][6] == "no"  # same rate, other items: not marked
    assert not any(m in frame.loc["sft", "GSM8K"] for m in (ABOVE_TARGET, BELOW_TARGET))


def test_constant_label_row_is_flagged_and_majority_rate_is_the_gold_share(results):
    gold = [1] * 39 + [0] * 21  # 65% positive
    mixed = [g if i % 4 else 1 - g for i, g in enumerate(gold)]
    _cls(results, "teacher", None, gold, gold, macro_f1=1.0)
    _cls(results, "target", None, gold, mixed, macro_f1=0.7)
    for seed in (0, 1):
        _cls(results, "sft", seed, gold, [0] * N, macro_f1=0.25)
    majority = 100 * max(gold.count(0), gold.count(1)) / len(gold)  # by hand: 65.0
    frame = teacher_table.table(PROFILE)
    assert list(frame.columns) == ["SST-2", "SST-2 macro-F1"]
    assert frame.loc["sft", "SST-2"].endswith("⚠ one label")
    assert frame.loc["sft", "SST-2"].startswith(f"{100 * 21 / 60:.1f} [")
    assert "one label" not in frame.loc["target", "SST-2"]
    assert frame.loc["sft", "SST-2 macro-F1"] == "25.0"
    notes = frame.attrs["notes"]
    assert not any("chance level" in n for n in notes)
    assert any(f"majority-label rate {majority:.1f}%" in n and "positive" in n for n in notes)
    (labels,) = frame.attrs["label_tables"]
    assert labels["header"] == ["row", "negative", "positive", "predictions", "flag"]
    rows = {r[0]: r for r in labels["rows"]}
    assert rows["sft"] == ["sft", "100.0", "0.0", str(2 * N), "⚠ one label"]
    assert rows["gold (these items)"][1:4] == ["35.0", "65.0", str(N)]
    assert rows["gold (these items)"][4] == f"majority rate {majority:.1f}"
    gap = teacher_table.gap_notes(PROFILE)
    assert "paired 95% interval" in gap[0] and "excludes zero" in gap[0]


def test_old_record_without_items_still_renders_without_an_interval(results):
    _write(results, "target", "gsm", 0, value=0.10)
    _write(results, "target", "gsm", 1, value=0.20)
    for seed, value in enumerate((0.2, 0.3, 0.4)):
        _write(results, "sft", "gsm", seed, value=value)
    _write(results, "semalign", "gsm", 0, value=None)  # no value: an empty cell
    frame = semalign_tables.table(PROFILE)
    assert frame.loc["semalign", "GSM8K"] == ""
    assert frame.loc["sft", "GSM8K"] == f"30.0 ± 10.0 (n={N}, 3 seeds)"
    assert frame.loc["target", "GSM8K"] == f"15.0 ± 7.1 (n={N}, 2 seeds)"
    assert frame.attrs["comparisons"] == [] and frame.attrs["legend"] == ""
    assert any("no interval available for the cells of GSM8K" in n for n in frame.attrs["notes"])
    assert "mean ± sample std over seeds" in frame.attrs["caption"]
    assert "[95% interval]" not in frame.attrs["caption"]


def test_caption_reads_the_decoding_and_mmlu_letters_are_shown(results):
    gold = [i % 4 for i in range(N)]  # A B C D in turn: 25% each
    _write(results, "target", "mmlu", None, _mc_items("mmlu", gold, [1] * N))  # always B
    _write(results, "sft", "mmlu", 0, _mc_items("mmlu", gold, gold))
    _write(results, "target", "gsm", None, _items("gsm", _fraction(0.1)))
    frame = semalign_tables.table(PROFILE)
    caption = frame.attrs["caption"]
    assert "MMLU: accuracy by log-likelihood of each choice" in caption
    assert "GSM8K: exact match by greedy" in caption and "MMLU: accuracy by greedy" not in caption
    assert frame.attrs["notes"][0] == "chance level: MMLU 25%"
    assert any("MMLU items: majority-label rate 25.0%" in n for n in frame.attrs["notes"])
    (letters,) = frame.attrs["label_tables"]
    assert letters["header"] == ["row", "A", "B", "C", "D", "predictions", "flag"]
    rows = {r[0]: r for r in letters["rows"]}
    assert rows["target"][1:5] == ["0.0", "100.0", "0.0", "0.0"] and rows["target"][6]
    assert rows["sft"][1:5] == ["25.0"] * 4 and rows["sft"][6] == ""
    assert rows["gold (these items)"][1:5] == ["25.0"] * 4
    # the SFT row answers every item right, the target a quarter: marked above the target
    assert frame.loc["sft", "MMLU"].startswith("100.0 [100.0, 100.0] (n=60)")
    assert frame.loc["sft", "MMLU"].endswith(ABOVE_TARGET)


def test_learning_rates_come_from_the_records(results):
    from semalign_core.profiles import get_profile

    _table1_gsm(results, semalign_rate=0.5)
    frame = semalign_tables.hyperparameter_table(get_profile(PROFILE), ["gsm", "mmlu"])
    assert frame.loc["training: lr of sft (T5)", "GSM8K"] == "2e-05"
    assert frame.loc["alignment: SemAlign lr (T4)", "GSM8K"] == "3e-05"
    assert frame.loc["training: lr of sft (T5)", "MMLU"].endswith("*")  # no MMLU record: budget


def test_rebuilding_twice_gives_identical_bytes(results, tmp_path):
    _table1_gsm(results, semalign_rate=0.6)
    gold = [i % 2 for i in range(N)]
    _cls(results, "target", None, gold, [1] * N)
    _cls(results, "sft", 0, gold, gold)
    first = semalign_tables.semalign_table1(tmp_path / "a") + teacher_table.teacher_table_figures(
        tmp_path / "a"
    )
    second = semalign_tables.semalign_table1(tmp_path / "b") + teacher_table.teacher_table_figures(
        tmp_path / "b"
    )
    assert [p.name for p in first] == [p.name for p in second] and len(first) == 2
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
    assert "[" in first[0].read_text() and "Paired comparisons" in first[0].read_text()


def test_records_of_an_older_evaluation_protocol_are_left_out_with_a_note(results):
    """A results folder still holding per-seed-subset records (old names, eval without a seed)
    next to the fixed-subset ones: the old ones are neither averaged nor paired."""
    _table1_gsm(results, semalign_rate=0.8)
    for path in (results / "semalign_transfer" / PROFILE).glob("*.json"):
        new = json.loads(path.read_text())
        new["provenance"] = {"created": "2026-11-30T00:00:00+00:00"}
        path.write_text(json.dumps(new))
    for seed in range(3):
        _write(results, "source", "gsm", seed, value=0.05)  # old protocol: per-seed subset
        path = results / "semalign_transfer" / PROFILE / f"source__gsm__seed{seed}.json"
        old = json.loads(path.read_text())
        old["config"]["eval"].pop("seed")
        old["provenance"] = {"created": "2026-01-01T00:00:00+00:00"}
        path.write_text(json.dumps(old))
    frame = semalign_tables.table(PROFILE)
    assert frame.loc["source", "GSM8K"].startswith("30.0 [")  # the new record alone
    assert "seeds" not in frame.loc["source", "GSM8K"]
    assert any("3 older record(s)" in note for note in frame.attrs["notes"])


def _bpb_part(values: list[float]) -> dict:
    """The ``metrics.secondary["gsm_nll"]`` part of a record: per-item bits per byte."""
    items = [
        {"doc_id": f"gsm/{i}", "gold": "", "prediction": [-1.0, False], "bits_per_byte": v}
        for i, v in enumerate(values)
    ]
    return {
        "metric": "bits_per_byte",
        "value": sum(values) / len(values),
        "percent": None,
        "n": len(values),
        "decoding": {"method": "reference_loglikelihood"},
        "items": items,
    }


def _add_secondary(folder, run: str, values: list[float]) -> None:
    path = folder / "semalign_transfer" / PROFILE / f"{run}.json"
    record = json.loads(path.read_text())
    record["metrics"]["secondary"] = {"gsm_nll": _bpb_part(values)}
    path.write_text(json.dumps(record, indent=1, sort_keys=True))


def test_bits_per_byte_column_is_shown_as_is_and_compared_on_the_same_items(results):
    _table1_gsm(results, semalign_rate=0.2, planted=False)
    base = [2.0 + 0.01 * (i % 7) for i in range(N)]
    _add_secondary(results, "target__gsm", base)
    _add_secondary(results, "source__gsm", base)
    for seed in range(3):
        # sft lowers every item by 0.1 (a planted improvement); semalign leaves them as they are
        _add_secondary(results, f"sft__gsm__seed{seed}", [v - 0.1 for v in base])
        _add_secondary(results, f"semalign__gsm__seed{seed}", base)
    frame = semalign_tables.table(PROFILE)
    column = "GSM8K ref. bits/byte ↓"
    mean = sum(base) / N
    assert frame.loc["target", column].startswith(f"{mean:.3f} [")
    assert frame.loc["sft", column].startswith(f"{mean - 0.1:.3f} [")
    assert frame.loc["sft", column].endswith(BELOW_TARGET)  # lower: more probability
    assert BELOW_TARGET not in frame.loc["semalign", column]
    assert frame.loc["semalign", column].endswith(ABOVE_SFT)  # above SFT: here, worse
    rows = {(r[0], r[1], r[2]): r for r in frame.attrs["comparisons"]}
    assert rows[("sft", column, "target")][3] == "-0.100"
    assert rows[("sft", column, "target")][6] == "yes"
    assert rows[("semalign", column, "sft")][3] == "+0.100"  # semalign vs sft: 0.1 higher
    assert rows[("semalign", column, "target")][6] == "no"
    assert "lower is better" in frame.attrs["legend"]
    assert "teacher forcing" in frame.attrs["caption"]
    # the paper's metric of the same records is untouched
    assert frame.loc["sft", "GSM8K"].startswith("20.0 [")
