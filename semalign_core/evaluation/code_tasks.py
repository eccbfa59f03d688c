"""HumanEval and MBPP: build the programs to execute, run them in the sandbox, compute pass@k.

A *program* is one string: the candidate code, a :data:`~.sandbox.TEST_SEPARATOR` line, then the
benchmark's tests. :func:`~.sandbox.run_sandboxed` runs the two parts separately (the tests see
pristine builtins and cannot be swallowed by an unterminated string in the candidate), and the
whole string is still valid Python you can run by hand.

Problems are the benchmark records as published (``semalign_core.data`` loaders or the raw
JSON lines): HumanEval ``prompt``/``test``/``entry_point``; MBPP ``code``/``test_list``/
``test_setup_code`` (full) or ``test_imports`` (sanitized).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
from tqdm.auto import tqdm

from semalign_core.errors import InvalidParameterError
from semalign_core.evaluation.sandbox import (
    DEFAULT_LIMITS,
    TEST_SEPARATOR,
    Program,
    SandboxLimits,
    SandboxResult,
    run_sandboxed,
)

__all__ = [
    "STOP_SEQUENCES",
    "humaneval_program",
    "mbpp_program",
    "extract_code",
    "score_programs",
    "pass_at_k",
    "aggregate_pass_at_k",
]

#: Stop sequences of the Codex paper's HumanEval evaluation, applied to body continuations.
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
#: The subset applied to a generation that is a whole program (it may define helpers/classes).
_FULL_PROGRAM_STOPS = ("\nif __name__", "\nprint(")

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_PY_TAGS = {"python", "python3", "py", "py3"}


def _nl(text: str) -> str:
    return text.replace("\r\n", "\n")


def humaneval_program(problem: dict, completion: str) -> str:
    """``prompt + completion``, the separator, ``test`` and ``check(<entry_point>)``.

    ``completion`` is either the continuation of the prompt (the function body) or a whole
    program redefining the function: the prompt (imports, helper functions) is kept in both
    cases, and a later ``def`` simply replaces the docstring-only stub. The result is a
    :class:`~.sandbox.Program` carrying the prompt, so the tests use the prompt's own helpers.
    """
    prompt = problem["prompt"]
    if completion and not prompt.endswith("\n") and not _is_continuation(completion):
        prompt += "\n"
    text = (
        f"{prompt}{completion}\n\n{TEST_SEPARATOR}\n{problem['test']}"
        f"\n\ncheck({problem['entry_point']})\n"
    )
    return Program(text, prompt=problem["prompt"])


def mbpp_program(problem: dict, completion: str, *, include_challenge: bool = False) -> str:
    """The completion (whole function), the separator, the setup code and the asserts.

    Setup is ``test_setup_code`` (full MBPP) or the ``test_imports`` lines (sanitized MBPP).
    ``include_challenge`` adds ``challenge_test_list`` (not part of the standard metric).
    Line endings are normalised to ``\\n``.
    """
    setup = problem.get("test_setup_code") or ""
    imports = problem.get("test_imports") or []
    tests = list(problem["test_list"])
    if include_challenge:
        tests += list(problem.get("challenge_test_list") or [])
    test_part = "\n".join([*imports, setup, *tests])
    return f"{_nl(completion)}\n\n{TEST_SEPARATOR}\n{_nl(test_part)}\n"


def _first_fenced_block(text: str) -> str | None:
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    for tag, body in blocks:
        if tag in _PY_TAGS:
            return body
    for tag, body in blocks:
        if tag == "":
            return body
    return None


def _is_continuation(code: str) -> bool:
    """True when the first non-blank line is indented: the text continues a function body."""
    for line in code.splitlines():
        if line.strip():
            return line[:1] in (" ", "\t")
    return True


def _cut(code: str, stops: Iterable[str]) -> str:
    cut = len(code)
    for s in stops:
        i = code.find(s)
        if i != -1:
            cut = min(cut, i)
    return code[:cut]


def _parses(code: str) -> bool:
    """True when ``code`` compiles as a module (``compile`` also catches e.g. ``return``
    outside a function, which ``ast.parse`` accepts)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning (invalid escapes...) is not a failure
        try:
            compile(code, "<generation>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False
    return True


def _drop_trailing_prose(code: str) -> str:
    """The longest prefix of whole lines of ``code`` that compiles; ``code`` itself if it
    compiles or if no non-empty prefix does (the sandbox then reports the real error).

    lm-eval's MBPP uses a 3-shot prompt whose answers end with ``[DONE]``, so the model stops
    at the end of its code. In our zero-shot chat format the model may instead follow the code
    with prose ("This function adds one to x."), and running that text whole is a SyntaxError
    that scores a correct function 0; we stop at the end of the code instead. Only applied to
    whole programs (not to a function-body continuation). Prefixes are tried from the longest
    down and the first that compiles is kept (at most one ``compile`` per line).
    """
    if _parses(code):
        return code
    lines = code.split("\n")
    for end in range(len(lines) - 1, 0, -1):
        if not lines[end - 1].strip():
            continue  # ending on a blank line compiles iff the shorter prefix does
        prefix = "\n".join(lines[:end])
        if _parses(prefix):
            return prefix + "\n"
    return code


def extract_code(generation: str, style: str = "humaneval") -> str:
    """The code to execute from a model generation.

    1. The first fenced block tagged ``python``/``py`` (else the first untagged one; an
       unclosed fence runs to the end) if there is one, else the whole text. For
       ``style="mbpp"`` the text is first cut at ``[DONE]`` and a leading ``[BEGIN]`` removed
       (the few-shot format of the MBPP paper).
    2. ``humaneval``: if the code *continues the prompt* (its first non-blank line is indented,
       i.e. it is the function body), it is cut at the first of :data:`STOP_SEQUENCES`, as in
       the Codex evaluation. If it is a whole program (first line at column 0: ``def``,
       ``import``...), ``\\ndef``/``\\nclass``/``\\n#`` are kept - they are helpers - and only
       ``\\nif __name__`` and ``\\nprint(`` cut it. ``mbpp``: nothing is cut (the generation is
       a whole program; ``if __name__ == "__main__":`` blocks do not run in the sandbox).
    3. A whole program (either style, not a continuation) that does not compile is cut to its
       longest compiling prefix of whole lines, dropping prose after the code
       (:func:`_drop_trailing_prose`). Code that compiles is returned unchanged.
    """
    if style not in ("humaneval", "mbpp"):
        raise InvalidParameterError(f"style must be 'humaneval' or 'mbpp', got {style!r}")
    text = _nl(generation)
    if style == "mbpp":
        text = text.split("[DONE]", 1)[0]
        stripped = text.lstrip()
        if stripped.startswith("[BEGIN]"):
            text = stripped[len("[BEGIN]") :].lstrip("\n")
    block = _first_fenced_block(text)
    code = block if block is not None else text
    if style == "humaneval":
        code = _cut(code, STOP_SEQUENCES if _is_continuation(code) else _FULL_PROGRAM_STOPS)
    if not _is_continuation(code):
        code = _drop_trailing_prose(code)
    return code


def score_programs(
    programs: Sequence[str],
    limits: SandboxLimits = DEFAULT_LIMITS,
    workers: int = 2,
    *,
    progress: bool | None = None,
    desc: str = "sandbox",
) -> list[SandboxResult]:
    """Run every program in the sandbox (``workers`` at a time); results in input order.

    ``progress``: tqdm bar on stderr; None = only when stderr is a terminal.
    """
    if workers < 1:
        raise InvalidParameterError(f"workers must be >= 1, got {workers}")
    programs = list(programs)
    if progress is None:
        progress = sys.stderr.isatty()
    results: list[SandboxResult | None] = [None] * len(programs)
    with (
        tqdm(total=len(programs), desc=desc, disable=not progress, unit="prog") as bar,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        futures = {pool.submit(run_sandboxed, p, limits): i for i, p in enumerate(programs)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            bar.update(1)
    return results  # type: ignore[return-value]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate for one task: ``1 - C(n-c, k) / C(n, k)`` (Chen et al., 2021),
    computed as the numerically stable product of the reference ``human-eval`` code."""
    if not (
        isinstance(n, (int, np.integer))
        and isinstance(c, (int, np.integer))
        and isinstance(k, (int, np.integer))
    ):
        raise InvalidParameterError(f"n, c, k must be integers, got {n!r}, {c!r}, {k!r}")
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise InvalidParameterError(
            f"pass@k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}"
        )
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def aggregate_pass_at_k(
    results_per_task: Sequence[Sequence[bool]], ks: Iterable[int] = (1,)
) -> dict:
    """Mean pass@k over tasks and its standard error (sample std over tasks / sqrt(#tasks)).

    ``results_per_task[i]`` holds the pass/fail of each sample of task i (tasks may have
    different sample counts, each at least max(ks)). Returns a flat dict:
    ``{"n_tasks": T, "n_samples_min": m, "pass@1": mean, "pass@1_stderr": se, ...}``
    (``stderr`` is NaN with a single task).
    """
    ks = list(ks)
    if not results_per_task:
        raise InvalidParameterError("aggregate_pass_at_k needs at least one task")
    if not ks:
        raise InvalidParameterError("ks is empty")
    ns = [len(r) for r in results_per_task]
    cs = [int(sum(bool(x) for x in r)) for r in results_per_task]
    out: dict = {"n_tasks": len(ns), "n_samples_min": min(ns)}
    for k in ks:
        if k > min(ns):
            bad = ns.index(min(ns))
            raise InvalidParameterError(
                f"pass@{k} needs at least {k} samples per task; task {bad} has {ns[bad]}"
            )
        est = np.array([pass_at_k(n, c, k) for n, c in zip(ns, cs)], dtype=float)
        out[f"pass@{k}"] = float(est.mean())
        out[f"pass@{k}_stderr"] = (
            float(est.std(ddof=1) / np.sqrt(len(est))) if len(est) > 1 else float("nan")
        )
    return out
