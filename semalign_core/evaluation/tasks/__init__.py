"""lm-eval task configs shipped with the package (``semalign_*``), registered by include path.

``lm_eval.tasks.TaskManager(include_path=str(TASKS_DIR))`` indexes the YAML files here. Their
data come from :mod:`semalign_core.data` through ``custom_dataset: !function utils.load_docs``
(never through ``dataset_path`` + ``data_files``, which resolve against the working directory
and may reach for the hub), so the tasks work offline from any directory.

lm-eval imports ``utils.py`` by file path, as a fresh module for every ``!function`` tag, so any
state shared between the harness and the task functions lives here, in the real package:
the tokenizer whose chat template renders the prompts when ``prompt_style="model"``.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent

# Chat-template tokenizers in use by running evaluations, by key. A key (a string) travels in
# the task metadata instead of the tokenizer itself, because lm-eval deep-copies the metadata
# when it dumps task configs.
_CHAT_TOKENIZERS: dict[str, object] = {}
_KEYS = itertools.count()


@contextmanager
def chat_tokenizer(tokenizer):
    """Register ``tokenizer`` for the duration of an evaluation; yields its key (or None)."""
    if tokenizer is None:
        yield None
        return
    key = f"tokenizer-{next(_KEYS)}"
    _CHAT_TOKENIZERS[key] = tokenizer
    try:
        yield key
    finally:
        _CHAT_TOKENIZERS.pop(key, None)


def get_chat_tokenizer(key: str | None):
    return _CHAT_TOKENIZERS.get(key) if key is not None else None
