"""Functions the ``semalign_*`` task YAMLs name with ``!function utils.<name>``.

lm-eval executes this file by path (a fresh module per ``!function`` tag), so it holds no state
and imports the package absolutely. Everything a task needs at run time arrives through the
task metadata key ``semalign`` (set by :func:`semalign_core.evaluation.harness.evaluate`):
``prompt_style``, ``limit``, ``seed``, ``tokenizer_key``, ``add_bos`` (the evaluator prepends
the tokenizer's BOS) and per-task ``options``.

Every document has the same flat fields, so one set of YAML keys serves all tasks:
``doc_id``, ``prompt`` (the full model input, already rendered in the requested style),
``choices`` + ``gold`` (multiple choice), ``target`` (generation), ``family``, ``prompt_style``,
``answer_order`` (GSM8K) and ``record`` (the data layer's record as JSON, for the scorers).

Prompts (``plain`` is the usual completion format; ``transfer`` / ``model`` wrap the LaTen
transfer-split user message in the Tulu tags / the tokenizer's chat template):

* MMLU: lm-eval's zero-shot MMLU prompt, "The following are multiple choice questions (with
  answers) about {subject}.\\n\\n{question}\\nA. ..\\nD. ..\\nAnswer:", choices " A".." D".
  ``semalign_mmlu`` always uses it plainly; ``semalign_mmlu_chat`` sends it as the user turn
  and scores " A".." D" after "The answer is:", the transfer split's response.
* GSM8K: "Answer the following question.\\n\\nQuestion: {question}" (+ "\\nAnswer:" plainly).
* HumanEval: the function prompt (plainly: the model continues the body); in chat styles
  "Complete the following python function.\\n\\n\\n{prompt}", as the MBPP transfer split asks.
* MBPP: lm-eval's zero-shot MBPP prompt (task, three tests, "[BEGIN]"); in chat styles the
  transfer split's "Complete the following python function.\\n\\n\\n{text}\\n{signature}".
* MMLU cloze (``semalign_mmlu_cloze``, always plain): lm-eval's cloze form of MMLU, "The following
  are questions (with answers) about {subject}.\n\nQuestion: {question}\nAnswer:", the choices
  are the answer texts; ``acc_norm`` divides each choice's log-likelihood by its length in bytes.
* Reference log-likelihood (``semalign_<gsm8k|humaneval|mbpp>_nll``): the generation task's own
  prompt, then the opening a correct answer in that style has (chat: "Answer: " / "Here is the
  completed function:...```python\n"), and the benchmark's reference solution scored under
  teacher forcing (GSM8K: the gold solution without its "<<a*b=c>>" calculator annotations and
  "So the answer is N."; HumanEval: the canonical solution (chat: the whole function); MBPP: the
  reference code). ``bits_per_byte`` = -log2 p(reference) / its UTF-8 bytes, per item.
* Classification: the "harness" style of the classification prompt table
  (:mod:`semalign_core.data.prompts`), one short template per task ending in a cue word; the label
  words of :data:`semalign_core.data.CLASSIFICATION_TASKS` are the choices.
"""

from __future__ import annotations

import json
import math
import re

import datasets
import numpy as np
from lm_eval.api.filter import Filter

from semalign_core.data import (
    CLASSIFICATION_TASKS,
    CLS_EVAL_SPLIT,
    format_cls_prompt,
    load_classification,
    load_gsm8k,
    load_humaneval,
    load_mbpp,
    load_mmlu,
    render_model_chat,
    render_transfer_chat,
)
from semalign_core.errors import InvalidParameterError
from semalign_core.evaluation.answers import (
    DEFAULT_ORDER,
    _check_order,
    extract_gsm8k_answer,
    normalise_number,
)
from semalign_core.evaluation.code_tasks import (
    extract_code,
    humaneval_program,
    mbpp_program,
    pass_at_k,
    score_programs,
)
from semalign_core.evaluation.metrics import macro_f1
from semalign_core.evaluation.tasks import get_chat_tokenizer

PROMPT_STYLES = ("transfer", "model", "plain")
MMLU_LETTERS = ("A", "B", "C", "D")
MMLU_CHAT_RESPONSE_PREFIX = "The answer is:"
CODE_INSTRUCTION = "Complete the following python function.\n\n\n"
GSM8K_INSTRUCTION = "Answer the following question.\n\nQuestion: "
DEFAULT_ANSWER_ORDER = DEFAULT_ORDER  # lm-eval's: strict "#### N", else the last number
PASS_KS = (1, 5, 10, 100)

# Stop strings. Plain ones are lm-eval's own for these benchmarks; chat ones stop at the next
# turn's tag (HFLM adds the tokenizer's EOS, e.g. <|im_end|>, to every list itself).
PLAIN_UNTIL = {
    "gsm8k": ["Question:", "</s>", "<|im_end|>"],
    "humaneval": ["\nclass", "\ndef", "\n#", "\nif", "\nprint"],
    "mbpp": ["[DONE]"],
}
CHAT_UNTIL = [
    "<|user|>",
    "<|assistant|>",
    "<|system|>",  # the transfer (Tulu) tags
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "</s>",
]  # common end-of-turn marks

# Options a caller may set per task (evaluate(..., task_options={task: {...}})).
TASK_OPTIONS = {
    "mmlu": {"split", "subjects"},
    "gsm8k": {"split", "answer_order"},
    "humaneval": set(),
    "mbpp": {"split", "sanitized"},
    "cls": {"split"},
}


VARIANTS = ("cloze", "nll")  # task-name suffixes: another scoring of a family's documents


def task_family(name: str) -> str:
    """mmlu / mmlu_chat / gsm8k / humaneval / mbpp / cls, from a semalign_* task name (a variant
    such as ``semalign_mbpp_nll`` belongs to its base family)."""
    base = name.removeprefix("semalign_")
    if base.startswith("cls_"):
        return "cls"
    variant = task_variant(name)
    return base.removesuffix(f"_{variant}") if variant else base


def task_variant(name: str) -> str | None:
    """ "cloze" (MMLU by answer text), "nll" (reference log-likelihood) or None."""
    return next((v for v in VARIANTS if name.endswith(f"_{v}")), None)


def generation_until(family: str, style: str) -> list[str]:
    """Stop strings of a generation task in a prompt style."""
    if style == "plain":
        return list(PLAIN_UNTIL[family])
    return CHAT_UNTIL + (["Question:"] if family == "gsm8k" else [])


# ---------------------------------------------------------------------------------------------
# Prompt rendering
# ---------------------------------------------------------------------------------------------


def render_user_turn(
    content: str, style: str, tokenizer_key: str | None, lm_adds_bos: bool = False
) -> str:
    """The model input for one user message and an open assistant turn.

    ``lm_adds_bos``: the evaluator puts the tokenizer's BOS in front of every input; a chat
    template that writes the BOS itself then loses its leading copy, so there is one.
    """
    messages = [{"role": "user", "content": content}]
    if style == "transfer":
        return render_transfer_chat(messages, add_generation_prompt=True)
    if style == "model":
        tokenizer = get_chat_tokenizer(tokenizer_key)
        if tokenizer is None:
            raise InvalidParameterError(
                "prompt_style='model' needs the model's tokenizer; evaluate through "
                "semalign_core.evaluation.harness.evaluate"
            )
        text = render_model_chat(tokenizer, messages, add_generation_prompt=True)
        bos = getattr(tokenizer, "bos_token", None)
        if lm_adds_bos and bos and text.startswith(bos):
            text = text[len(bos) :]
        return text
    raise InvalidParameterError(
        f"unknown prompt style {style!r}; valid: {', '.join(PROMPT_STYLES)}"
    )


def mmlu_question(record: dict) -> str:
    """lm-eval's zero-shot MMLU prompt (description + question + lettered choices + Answer:)."""
    subject = record["subject"].replace("_", " ")
    lines = [record["question"].strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, record["choices"])]
    lines.append("Answer:")
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n" + (
        "\n".join(lines)
    )


def mmlu_cloze_question(record: dict) -> str:
    """lm-eval's cloze MMLU prompt: the question without lettered choices, then "Answer:"."""
    subject = record["subject"].replace("_", " ")
    return (
        f"The following are questions (with answers) about {subject}.\n\n"
        f"Question: {record['question'].strip()}\nAnswer:"
    )


def mbpp_signature(record: dict) -> str:
    """Imports and the ``def name(args)`` line of the reference code (no colon), as in the
    MBPP transfer split; the function is the one the first test calls."""
    lines = record["code"].replace("\r\n", "\n").split("\n")
    first_test = record["test_list"][0] if record["test_list"] else ""
    called = re.findall(r"([A-Za-z_]\w*)\s*\(", first_test)
    defs = [i for i, line in enumerate(lines) if re.match(r"\s*def\s+\w+", line)]
    if not defs:
        return ""
    names = {i: re.match(r"\s*def\s+(\w+)", lines[i]).group(1) for i in defs}
    index = next((i for i in defs if names[i] in called), defs[0])
    imports = [ln for ln in lines[:index] if re.match(r"\s*(import|from)\s", ln)]
    header = lines[index].rstrip().removesuffix(":").rstrip()
    return "\n".join(imports + [header])


def mbpp_plain_prompt(record: dict) -> str:
    """lm-eval's zero-shot MBPP prompt."""
    tests = "\n".join(record["test_list"])
    return (
        f"You are an expert Python programmer, and here is your task: {record['text']} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
    )


# ---------------------------------------------------------------------------------------------
# Document builders: one per family; each returns (Split, docs)
# ---------------------------------------------------------------------------------------------


def _doc(doc_id: str, prompt: str, family: str, style: str, record: dict, **fields) -> dict:
    doc = {
        "doc_id": doc_id,
        "prompt": prompt,
        "family": family,
        "prompt_style": style,
        "choices": [],
        "gold": -1,
        "target": "",
        "answer_order": [],
        "context": "",
        "reference": "",
        "truncated": False,
        "record": json.dumps(record, ensure_ascii=False),
    }
    doc.update(fields)
    return doc


def _mmlu_docs(name, style, chat, opts, limit, seed):
    split = load_mmlu(opts.get("split", "test"), opts.get("subjects"), limit=limit, seed=seed)
    style = style if name == "semalign_mmlu_chat" else "plain"
    cloze = task_variant(name) == "cloze"
    docs = []
    for i, rec in enumerate(split.records):
        question = mmlu_cloze_question(rec) if cloze else mmlu_question(rec)
        prompt = question
        if style != "plain":
            prompt = render_user_turn(question, style, *chat) + MMLU_CHAT_RESPONSE_PREFIX
        docs.append(
            _doc(
                f"{rec['subject']}/{i}",
                prompt,
                "mmlu",
                style,
                rec,
                choices=list(rec["choices"] if cloze else MMLU_LETTERS),
                gold=MMLU_LETTERS.index(rec["answer"]),
            )
        )
    return split, docs


def _gsm8k_docs(name, style, chat, opts, limit, seed):
    order = list(_check_order(opts.get("answer_order", DEFAULT_ANSWER_ORDER)))
    split = load_gsm8k(opts.get("split", "test"), limit=limit, seed=seed)
    docs = []
    for i, rec in enumerate(split.records):
        user = GSM8K_INSTRUCTION + rec["question"].strip()
        prompt = user + "\nAnswer:" if style == "plain" else render_user_turn(user, style, *chat)
        docs.append(
            _doc(
                f"gsm8k/{i}",
                prompt,
                "gsm8k",
                style,
                rec,
                target=normalise_number(rec["target"]),
                answer_order=order,
            )
        )
    return split, docs


def _humaneval_docs(name, style, chat, opts, limit, seed):
    split = load_humaneval(limit=limit, seed=seed)
    docs = []
    for rec in split.records:
        if style == "plain":
            prompt = rec["prompt"]
        else:
            prompt = render_user_turn(CODE_INSTRUCTION + rec["prompt"], style, *chat)
        docs.append(
            _doc(rec["task_id"], prompt, "humaneval", style, rec, target=rec["canonical_solution"])
        )
    return split, docs


def _mbpp_docs(name, style, chat, opts, limit, seed):
    split = load_mbpp(
        opts.get("split", "test"),
        sanitized=bool(opts.get("sanitized", False)),
        limit=limit,
        seed=seed,
    )
    docs = []
    for rec in split.records:
        if style == "plain":
            prompt = mbpp_plain_prompt(rec)
        else:
            user = f"{CODE_INSTRUCTION}{rec['text'].strip()}\n{mbpp_signature(rec)}"
            prompt = render_user_turn(user, style, *chat)
        docs.append(
            _doc(
                f"mbpp/{rec['task_id']}",
                prompt,
                "mbpp",
                style,
                rec,
                target=rec["code"].replace("\r\n", "\n"),
            )
        )
    return split, docs


def _cls_docs(name, style, chat, opts, limit, seed):
    task = name.removeprefix("semalign_cls_")
    spec = CLASSIFICATION_TASKS[task]
    split = load_classification(
        task, opts.get("split", CLS_EVAL_SPLIT[task]), limit=limit, seed=seed
    )
    docs = []
    for i, rec in enumerate(split.records):
        prompt = format_cls_prompt(rec["text"], task, "harness")
        docs.append(
            _doc(
                f"{task}/{i}",
                prompt,
                "cls",
                "plain",
                rec,
                choices=list(spec.label_words),
                gold=rec["label"],
            )
        )
    return split, docs


_BUILDERS = {
    "mmlu": _mmlu_docs,
    "mmlu_chat": _mmlu_docs,
    "gsm8k": _gsm8k_docs,
    "humaneval": _humaneval_docs,
    "mbpp": _mbpp_docs,
    "cls": _cls_docs,
}


# ---------------------------------------------------------------------------------------------
# Reference solutions (the ``_nll`` variants)
# ---------------------------------------------------------------------------------------------

CODE_ANSWER_OPENING = "Here is the completed function:\n\n\n```python\n"  # the transfer splits'
_CALCULATOR = re.compile(r"<<[^>]*>>")


def gsm8k_solution(record: dict) -> str:
    """The gold worked solution without its calculator annotations ("<<48/2=24>>"), which are
    tool calls of the dataset's annotators, not text a model is taught to write."""
    return _CALCULATOR.sub("", record["answer"]).strip()


def reference_answer(doc: dict) -> tuple[str, str]:
    """(opening, reference) of a correct answer to ``doc`` in its prompt style: the opening is
    context (how the transfer splits' answers begin), the reference is what is scored."""
    record, chat = json.loads(doc["record"]), doc["prompt_style"] != "plain"
    family = doc["family"]
    if family == "gsm8k":
        if not chat:
            return " ", gsm8k_solution(record)
        steps = " ".join(gsm8k_solution(record).split("####")[0].split())
        return "Answer: ", f"{steps} So the answer is {record['target']}."
    if family == "humaneval":
        if not chat:
            return "", record["canonical_solution"]
        return CODE_ANSWER_OPENING, record["prompt"] + record["canonical_solution"].rstrip()
    if family == "mbpp":
        code = record["code"].replace("\r\n", "\n").rstrip()
        return ("", f"{code}\n[DONE]") if not chat else (CODE_ANSWER_OPENING, code)
    raise InvalidParameterError(f"no reference solution for the {family} family")


def with_reference(doc: dict, tokenizer=None, max_tokens: int | None = None) -> dict:
    """``doc`` with ``context`` (prompt + opening) and ``reference``; whitespace at the end of the
    context is moved to the reference, as lm-eval moves it before scoring (so the bytes counted
    are the bytes scored). A reference longer than ``max_tokens`` of ``tokenizer`` is cut to
    its first ``max_tokens`` tokens (lm-eval refuses a continuation longer than the model's
    window; only tiny test models have windows that short) and the doc says so."""
    opening, reference = reference_answer(doc)
    context = doc["prompt"] + opening
    stripped = context.rstrip()
    reference = context[len(stripped) :] + reference
    cut = _first_tokens(reference, tokenizer, max_tokens)
    return {**doc, "context": stripped, "reference": cut, "truncated": cut != reference}


def _first_tokens(text: str, tokenizer, max_tokens: int | None) -> str:
    """The prefix of ``text`` made of its first ``max_tokens`` tokens (all of it if it fits)."""
    if tokenizer is None or not max_tokens:
        return text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]


def _check_options(name: str, family: str, opts: dict) -> None:
    allowed = TASK_OPTIONS["mmlu" if family == "mmlu_chat" else family]
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise InvalidParameterError(
            f"unknown option(s) {', '.join(unknown)} for task {name}; valid: "
            f"{', '.join(sorted(allowed)) or 'none'}"
        )


def build_docs(name: str, semalign: dict | None = None):
    """(Split, list of docs) of task ``name`` under the run-time settings ``semalign``."""
    ctx = dict(semalign or {})
    style = ctx.get("prompt_style", "transfer")
    if style not in PROMPT_STYLES:
        raise InvalidParameterError(
            f"unknown prompt style {style!r}; valid: {', '.join(PROMPT_STYLES)}"
        )
    family = task_family(name)
    opts = dict((ctx.get("options") or {}).get(name) or {})
    _check_options(name, family, opts)
    chat = (ctx.get("tokenizer_key"), bool(ctx.get("add_bos", False)))
    split, docs = _BUILDERS[family](name, style, chat, opts, ctx.get("limit"), ctx.get("seed"))
    if task_variant(name) == "nll":
        tokenizer = get_chat_tokenizer(ctx.get("reference_tokenizer_key"))
        window = ctx.get("max_length")
        max_tokens = window // 2 if window else None  # half the window: room for the context
        docs = [with_reference(d, tokenizer, max_tokens) for d in docs]
    return split, docs


def load_docs(name: str, semalign: dict | None = None, **_unused):
    """``custom_dataset`` of every semalign task: a DatasetDict with one ``test`` split.

    lm-eval calls it with the task metadata and ``dataset_kwargs`` as keyword arguments
    (``name`` comes from the YAML, ``semalign`` from the harness, ``version`` is ignored). The
    data layer's provenance (files and sha256, limit, seed) rides along as
    ``.semalign_provenance`` on the returned object.
    """
    split, docs = build_docs(name, semalign)
    dataset = datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})
    dataset.semalign_provenance = split.provenance()
    return dataset


# ---------------------------------------------------------------------------------------------
# Filters and metrics
# ---------------------------------------------------------------------------------------------


class GSM8KAnswerFilter(Filter):
    """Replace each generation by its normalised final number (or "[invalid]")."""

    def __init__(self, order=DEFAULT_ANSWER_ORDER, fallback: str = "[invalid]") -> None:
        self.order = tuple(order)
        self.fallback = fallback

    def apply(self, resps, docs):
        out = []
        for responses, doc in zip(resps, docs):
            order = tuple(doc.get("answer_order") or self.order)
            out.append([extract_gsm8k_answer(r, order) or self.fallback for r in responses])
        return out


class CodeExtractFilter(Filter):
    """Keep every sample (no take_first: pass@k needs all n) and cut each to its code."""

    def apply(self, resps, docs):
        out = []
        for responses, doc in zip(resps, docs):
            chat = doc["prompt_style"] != "plain"
            out.append(
                [extract_code(strip_preamble(r) if chat else r, doc["family"]) for r in responses]
            )
        return out


_CODE_START = re.compile(r"^(def |class |import |from |@|async def )")


def strip_preamble(text: str) -> str:
    """Drop the prose before the code of an unfenced chat answer ("Here is the completed
    function:\n\ndef f(...)..."); fenced answers are left to ``extract_code``."""
    if "```" in text:
        return text
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), None)
    return text if start is None else "\n".join(lines[start:])


def code_program(doc: dict, completion: str) -> str:
    """The program (candidate + tests) the sandbox runs for one completion of ``doc``."""
    record = json.loads(doc["record"])
    if doc["family"] == "humaneval":
        return humaneval_program(record, completion)
    return mbpp_program(record, completion)


def process_code_results(doc: dict, results: list[str]) -> dict:
    """pass@k (k <= n samples) of one problem, by running every completion in the sandbox."""
    completions = results[0]  # one request per problem; its filtered responses are the n samples
    outcomes = score_programs(
        [code_program(doc, c) for c in completions], workers=2, progress=False
    )
    n, c = len(outcomes), sum(bool(o.passed) for o in outcomes)
    return {f"pass@{k}": float(pass_at_k(n, c, k)) for k in PASS_KS if k <= n}


def process_cls_results(doc: dict, results) -> dict:
    """acc, and the (gold, prediction) pair that macro-F1 aggregates, from the choices'
    log-likelihoods."""
    lls = [ll for ll, _greedy in results]
    pred = int(np.argmax(lls))
    gold = int(doc["gold"])
    return {"acc": float(pred == gold), "macro_f1": (gold, pred)}


def process_reference_nll(doc: dict, results) -> dict:
    """Bits per byte of the reference: -log2 p(reference | context) / its UTF-8 bytes (one
    item's score; the task reports the mean over items, each item weighing the same)."""
    ll, _is_greedy = results[0]
    n_bytes = len(doc["reference"].encode("utf-8"))
    return {"bits_per_byte": -ll / (n_bytes * math.log(2))}


def macro_f1_of_pairs(items) -> float:
    """lm-eval aggregation of the ``macro_f1`` metric: :func:`macro_f1` of the (gold, prediction)
    pairs that :func:`process_cls_results` emits, one per document."""
    return macro_f1([g for g, _ in items], [p for _, p in items])
