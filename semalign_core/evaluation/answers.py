"""GSM8K final-answer extraction and numeric normalisation.

A GSM8K generation is scored by comparing one number with the reference (the text after
``####`` in the official answer). Which number is "the answer" is decided by rules tried in
order; the first rule that finds a number wins:

* ``"hashes"``: the official GSM8K format, "#### N" (the first such line counts, as in
  lm-eval's ``strict-match`` filter);
* ``"last_number"``: the last number anywhere (as in lm-eval's ``flexible-extract`` filter);
* ``"so_the_answer_is"``: the LaTen / SemAlign transfer phrase "So the answer is N." (the last
  such phrase counts; "The answer is: N" too). Not in the default order.

The default, :data:`DEFAULT_ORDER` = ``("hashes", "last_number")`` (preset
``"strict_then_flexible"``), gives lm-eval's gsm8k verdict: strict "#### N" where the output has
one, else the flexible last number. The extracted number is normalised with
:func:`normalise_number` on both sides, so "$1,000.00", "1000" and "1000." compare equal where
lm-eval compares strings ("2.50" != "2.5"). Every output on which our verdict differs from
lm-eval's is listed, with the reason, in ``DOCUMENTED_DISAGREEMENTS`` of tests/test_answers.py
and in docs/decisions.md ("GSM8K answer extraction against lm-eval's filters").

Before :data:`GSM8K_EXTRACTION_VERSION` 2 the default tried the transfer phrase first, which
lets "The answer is 20 - 5 = 15." score 20 and "The answer is 3 dozen, i.e. 36." score 3, and
lets a phrase override a later "#### N". That order is kept as the named, non-default preset
``"transfer_phrase_first"`` (:data:`TRANSFER_PHRASE_FIRST_ORDER`).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from semalign_core.errors import InvalidParameterError

# Bump whenever a verdict of the default extraction can change (rules, their order, number
# grammar, normalisation), so records scored with the old extraction stop being reused.
# 1: transfer phrase first, "- 5" read as -5.  2: lm-eval order (strict "####", then the last
# number), a minus sign must touch its digits ("- 42", a list bullet, is 42).
GSM8K_EXTRACTION_VERSION = 2

# A number as written in GSM8K text: optional sign (touching the digits) and $ (a space may
# follow the $), digits with optional thousands separators, optional decimals. "1,000" and
# "1,000.50" are one number; "3, 4" and "3,4" are two.
_NUMBER = r"(?:-?\$\s?|-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"

_RULES = {
    "hashes": re.compile(r"####\s*(" + _NUMBER + ")"),
    "last_number": re.compile("(" + _NUMBER + ")"),
    "so_the_answer_is": re.compile(r"[Tt]he (?:final )?answer is\s*:?\s*(" + _NUMBER + ")"),
}
# Which occurrence each rule takes: "####" takes the first, as lm-eval's strict-match does
# (group_select 0); the last number and the transfer phrase take the last.
_TAKE_LAST = {"hashes": False, "last_number": True, "so_the_answer_is": True}

ANSWER_RULES = tuple(_RULES)
DEFAULT_ORDER = ("hashes", "last_number")
TRANSFER_PHRASE_FIRST_ORDER = ("so_the_answer_is", "hashes", "last_number")
# Named orders, accepted wherever an order is (``order="transfer_phrase_first"``).
ORDER_PRESETS = {
    "strict_then_flexible": DEFAULT_ORDER,
    "transfer_phrase_first": TRANSFER_PHRASE_FIRST_ORDER,
}


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
    """The rule names of ``order``: a preset name, one rule name or a sequence of rule names."""
    if isinstance(order, str):
        order = ORDER_PRESETS.get(order, (order,))
    order = tuple(order)
    unknown = [r for r in order if r not in _RULES]
    if unknown or not order:
        raise InvalidParameterError(
            f"unknown GSM8K answer rule(s) {unknown or order!r}; valid: {', '.join(ANSWER_RULES)}"
            f" (or a preset: {', '.join(ORDER_PRESETS)})"
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
