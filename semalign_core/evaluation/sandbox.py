"""Run model-generated Python code in separate, resource-limited processes and score it.

:func:`run_sandboxed` executes one program (candidate code followed by its tests) and returns a
:class:`SandboxResult` whose ``status`` is one of ``passed``, ``failed``, ``timeout``,
``memory``, ``crashed`` or ``output_limit``. Only ``passed`` counts for pass@k. The result also
records the isolation it ran under (``isolation``) and where the tests ran (``tests_process``).

Threat model
------------
The code is *buggy or adversarial LLM output*. It may loop forever, allocate without bound,
fork, print gigabytes, call ``sys.exit(0)`` / ``os._exit(0)`` before its asserts, monkeypatch
``builtins``, stdlib modules or the prompt's helpers, read the frames or memory of its own
process (where a nonce would be), kill its parent or every process it may signal
(``os.kill(-1, 9)``), fill ``/tmp``, read files. All of these must be scored as failures and must
neither harm the evaluation run nor any other sample. Out of scope: kernel exploits, and (in the
rlimit-only mode) everything the evaluator's user can do - see :mod:`.isolation`. Objects whose
``__eq__`` is always true cannot reach the tests (only core values cross), but a candidate can
force the one-process fallback (below), which is then visible in ``tests_process``.

Process layout
--------------
::

    evaluator (this process)
      └─ [bwrap: fresh PID/mount/net/IPC/UTS (+user) namespaces, private /tmp] (namespaces mode)
           └─ A: harness ``python -I -S -B sandbox_child.py``: non-dumpable subreaper
                ├─ C: tests process - rlimits, sandbox uid; runs the prompt and the tests
                └─ B: candidate process - rlimits, sandbox uid; runs the candidate, serves C

All run :mod:`~semalign_core.evaluation.sandbox_child` (by path: it imports only the standard
library, so ``semalign_core`` is never imported inside the sandbox); its docstring has the
protocol and the exact order of the set-up.

* **Isolation modes** (:mod:`~semalign_core.evaluation.isolation`): ``namespaces`` when
  bubblewrap works here (each sample sees only ``/usr``, the interpreter, site-packages and a
  size-limited private ``/tmp``; no network; no other sample's processes), else ``rlimits``
  with one warning; ``isolation="require"`` (or ``SEMALIGN_SANDBOX_ISOLATION=require``) makes
  the missing namespaces an error.
* **A** reads a small header (nonce, fds, limits), the program, the tests and the optional
  prompt from stdin, forks **C** and **B**, waits for C with the wall-clock limit, then kills
  and reaps every process left behind (A is a Linux *child subreaper*, so orphaned or daemonised
  descendants - even ones that called ``setsid()`` - are re-parented to A, not to init) and
  reports the outcome on a *report pipe* that B and C closed before reading untrusted input.
* **B** closes the report and result pipes, sets ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``,
  ``RLIMIT_FSIZE`` (``max_output_bytes`` + 1: caps stdout/stderr and any file the program
  writes), ``RLIMIT_NPROC`` and ``RLIMIT_CORE=0``, drops privileges when running as root, sets
  ``PR_SET_NO_NEW_PRIVS`` and a parent-death signal, runs the candidate as module
  ``__candidate__`` (``if __name__ == "__main__":`` blocks do not run, as in the reference
  HumanEval harness), then answers C's calls of its functions.
* **C** never runs candidate code: it executes the prompt (:class:`Program`; HumanEval's
  helpers such as ``poly``) and the tests with its own builtins and freshly imported modules,
  and calls the candidate's functions through proxies; arguments and results cross as
  :mod:`marshal` data of core types only. Patches B makes cannot change what the asserts see.
* **Passing is not decided by the exit code.** The evaluator puts a random nonce in the header;
  C writes ``PASS <nonce>`` on the result pipe only after the tests returned without any
  exception (``BaseException`` included). A run passes only if that line is there, the tests'
  process exited with 0 and A completed normally. B never holds the result pipe, and A and C are
  non-dumpable, so B cannot reach it through ``/proc`` either.
* Values cross as exact core types: subclasses (``Counter``, named tuples, ``numpy.float64``)
  become their base type, so an ``__eq__`` of the candidate's never runs in C.
* **Fallback**: when a value cannot cross at all (an instance of a candidate class, a generator,
  a test object passed as argument: 1 of the 500 MBPP reference solutions, none of HumanEval's),
  A reruns the program in one process B' and the result says ``tests_process="shared"``
  (``SandboxLimits.shared_fallback=False`` fails it instead). B' restores the modules loaded
  before the candidate ran and executes the prompt again for the tests, but candidate code the
  tests call can still patch what they use or find the nonce in its own memory: a candidate can
  force this mode, so count or exclude shared results where that matters.

Identities
----------
*namespaces* mode: a root evaluator gives B and C a uid of their own per concurrent run (no
account needed), so samples share neither signals nor ``RLIMIT_NPROC`` counts; a non-root
evaluator gets a user namespace per sample in which B and C are uid 65534 (see
:mod:`.isolation`). *rlimits* mode, as before: a root evaluator switches B and C to
``SandboxLimits.user`` (default ``nobody``) and the working directory is a fresh temporary
directory owned by that user; a non-root evaluator runs them as itself, so **file protection
then relies on the user's own permissions** and a sample could signal the user's other
processes, another sample included. If the interpreter or its standard library lives where the
sandbox uid cannot read (e.g. a pyenv interpreter under root's home), B and C keep ``O_PATH``
handles to those ``sys.path`` directories opened before the switch and import through
``/proc/self/fd/N``.

Other choices
-------------
* ``-I`` (isolated: no ``PYTHON*`` variables, no user site, the directory of
  ``sandbox_child.py`` not on ``sys.path``),
  ``-B`` (no ``.pyc`` written by the sandbox) and ``-S``: the ``site`` module is skipped (it costs
  ~15 ms per program) and the evaluator's site-packages directories are appended to ``sys.path``
  instead, so generated code can still ``import numpy``; ``.pth`` files are not processed.
  ``exit``/``quit`` are still defined.
* The environment is minimal: ``PATH``, ``LANG=C.UTF-8``, ``HOME`` and ``TMPDIR`` = the working
  directory (``/tmp`` with namespaces), BLAS/OpenMP pools limited to 1 thread, and a per-run
  marker variable.
* stdout/stderr go to files in a second temporary directory the program cannot reach by path;
  only the first ``max_output_bytes`` of each are read back. A file that grew past the cap gives
  status ``output_limit``.
* At the end the evaluator always kills A's whole process group; if A did not complete
  normally it also kills every process that carries this run's marker variable.
* No ``preexec_fn`` is used (it is unsafe with the thread pool of
  :func:`~semalign_core.evaluation.code_tasks.score_programs`); the limits are applied by the
  trusted harness code in B and C before any candidate code runs.

Linux only (``/proc``, ``prctl``, rlimits).
"""

from __future__ import annotations

import ast
import contextlib
import math
import os
import pwd
import secrets
import select
import signal
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.evaluation import isolation, sandbox_child
from semalign_core.evaluation.sandbox_child import encode_request, parse_report

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "run_sandboxed",
    "Program",
    "split_tests",
    "TEST_SEPARATOR",
    "STATUSES",
    "DEFAULT_LIMITS",
]

STATUSES = ("passed", "failed", "timeout", "memory", "crashed", "output_limit")

#: A line equal to this separates candidate code from its tests inside one program string.
#: :func:`run_sandboxed` splits at the *last* such line; everything after it is trusted test code.
TEST_SEPARATOR = "# ---- semalign sandbox: tests below ----"

#: The harness program, run by path (``-m`` would import ``semalign_core`` in every sandbox).
CHILD_PROGRAM = Path(sandbox_child.__file__).resolve()

_MARKER_VAR = "SEMALIGN_SANDBOX_RUN"
_STARTUP_GRACE_S = 5.0  # interpreter start-up + cleanup allowance on top of wall_s
_RESULT_CAP = 65536
_REPORT_CAP = 4096
_MEMORY_KILL_FRACTION = 0.8  # a SIGKILL at this share of RLIMIT_AS is read as the OOM killer


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run.

    ``wall_s``: wall-clock seconds for candidate + tests (interpreter start-up not counted);
    ``cpu_s``: CPU seconds (``RLIMIT_CPU``); ``memory_mb``: address space (``RLIMIT_AS``);
    ``max_output_bytes``: cap on stdout, on stderr and on any file the program writes
    (``RLIMIT_FSIZE``); ``max_processes``: processes/threads the program may add
    (``RLIMIT_NPROC``); ``user``: account the program runs as when the evaluator is root in
    the rlimit-only mode (``None`` keeps root - no process limit, no file protection; only for
    debugging; with namespaces a root evaluator uses a distinct uid per run unless ``None``);
    ``disk_mb``: size of the private ``/tmp`` (namespaces mode: all the program may write);
    ``isolation``: ``auto``, ``require`` or ``off`` (None: ``$SEMALIGN_SANDBOX_ISOLATION``,
    default ``auto``; see :mod:`~semalign_core.evaluation.isolation`); ``shared_fallback``:
    when a value cannot cross between the tests' and the candidate's processes, rerun both in
    one process (True, marked ``tests_process="shared"``) or fail the program (False: strict;
    MBPP task 367, whose tests pass their own ``Node`` objects, then fails).
    """

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 1024
    max_output_bytes: int = 64_000
    max_processes: int = 32
    user: str | None = "nobody"
    disk_mb: int = 64
    isolation: str | None = None
    shared_fallback: bool = True

    def __post_init__(self) -> None:
        numbers = ("wall_s", "cpu_s", "memory_mb", "max_output_bytes", "max_processes", "disk_mb")
        for name in numbers:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise InvalidParameterError(
                    f"SandboxLimits.{name} must be a positive number, got {value!r}"
                )
        if self.isolation not in (None, *isolation.ISOLATION_CHOICES):
            raise InvalidParameterError(
                f"SandboxLimits.isolation must be None or one of {isolation.ISOLATION_CHOICES}, "
                f"got {self.isolation!r}"
            )
        if self.memory_mb < 64:
            raise InvalidParameterError(
                f"SandboxLimits.memory_mb={self.memory_mb} is too small for a Python interpreter "
                "(use at least 64)"
            )


#: The limits HumanEval/MBPP scoring uses unless told otherwise.
DEFAULT_LIMITS = SandboxLimits()


@dataclass
class SandboxResult:
    """Outcome of one program. ``passed`` is true only for ``status == "passed"``.

    ``returncode``: exit status of the process that ran the program (negative signal number),
    or of the harness if it died first, ``None`` if the evaluator had to kill it.
    ``stdout``/``stderr``: the first ``max_output_bytes`` of each (UTF-8, invalid bytes
    replaced). ``wall_s``: total wall time including interpreter start-up and cleanup.
    ``error``: the exception class the program or its tests raised, when there was one.
    ``isolation``: ``"namespaces"`` (own namespaces per sample) or ``"rlimits"`` (rlimits and,
    as root, the ``nobody`` account only). ``tests_process``: ``"separate"`` (the tests ran in
    a process that never ran candidate code), ``"shared"`` (a value could not cross, so they
    ran in the candidate's process: patches and forged passes are then possible) or ``"none"``.
    """

    passed: bool
    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    error: str | None = None
    isolation: str = "rlimits"
    tests_process: str = "none"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _HarnessRun:
    """What the evaluator learnt from one harness process: its exit status (``returncode``),
    whether the evaluator had to kill it (``timed_out``), A's parsed report (``report``, see
    :func:`~.sandbox_child.parse_report`) and B's result-pipe bytes (``result``)."""

    returncode: int
    timed_out: bool
    report: dict
    result: bytes


@dataclass(frozen=True)
class _Captured:
    """The first ``cap`` bytes of stdout and stderr, and whether either grew past the cap."""

    stdout: bytes
    stderr: bytes
    over_cap: bool


def split_tests(program: str) -> tuple[str, str | None]:
    """Split a program at its last :data:`TEST_SEPARATOR` line into (candidate, tests).

    Returns ``(program, None)`` when there is no separator line.
    """
    lines = program.splitlines(keepends=True)
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].rstrip("\r\n") == TEST_SEPARATOR:
            return "".join(lines[:i]), "".join(lines[i + 1 :])
    return program, None


class Program(str):
    """A program string that also carries its benchmark prompt (:attr:`prompt`): trusted code
    whose helper definitions the tests may use (HumanEval/32's ``poly``). The tests process
    executes it itself, so a candidate that redefines or patches those helpers cannot change
    what the tests see; functions the prompt only declares are taken from the candidate."""

    prompt: str | None

    def __new__(cls, text: str, prompt: str | None = None):
        obj = super().__new__(cls, text)
        obj.prompt = prompt
        return obj


def run_sandboxed(
    program: str,
    limits: SandboxLimits = DEFAULT_LIMITS,
    *,
    test: str | None = None,
    prompt: str | None = None,
) -> SandboxResult:
    """Run ``program`` (then ``test``) in fresh, limited processes; see the module docstring.

    If ``test`` is None and ``program`` contains a :data:`TEST_SEPARATOR` line, the part after
    the last such line is used as the tests. Without tests, the program passes when it runs to
    completion without an exception. ``prompt``: see :class:`Program` (default: the program's
    own ``prompt`` attribute, if it has one).
    """
    _check_can_run(program)
    if prompt is None:
        prompt = getattr(program, "prompt", None)
    if test is None:
        program, test = split_tests(program)
    mode = isolation.isolation_mode(limits.isolation, _site_dirs())
    bodies = tuple(_utf8(t) for t in (program, test, prompt))
    extra = {} if prompt is None or test is None else {"stubs": _prompt_stubs(prompt)}
    with _identity(limits, mode) as (uid, gid):
        header = _request_header(limits, secrets.token_hex(16), uid, gid)
        header.update(
            extra, pidns=int(mode == "namespaces"), strict=int(not limits.shared_fallback)
        )
        return _run(bodies, header, limits, mode)


def _utf8(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", "surrogatepass")


def _prompt_stubs(prompt: str) -> list[str]:
    """Functions a prompt only declares (docstring, imports, ``pass``): the candidate provides
    them; every other name the prompt binds is the prompt's own (see :class:`Program`)."""
    try:
        body = ast.parse(prompt).body
    except SyntaxError:
        return []
    trivial = (ast.Pass, ast.Import, ast.ImportFrom)
    return [
        node.name
        for node in body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and all(
            isinstance(s, trivial)
            or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
            for s in node.body
        )
    ]


def _run(bodies: tuple, header: dict, limits: SandboxLimits, mode: str) -> SandboxResult:
    """``bodies``: (program, tests or None, prompt or None) as bytes."""
    nonce, uid, gid = header["nonce"], header["uid"], header["gid"]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="semalign-sbx-", ignore_cleanup_errors=True) as top:
        work, io = _make_run_dirs(top, uid, gid)
        launch = _launch(mode, limits, work)
        with open(io / "stdout", "w+b") as out_f, open(io / "stderr", "w+b") as err_f:
            run = _run_harness(header, bodies, launch, out_f, err_f, limits)
            captured = _capture(out_f, err_f, int(limits.max_output_bytes))
    result = _classify(limits, nonce, run, captured, time.monotonic() - t0)
    result.isolation = mode
    result.tests_process = _tests_process(bodies[1] is not None, run.report)
    return result


def _tests_process(has_tests: bool, report: dict) -> str:
    if not has_tests:
        return "none"
    return "shared" if report.get("shared") else "separate"


@dataclass(frozen=True)
class _Launch:
    """How to start the harness A: command line, working directory, and its HOME/TMPDIR."""

    argv: list[str]
    cwd: str
    home: str


def _launch(mode: str, limits: SandboxLimits, work: str) -> _Launch:
    if mode != "namespaces":
        return _Launch([sys.executable, "-I", "-S", "-B", str(CHILD_PROGRAM)], work, work)
    inner = [os.path.realpath(sys.executable), "-I", "-S", "-B", isolation.INNER_CHILD]
    argv = isolation.bwrap_argv(
        inner,
        interpreter_dirs=_site_dirs(),
        child_program=CHILD_PROGRAM,
        disk_bytes=int(limits.disk_mb) * 1024 * 1024,
    )
    return _Launch(argv, work, isolation.INNER_HOME)


@contextlib.contextmanager
def _identity(limits: SandboxLimits, mode: str) -> Iterator[tuple[int | None, int | None]]:
    """(uid, gid) B switches to: with namespaces, a distinct uid per run for a root evaluator
    (none otherwise: the user namespace maps B to 65534); without, see _sandbox_identity."""
    if mode != "namespaces":
        yield _sandbox_identity(limits)
    elif os.geteuid() != 0 or limits.user is None:
        yield None, None
    else:
        with isolation.run_uid() as uid:
            yield uid, uid


def _check_can_run(program: object) -> None:
    if not isinstance(program, str):
        raise InvalidParameterError(f"program must be a str, got {type(program).__name__}")
    if not sys.platform.startswith("linux"):
        raise ArtifactError(
            "the code sandbox needs Linux (/proc, prctl, rlimits); score HumanEval/MBPP "
            "inside a Linux machine or container"
        )


def _sandbox_identity(limits: SandboxLimits) -> tuple[int | None, int | None]:
    """(uid, gid) to switch to, or (None, None) when the evaluator is not root."""
    if os.geteuid() != 0 or limits.user is None:
        return None, None
    try:
        pw = pwd.getpwnam(limits.user)
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        if limits.user == "nobody":
            return 65534, 65534
        raise InvalidParameterError(
            f"sandbox user {limits.user!r} does not exist; create it or use user='nobody'"
        ) from None


def _request_header(limits: SandboxLimits, nonce: str, uid: int | None, gid: int | None) -> dict:
    """The header fields of the harness request, pipe fds excepted (see sandbox_child)."""
    return {
        "nonce": nonce,
        "uid": uid,
        "gid": gid,
        "site": _site_dirs(),
        "wall_s": float(limits.wall_s),
        "cpu_s": int(math.ceil(limits.cpu_s)),
        "as_bytes": int(limits.memory_mb) * 1024 * 1024,
        "fsize": int(limits.max_output_bytes) + 1,
        "nproc": int(limits.max_processes),
    }


def _site_dirs() -> list[str]:
    dirs: list[str] = []
    try:
        dirs.extend(site.getsitepackages())
    except AttributeError:  # pragma: no cover - very old virtualenv
        pass
    return [d for d in dirs if os.path.isdir(d)]


def _make_run_dirs(top: str, uid: int | None, gid: int | None) -> tuple[str, Path]:
    """``work/`` (the program's cwd, owned by the sandbox user) and ``io/`` (evaluator only)."""
    # top (0711): the sandbox user may traverse it but not list it
    os.chmod(top, 0o711)
    work, io = os.path.join(top, "work"), Path(top) / "io"
    os.mkdir(work, 0o700)
    os.mkdir(io, 0o700)
    if uid is not None:
        os.chown(work, uid, gid)
    return work, io


def _harness_env(home: str, run_id: str) -> dict:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
        _MARKER_VAR: run_id,
    }


def _run_harness(
    header: dict,
    bodies: tuple,
    launch: _Launch,
    out_f,
    err_f,
    limits: SandboxLimits,
) -> _HarnessRun:
    """Start A, feed it the request, wait, and kill everything it or B left behind."""
    run_id = secrets.token_hex(8)
    marker = f"{_MARKER_VAR}={run_id}".encode()
    proc = None
    res_r, res_w = os.pipe()
    rep_r, rep_w = os.pipe()
    try:
        try:
            payload = _encode(dict(header, result_fd=res_w, report_fd=rep_w), bodies)
            proc = subprocess.Popen(
                launch.argv,
                stdin=subprocess.PIPE,
                stdout=out_f,
                stderr=err_f,
                cwd=launch.cwd,
                env=_harness_env(launch.home, run_id),
                pass_fds=(res_w, rep_w),
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(res_w)
            os.close(rep_w)
        _feed(proc, payload)
        timed_out = not _wait_exit_no_reap(proc, limits.wall_s + _STARTUP_GRACE_S)
        _kill_group(proc)
        result = _read_fd_nonblocking(res_r, _RESULT_CAP)
        report = parse_report(_read_fd_nonblocking(rep_r, _REPORT_CAP))
        if timed_out or proc.returncode != 0 or not report or not report.get("clean", 0):
            _kill_marked(marker)
    except BaseException:
        # e.g. KeyboardInterrupt in the evaluator: leave nothing running behind us
        if proc is not None:
            _kill_group(proc)
        _kill_marked(marker)
        raise
    finally:
        os.close(res_r)
        os.close(rep_r)
    return _HarnessRun(proc.returncode, timed_out, report, result)


def _encode(header: dict, bodies: tuple) -> bytes:
    try:
        return encode_request(header, *bodies)
    except ValueError as e:
        raise InvalidParameterError(str(e)) from None


def _feed(proc: subprocess.Popen, payload: bytes) -> None:
    """Write the request and close stdin; a harness that died early is seen later."""
    try:
        try:
            proc.stdin.write(payload)
        finally:
            proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass


def _wait_exit_no_reap(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until the process has exited *without reaping it* (so its pgid cannot be reused
    before we killpg it). Returns False on timeout."""
    try:
        pfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pfd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if poller.poll(max(1, int(left * 1000))):
                return True
    finally:
        os.close(pfd)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL A's whole process group, then reap A."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _kill_marked(marker: bytes, timeout: float = 5.0) -> None:
    """SIGKILL every process whose initial environment carries this run's marker."""
    deadline = time.monotonic() + timeout
    while True:
        found = _pids_with_environ(marker)
        if not found or time.monotonic() > deadline:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _pids_with_environ(marker: bytes) -> list[int]:
    """Pids (other than ours) whose ``/proc/<pid>/environ`` contains ``marker``."""
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if marker in env:
            found.append(int(name))
    return found


def _read_fd_nonblocking(fd: int, cap: int) -> bytes:
    os.set_blocking(fd, False)
    chunks, n = [], 0
    while n < cap:
        try:
            b = os.read(fd, min(65536, cap - n))
        except (BlockingIOError, InterruptedError):
            break
        if not b:
            break
        chunks.append(b)
        n += len(b)
    return b"".join(chunks)


def _capture(out_f, err_f, cap: int) -> _Captured:
    over_cap = False
    texts = []
    for f in (out_f, err_f):
        over_cap |= os.fstat(f.fileno()).st_size > cap
        f.seek(0)
        texts.append(f.read(cap))
    return _Captured(texts[0], texts[1], over_cap)


def _classify(
    limits: SandboxLimits, nonce: str, run: _HarnessRun, captured: _Captured, wall: float
) -> SandboxResult:
    lines = run.result.decode("utf-8", "replace").splitlines()
    fails = [ln[5:].strip() for ln in lines if ln.startswith("FAIL ")]
    error = fails[-1] if fails else None
    passed_line = sandbox_child.pass_line(nonce).decode().rstrip("\n") in lines
    status = _status(limits, run, captured, error, passed_line)
    return SandboxResult(
        passed=status == "passed",
        status=status,
        returncode=_returncode(run),
        stdout=captured.stdout.decode("utf-8", "replace"),
        stderr=captured.stderr.decode("utf-8", "replace"),
        wall_s=wall,
        error=error,
    )


def _returncode(run: _HarnessRun) -> int | None:
    """B's exit status (negative signal), None if killed at the time limit, else A's."""
    kind, code = run.report.get("kind"), run.report.get("code")
    if kind == "exit":
        return int(code)
    if kind == "signal":
        return -int(code)
    if run.timed_out or kind == "timeout":
        return None
    return run.returncode


def _status(
    limits: SandboxLimits,
    run: _HarnessRun,
    captured: _Captured,
    error: str | None,
    passed_line: bool,
) -> str:
    """One of :data:`STATUSES`; the order of the checks is the precedence."""
    kind, code = run.report.get("kind"), run.report.get("code")
    killed = kind == "signal" and code == signal.SIGKILL
    if captured.over_cap:
        return "output_limit"
    if run.timed_out or kind == "timeout":
        return "timeout"
    if kind == "signal" and code == signal.SIGXCPU:
        return "timeout"
    if killed and run.report.get("cpu", 0.0) >= math.ceil(limits.cpu_s):
        return "timeout"  # the hard RLIMIT_CPU
    if passed_line and run.returncode == 0 and kind == "exit" and code == 0:
        return "passed"
    if error == "MemoryError" or (error is None and b"MemoryError" in captured.stderr[-2000:]):
        return "memory"
    memory_bytes = limits.memory_mb * 1024 * 1024
    if killed and run.report.get("maxrss_kb", 0) * 1024 >= _MEMORY_KILL_FRACTION * memory_bytes:
        return "memory"  # killed near the memory limit: most likely the kernel's OOM killer
    if run.returncode != 0 or kind != "exit":
        return "crashed"
    return "failed"
