"""Classification prompts: one table, keyed by task, with one template per named style.

Two experiments read a classification text through a prompt that ends where the label word comes
(the label is then scored or trained as the next token, ``" " + label word``):

* ``"salf"``: SALF (semantic analysis, layer-freezing fine-tuning and its evaluation; notebooks
  02, 06, 07): the bare text, then a short cue (``"{text}\\nSentiment:"``). SALF reads the hidden
  state of the last prompt token, so the prompt adds as little as possible around the text
  (docs/decisions.md, SALF A1). A task without a template uses :data:`GENERIC_SALF_TEMPLATE`.
* ``"harness"``: the lm-eval tasks ``semalign_cls_<task>`` (zero-shot accuracy and macro-F1 by
  label-word log-likelihood), and therefore also Table 2's classification transfer records and the
  fine-tuned teachers, which train on exactly the text the evaluation scores
  (:mod:`semalign_core.data.cls_transfer`): a field label before the text and, where the label
  words are not implied by the cue, the choices spelled out (``"{text} Yes or no?\\nAnswer:"``), so
  an untrained model knows what it is choosing between.

The two were written for different experiments and their committed numbers depend on the exact
strings: never edit a template without rerunning the experiments that use it.
"""

from __future__ import annotations

from semalign_core.errors import InvalidParameterError

CLS_PROMPT_STYLES = ("salf", "harness")
GENERIC_SALF_TEMPLATE = "{text}\nAnswer:"

# task -> style -> template with {text}; the label words are data.CLASSIFICATION_TASKS' verbalizers
CLS_PROMPTS: dict[str, dict[str, str]] = {
    "sst2": {"salf": "{text}\nSentiment:", "harness": "Review: {text}\nSentiment:"},
    "cr": {"salf": "{text}\nSentiment:", "harness": "Review: {text}\nSentiment:"},
    "mr": {"salf": "{text}\nSentiment:", "harness": "Review: {text}\nSentiment:"},
    "mpqa": {"salf": "{text}\nSentiment:", "harness": "Phrase: {text}\nSentiment:"},
    "subj": {
        "salf": "{text}\nThis sentence is",
        "harness": "Sentence: {text}\nSubjective or objective:",
    },
    "trec": {"salf": "{text}\nAnswer type:", "harness": "Question: {text}\nAnswer type:"},
    "agnews": {"salf": "{text}\nTopic:", "harness": "Article: {text}\nTopic:"},
    "dbpedia": {"salf": "{text}\nCategory:", "harness": "Article: {text}\nCategory:"},
    "rte": {"salf": "{text}\nAnswer:", "harness": "{text} Yes or no?\nAnswer:"},
    "cb": {"salf": "{text}\nAnswer:", "harness": "{text} Yes, no, or maybe?\nAnswer:"},
}


def cls_template(task: str | None, style: str) -> str:
    """The template of ``task`` in ``style``; in the "salf" style a task without one (or None)
    gets :data:`GENERIC_SALF_TEMPLATE`."""
    if style not in CLS_PROMPT_STYLES:
        raise InvalidParameterError(
            f"unknown classification prompt style {style!r}; valid: {', '.join(CLS_PROMPT_STYLES)}"
        )
    if task in CLS_PROMPTS:
        return CLS_PROMPTS[task][style]
    if style == "salf":
        return GENERIC_SALF_TEMPLATE
    raise InvalidParameterError(
        f"no {style} prompt for task {task!r}; tasks: {', '.join(CLS_PROMPTS)}"
    )


def format_cls_prompt(text: str, task: str | None, style: str, template: str | None = None) -> str:
    """The prompt of one text: ``template`` (or the task's in ``style``) with the stripped text."""
    template = template or cls_template(task, style)
    if "{text}" not in template:
        raise InvalidParameterError(f"prompt template must contain '{{text}}', got {template!r}")
    return template.format(text=text.strip())
