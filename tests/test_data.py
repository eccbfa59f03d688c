"""Data layer on the real benchmark files (../shared/benchmarks, present in CI)."""

from __future__ import annotations

import json

import pytest

from semalign_core import paths
from semalign_core.data import (
    CLASSIFICATION_TASKS,
    CLS_EVAL_SPLIT,
    CLS_PROMPTS,
    IGNORE_INDEX,
    benchmark_path,
    build_sft_example,
    cls_template,
    data_root,
    format_cls_prompt,
    load_classification,
    load_gsm8k,
    load_humaneval,
    load_mbpp,
    load_mmlu,
    load_transfer,
    prompt_and_response,
    render_model_chat,
    render_transfer_chat,
    sha256_file,
)
from semalign_core.errors import DataNotFoundError, InvalidParameterError

GSM8K_TEST_SHA = "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"


@pytest.fixture(autouse=True)
def _default_resolution(monkeypatch):
    """Tests see the repo's default search order, whatever the caller's environment says."""
    monkeypatch.delenv("SEMALIGN_DATA_DIR", raising=False)


# --- counts and record shapes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "load, expected",
    [
        (lambda: load_gsm8k("test"), 1319),
        (lambda: load_mmlu("test"), 14042),
        (lambda: load_mmlu("dev"), 285),
        (lambda: load_humaneval(), 164),
        (lambda: load_mbpp("test"), 500),
        (lambda: load_mbpp("train"), 374),
        (lambda: load_mbpp("test", sanitized=True), 257),
        (lambda: load_transfer("gsm", "extract"), 20),
        (lambda: load_transfer("mbpp", "align"), 40),
        (lambda: load_classification("sst2", "dev"), 872),
    ],
)
def test_counts_match_readme(load, expected):
    split = load()
    assert len(split) == expected == split.n_available
    assert len(list(split)) == expected


def test_gsm8k_target_parsing():
    first = load_gsm8k("test", limit=1).records[0]
    assert first["question"].startswith("Janet")
    assert first["answer"].rstrip().endswith("#### 18")
    assert first["target"] == "18"
    # commas are stripped from the final answer
    assert all("," not in r["target"] for r in load_gsm8k("test"))


def test_mmlu_records_and_checksums():
    split = load_mmlu("dev", subjects=["anatomy", "abstract_algebra"])
    assert [r["subject"] for r in split][::5] == ["abstract_algebra", "anatomy"]  # sorted
    r = split.records[0]
    assert len(r["choices"]) == 4 and r["answer"] in "ABCD"
    lines = benchmark_path("mmlu/SHA256SUMS").read_text().splitlines()
    sums = dict(reversed(line.split()) for line in lines)
    for rel, sha in split.sources.items():
        assert sums[rel.removeprefix("mmlu/")] == sha


def test_humaneval_and_mbpp_schemas():
    he = load_humaneval(limit=2).records[0]
    assert set(he) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    keys = {
        "task_id",
        "text",
        "code",
        "test_list",
        "test_setup_code",
        "test_imports",
        "challenge_test_list",
    }
    full, san = load_mbpp("test").records, load_mbpp("test", sanitized=True).records
    assert set(full[0]) == set(san[0]) == keys
    assert full[0]["task_id"] == 11 and full[-1]["task_id"] == 510
    assert all(11 <= r["task_id"] <= 510 for r in san)


def test_transfer_records_keep_messages_and_ids():
    rec = load_transfer("gsm", "extract").records[0]
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant"]
    assert rec["id"].startswith("gsm_") and rec["dataset"] == "gsm"
    assert "id" not in load_transfer("mbpp", "align").records[0]  # absent in the file


# --- classification and verbalizers ------------------------------------------------------------


def test_classification_records():
    r = load_classification("sst2", "dev").records[0]
    assert (r["label"], r["label_word"], r["raw_label"]) == (1, "positive", "1")
    rte = load_classification("rte", "dev").records[0]  # GLUE: not_entailment -> "no"
    assert (rte["label"], rte["label_word"]) == (1, "no")
    assert rte["text"] == rte["sentence_1"] + "\nQuestion: Christopher Reeve had an accident?"
    cb = {r["raw_label"]: r["label_word"] for r in load_classification("cb", "dev")}
    assert cb == {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}
    agnews = load_classification("agnews", "dev_subsample").records[0]  # 1-based file labels
    assert (agnews["raw_label"], agnews["label"], agnews["label_word"]) == ("2", 1, "sports")


def test_verbalizer_orders_match_the_data():
    # TREC label 2 is ABBR: most of its questions, and almost no others, ask what something
    # "stands for" or what its abbreviation is.
    by_label = {}
    for r in load_classification("trec", "train"):
        by_label.setdefault(r["label"], []).append(r["text"].lower())
    rate = {
        k: sum("stand for" in t or "abbreviat" in t for t in v) / len(v)
        for k, v in by_label.items()
    }
    assert rate[2] > 0.5 and all(v < 0.05 for k, v in rate.items() if k != 2)
    # agnews/dbpedia class files have as many classes as the verbalizers.
    for task in ("agnews", "dbpedia"):
        text = benchmark_path(f"classification/{task}/classes.txt").read_text()
        n = text.count(",") + 1 if task == "agnews" else len(text.split())
        assert n == len(CLASSIFICATION_TASKS[task].label_words)


# --- subsetting and provenance -----------------------------------------------------------------


def test_seeded_subsets_are_reproducible_and_in_order():
    a, b, c = (load_gsm8k(limit=10, seed=s) for s in (1, 1, 2))
    assert a.records == b.records and a.records != c.records
    order = {r["question"]: i for i, r in enumerate(load_gsm8k().records)}
    assert [order[r["question"]] for r in a] == sorted(order[r["question"]] for r in a)
    assert load_gsm8k(limit=3).records == load_gsm8k().records[:3]


def test_provenance_sha_matches_readme():
    prov = load_gsm8k(limit=5, seed=0).provenance()
    assert prov == {
        "benchmark": "gsm8k",
        "split": "test",
        "n": 5,
        "n_available": 1319,
        "seed": 0,
        "limit": 5,
        "sources": {"gsm8k/test.jsonl": GSM8K_TEST_SHA},
    }
    json.dumps(prov)


def test_sha256_cache_follows_file_changes(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("a")
    first = sha256_file(f)
    f.write_text("bb")
    assert sha256_file(f) != first


# --- errors ------------------------------------------------------------------------------------


def test_missing_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMALIGN_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_gsm8k()


def test_missing_file_names_file_places_and_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMALIGN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "repo")  # hide data/ and ../shared
    with pytest.raises(DataNotFoundError) as err:
        load_gsm8k()
    msg = str(err.value)
    assert "\n" not in msg and "gsm8k/test.jsonl" in msg and str(tmp_path) in msg
    assert "SEMALIGN_DATA_DIR" in msg and "data" in msg and "hub is not used" in msg


def test_env_dir_comes_first(monkeypatch, tmp_path):
    (tmp_path / "gsm8k").mkdir()
    line = {"question": "q", "answer": "x\n#### 1,234"}
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps(line) + "\n")
    monkeypatch.setenv("SEMALIGN_DATA_DIR", str(tmp_path))
    split = load_gsm8k()
    assert data_root() == tmp_path
    assert [r["target"] for r in split] == ["1234"]
    assert split.sources["gsm8k/test.jsonl"] == sha256_file(tmp_path / "gsm8k" / "test.jsonl")
    assert len(load_humaneval()) == 164  # other benchmarks fall through to the next folder


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: load_gsm8k(limit=2000), "limit=2000 exceeds the 1319 records of gsm8k/test"),
        (lambda: load_gsm8k(limit=0), "at least 1"),
        (lambda: load_gsm8k("dev"), "valid: train, test"),
        (lambda: load_mmlu("train"), "valid: dev, val, test"),
        (lambda: load_mmlu(subjects=["astrology"]), "abstract_algebra"),
        (lambda: load_mbpp("dev"), "validation"),
        (lambda: load_transfer("gsm", "test"), "extract"),
        (lambda: load_transfer("math", "train"), "humaneval"),
        (lambda: load_classification("imdb", "test"), "sst2"),
        (lambda: load_classification("sst2", "train"), "dev_subsample"),
        (lambda: load_classification("rte", "test"), "has no labels"),
        (lambda: load_classification("cb", "test"), "has no labels"),
        (lambda: load_classification("sst2", "test"), "has no labels"),
    ],
)
def test_invalid_parameters(call, match):
    with pytest.raises(InvalidParameterError, match=match):
        call()


# --- formatting and SFT examples ---------------------------------------------------------------

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def conversation():
    return load_transfer("gsm", "extract").records[0]["messages"]


@pytest.fixture(scope="module")
def tokenizer(conversation):
    """A word-level tokenizer built in-process (nothing downloaded), with BOS and EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    texts = [render_transfer_chat(conversation, True), "<|im_start|> assistant <|im_end|>"]
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def test_render_transfer_chat(conversation):
    user, answer = conversation[0]["content"], conversation[1]["content"]
    assert render_transfer_chat(conversation[:1], add_generation_prompt=True) == (
        f"<|user|>\n{user.strip()}\n\n<|assistant|>\n"
    )
    full = render_transfer_chat(conversation)
    assert full == f"<|user|>\n{user.strip()}\n\n<|assistant|>\n{answer.strip()}\n\n"
    assert prompt_and_response(conversation) == (conversation[:1], answer)


def test_sft_labels_mask_exactly_the_prompt(tokenizer, conversation):
    prompt_msgs, response = prompt_and_response(conversation)
    prompt_ids = tokenizer(render_transfer_chat(prompt_msgs, True))["input_ids"]
    n = len(prompt_ids)
    ex = build_sft_example(tokenizer, conversation)
    assert ex["input_ids"][:n] == prompt_ids and ex["input_ids"][0] == tokenizer.bos_token_id
    assert ex["labels"][:n] == [IGNORE_INDEX] * n
    assert ex["labels"][n:] == ex["input_ids"][n:]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    assert ex["input_ids"][n:] == response_ids + [tokenizer.eos_token_id]
    every = build_sft_example(tokenizer, conversation, loss_on="all")
    assert every["labels"] == every["input_ids"] == ex["input_ids"]


def test_sft_truncation_keeps_the_response(tokenizer, conversation):
    full = build_sft_example(tokenizer, conversation)
    n_resp = sum(label != IGNORE_INDEX for label in full["labels"])
    keep = n_resp // 2 + 2  # prompt tokens kept: more than the quarter-window reserve
    cut = build_sft_example(tokenizer, conversation, max_length=n_resp + keep)
    assert len(full["input_ids"]) > n_resp + keep and len(cut["input_ids"]) == n_resp + keep
    assert cut["input_ids"][0] == tokenizer.bos_token_id  # BOS survives left truncation
    assert cut["labels"][:keep] == [IGNORE_INDEX] * keep
    assert cut["labels"][keep:] == full["labels"][-n_resp:]  # whole response kept
    assert cut["input_ids"][1:] == full["input_ids"][-(n_resp + keep - 1) :]
    tiny = build_sft_example(tokenizer, conversation, max_length=8)
    assert len(tiny["input_ids"]) == 8
    assert 0 < sum(label != IGNORE_INDEX for label in tiny["labels"]) < 8


def test_model_chat_template_and_missing_template(tokenizer, conversation):
    expected = "no chat template; use prompt_style='transfer'"
    with pytest.raises(InvalidParameterError, match=expected):
        render_model_chat(tokenizer, conversation)
    with pytest.raises(InvalidParameterError, match="no chat template"):
        build_sft_example(tokenizer, conversation, style="model")
    tokenizer.chat_template = CHATML
    try:
        text = render_model_chat(tokenizer, conversation[:1], add_generation_prompt=True)
        assert text.endswith("<|im_start|>assistant\n")
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        ex = build_sft_example(tokenizer, conversation, style="model")
        assert ex["labels"][:n] == [IGNORE_INDEX] * n and IGNORE_INDEX not in ex["labels"][n:]
        assert ex["input_ids"][0] != tokenizer.bos_token_id  # templates write their own BOS
    finally:
        tokenizer.chat_template = None


def test_sft_rejects_bad_arguments(tokenizer, conversation):
    with pytest.raises(InvalidParameterError):
        build_sft_example(tokenizer, conversation, style="alpaca")
    with pytest.raises(InvalidParameterError):
        build_sft_example(tokenizer, conversation, loss_on="prompt")
    with pytest.raises(InvalidParameterError, match="end with an assistant"):
        build_sft_example(tokenizer, conversation[:1])


# --- classification prompts ------------------------------------------------------------------


def test_every_classification_task_has_both_prompt_styles():
    assert set(CLS_PROMPTS) == set(CLASSIFICATION_TASKS)
    assert all(set(styles) == {"salf", "harness"} for styles in CLS_PROMPTS.values())
    assert all("{text}" in t for styles in CLS_PROMPTS.values() for t in styles.values())


@pytest.mark.parametrize(
    "task, style, expected",
    [
        # the committed numbers were made with exactly these strings
        ("sst2", "harness", "Review: a fine film\nSentiment:"),
        ("mpqa", "harness", "Phrase: a fine film\nSentiment:"),
        ("subj", "harness", "Sentence: a fine film\nSubjective or objective:"),
        ("cb", "harness", "a fine film Yes, no, or maybe?\nAnswer:"),
        ("sst2", "salf", "a fine film\nSentiment:"),
        ("subj", "salf", "a fine film\nThis sentence is"),
        ("trec", "salf", "a fine film\nAnswer type:"),
        ("rte", "salf", "a fine film\nAnswer:"),
        (None, "salf", "a fine film\nAnswer:"),  # SALF's generic cue
        ("no-such-task", "salf", "a fine film\nAnswer:"),
    ],
)
def test_classification_prompts_are_the_recorded_strings(task, style, expected):
    assert format_cls_prompt("  a fine film ", task, style) == expected


def test_classification_prompt_errors():
    with pytest.raises(InvalidParameterError, match="valid: salf, harness"):
        cls_template("sst2", "transfer")
    with pytest.raises(InvalidParameterError, match="no harness prompt for task 'x'"):
        cls_template("x", "harness")
    with pytest.raises(InvalidParameterError, match="must contain"):
        format_cls_prompt("t", "sst2", "salf", template="no slot")
    assert format_cls_prompt(" t ", "sst2", "harness", template="<{text}>") == "<t>"


def test_classification_eval_splits():
    """Scored on test when it has labels, else dev, else the dev subsample."""
    assert CLS_EVAL_SPLIT == {
        "sst2": "dev",
        "cr": "test",
        "mr": "test",
        "mpqa": "test",
        "subj": "test",
        "trec": "test",
        "agnews": "test",
        "dbpedia": "dev_subsample",
        "rte": "dev",
        "cb": "dev",
    }
