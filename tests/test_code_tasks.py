"""HumanEval/MBPP program building, code extraction, scoring and pass@k."""

from __future__ import annotations

import ast
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

import pytest

from semalign_core.errors import InvalidParameterError
from semalign_core.evaluation.code_tasks import (
    aggregate_pass_at_k,
    extract_code,
    humaneval_program,
    mbpp_program,
    pass_at_k,
    score_programs,
)
from semalign_core.evaluation.sandbox import TEST_SEPARATOR, SandboxLimits, split_tests

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

_REPO = Path(__file__).resolve().parents[1]


def _bench_file(rel: str) -> Path:
    """Same lookup order as semalign_core.data.resolve: $SEMALIGN_DATA_DIR, <repo>/data,
    <repo>/../shared/benchmarks (kept local so these tests do not depend on the loaders)."""
    roots = [Path(os.environ["SEMALIGN_DATA_DIR"])] if os.environ.get("SEMALIGN_DATA_DIR") else []
    roots += [_REPO / "data", _REPO.parent / "shared" / "benchmarks"]
    for root in roots:
        if (root / rel).is_file():
            return root / rel
    return roots[-1] / rel


HUMANEVAL = _bench_file("humaneval/HumanEval.jsonl.gz")
MBPP = _bench_file("mbpp/mbpp.jsonl")


def _humaneval() -> list[dict]:
    if not HUMANEVAL.is_file():
        pytest.skip(f"HumanEval data not found at {HUMANEVAL}")
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _mbpp_test() -> list[dict]:
    if not MBPP.is_file():
        pytest.skip(f"MBPP data not found at {MBPP}")
    with open(MBPP, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if 11 <= r["task_id"] <= 510]


def _he_wrong(problem: dict) -> str:
    return "    return None\n"


def _mbpp_wrong(problem: dict) -> str:
    """The reference code, then every top-level function redefined to return None."""
    code = problem["code"].replace("\r\n", "\n")
    names = [n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)]
    return code + "\n" + "".join(f"\ndef {n}(*args, **kwargs):\n    return None\n" for n in names)


# --------------------------------------------------------------------------- pass@k


def test_pass_at_k_known_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 1, 10) == 1.0 and pass_at_k(5, 5, 5) == 1.0
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(200, 200, 100) == 1.0
    for n in (1, 2, 7, 20):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert pass_at_k(200, 13, 10) == pytest.approx(1 - math.comb(187, 10) / math.comb(200, 10))


@pytest.mark.parametrize(
    "args", [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (5.0, 2, 1)]
)
def test_pass_at_k_rejects_bad_arguments(args):
    with pytest.raises(InvalidParameterError):
        pass_at_k(*args)


def test_aggregate_pass_at_k():
    res = aggregate_pass_at_k(
        [[True, False], [False, False], [True, True], [True, False]], ks=(1, 2)
    )
    assert res["n_tasks"] == 4 and res["n_samples_min"] == 2
    assert res["pass@1"] == pytest.approx((0.5 + 0 + 1 + 0.5) / 4)
    assert res["pass@2"] == pytest.approx(3 / 4)
    per = [0.5, 0.0, 1.0, 0.5]
    mean = sum(per) / 4
    sd = math.sqrt(sum((p - mean) ** 2 for p in per) / 3)
    assert res["pass@1_stderr"] == pytest.approx(sd / 2)
    assert math.isnan(aggregate_pass_at_k([[True]])["pass@1_stderr"])
    with pytest.raises(InvalidParameterError):
        aggregate_pass_at_k([[True, False], [True]], ks=(2,))
    with pytest.raises(InvalidParameterError):
        aggregate_pass_at_k([])


# --------------------------------------------------------------------------- extraction


def test_extract_code_humaneval_continuation_is_cut_at_stop_sequences():
    gen = "    return x + 1\n\n\ndef unrelated():\n    pass\n"
    assert extract_code(gen) == "    return x + 1\n\n"
    assert extract_code("    return 1\n# trailing comment\nprint(2)") == "    return 1"
    assert extract_code("    return 1\nif __name__ == '__main__':\n    f()") == "    return 1"


def test_extract_code_humaneval_whole_function_keeps_helpers():
    gen = (
        "Here is the solution:\n```python\nimport math\n\ndef helper(x):\n    return x\n\n"
        "# comment\ndef f(x):\n    return helper(x)\n\nprint(f(1))\n```\nDone."
    )
    assert extract_code(gen) == (
        "import math\n\ndef helper(x):\n    return x\n\n# comment\n"
        "def f(x):\n    return helper(x)\n"
    )


def test_extract_code_fences():
    assert extract_code("```\n    return 2\n```") == "    return 2"
    assert extract_code("text\n```py\n    return 3\n") == "    return 3\n"  # unclosed fence
    gen = "```text\nnot code\n```\n```python\n    return 4\n```\n```python\n    return 5\n```"
    assert extract_code(gen) == "    return 4"
    assert extract_code("no fence at all\r\n", style="mbpp") == "no fence at all\n"


def test_extract_code_mbpp():
    gen = "[BEGIN]\ndef f(x):\n    return x\n\ndef g():\n    pass\n[DONE]\nYou are an expert"
    assert extract_code(gen, style="mbpp") == "def f(x):\n    return x\n\ndef g():\n    pass\n"
    with pytest.raises(InvalidParameterError):
        extract_code("x", style="apps")


ADD_ONE = {
    "text": "Write a function to add one to x.",
    "code": "def add_one(x):\n    return x + 1\n",
    "test_list": ["assert add_one(1) == 2", "assert add_one(-1) == 0", "assert add_one(41) == 42"],
    "test_setup_code": "",
}


def test_extract_code_drops_prose_after_a_whole_program():
    gen = "def add_one(x):\n    return x + 1\n\nThis function adds one to x.\n"
    code = extract_code(gen, style="mbpp")
    assert code == "def add_one(x):\n    return x + 1\n"
    assert extract_code(gen) == code  # HumanEval whole program: same rule
    res = score_programs(
        [mbpp_program(ADD_ONE, gen), mbpp_program(ADD_ONE, code)], workers=1, progress=False
    )
    assert res[0].status != "passed"  # run whole, the prose is a SyntaxError
    assert res[1].passed, res[1].stderr[-300:]


def test_extract_code_keeps_code_that_compiles_byte_for_byte():
    gens = [
        "def f(x):\n    return x\n\n\n# the end   \n\n",
        "import math\r\ndef f(x):\r\n    return math.sqrt(x)",  # no final newline
        "x = '\\d'\n",  # a SyntaxWarning, not an error
    ]
    for gen in gens:
        assert extract_code(gen, style="mbpp") == gen.replace("\r\n", "\n")


def test_extract_code_prose_rule_skips_continuations_and_garbage():
    body = "    return x + 1\n\nThis adds one.\n"
    assert extract_code(body) == body  # indented continuation: only the stop sequences apply
    garbage = "I cannot solve this problem, sorry.\nIt is too hard.\n"
    assert extract_code(garbage, style="mbpp") == garbage
    broken = "def f(x:\n    return x\n"  # nothing compiles: the sandbox shows the real error
    assert extract_code(broken, style="mbpp") == broken


def test_extract_code_prose_between_functions_keeps_the_first():
    gen = (
        "def f(x):\n    return x + 1\n\nAnd a helper you may need:\n\n"
        "def g(x):\n    return f(x) * 2\n"
    )
    assert extract_code(gen, style="mbpp") == "def f(x):\n    return x + 1\n"


def test_extract_code_fenced_block_followed_by_prose():
    gen = "Sure:\n```python\ndef f(x):\n    return x + 1\n```\nThis function adds one to x."
    assert extract_code(gen, style="mbpp") == "def f(x):\n    return x + 1"
    assert extract_code(gen) == "def f(x):\n    return x + 1"


# --------------------------------------------------------------------------- programs


def test_humaneval_program_layout():
    problem = _humaneval()[0]
    prog = humaneval_program(problem, problem["canonical_solution"])
    cand, tests = split_tests(prog)
    assert cand == problem["prompt"] + problem["canonical_solution"] + "\n\n"
    assert tests == problem["test"] + f"\n\ncheck({problem['entry_point']})\n"
    # the program is also a valid Python file as a whole
    compile(prog, "<humaneval>", "exec")


def test_mbpp_program_layout():
    problem = next(p for p in _mbpp_test() if p["test_setup_code"])
    prog = mbpp_program(problem, problem["code"])
    assert "\r" not in prog and TEST_SEPARATOR in prog
    _, tests = split_tests(prog)
    assert tests.splitlines()[-3:] == problem["test_list"]
    assert "root = Node(1)" in tests
    sanitized = {
        "code": "def f():\n    return 1\n",
        "test_imports": ["import math"],
        "test_list": ["assert math.isclose(f(), 1)"],
    }
    assert (
        split_tests(mbpp_program(sanitized, sanitized["code"]))[1]
        == "import math\n\nassert math.isclose(f(), 1)\n"
    )


FAST_IDS = (0, 10, 32, 38, 53, 162)  # helpers in the prompt, math/poly, hashlib


def test_some_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    problems = {p["task_id"]: p for p in _humaneval()}
    chosen = [problems[f"HumanEval/{i}"] for i in FAST_IDS]
    good = [humaneval_program(p, p["canonical_solution"]) for p in chosen]
    bad = [humaneval_program(p, _he_wrong(p)) for p in chosen]
    res = score_programs(good + bad, SandboxLimits(), workers=2, progress=False)
    assert [r.status for r in res[: len(good)]] == ["passed"] * len(good), [
        (r.status, r.stderr[-300:]) for r in res if not r.passed
    ][:3]
    assert not any(r.passed for r in res[len(good) :])


def test_some_mbpp_reference_solutions_pass_and_wrong_ones_fail():
    problems = {p["task_id"]: p for p in _mbpp_test()}
    chosen = [problems[i] for i in (11, 12, 17, 367)]  # 367 has test_setup_code
    progs = [mbpp_program(p, p["code"]) for p in chosen]
    progs += [mbpp_program(p, _mbpp_wrong(p)) for p in chosen]
    res = score_programs(progs, progress=False)
    assert [r.passed for r in res] == [True] * 4 + [False] * 4, [r.stderr[-300:] for r in res]


def test_score_programs_keeps_order_and_validates_workers():
    progs = [f"print({i})" for i in range(6)]
    res = score_programs(progs, SandboxLimits(wall_s=5), workers=3, progress=False)
    assert [r.stdout for r in res] == [f"{i}\n" for i in range(6)]
    with pytest.raises(InvalidParameterError):
        score_programs(progs, workers=0)


# --------------------------------------------------------------------------- full benchmarks


def _timed(programs: list[str]):
    t0 = time.monotonic()
    res = score_programs(programs, SandboxLimits(), workers=2, progress=False)
    return res, time.monotonic() - t0


def _all_right_and_all_wrong(name, problems, program, right, wrong):
    """Every reference solution passes and every broken one fails; prints the wall times."""
    good, wall = _timed([program(p, right(p)) for p in problems])
    failures = [
        (p["task_id"], r.status, r.stderr[-300:]) for p, r in zip(problems, good) if not r.passed
    ]
    assert not failures, failures
    bad, wall_bad = _timed([program(p, wrong(p)) for p in problems])
    passed_bad = [p["task_id"] for p, r in zip(problems, bad) if r.passed]
    assert not passed_bad, passed_bad
    mean_prog = sum(r.wall_s for r in good) / len(good)
    print(
        f"\n{name}: {len(problems)} reference in {wall:.1f}s, {len(problems)} wrong in "
        f"{wall_bad:.1f}s (2 workers); mean per-program wall {1000 * mean_prog:.0f} ms"
    )


@pytest.mark.slow
def test_all_humaneval_canonical_solutions_pass_and_stubs_fail():
    problems = _humaneval()
    assert len(problems) == 164
    _all_right_and_all_wrong(
        "HumanEval", problems, humaneval_program, lambda p: p["canonical_solution"], _he_wrong
    )


@pytest.mark.slow
def test_all_mbpp_reference_solutions_pass_and_wrong_versions_fail():
    problems = _mbpp_test()
    assert len(problems) == 500
    _all_right_and_all_wrong("MBPP", problems, mbpp_program, lambda p: p["code"], _mbpp_wrong)
