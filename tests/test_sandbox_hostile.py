"""A hostile corpus through the real HumanEval path: 4 workers, a correct sample beside each
hostile one. Every correct sample passes, every hostile one fails, nothing they wrote remains
in /tmp or /dev/shm, and no sandbox process survives. ``make test-scale`` (marker ``slow``).

Where per-sample namespaces are unavailable these tests skip, unless
``SEMALIGN_SANDBOX_ISOLATION=require`` (CI): then they fail."""

from __future__ import annotations

import ast
import os
import secrets
import sys
import time
from pathlib import Path

import pytest

from semalign_core.errors import ArtifactError
from semalign_core.evaluation.code_tasks import humaneval_program, score_programs
from semalign_core.evaluation.sandbox import SandboxLimits, run_sandboxed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only"),
]

_REPO = Path(__file__).resolve().parents[1]
LIMITS = SandboxLimits(wall_s=6, cpu_s=6, memory_mb=512, max_processes=16, disk_mb=32)
TOKEN = "semalign-hostile-" + secrets.token_hex(4)
SHARED_DIRS = ("/tmp", "/dev/shm")
EXPOSED = (32, 38, 50, 53)  # tests that rely on prompt helpers or stdlib state


@pytest.fixture(scope="module")
def humaneval() -> list[dict]:
    from semalign_core.data.benchmarks import load_humaneval

    try:
        problems = load_humaneval().records
    except (ArtifactError, OSError) as e:
        pytest.skip(f"HumanEval data unavailable: {e}")
    if run_sandboxed("pass\n", LIMITS).isolation != "namespaces":
        pytest.skip("no per-sample namespaces here (bubblewrap missing or not permitted)")
    return problems


# --------------------------------------------------------------------------- the hostile corpus

# whole-program completions (first line at column 0): they keep the prompt and run at module
# level; each ends by defining a wrong entry point unless its attack is the answer itself
KILL_ALL = """
import os, time
for _ in range(40):
    os.kill(-1, 9)
    time.sleep(0.05)
"""
DISK_FLOOD = f"""
import os
for top in ("/tmp", "/dev/shm", os.getcwd()):
    for i in range(1500):
        try:
            with open(os.path.join(top, "{TOKEN}-%d" % i), "wb") as f:
                f.write(b"x" * 65536)
        except OSError:
            break
"""
READ_SECRETS = f"""
import os
for path in ("/etc/passwd", "/etc/shadow", {str(_REPO / "README.md")!r},
             os.path.expanduser("~/.bash_history"), "/proc/1/environ"):
    try:
        print("READ", path, open(path, errors="replace").read()[:200])
    except OSError as e:
        print("DENIED", path, e.errno)
for path in ({str(_REPO)!r}, "/work", "/home", "/root"):
    try:
        print("LIST", path, os.listdir(path))
    except OSError as e:
        print("DENIED", path, e.errno)
"""
FORGE_NONCE = """
import os, re, sys
found = set()
frame = sys._getframe()
while frame is not None:
    for value in list(frame.f_locals.values()):
        for text in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(text, (str, bytes)):
                found.update(re.findall(r"[0-9a-f]{32}", text if isinstance(text, str)
                                        else text.decode("latin-1")))
    frame = frame.f_back
lines = [("PASS %s\\n" % n).encode() for n in found] or [b"PASS " + b"0" * 32 + b"\\n"]
targets = list(range(3, 1024))
for pid in ("self", str(os.getppid()), "1", "2", "3", "4"):
    try:
        targets += ["/proc/%s/fd/%s" % (pid, fd) for fd in os.listdir("/proc/%s/fd" % pid)]
    except OSError:
        pass
for target in targets:
    for line in lines:
        try:
            if isinstance(target, int):
                os.write(target, line)
            else:
                fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK)
                os.write(fd, line)
                os.close(fd)
        except OSError:
            pass
os._exit(0)
"""
FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
DAEMON = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(300)
    os._exit(0)
"""
HOSTILE_PROGRAMS = {
    "kill_all": KILL_ALL,
    "disk_flood": DISK_FLOOD,
    "read_secrets": READ_SECRETS,
    "forge_nonce": FORGE_NONCE,
    "fork_bomb": FORK_BOMB,
    "infinite_loop": "while True:\n    pass\n",
    "memory": "x = []\nwhile True:\n    x.append(bytearray(10**7))\n",
    "output_flood": "import sys\nwhile True:\n    sys.stdout.write('y' * 65536)\n",
    "exit_before_asserts": "import sys\nsys.exit(0)\n",
    "daemon": DAEMON,
}

# attacks on what HumanEval/32, 38, 50 and 53 rely on (each passed the old one-process design)
TARGETED = {
    32: [
        "import math\nmath.fabs = lambda x: 0\ndef find_zero(xs):\n    return 0.0\n",
        "def poly(xs, x):\n    return 0\ndef find_zero(xs):\n    return 0.0\n",
    ],
    38: ["encode_cyclic = lambda s: s\ndef decode_cyclic(s):\n    return s\n"],
    50: ["encode_shift = lambda s: s\ndef decode_shift(s):\n    return s\n"],
    53: [
        "import random\nrandom.randint = lambda a, b: 0\n"
        "def add(x, y):\n    return {(0, 1): 1, (1, 0): 1, (2, 3): 5, (5, 7): 12, (7, 5): 12}"
        ".get((x, y), 0)\n"
    ],
}


def _wrong_entry_point(problem: dict) -> str:
    args = "*args, **kwargs"
    return f"\ndef {problem['entry_point']}({args}):\n    return None\n"


def _tamper_everything(problem: dict) -> str:
    """A wrong solution that first patches every public attribute of every module the tests and
    the prompt import, and rebinds every other name the prompt defines (generic tampering)."""
    modules, names = set(), set()
    for source in (problem["prompt"], problem["test"]):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules.add(node.module)
    for node in ast.parse(problem["prompt"]).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    names.discard(problem["entry_point"])
    return (
        f"import importlib\nfor _m in {sorted(modules)!r}:\n"
        "    _mod = importlib.import_module(_m)\n"
        "    for _a in dir(_mod):\n"
        "        if not _a.startswith('__'):\n"
        "            try:\n"
        "                setattr(_mod, _a, lambda *a, **k: 0)\n"
        "            except (AttributeError, TypeError):\n"
        "                pass\n"
        f"for _n in {sorted(names)!r}:\n"
        "    globals()[_n] = lambda *a, **k: 0\n" + _wrong_entry_point(problem)
    )


def _correct(problem: dict) -> str:
    """The canonical solution, slowed so that it overlaps the hostile sample beside it."""
    return problem["canonical_solution"] + "\n\nimport time\ntime.sleep(0.8)\n"


def _corpus(problems: list[dict]) -> list[tuple[str, dict, str]]:
    """(name, problem, completion) of every hostile sample."""
    generic = [p for p in problems if "import" in p["test"] or "\ndef " in p["prompt"][1:]]
    corpus = [
        (name, problems[0], code + _wrong_entry_point(problems[0]))
        for name, code in HOSTILE_PROGRAMS.items()
    ]
    corpus += [
        (f"targeted/{i}/{j}", problems[i], code)
        for i, codes in TARGETED.items()
        for j, code in enumerate(codes)
    ]
    corpus += [(f"tamper/{p['task_id']}", p, _tamper_everything(p)) for p in generic[:12]]
    return corpus


# --------------------------------------------------------------------------- leftovers


def _shared_names() -> set[str]:
    found = set()
    for top in SHARED_DIRS:
        for root, dirs, files in os.walk(top):
            found.update(os.path.join(root, n) for n in dirs + files if TOKEN in n)
            if root.count(os.sep) > 3:
                dirs.clear()
    return found


def _live_sandbox_processes(since: float) -> list[int]:
    """Live (non-zombie) processes of sandbox runs that started after ``since`` (boot clock)."""
    ticks = os.sysconf("SC_CLK_TCK")
    alive = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
            env = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        started = int(fields[19]) / ticks
        if fields[0] not in (b"Z", b"X") and b"SEMALIGN_SANDBOX_RUN=" in env and started >= since:
            alive.append(int(name))
    return alive


def _boot_clock() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


# --------------------------------------------------------------------------- the test


def test_hostile_samples_fail_and_correct_neighbours_pass(humaneval):
    corpus = _corpus(humaneval)
    neighbours = [humaneval[i] for i in (0, 2, 4, 7, 12, 23, 29, 32, 38, 50, 53, 60)]
    programs, expected, names = [], [], []
    for k, (name, problem, completion) in enumerate(corpus):
        programs.append(humaneval_program(problem, completion))
        good = neighbours[k % len(neighbours)]
        programs.append(humaneval_program(good, _correct(good)))
        expected += [False, True]
        names += [name, f"correct beside {name}"]
    assert not _shared_names()
    since = _boot_clock() - 1
    results = score_programs(programs, LIMITS, workers=4, progress=False)
    wrong = [
        (n, r.status, r.tests_process, r.stderr[-300:])
        for n, r, want in zip(names, results, expected)
        if r.passed != want
    ]
    assert not wrong, wrong
    assert all(r.isolation == "namespaces" for r in results)
    hostile = [r for r, want in zip(results, expected) if not want]
    assert all(r.tests_process == "separate" for r in hostile if r.status == "failed")
    seen = results[2 * list(HOSTILE_PROGRAMS).index("read_secrets")].stdout
    # only the sandbox's own /proc may be read; the repository shows at most the .venv skeleton
    assert [ln for ln in seen.splitlines() if ln.startswith("READ /proc/1/")] == [
        ln for ln in seen.splitlines() if ln.startswith("READ ")
    ], seen
    assert "root:" not in seen and "pyproject.toml" not in seen and "'tests'" not in seen, seen
    assert not _shared_names(), "files written by the samples remain"
    deadline = time.monotonic() + 5
    while _live_sandbox_processes(since) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _live_sandbox_processes(since), "sandbox processes survived"


def test_forcing_the_shared_fallback_is_visible(humaneval):
    """A candidate can return a value that cannot cross and so force the one-process fallback.
    Patches made before the tests are undone there too; patches made while the tests call the
    candidate are not (a known limit): the result then says ``tests_process == "shared"``."""
    problem = humaneval[32]
    opaque = "class Opaque:\n    def __float__(self):\n        return 0.0\n"
    early = "import math\nmath.fabs = lambda x: 0\n" + opaque
    early += "def find_zero(xs):\n    return Opaque()\n"
    res = run_sandboxed(humaneval_program(problem, early), LIMITS)
    assert res.tests_process == "shared" and not res.passed, res
    late = opaque + "def find_zero(xs):\n    import math\n    math.fabs = lambda x: 0\n"
    late += "    return Opaque()\n"
    res = run_sandboxed(humaneval_program(problem, late), LIMITS)
    assert res.tests_process == "shared", res  # may pass: count such results separately
    good = humaneval_program(problem, problem["canonical_solution"])
    assert run_sandboxed(good, LIMITS).tests_process == "separate"
