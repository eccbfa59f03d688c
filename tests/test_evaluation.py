"""The semalign lm-eval tasks and the evaluate() API.

An oracle model (an ``lm_eval.api.model.LM`` that answers with the gold label) must score 1.0 on
every task family, in every prompt style, through lm-eval's own request building, filters and
aggregation (and, for code, through the sandbox); a model that always answers "A" must score
MMLU's share of "A" answers. Error paths give one clear ArtifactError line.
"""

from __future__ import annotations

import json
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lm_eval.api.model import LM  # noqa: E402

from semalign_core import paths  # noqa: E402
from semalign_core.data import CLASSIFICATION_TASKS, load_mmlu, load_transfer  # noqa: E402
from semalign_core.errors import DataNotFoundError, InvalidParameterError  # noqa: E402
from semalign_core.evaluation import harness  # noqa: E402
from semalign_core.evaluation.harness import evaluate, list_tasks  # noqa: E402
from semalign_core.evaluation.metrics import macro_f1  # noqa: E402
from semalign_core.evaluation.tasks import TASKS_DIR  # noqa: E402
from semalign_core.evaluation.tasks import utils as task_utils  # noqa: E402

SUBJECTS = ["abstract_algebra", "anatomy", "virology"]
MMLU_OPTIONS = {"subjects": SUBJECTS}


class OracleLM(LM):
    """Gold continuation gets log-likelihood 0, every other one -inf; generations are the gold
    answer text (GSM8K in the transfer format, canonical code for HumanEval/MBPP).

    ``always="A"`` instead prefers the continuation " A" whatever the question.
    """

    def __init__(self, always: str | None = None):
        super().__init__()
        self.always = always
        self.generate_calls = 0

    def loglikelihood(self, requests):
        out = []
        for req in requests:
            if req.doc.get("reference"):  # a reference solution: the oracle knows it
                hit = req.args[1] == req.doc["reference"]
            elif self.always is not None:
                hit = req.args[1].strip() == self.always
            else:
                hit = req.idx == req.doc["gold"]
            out.append((0.0, True) if hit else (-math.inf, False))
        return out

    def loglikelihood_rolling(self, requests):  # pragma: no cover - no task uses it
        raise NotImplementedError

    def generate_until(self, requests):
        self.generate_calls += len(requests)
        return [self._answer(req.doc) for req in requests]

    @staticmethod
    def _answer(doc) -> str:
        record = json.loads(doc["record"])
        chat = doc["prompt_style"] != "plain"
        if doc["family"] == "gsm8k":
            steps = record["answer"].split("####")[0].strip()
            return f"Answer: {steps} So the answer is {record['target']}."
        if doc["family"] == "humaneval":
            if not chat:  # a continuation of the prompt, as a completion model writes it
                return record["canonical_solution"]
            return (
                "Here is the completed function:\n\n\n```python\n"
                + record["prompt"]
                + record["canonical_solution"]
                + "```"
            )
        code = record["code"].replace("\r\n", "\n")
        if not chat:
            return code + "\n[DONE]"
        return f"Here is the completed function:\n\n\n```python\n{code}\n```"


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from semalign_core.models.registry import load_tokenizer

    return load_tokenizer("tiny-source")


# --- registration ------------------------------------------------------------------------------


def test_tasks_are_registered_through_the_include_path():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    names = list_tasks()
    expected = {
        "semalign_mmlu",
        "semalign_mmlu_chat",
        "semalign_gsm8k",
        "semalign_humaneval",
        "semalign_mbpp",
        "semalign_mmlu_cloze",
        "semalign_gsm8k_nll",
        "semalign_humaneval_nll",
        "semalign_mbpp_nll",
    } | {f"semalign_cls_{t}" for t in CLASSIFICATION_TASKS}
    assert set(names) == expected
    assert set(names) <= set(manager.all_subtasks)
    assert "semalign_cls" in manager.all_tags
    # No task reads data through lm-eval's cwd-relative dataset_path/data_files.
    for path in TASKS_DIR.glob("*.yaml"):
        text = path.read_text()
        assert "dataset_path" not in text and "data_files" not in text, path.name


def test_mmlu_prompt_is_lm_eval_standard_and_the_transfer_user_turn():
    """Our MMLU prompt = lm-eval's mmlu description + _default_template_yaml doc_to_text, and
    it is exactly the user message of the LaTen transfer split for the same question."""
    from pathlib import Path

    import lm_eval
    import yaml
    from lm_eval.utils import apply_template

    template_dir = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    template = yaml.safe_load((template_dir / "_default_template_yaml").read_text())
    description = yaml.safe_load((template_dir / "mmlu_anatomy.yaml").read_text())["description"]
    record = load_mmlu("test", "anatomy", limit=1).records[0]
    doc = {"question": record["question"], "choices": record["choices"]}
    assert task_utils.mmlu_question(record) == description + apply_template(
        template["doc_to_text"], doc
    )

    transfer = load_transfer("mmlu", "train", limit=1).records[0]
    subject, _ = transfer["id"].rsplit("_", 1)
    user = transfer["messages"][0]["content"]
    matches = [r for r in load_mmlu("val", subject).records if task_utils.mmlu_question(r) == user]
    assert len(matches) == 1
    assert transfer["messages"][1]["content"] == f"The answer is: {matches[0]['answer']}"


def test_mbpp_chat_prompt_matches_the_transfer_split_shape():
    from semalign_core.data import load_mbpp

    record = next(r for r in load_mbpp("test").records if "import" in r["code"].split("def")[0])
    signature = task_utils.mbpp_signature(record)
    assert signature.splitlines()[-1].startswith("def ") and not signature.endswith(":")
    assert all(ln.split()[0] in ("import", "from") for ln in signature.splitlines()[:-1])
    # The transfer split's user turns look like this (instruction, text, signature).
    example = load_transfer("mbpp", "train", limit=1).records[0]["messages"][0]["content"]
    assert example.startswith(task_utils.CODE_INSTRUCTION)


# --- the oracle and the "always A" model ------------------------------------------------------


ALL_FAMILIES = [
    "semalign_mmlu",
    "semalign_mmlu_chat",
    "semalign_cls_sst2",
    "semalign_cls_trec",
    "semalign_cls_cb",
    "semalign_gsm8k",
    "semalign_humaneval",
    "semalign_mbpp",
]


@pytest.mark.parametrize("style", ["transfer", "plain", "model"])
def test_oracle_scores_one_everywhere(style, smollm2_tokenizer):
    records = evaluate(
        OracleLM(),
        ALL_FAMILIES,
        limit=6,
        prompt_style=style,
        tokenizer=smollm2_tokenizer,
        task_options={"semalign_mmlu": MMLU_OPTIONS, "semalign_mmlu_chat": MMLU_OPTIONS},
    )
    assert list(records) == ALL_FAMILIES
    for name, rec in records.items():
        assert rec["n"] == 6, name
        assert rec["metrics"], name
        for metric, value in rec["metrics"].items():
            assert value == pytest.approx(1.0), (name, metric, style)
    assert set(records["semalign_cls_trec"]["metrics"]) == {"acc", "macro_f1"}
    assert set(records["semalign_humaneval"]["metrics"]) == {"pass@1"}
    # semalign_mmlu and the classification suite are plain whatever the style asked.
    assert records["semalign_mmlu"]["prompt_style"] == "plain"
    assert records["semalign_cls_sst2"]["prompt_style"] == "plain"
    assert records["semalign_gsm8k"]["prompt_style"] == style


def test_chat_prompts_by_style(smollm2_tokenizer):
    ctx = {"limit": 1, "seed": None}
    _, (transfer,) = task_utils.build_docs("semalign_gsm8k", {**ctx, "prompt_style": "transfer"})
    assert transfer["prompt"].startswith("<|user|>\nAnswer the following question.\n\nQuestion: ")
    assert transfer["prompt"].endswith("\n\n<|assistant|>\n")
    _, (plain,) = task_utils.build_docs("semalign_gsm8k", {**ctx, "prompt_style": "plain"})
    assert plain["prompt"].startswith("Answer the following question.") and plain[
        "prompt"
    ].endswith("\nAnswer:")
    from semalign_core.evaluation.tasks import chat_tokenizer

    with chat_tokenizer(smollm2_tokenizer) as key:
        _, (chat,) = task_utils.build_docs(
            "semalign_mmlu_chat", {**ctx, "prompt_style": "model", "tokenizer_key": key}
        )
    assert "<|im_start|>assistant\n" in chat["prompt"]
    assert chat["prompt"].endswith("<|im_start|>assistant\nThe answer is:")
    # When the evaluator adds the tokenizer's BOS, the template's own leading copy goes, so
    # the tokens are the template's exactly (SmolLM2's BOS is <|im_start|>).
    with chat_tokenizer(smollm2_tokenizer) as key:
        _, (bos,) = task_utils.build_docs(
            "semalign_mmlu_chat",
            {**ctx, "prompt_style": "model", "tokenizer_key": key, "add_bos": True},
        )
    assert (
        smollm2_tokenizer(bos["prompt"])["input_ids"]
        == smollm2_tokenizer(chat["prompt"], add_special_tokens=False)["input_ids"]
    )


def test_always_a_scores_the_share_of_a_answers():
    limit, seed = 40, 3
    chosen = load_mmlu("test", SUBJECTS, limit=limit, seed=seed).records
    share = sum(r["answer"] == "A" for r in chosen) / limit
    assert 0 < share < 1  # the subset is a real test of the scorer
    rec = evaluate(
        OracleLM(always="A"),
        "semalign_mmlu",
        limit=limit,
        seed=seed,
        task_options={"semalign_mmlu": MMLU_OPTIONS},
    )["semalign_mmlu"]
    assert rec["metrics"]["acc"] == pytest.approx(share)
    assert rec["stderr"]["acc"] == pytest.approx(math.sqrt(share * (1 - share) / (limit - 1)))


def test_record_fields_and_provenance():
    rec = evaluate(
        OracleLM(), "semalign_cls_rte", limit=5, seed=1, batch_size=4, keep_samples=True
    )["semalign_cls_rte"]
    for key in (
        "task",
        "version",
        "n",
        "shots",
        "prompt_style",
        "decoding",
        "batch_size",
        "padding_side",
        "metrics",
        "stderr",
        "data",
        "provenance",
        "samples",
    ):
        assert key in rec, key
    assert (rec["shots"], rec["batch_size"], rec["padding_side"]) == (0, 4, "right")
    assert rec["decoding"] == {"method": "loglikelihood"}
    assert rec["data"]["split"] == "dev" and rec["data"]["n"] == 5 and rec["data"]["seed"] == 1
    assert rec["provenance"]["seed"] == 1
    ((relpath, sha),) = rec["provenance"]["data_sha256"].items()
    assert relpath == "classification/rte/dev.jsonl" and len(sha) == 64
    assert len(rec["samples"]) == 5
    sample = rec["samples"][0]
    assert sample["prompt"].endswith("Yes or no?\nAnswer:") and len(sample["response"]) == 2
    assert set(rec["stderr"]) == {"acc", "macro_f1"}
    json.dumps(rec)  # records are JSON as they are


def test_sampling_for_pass_at_k_is_lm_eval_repeats():
    oracle = OracleLM()
    rec = evaluate(
        oracle,
        "semalign_humaneval",
        limit=2,
        num_samples=5,
        temperature=0.8,
        max_new_tokens=64,
        keep_samples=True,
    )["semalign_humaneval"]
    assert oracle.generate_calls == 10
    assert rec["decoding"]["method"] == "sampling"
    assert rec["decoding"]["num_samples"] == 5 and rec["decoding"]["temperature"] == 0.8
    assert rec["decoding"]["max_new_tokens"] == 64
    assert rec["metrics"] == {"pass@1": 1.0, "pass@5": 1.0}
    assert len(rec["samples"][0]["response"]) == 5


def test_gsm8k_answer_order_is_a_task_option():
    class HashesThenChatter(OracleLM):
        @staticmethod
        def _answer(doc):
            record = json.loads(doc["record"])
            return f"#### {record['target']}\nSo the answer is 123456789."

    options = {"semalign_gsm8k": {"answer_order": "transfer_phrase_first"}}
    default = evaluate(HashesThenChatter(), "semalign_gsm8k", limit=3)["semalign_gsm8k"]
    phrase = evaluate(HashesThenChatter(), "semalign_gsm8k", limit=3, task_options=options)[
        "semalign_gsm8k"
    ]
    assert default["metrics"]["exact_match"] == 1.0  # lm-eval's order: "#### N" first
    assert phrase["metrics"]["exact_match"] == 0.0


def test_macro_f1_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    items = [(0, 0), (0, 1), (1, 1), (2, 1), (2, 2), (2, 2), (1, 0), (0, 0)]
    golds, preds = zip(*items)
    expected = sklearn_metrics.f1_score(golds, preds, average="macro", zero_division=0)
    assert macro_f1(golds, preds) == pytest.approx(expected)
    assert task_utils.macro_f1_of_pairs(items) == pytest.approx(expected)  # lm-eval's aggregation


def test_macro_f1_by_hand():
    """Per-class F1 = 2tp / (2tp + fp + fn), averaged over classes seen as gold or predicted."""
    gold, pred = [0, 0, 1, 2, 2, 2, 1, 0], [0, 1, 1, 1, 2, 2, 0, 0]
    assert macro_f1(gold, pred) == pytest.approx((4 / 6 + 2 / 5 + 4 / 5) / 3)
    assert macro_f1([0, 0], [0, 1]) == pytest.approx((2 / 3 + 0.0) / 2)  # class 1: never gold
    assert math.isnan(macro_f1([], []))


# --- errors: one clear line each --------------------------------------------------------------


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(InvalidParameterError) as err:
        evaluate(OracleLM(), "semalign_mmlu,gsm8k")
    message = str(err.value)
    assert "'gsm8k'" in message and "semalign_gsm8k" in message and "allow_builtin" in message
    assert "\n" not in message


def test_limit_larger_than_the_split():
    with pytest.raises(InvalidParameterError, match="limit=300 exceeds the 164 records"):
        evaluate(OracleLM(), "semalign_humaneval", limit=300)


def test_missing_data_file_propagates_unwrapped(tmp_path, monkeypatch):
    monkeypatch.delenv("SEMALIGN_DATA_DIR", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "repo")
    with pytest.raises(DataNotFoundError) as err:
        evaluate(OracleLM(), "semalign_gsm8k", limit=2)
    assert type(err.value) is DataNotFoundError
    assert "gsm8k/test.jsonl" in str(err.value)


def test_model_prompt_style_needs_a_chat_template(smollm2_tokenizer):
    import copy

    bare = copy.deepcopy(smollm2_tokenizer)
    bare.chat_template = None
    with pytest.raises(InvalidParameterError, match="no chat template"):
        evaluate(OracleLM(), "semalign_gsm8k", limit=1, prompt_style="model", tokenizer=bare)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt_style="fancy"), "unknown prompt_style"),
        (dict(num_samples=4), "temperature > 0"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(task_options={"semalign_gsm8k": {"subjects": ["x"]}}), "unknown option"),
        (dict(task_options={"semalign_mbpp": {}}), "not being evaluated"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        evaluate(OracleLM(), "semalign_gsm8k", limit=1, **kwargs)


def test_in_memory_model_needs_its_tokenizer():
    import torch

    with pytest.raises(InvalidParameterError, match="needs its tokenizer"):
        evaluate(torch.nn.Linear(2, 2), "semalign_gsm8k", limit=1)


# --- the real tiny model, end to end ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from semalign_core.models.registry import load_model

    return load_model("tiny-source", verbose=False)


def test_tiny_model_end_to_end_on_every_task(tiny):
    records = evaluate(tiny, "semalign", limit=2, max_new_tokens=8, batch_size=2)
    assert set(records) == set(list_tasks())
    for name, rec in records.items():
        assert rec["n"] == 2, name
        for metric, value in rec["metrics"].items():
            high = math.inf if metric == "bits_per_byte" else 1.0
            assert value is not None and 0.0 <= value <= high, (name, metric)
    gen = records["semalign_gsm8k"]
    assert gen["padding_side"] == "left" and gen["decoding"]["method"] == "greedy"
    assert gen["decoding"]["until"][:2] == ["<|user|>", "<|assistant|>"]
    assert records["semalign_mmlu"]["provenance"]["dtype"] == "float32"


def test_in_memory_hf_model_and_cli(tiny, capsys):
    rec = evaluate(
        tiny.model, "semalign_cls_sst2", limit=2, tokenizer=tiny.tokenizer, batch_size=1
    )["semalign_cls_sst2"]
    assert rec["n"] == 2 and rec["batch_size"] == 1
    assert (
        harness.main(["--model", "tiny-source", "--tasks", "semalign_cls_mr", "--limit", "2"]) == 0
    )
    out = capsys.readouterr().out
    assert "semalign_cls_mr" in out and "macro_f1" in out
    assert harness.main(["--model", "tiny-source", "--tasks", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown task 'nope'") and "\n" not in err


@pytest.mark.slow
def test_smollm2_on_small_subsets():
    from semalign_core.models.registry import load_model

    model = load_model("smollm2-135m-instruct", verbose=False)
    records = evaluate(
        model,
        ["semalign_mmlu", "semalign_cls_sst2", "semalign_gsm8k"],
        limit=20,
        prompt_style="model",
        max_new_tokens=128,
    )
    for rec in records.values():
        assert rec["n"] == 20
        assert all(0.0 <= v <= 1.0 for v in rec["metrics"].values())
    # A 135M instruct model is better than chance on SST-2 with label words.
    assert records["semalign_cls_sst2"]["metrics"]["acc"] >= 0.5


# --- metrics that move at small scale: cloze MMLU, reference bits per byte ----------------------

SMALL_SCALE = [
    "semalign_mmlu_cloze",
    "semalign_gsm8k_nll",
    "semalign_humaneval_nll",
    "semalign_mbpp_nll",
]


@pytest.mark.parametrize("style", ["transfer", "plain"])
def test_oracle_scores_cloze_mmlu_and_knows_every_reference(style):
    records = evaluate(
        OracleLM(),
        SMALL_SCALE,
        limit=5,
        prompt_style=style,
        task_options={"semalign_mmlu_cloze": MMLU_OPTIONS},
    )
    cloze = records["semalign_mmlu_cloze"]
    assert cloze["metrics"] == {"acc": 1.0, "acc_norm": 1.0}
    assert cloze["prompt_style"] == "plain"
    for name in SMALL_SCALE[1:]:
        assert records[name]["metrics"] == {"bits_per_byte": 0.0}, name
        assert records[name]["decoding"] == {"method": "reference_loglikelihood"}
        assert records[name]["prompt_style"] == style


def test_cloze_prompt_scores_answer_texts_not_letters():
    _split, docs = task_utils.build_docs(
        "semalign_mmlu_cloze", {"limit": 3, "seed": 0, "options": {"semalign_mmlu_cloze": {}}}
    )
    for doc in docs:
        record = json.loads(doc["record"])
        assert doc["choices"] == record["choices"]
        assert doc["prompt"].endswith("\nAnswer:") and "\nA. " not in doc["prompt"]
        assert doc["choices"][doc["gold"]] == record["choices"]["ABCD".index(record["answer"])]


@pytest.mark.parametrize("family", ["gsm8k", "humaneval", "mbpp"])
@pytest.mark.parametrize("style", ["transfer", "plain"])
def test_reference_is_the_benchmark_solution_after_the_generation_prompt(family, style):
    name = f"semalign_{family}"
    ctx = {"limit": 3, "seed": 0, "prompt_style": style}
    _, plain_docs = task_utils.build_docs(name, ctx)
    _, docs = task_utils.build_docs(f"{name}_nll", ctx)
    for gen, doc in zip(plain_docs, docs):
        record = json.loads(doc["record"])
        assert doc["context"] == doc["context"].rstrip()  # whitespace belongs to the reference
        whole = doc["context"] + doc["reference"]
        assert whole.startswith(gen["prompt"])  # the generation task's own prompt, then ...
        answer = whole[len(gen["prompt"]) :]
        if family == "gsm8k":
            assert "<<" not in answer and ">>" not in answer
            assert answer.rstrip(".").endswith(record["target"])
        elif family == "humaneval":
            assert answer.rstrip().endswith(record["canonical_solution"].rstrip())
        else:
            assert record["code"].replace("\r\n", "\n").rstrip() in answer
        assert not doc["truncated"]


def test_gsm8k_solution_drops_calculator_annotations():
    record = {"answer": "She sells 16 - 3 = <<16-3=13>>13 eggs.\n#### 13"}
    assert task_utils.gsm8k_solution(record) == "She sells 16 - 3 = 13 eggs.\n#### 13"


def test_reference_longer_than_half_the_window_is_cut_and_flagged(smollm2_tokenizer):
    doc = {
        "prompt": "Q\n",
        "prompt_style": "plain",
        "family": "mbpp",
        "record": json.dumps({"code": "def f(x):\n    return x + 1"}),
    }
    full = task_utils.with_reference(doc)
    cut = task_utils.with_reference(doc, smollm2_tokenizer, max_tokens=4)
    assert not full["truncated"] and cut["truncated"]
    assert full["reference"].startswith(cut["reference"]) and cut["reference"]
    ids = smollm2_tokenizer(cut["reference"], add_special_tokens=False)["input_ids"]
    assert len(ids) == 4


def test_reference_bits_per_byte_agree_with_a_forward_pass(tiny):
    """Independent reference: tokenize context and context + reference with the tokenizer's
    defaults (the continuation is the tokens after the context's), sum the log-probabilities of the
    continuation tokens from one forward pass, divide by the reference's UTF-8 bytes and ln 2."""
    import torch

    name = "semalign_gsm8k_nll"
    records = evaluate(tiny, [name], limit=3, keep_samples=True, batch_size=2)
    tok, model = tiny.tokenizer, tiny.model
    _, docs = task_utils.build_docs(name, {"limit": 3, "seed": 0, "prompt_style": "transfer"})
    by_id = {d["doc_id"]: d for d in docs}
    for sample in records[name]["samples"]:
        doc = by_id[sample["doc_id"]]
        # the tokenizer's defaults: this one puts a BOS in front, as the evaluation does
        context = tok(doc["context"])["input_ids"]
        whole = tok(doc["context"] + doc["reference"])["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([whole])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        ll = sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context), len(whole)))
        expected = -ll / (len(doc["reference"].encode("utf-8")) * math.log(2))
        assert sample["bits_per_byte"] == pytest.approx(expected, rel=1e-4), doc["doc_id"]
