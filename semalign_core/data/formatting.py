"""Chat rendering and supervised fine-tuning examples.

Two prompt styles:

* ``"transfer"``: the Tulu / Open-Instruct tag format the LaTen transfer splits were written
  for. We follow LaTen's own renderer (``generate_chat_prompt`` in
  Trae1ounG/Neural_Incompatibility ``utils/utils.py``), since SemAlign follows that protocol:
  each message is ``"<|role|>\\n" + content.strip() + "\\n\\n"`` and the generation prompt is
  ``"<|assistant|>\\n"``. (Open-Instruct proper ends each message with a single ``"\\n"`` and
  puts EOS after assistant turns; ``TRANSFER_MESSAGE_END`` is the one place to change that.)
* ``"model"``: the model's own chat template (``tokenizer.apply_chat_template``).
* ``"plain"``: no chat tags: the prompt messages' contents as they are (joined by a blank line)
  followed by ``PLAIN_TARGET_DELIMITER`` and the response, which is exactly how lm-eval scores a
  multiple-choice continuation (``target_delimiter: " "``), so a model trained on plain records
  is trained on the text its evaluation scores (classification transfer, fine-tuned teachers).

``build_sft_example`` masks the prompt (everything up to and including the assistant header)
with -100 so that the loss is on the response only, as in LaTen's ``train_on_inputs=False``.
"""

from __future__ import annotations

from semalign_core.errors import InvalidParameterError

TRANSFER_ROLES = ("system", "user", "assistant")
TRANSFER_MESSAGE_END = "\n\n"  # LaTen's generate_chat_prompt; Open-Instruct uses "\n"
TRANSFER_GENERATION_PROMPT = "<|assistant|>\n"
PLAIN_TARGET_DELIMITER = " "  # lm-eval's default target_delimiter (our multiple-choice YAMLs)
PROMPT_STYLES = ("transfer", "model", "plain")
LOSS_ON = ("response", "all")
IGNORE_INDEX = -100  # label value ignored by torch's cross-entropy


def render_transfer_chat(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Render messages as ``<|user|>\\n...\\n\\n<|assistant|>\\n...\\n\\n`` (see module doc)."""
    parts = []
    for m in messages:
        role = m.get("role")
        if role not in TRANSFER_ROLES:
            raise InvalidParameterError(
                f"unknown chat role {role!r}; valid: {', '.join(TRANSFER_ROLES)}"
            )
        parts.append(f"<|{role}|>\n{m['content'].strip()}{TRANSFER_MESSAGE_END}")
    if add_generation_prompt:
        parts.append(TRANSFER_GENERATION_PROMPT)
    return "".join(parts)


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def render_model_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Render messages with the tokenizer's own chat template (as text, not token ids)."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidParameterError(
            f"model {_tokenizer_name(tokenizer)} has no chat template; use prompt_style='transfer'"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def prompt_and_response(messages: list[dict]) -> tuple[list[dict], str]:
    """Split a conversation into (messages before the last assistant turn, that turn's text)."""
    if not messages or messages[-1].get("role") != "assistant":
        raise InvalidParameterError(
            "a training example must end with an assistant message (the response)"
        )
    return list(messages[:-1]), messages[-1]["content"]


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _keep_tail(ids: list[int], n: int, bos_id: int | None) -> list[int]:
    """The last ``n`` ids, keeping a leading BOS in place (some models degrade without it)."""
    if n >= len(ids):
        return list(ids)
    if n > 0 and bos_id is not None and ids and ids[0] == bos_id:
        return [bos_id] + (ids[len(ids) - n + 1 :] if n > 1 else [])
    return list(ids[len(ids) - n :])


def _truncate(
    prompt: list[int], response: list[int], max_length: int, bos_id: int | None
) -> tuple[list[int], list[int]]:
    """Fit prompt + response into ``max_length``: cut the prompt from the left first.

    The prompt's tail always keeps at least a quarter of the window (or all of a shorter
    prompt), so the assistant header and the end of the question stay in view; a response too
    long for the rest is cut on the right. The response is never dropped.
    """
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    reserve = min(len(prompt), max(1, max_length // 4))
    prompt_budget = max(max_length - len(response), reserve)
    prompt = _keep_tail(prompt, prompt_budget, bos_id)
    return prompt, response[: max_length - len(prompt)]


def _render_pair(tokenizer, messages: list[dict], style: str) -> tuple[str, str]:
    """(prompt text ending with the assistant header, full conversation text)."""
    prompt_msgs, response = prompt_and_response(messages)
    if style == "plain":
        prompt = "\n\n".join(m["content"] for m in prompt_msgs)
        return prompt, prompt + PLAIN_TARGET_DELIMITER + response
    if style == "transfer":
        return render_transfer_chat(prompt_msgs, True), render_transfer_chat(messages)
    return render_model_chat(tokenizer, prompt_msgs, True), render_model_chat(tokenizer, messages)


def build_sft_example(
    tokenizer,
    messages: list[dict],
    style: str = "transfer",
    loss_on: str = "response",
    max_length: int = 512,
    add_eos: bool | None = None,
) -> dict[str, list[int]]:
    """Token ids and labels for one conversation: ``{"input_ids": [...], "labels": [...]}``.

    Prompt and prompt+response are tokenized separately; the prompt's tokens (the longest
    shared prefix, in case the tokenizer merges across the boundary) get label -100 when
    ``loss_on="response"``. Special tokens: the transfer and plain styles let the tokenizer add
    its BOS (as LaTen/Open-Instruct do, and as the evaluator does); the model style adds none
    because chat templates write their own. ``add_eos`` (default: True for "transfer", False for
    "model", whose templates end the turn themselves, and for "plain", whose evaluation scores the
    continuation alone) appends EOS so the model learns to stop.
    """
    if style not in PROMPT_STYLES:
        raise InvalidParameterError(
            f"unknown prompt style {style!r}; valid: {', '.join(PROMPT_STYLES)}"
        )
    if loss_on not in LOSS_ON:
        raise InvalidParameterError(f"unknown loss_on {loss_on!r}; valid: response, all")
    if not isinstance(max_length, int) or max_length < 2:
        raise InvalidParameterError(f"max_length must be an integer >= 2, got {max_length!r}")
    prompt_text, full_text = _render_pair(tokenizer, messages, style)
    special = style in ("transfer", "plain")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=special)["input_ids"]
    full_ids = list(tokenizer(full_text, add_special_tokens=special)["input_ids"])
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if (style == "transfer" if add_eos is None else add_eos) and eos_id is not None:
        if not full_ids or full_ids[-1] != eos_id:
            full_ids.append(eos_id)
    n_prompt = _common_prefix_len(prompt_ids, full_ids)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    prompt, response = _truncate(full_ids[:n_prompt], full_ids[n_prompt:], max_length, bos_id)
    input_ids = prompt + response
    if loss_on == "all":
        return {"input_ids": input_ids, "labels": list(input_ids)}
    return {"input_ids": input_ids, "labels": [IGNORE_INDEX] * len(prompt) + list(response)}
