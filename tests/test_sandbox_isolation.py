"""Per-sample namespaces (bubblewrap) and the separate tests process of the code sandbox.

Where namespaces are unavailable these tests skip, unless ``SEMALIGN_SANDBOX_ISOLATION=require``
(CI): then they fail, as the sandbox itself does."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.evaluation import isolation
from semalign_core.evaluation.sandbox import TEST_SEPARATOR, Program, SandboxLimits, run_sandboxed

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

_REPO = Path(__file__).resolve().parents[1]
FAST = SandboxLimits(wall_s=5, cpu_s=5, memory_mb=512, disk_mb=8)
GOOD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"


def prog(candidate: str, tests: str = TESTS) -> str:
    return f"{candidate}\n{TEST_SEPARATOR}\n{tests}"


@pytest.fixture
def namespaces():
    """Skip (or, under ``require``, fail) where this machine offers no namespaces."""
    res = run_sandboxed("pass\n", FAST)
    if res.isolation != "namespaces":
        pytest.skip("no per-sample namespaces here (bubblewrap missing or not permitted)")
    return res


# --------------------------------------------------------------------------- mode selection


def test_mode_choice_require_auto_off(monkeypatch, caplog):
    assert run_sandboxed("pass\n", SandboxLimits(isolation="off")).isolation == "rlimits"
    with pytest.raises(InvalidParameterError):
        SandboxLimits(isolation="sometimes")
    monkeypatch.setenv(isolation.ISOLATION_ENV, "sometimes")
    with pytest.raises(InvalidParameterError, match=isolation.ISOLATION_ENV):
        run_sandboxed("pass\n")
    # a machine without namespaces: `require` is an error, `auto` warns once and falls back
    monkeypatch.setattr(isolation, "_probe", lambda dirs: "bwrap is not installed (simulated)")
    monkeypatch.setattr(isolation, "_warned", [])
    with pytest.raises(ArtifactError, match="simulated"):
        run_sandboxed(prog(GOOD), SandboxLimits(isolation="require"))
    monkeypatch.setenv(isolation.ISOLATION_ENV, "require")
    with pytest.raises(ArtifactError):
        run_sandboxed(prog(GOOD))
    monkeypatch.setenv(isolation.ISOLATION_ENV, "auto")
    with caplog.at_level(logging.WARNING, logger=isolation.__name__):
        results = [run_sandboxed(prog(GOOD), FAST) for _ in range(3)]
    assert all(r.passed and r.isolation == "rlimits" for r in results)
    warnings = [r for r in caplog.records if r.name == isolation.__name__]
    assert len(warnings) == 1 and "rlimits only" in warnings[0].getMessage()


# --------------------------------------------------------------------------- one world per sample

WORLD = """
import errno, json, os, socket
seen = {p: os.path.exists(p) for p in ("/etc/passwd", "/etc", "/home", REPO + "/pyproject.toml",
                                       REPO + "/semalign_core", REPO + "/tests")}
try:
    home = sorted(os.listdir(HOME_DIR)) if os.path.isdir(HOME_DIR) else []
except PermissionError:  # mode 0700 kept: not even listable
    home = []
try:
    socket.create_connection(("127.0.0.1", 22), timeout=1)
    net = "connected"
except OSError as e:
    net = errno.errorcode.get(e.errno, str(e))
def fill(path):
    try:
        with open(path, "wb") as f:
            for _ in range(64):
                f.write(b"0" * (1 << 20))
                f.flush()
        return "wrote 64 MB"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
print(json.dumps({"seen": seen, "home": home, "root": sorted(os.listdir("/")), "uid": os.getuid(),
                  "pid": os.getpid(), "cwd": os.getcwd(), "net": net,
                  "tmp": fill("/tmp/fill"), "shm": fill("/dev/shm/fill")}))
"""


def test_each_sample_sees_only_its_own_world(namespaces):
    home = os.path.expanduser("~")
    code = WORLD.replace("REPO", repr(str(_REPO))).replace("HOME_DIR", repr(home))
    # fsize above the disk budget, so the tmpfs size is what stops the writes
    res = run_sandboxed(code, SandboxLimits(wall_s=10, cpu_s=10, disk_mb=8, max_output_bytes=10**9))
    assert res.passed, res
    world = json.loads(res.stdout)
    assert not any(world["seen"].values()), world["seen"]
    # the home directory shows at most the way to an interpreter kept below it (pyenv)
    assert set(world["home"]) <= _first_parts_below(home), world["home"]
    assert set(world["root"]) <= {
        "bin",
        "dev",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "opt",
        "proc",
        "sbin",
        "tmp",
        "usr",
        *(p.split("/")[1] for p in (sys.base_prefix, _site_root())),
    }, world["root"]
    assert world["pid"] <= 5 and world["cwd"] == "/tmp" and world["uid"] != 0
    assert world["net"] in ("ENETUNREACH", "ECONNREFUSED", "EACCES", "EPERM"), world["net"]
    assert world["tmp"] == "ENOSPC" and world["shm"] == "ENOSPC", world


def _first_parts_below(top: str) -> set:
    import site

    paths = [Path(sys.base_prefix), *map(Path, site.getsitepackages())]
    return {p.relative_to(top).parts[0] for p in paths if Path(top) in p.parents}


def _site_root() -> str:
    import site

    return site.getsitepackages()[0]


def test_kill_all_in_one_sample_does_not_reach_another(namespaces):
    from semalign_core.evaluation.code_tasks import score_programs

    slow_good = "import time\ntime.sleep(1.0)\n" + GOOD
    killer = "import os, time\nfor _ in range(30):\n    os.kill(-1, 9)\n    time.sleep(0.05)\n"
    results = score_programs([prog(slow_good), prog(killer + WRONG)] * 2, FAST, workers=4)
    assert [r.passed for r in results] == [True, False] * 2, [r.status for r in results]


# --------------------------------------------------------------------------- unprivileged evaluator

NON_ROOT_SNIPPET = """
import json, os
from semalign_core.evaluation.code_tasks import score_programs
from semalign_core.evaluation.sandbox import TEST_SEPARATOR, SandboxLimits
T = "\\n" + TEST_SEPARATOR + "\\nassert add(1, 2) == 3\\n"
good = "import time\\ntime.sleep(1.0)\\ndef add(a, b):\\n    return a + b\\n" + T
killer = "import os, time\\nfor _ in range(30):\\n    os.kill(-1, 9)\\n    time.sleep(0.05)\\n" + T
probe = "import os, json\\nprint(json.dumps([os.getuid(), os.getpid(), os.path.exists('/etc')]))"
limits = SandboxLimits(wall_s=5, cpu_s=5, memory_mb=512, isolation="require")
res = score_programs([good, killer, probe], limits, workers=3)
print(json.dumps({"euid": os.geteuid(), "passed": [r.passed for r in res],
                  "modes": [r.isolation for r in res], "probe": res[2].stdout}))
"""


def _as_unprivileged(code: str) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in this repository as uid 65534 (root drops to it with setpriv,
    in a private mount namespace where a non-traversable parent of the interpreter, e.g.
    ``/root`` for a pyenv build, is covered by a tmpfs holding only the interpreter)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", "LANG": "C.UTF-8"}
    python = [sys.executable, "-c", code]
    if os.geteuid() != 0:
        return subprocess.run(python, cwd=_REPO, env=env, capture_output=True, timeout=120)
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is needed to drop to an unprivileged user")
    env["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="semalign-nonroot-cache-")
    os.chmod(env["XDG_CACHE_HOME"], 0o777)
    stage = tempfile.mkdtemp(prefix="semalign-nonroot-stage-")
    hide = _closed_ancestor(Path(sys.base_prefix))
    setup = ""
    if hide is not None:
        keep = sys.base_prefix
        setup = (
            f'mount --bind "{keep}" "{stage}" && mount -t tmpfs -o mode=0755,size=1m none "{hide}"'
            f' && mkdir -p "{keep}" && mount --bind "{stage}" "{keep}" && '
        )
    drop = "setpriv --reuid=65534 --regid=65534 --clear-groups"
    script = f'{setup}cd "{_REPO}" && exec {drop} "$@"'
    try:
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *python],
            env=env,
            capture_output=True,
            timeout=120,
        )
    finally:
        os.rmdir(stage)
        shutil.rmtree(env["XDG_CACHE_HOME"], ignore_errors=True)


def _closed_ancestor(path: Path) -> Path | None:
    """The topmost ancestor of ``path`` that others may not traverse, if any."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
    return None


def test_unprivileged_evaluator_still_isolates_samples(namespaces):
    done = _as_unprivileged(NON_ROOT_SNIPPET)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert out["euid"] != 0 and out["modes"] == ["namespaces"] * 3, out
    assert out["passed"] == [True, False, True], out
    uid, pid, passwd = json.loads(out["probe"])
    assert uid == 65534 and pid <= 5 and passwd is False, out


# --------------------------------------------------------------------------- the tests' own process

POLY_PROMPT = '''import math


def poly(xs: list, x: float):
    """Evaluates the polynomial."""
    return sum(coeff * math.pow(x, i) for i, coeff in enumerate(xs))


def find_zero(xs: list):
    """Returns x such that poly(x) = 0."""
'''
POLY_TESTS = "import math\nassert math.fabs(poly([1, 2], find_zero([1, 2]))) < 1e-4\n"


@pytest.mark.parametrize(
    "cheat",
    [
        "    return 123.0\nimport math\nmath.fabs = lambda x: 0\n",
        "    return 123.0\npoly = lambda xs, x: 0\n",
        "    import sys\n    sys._getframe(1).f_globals['poly'] = lambda *a: 0\n    return 1.0\n",
        "    return 123.0\nimport builtins\nbuiltins.abs = lambda x: 0\n",
    ],
    ids=["math.fabs", "poly", "caller-globals", "builtins"],
)
def test_patching_what_the_tests_use_does_not_help(cheat):
    program = Program(prog(POLY_PROMPT + cheat, POLY_TESTS), prompt=POLY_PROMPT)
    res = run_sandboxed(program, FAST)
    assert not res.passed and res.tests_process == "separate", res
    good = Program(prog(POLY_PROMPT + "    return -0.5\n", POLY_TESTS), prompt=POLY_PROMPT)
    assert run_sandboxed(good, FAST).passed


def test_values_cross_as_core_types_and_the_rest_falls_back():
    calls = "def f(xs):\n    xs.append(len(xs))\n    return {'n': (1, 2.5, None, b'x', {3})}\n"
    tests = "ys = [7]\nassert f(ys) == {'n': (1, 2.5, None, b'x', {3})} and ys == [7, 1]\n"
    res = run_sandboxed(prog(calls, tests), FAST)
    assert res.passed and res.tests_process == "separate", res
    # an always-equal object cannot cross: the fallback runs the tests beside the candidate
    weird = "class Eq:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n"
    res = run_sandboxed(prog(weird + "    return Eq()\n"), FAST)
    assert res.tests_process == "shared", res
    strict = SandboxLimits(wall_s=5, cpu_s=5, memory_mb=512, shared_fallback=False)
    res = run_sandboxed(prog(weird + "    return Eq()\n"), strict)
    assert not res.passed and res.error == "UncrossableValue", res
    # subclasses of core types cross as their base type: their __eq__ stays behind
    sub = "class F(float):\n    def __eq__(self, other):\n        return True\n"
    res = run_sandboxed(prog(sub + "def add(a, b):\n    return F(0.0)\n"), FAST)
    assert not res.passed and res.tests_process == "separate", res
    counter = "import collections\ndef add(a, b):\n    return collections.Counter('aab')\n"
    res = run_sandboxed(prog(counter, "assert add(1, 2) == {'a': 2, 'b': 1}\n"), FAST)
    assert res.passed and res.tests_process == "separate", res
    # exceptions keep their builtin class
    raising = "def add(a, b):\n    raise ValueError('no')\n"
    tests = "try:\n    add(1, 2)\nexcept ValueError as e:\n    assert str(e) == 'no'\n"
    assert run_sandboxed(prog(raising, tests), FAST).passed
