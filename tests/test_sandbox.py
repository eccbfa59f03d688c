"""Hostile programs in the sandbox: each must be scored as not passed, with the right status,
and must leave the test process (and this machine) unharmed."""

from __future__ import annotations

import ast
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from semalign_core.errors import InvalidParameterError
from semalign_core.evaluation import sandbox_child
from semalign_core.evaluation.sandbox import (
    CHILD_PROGRAM,
    STATUSES,
    TEST_SEPARATOR,
    SandboxLimits,
    run_sandboxed,
    split_tests,
)
from semalign_core.evaluation.sandbox_child import (
    decode_request,
    encode_request,
    format_report,
    parse_report,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

IS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(
    not IS_ROOT,
    reason="needs root: the sandbox switches to 'nobody' only when the evaluator runs as root",
)
FAST = SandboxLimits(wall_s=3, cpu_s=3, memory_mb=512)
RLIMITS_ONLY = SandboxLimits(wall_s=3, cpu_s=3, memory_mb=512, isolation="off")

GOOD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"


def prog(candidate: str, tests: str = TESTS) -> str:
    return f"{candidate}\n{TEST_SEPARATOR}\n{tests}"


def _sandbox_process_alive(pid: int) -> bool:
    """True if `pid` is a live (non-zombie) process started by a sandbox run."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes()
        state = state[state.rfind(b")") + 2 :].split()[0]
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return state not in (b"Z", b"X") and b"SEMALIGN_SANDBOX_RUN=" in env


def _pids(stdout: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("PID ")]


@pytest.fixture(autouse=True)
def _evaluator_unharmed():
    me, cwd = os.getpid(), os.getcwd()
    yield
    assert os.getpid() == me and os.getcwd() == cwd
    # the evaluator can still run a normal program afterwards
    assert run_sandboxed(prog(GOOD), FAST).passed


# --------------------------------------------------------------------------- basics


def test_correct_program_passes_and_wrong_one_fails():
    ok = run_sandboxed(prog(GOOD), FAST)
    assert ok.passed and ok.status == "passed" and ok.returncode == 0, ok
    bad = run_sandboxed(prog(WRONG), FAST)
    assert not bad.passed and bad.status == "failed" and bad.error == "AssertionError", bad
    assert "AssertionError" in bad.stderr and "<tests>" in bad.stderr
    assert bad.status in STATUSES


def test_program_without_tests_passes_iff_it_completes():
    assert run_sandboxed("x = 1\nprint(x)\n", FAST).stdout == "1\n"
    assert run_sandboxed("raise ValueError('no')\n", FAST).status == "failed"
    syntax = run_sandboxed("def f(:\n", FAST)
    assert syntax.status == "failed" and syntax.error == "SyntaxError"


def test_split_tests_uses_last_separator():
    cand, tests = split_tests(f"a\n{TEST_SEPARATOR}\nb\n{TEST_SEPARATOR}\nc\n")
    assert cand == f"a\n{TEST_SEPARATOR}\nb\n" and tests == "c\n"
    assert split_tests("a\nb\n") == ("a\nb\n", None)


def test_limits_are_validated():
    with pytest.raises(InvalidParameterError):
        SandboxLimits(wall_s=0)
    with pytest.raises(InvalidParameterError):
        SandboxLimits(memory_mb=8)
    with pytest.raises(InvalidParameterError):
        run_sandboxed(b"print(1)", FAST)  # type: ignore[arg-type]


def test_environment_and_working_directory():
    code = (
        "import os, sys, numpy, math, collections.abc, json, hashlib\n"
        "print(os.getcwd()); print(os.environ['HOME'] == os.getcwd())\n"
        "print(sorted(k for k in os.environ if k.startswith('PYTHON')))\n"
        "open('scratch.txt', 'w').write('x')\n"
        "print(__name__, sys.stdin.read() == '')\n"
        "if __name__ == '__main__':\n    raise SystemExit('__main__ blocks must not run')\n"
    )
    res = run_sandboxed(code, RLIMITS_ONLY)
    assert res.passed and res.isolation == "rlimits", res
    cwd, home_is_cwd, pyvars, name_line = res.stdout.splitlines()
    assert home_is_cwd == "True" and pyvars == "[]" and name_line == "__candidate__ True"
    assert not os.path.exists(cwd), "the temporary working directory must be removed"
    who = "import os; print(os.getuid(), os.getgroups())"
    if IS_ROOT:
        assert run_sandboxed(who, RLIMITS_ONLY).stdout == "65534 []\n"
    res = run_sandboxed(code, FAST)
    assert res.passed, res
    if res.isolation == "namespaces":  # a private tmpfs, not a directory of this machine
        assert res.stdout.splitlines()[:2] == ["/tmp", "True"], res
        uid, groups = run_sandboxed(who, FAST).stdout.split(maxsplit=1)
        # root: a uid of its own per run; other users: 65534 in a user namespace
        assert int(uid) != 0 and (IS_ROOT or int(uid) == 65534), uid
        assert groups.strip() in ("[]", "[65534]"), groups


# --------------------------------------------------------------------------- time and memory


def test_infinite_loop_times_out():
    t0 = time.monotonic()
    res = run_sandboxed(prog("while True:\n    pass\n"), SandboxLimits(wall_s=1.5, cpu_s=30))
    assert res.status == "timeout" and not res.passed, res
    assert time.monotonic() - t0 < 8


def test_sleeping_program_times_out():
    res = run_sandboxed(prog("import time\ntime.sleep(600)\n"), SandboxLimits(wall_s=1, cpu_s=30))
    assert res.status == "timeout" and not res.passed, res


def test_cpu_limit_times_out_before_wall_limit():
    res = run_sandboxed("x = 0\nwhile True:\n    x += 1\n", SandboxLimits(wall_s=30, cpu_s=1))
    assert res.status == "timeout" and res.returncode == -signal.SIGXCPU, res
    assert res.wall_s < 10


def test_memory_bomb():
    bomb = "chunks = []\nfor _ in range(10):\n    chunks.append(bytearray(2**30))  # 10 GB in all\n"
    res = run_sandboxed(prog(bomb), FAST)
    assert res.status == "memory" and res.error == "MemoryError" and not res.passed, res
    growing = "x = []\nwhile True:\n    x.append(' ' * 10**7)\n"
    res = run_sandboxed(prog(growing), SandboxLimits(wall_s=10, cpu_s=10, memory_mb=256))
    assert res.status == "memory", res


# --------------------------------------------------------------------------- processes

STORM = """
import os, sys, time
forked = failed = 0
for i in range(200):
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        if i % 2:
            os.setsid()          # try to escape the process group
        time.sleep(120)
        os._exit(0)
    forked += 1
    print("PID", pid, flush=True)
print("forked", forked, "failed", failed, flush=True)
"""


@pytest.mark.parametrize("ending", ["fail", "hang"])
def test_fork_storm_is_contained_and_cleaned_up(ending):
    # non-root: RLIMIT_NPROC is the user's task count + max_processes, still bounded
    limits = SandboxLimits(wall_s=2, cpu_s=5, max_processes=16)
    tail = "raise RuntimeError('storm over')\n" if ending == "fail" else "time.sleep(600)\n"
    res = run_sandboxed(prog(STORM + tail), limits)
    assert not res.passed
    assert res.status == ("failed" if ending == "fail" else "timeout"), res
    pids = _pids(res.stdout)
    assert 0 < len(pids) <= limits.max_processes, res.stdout[-300:]
    assert "failed" in res.stdout and "failed 0" not in res.stdout  # the limit did bite
    deadline = time.monotonic() + 3
    while any(map(_sandbox_process_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _sandbox_process_alive(p)], "storm processes survived"


def test_daemonised_child_is_killed_even_when_the_program_passes():
    code = (
        "import os, time\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.write(w, str(os.getpid()).encode()); time.sleep(120); os._exit(0)\n"
        "    os._exit(0)\n"
        "print('PID', int(os.read(r, 32)), flush=True)\n" + GOOD
    )
    res = run_sandboxed(prog(code), FAST)
    assert res.passed, res
    (pid,) = _pids(res.stdout)
    time.sleep(0.2)
    assert not _sandbox_process_alive(pid)


@pytest.mark.parametrize("user", ["default", None])
def test_killing_the_parent_does_not_reach_the_evaluator(user):
    if user is None and not IS_ROOT:
        pytest.skip("user=None only differs from the default when running as root")
    limits = FAST if user == "default" else SandboxLimits(wall_s=3, cpu_s=3, user=None)
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(2)\n"
    res = run_sandboxed(prog(code + GOOD), limits)
    assert not res.passed and res.status in ("failed", "crashed"), res
    if IS_ROOT and user == "default":
        assert res.error == "PermissionError"  # nobody cannot signal the root harness


@root_only
def test_kill_all_processes_only_reaches_the_sandbox_user():
    me = os.getuid()
    code = (
        "import os, signal\n"
        f"if os.getuid() in (0, {me}):\n"
        "    raise SystemExit('refusing: not running as the sandbox user')\n"
        "os.kill(-1, signal.SIGKILL)\n"
    )
    res = run_sandboxed(prog(code + WRONG), FAST)
    # it may kill its own tests process (same uid): a crash, never a pass
    assert not res.passed and res.status in ("failed", "crashed"), res


# --------------------------------------------------------------------------- files


@root_only
@pytest.mark.parametrize("limits", [FAST, RLIMITS_ONLY], ids=["default", "rlimits"])
def test_cannot_modify_or_delete_files_outside_the_sandbox(limits):
    target_dir = Path(tempfile.mkdtemp(prefix="semalign-sbx-target-"))
    try:
        os.chmod(target_dir, 0o755)
        target = target_dir / "precious.txt"
        target.write_text("original\n")
        os.chmod(target, 0o644)
        before = target.stat()
        code = f"""
import os, shutil
path = {str(target)!r}
print("READ", open(path).read().strip())
for attempt in (lambda: open(path, "w").write("pwned"),
                lambda: open(path, "a").write("pwned"),
                lambda: os.remove(path),
                lambda: os.rename(path, path + ".x"),
                lambda: os.chmod(path, 0o777),
                lambda: shutil.rmtree(os.path.dirname(path)),
                lambda: open(os.path.join(os.path.dirname(path), "new.txt"), "w")):
    try:
        attempt()
        print("SUCCEEDED")
    except OSError as e:
        print("DENIED", e.errno)
"""
        res = run_sandboxed(prog(code + WRONG), limits)
        assert not res.passed
        if res.isolation == "namespaces":  # the path does not even exist in its world
            assert res.error == "FileNotFoundError" and "READ" not in res.stdout, res
        else:
            assert "READ original" in res.stdout, res
        assert "SUCCEEDED" not in res.stdout, res.stdout
        assert target.read_text() == "original\n"
        after = target.stat()
        assert (after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == (
            before.st_mtime_ns,
            stat.S_IMODE(before.st_mode),
        )
        assert sorted(os.listdir(target_dir)) == ["precious.txt"]
    finally:
        shutil.rmtree(target_dir, ignore_errors=True)


def test_file_writes_in_the_sandbox_are_capped():
    code = "with open('big.bin', 'wb') as f:\n    f.write(b'0' * 10**7)\n"
    res = run_sandboxed(code, FAST)
    assert not res.passed and res.error == "OSError", res  # EFBIG


# --------------------------------------------------------------------------- exits and cheats


@pytest.mark.parametrize(
    "exit_stmt",
    [
        "import sys\nsys.exit(0)\n",
        "import os\nos._exit(0)\n",
        "raise SystemExit(0)\n",
        "raise KeyboardInterrupt\n",
    ],
)
def test_exiting_before_the_asserts_fails(exit_stmt):
    res = run_sandboxed(prog(WRONG + exit_stmt), FAST)
    assert not res.passed and res.status == "failed", res


def test_system_exit_inside_the_tests_fails():
    cand = "import sys\ndef add(a, b):\n    sys.exit(0)\n"
    res = run_sandboxed(prog(cand), FAST)
    assert not res.passed and res.status == "failed" and res.error == "SystemExit", res


def test_exit_code_zero_without_the_nonce_fails():
    # tries to forge a pass line on every possible fd, then exits "successfully"
    code = (
        "import os\nfor fd in range(3, 1024):\n    try:\n"
        "        os.write(fd, b'PASS 00000000000000000000000000000000\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)\n"
    )
    res = run_sandboxed(prog(WRONG + code), FAST)
    assert not res.passed and res.status == "failed", res


def test_monkeypatching_builtins_and_sys_does_not_help():
    cheat = """
import builtins, os, sys, types
fake_math = types.ModuleType("math")
fake_math.isclose = lambda *a, **k: True
real_import = builtins.__import__
builtins.__import__ = (lambda name, *a, **k:
                       fake_math if name == "math" else real_import(name, *a, **k))
builtins.abs = lambda x: 0
builtins.AssertionError = type("AssertionError", (Exception,), {})
builtins.print = lambda *a, **k: None
builtins.BaseException = type("BaseException", (Exception,), {})
sys.exit = lambda *a: None
os._exit = lambda *a: None
os.write = lambda *a: 0
def add(a, b):
    return a - b
"""
    tests = (
        "import math\nassert abs(add(1, 2) - 3) < 1e-9\n"
        "assert math.isclose(add(1, 2), 3)\nassert add(1, 2) == 3\n"
    )
    res = run_sandboxed(prog(cheat, tests), FAST)
    assert not res.passed and res.status == "failed" and res.error == "AssertionError", res


def test_unterminated_string_cannot_swallow_the_tests():
    cand = 'def add(a, b):\n    return a - b\n"""\n'
    # concatenated, the asserts would be inside a string literal closed by the last line
    res = run_sandboxed(prog(cand, TESTS + '"""\n'), FAST)
    assert not res.passed and res.error == "SyntaxError", res


def test_stdin_is_empty_and_threads_do_not_block_exit():
    code = (
        "import threading, time\nthreading.Thread(target=time.sleep, args=(600,)).start()\n" + GOOD
    )
    res = run_sandboxed(prog(code), SandboxLimits(wall_s=5, cpu_s=5))
    assert res.passed and res.wall_s < 4, res
    res = run_sandboxed(prog("x = input()\n" + GOOD), FAST)
    assert res.status == "failed" and res.error == "EOFError", res


# --------------------------------------------------------------------------- output


def test_huge_output_hits_the_output_limit():
    code = "import sys\nfor _ in range(10**6):\n    print('x' * 1000)  # 1e9 chars\n"
    res = run_sandboxed(prog(code + GOOD), FAST)
    assert res.status == "output_limit" and not res.passed, res
    assert len(res.stdout) <= FAST.max_output_bytes


def test_huge_stderr_output_hits_the_output_limit_even_if_errors_are_swallowed():
    code = (
        "import sys\nfor _ in range(10**6):\n    try:\n"
        "        sys.stderr.write('y' * 1000)\n    except OSError:\n        pass\n" + GOOD
    )
    res = run_sandboxed(prog(code), FAST)
    assert res.status == "output_limit" and not res.passed, res
    assert len(res.stderr) <= FAST.max_output_bytes


# --------------------------------------------------------------------------- the harness program


def test_request_wire_format_and_round_trip():
    header = {"nonce": "ab12", "uid": None, "site": ["/a b", "/ü"], "wall_s": 1.5, "cpu_s": 2}
    raw = encode_request(header, "x = 'é'\n".encode(), b"assert x\n")
    # by hand: NUL-separated key=value, byte lengths appended, one newline, then the bodies
    expected_head = (
        "nonce=ab12\0uid=\0site=/a b\x1f/ü\0wall_s=1.5\0cpu_s=2\0prog_len=9\0test_len=9\n"
    ).encode()
    assert raw == expected_head + "x = 'é'\n".encode() + b"assert x\n"
    cfg, prog, tests = decode_request(raw)
    assert cfg == {
        "nonce": "ab12",
        "uid": None,
        "site": ["/a b", "/ü"],
        "wall_s": 1.5,
        "cpu_s": 2,
        "prog_len": 9,
        "test_len": 9,
    }
    assert (prog, tests) == ("x = 'é'\n", "assert x\n")
    no_tests = decode_request(encode_request({"site": []}, b"pass\n", None))
    assert no_tests == ({"site": [], "prog_len": 5, "test_len": -1}, "pass\n", None)
    with pytest.raises(ValueError):
        encode_request({"site": ["/bad\npath"]}, b"", None)
    # a prompt travels after the tests, its stubs as a list field
    raw = encode_request({"site": [], "stubs": ["f", "g"]}, b"p", b"t", b"def f(): pass\n")
    assert raw == b"site=\0stubs=f\x1fg\0prog_len=1\0test_len=1\0prompt_len=14\npt" + (
        b"def f(): pass\n"
    )
    cfg, prog, tests = decode_request(raw)
    assert (cfg["stubs"], cfg["prompt"], prog, tests) == (["f", "g"], "def f(): pass\n", "p", "t")


def test_report_line_format_and_parse():
    assert (
        format_report("signal 9", 1.25, 2048, True)
        == b"CHILD signal 9 cpu 1.250 maxrss_kb 2048 clean 1\n"
    )
    assert parse_report(b"noise\nCHILD signal 9 cpu 1.250 maxrss_kb 2048 clean 1\n") == {
        "kind": "signal",
        "code": 9,
        "cpu": 1.25,
        "maxrss_kb": 2048.0,
        "clean": 1.0,
    }
    assert parse_report(b"CHILD timeout cpu 0.010 maxrss_kb 10 clean 0\n") == {
        "kind": "timeout",
        "cpu": 0.01,
        "maxrss_kb": 10.0,
        "clean": 0.0,
    }
    assert parse_report(b"") == {} and parse_report(b"PASS 1234\n") == {}
    shared = format_report("exit 0", 0.5, 10, True, shared=True)
    assert shared == b"CHILD exit 0 cpu 0.500 maxrss_kb 10 shared 1 clean 1\n"
    assert parse_report(shared)["shared"] == 1.0


def _run_harness_by_hand(program: str, tests: str | None, nonce: str, cwd: Path):
    """Start the harness program the way the evaluator does, without sandbox.py's supervision;
    returns (result pipe bytes, report pipe bytes, completed process)."""
    res_r, res_w = os.pipe()
    rep_r, rep_w = os.pipe()
    header = {
        "nonce": nonce,
        "result_fd": res_w,
        "report_fd": rep_w,
        "uid": None,
        "gid": None,
        "site": [],
        "wall_s": 5.0,
        "cpu_s": 5,
        "as_bytes": 512 * 2**20,
        "fsize": 10**6,
        "nproc": 64,
    }
    request = encode_request(header, program.encode(), None if tests is None else tests.encode())
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-B", str(CHILD_PROGRAM)],
            input=request,
            capture_output=True,
            pass_fds=(res_w, rep_w),
            cwd=cwd,
            env={"LANG": "C.UTF-8"},
            timeout=30,
        )
    finally:
        os.close(res_w)
        os.close(rep_w)
    with open(res_r, "rb") as res, open(rep_r, "rb") as rep:
        return res.read(), rep.read(), done


def test_harness_program_result_protocol(tmp_path):
    nonce = "5e" * 16
    result, report, done = _run_harness_by_hand("print('hi')\n" + GOOD, TESTS, nonce, tmp_path)
    assert result == f"PASS {nonce}\n".encode() and done.stdout == b"hi\n", done
    assert done.returncode == 0 and report.startswith(b"CHILD exit 0 cpu ")
    assert report.endswith(b" clean 1\n")

    result, report, done = _run_harness_by_hand(WRONG, TESTS, nonce, tmp_path)
    assert result == b"FAIL AssertionError\n" and report.startswith(b"CHILD exit 1 "), done
    assert b"<tests>" in done.stderr and b"AssertionError" in done.stderr

    killed = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    result, report, done = _run_harness_by_hand(killed, None, nonce, tmp_path)
    assert result == b"" and report.startswith(b"CHILD signal 9 ") and done.returncode == 0


def test_harness_program_imports_only_the_standard_library():
    tree = ast.parse(CHILD_PROGRAM.read_text())
    tops = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    tops |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    }
    assert tops and tops <= set(sys.stdlib_module_names), tops - set(sys.stdlib_module_names)
    assert CHILD_PROGRAM == Path(sandbox_child.__file__).resolve()
    assert sandbox_child._SIGKILL == signal.SIGKILL


def test_sandbox_does_not_import_the_package_or_expose_its_directory():
    code = "import sys\nprint(sorted(sys.modules))\nprint(sys.path)\n"
    res = run_sandboxed(code, FAST)
    assert res.passed, res
    modules, path = (ast.literal_eval(line) for line in res.stdout.splitlines())
    # each costs start-up time in every run (enum: ~7 ms, through `import signal`)
    heavy = {"semalign_core", "numpy", "torch", "traceback", "site", "enum"}
    assert not heavy & {m.split(".")[0] for m in modules}, heavy & set(modules)
    # -I: the harness's own directory (semalign_core/evaluation) is not importable from
    assert str(CHILD_PROGRAM.parent) not in path and "" not in path, path
