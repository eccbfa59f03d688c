"""GSM8K final-answer extraction and numeric normalisation.

A GSM8K generation is scored by comparing one number with the reference (the text after
``####`` in the official answer). Which number is "the answer" depends on the output format:

* ``"so_the_answer_is"``: the LaTen / SemAlign transfer format ends with "So the answer is N."
  (the last such phrase counts; "The answer is: N" too);
* ``"hashes"``: the official GSM8K format ends with "#### N" (the first such line counts, as in
  lm-eval's ``strict-match`` filter);
* ``"last_number"``: the last number anywhere (as in lm-eval's ``flexible-extract`` filter).

:func:`extract_gsm8k_answer` tries the rules in ``order`` and returns the first hit, normalised
with :func:`normalise_number` so that "$1,000.00", "1000" and "1000." compare equal.
Differences from lm-eval's regex filters are deliberate and listed in tests/test_answers.py:
we never return non-numbers such as "..." or "[invalid]", and we read "1,000" and "3.50" as
numbers rather than strings.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from semalign_core.errors import InvalidParameterError

# A number as written in GSM8K text: optional sign and $, digits with optional thousands
# separators, optional decimals. "1,000" and "1,000.50" are one number; "3, 4" are two.
_NUMBER = r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"

_RULES = {
    "so_the_answer_is": re.compile(r"[Tt]he (?:final )?answer is\s*:?\s*(" + _NUMBER + ")"),
    "hashes": re.compile(r"####\s*(" + _NUMBER + ")"),
    "last_number": re.compile("(" + _NUMBER + ")"),
}
# Which occurrence each rule takes: the transfer phrase and the last number take the last;
# "####" takes the first, as lm-eval's strict-match does (group_select 0).
_TAKE_LAST = {"so_the_answer_is": True, "hashes": False, "last_number": True}

ANSWER_RULES = tuple(_RULES)
DEFAULT_ORDER = ("so_the_answer_is", "hashes", "last_number")


def normalise_number(text: str | None) -> str | None:
    """Canonical string of a number: no $, commas, %, spaces or trailing dot; "18.00" -> "18".

    Returns None when ``text`` holds no number. Integral values print without a decimal part
    and "-0" prints as "0", so equal numbers give equal strings.
    """
    if text is None:
        return None
    cleaned = re.sub(r"[\s$,%]", "", str(text)).rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _check_order(order) -> tuple[str, ...]:
    if isinstance(order, str):
        order = (order,)
    order = tuple(order)
    unknown = [r for r in order if r not in _RULES]
    if unknown or not order:
        raise InvalidParameterError(
            f"unknown GSM8K answer rule(s) {unknown or order!r}; valid: {', '.join(ANSWER_RULES)}"
        )
    return order


def extract_gsm8k_answer(text: str, order=DEFAULT_ORDER) -> str | None:
    """The normalised final answer of a GSM8K generation, or None if no rule matches."""
    for rule in _check_order(order):
        matches = _RULES[rule].findall(text or "")
        if matches:
            return normalise_number(matches[-1] if _TAKE_LAST[rule] else matches[0])
    return None


def gsm8k_correct(generation: str, target: str, order=DEFAULT_ORDER) -> bool:
    """Whether the extracted answer equals the normalised reference number."""
    predicted = extract_gsm8k_answer(generation, order)
    return predicted is not None and predicted == normalise_number(target)
