"""Run model-generated Python code in a separate, resource-limited process and score it.

:func:`run_sandboxed` executes one program (candidate code followed by its tests) and returns a
:class:`SandboxResult` whose ``status`` is one of ``passed``, ``failed``, ``timeout``,
``memory``, ``crashed`` or ``output_limit``. Only ``passed`` counts for pass@k.

Threat model
------------
The code is *buggy or adversarial LLM output*, not a determined attacker who knows this harness.
It may loop forever, allocate without bound, fork, print gigabytes, call ``sys.exit(0)`` /
``os._exit(0)`` before its asserts, raise ``SystemExit`` inside the tests, monkeypatch
``builtins`` or ``sys``, try to delete or overwrite files, or kill its parent. All of these must
be scored as failures and must neither stop nor harm the evaluation run. Out of scope: code
written to escape this particular sandbox (reading the harness's memory for the nonce, ptrace,
kernel exploits, returning objects whose ``__eq__`` is always true, exhausting shared disk space
slowly, network access). This is a pragmatic isolation layer, not a security boundary; run
untrusted code at scale inside a container or VM as well.

Process layout
--------------
::

    evaluator (this process)
      └─ A: harness  ``python -I -S -B -c <bootstrap>``, new session, same user as the evaluator
           └─ B: fork of A that drops privileges, sets the rlimits and runs candidate + tests

* **A** reads a small header (nonce, fds, limits), the program and the tests from stdin (the evaluator writes them and
  closes the pipe), forks **B**, waits for it with the wall-clock limit, then kills and reaps
  every process B left behind (A is a Linux *child subreaper*, so orphaned or daemonised
  descendants - even ones that called ``setsid()`` - are re-parented to A, not to init) and
  reports B's fate on a *report pipe* that B closed before running any candidate code, so the
  candidate cannot forge it. ``os.kill(os.getppid(), 9)`` in the candidate therefore targets A,
  never the evaluator; when the evaluator runs as root, A is root and the candidate (``nobody``)
  cannot signal it at all.
* **B** closes the report pipe, replaces stdin by ``/dev/null``, moves the *result pipe* to a
  random high fd number (not inheritable across ``exec``), sets ``RLIMIT_AS`` (memory),
  ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (``max_output_bytes`` + 1: caps stdout/stderr and any file the
  program writes), ``RLIMIT_NPROC`` and ``RLIMIT_CORE=0``, drops privileges when running as root,
  sets ``PR_SET_NO_NEW_PRIVS`` (no set-uid escalation through ``exec``) and a parent-death
  signal, then compiles and runs the candidate code in a fresh module namespace (``__name__`` is
  ``"__candidate__"``, so ``if __name__ == "__main__":`` blocks do not run, as in the reference
  HumanEval harness). The tests are compiled *separately* and run in a copy of that namespace
  whose ``__builtins__`` is a snapshot taken before the candidate ran: patching ``builtins`` (a
  fake ``abs``, ``__import__``, ``print``, ``AssertionError``...) cannot change what the tests
  see, and an unterminated string in the candidate cannot swallow the asserts.
* **Passing is not decided by the exit code.** The evaluator puts a random nonce in the header;
  B writes ``PASS <nonce>`` on the result pipe only after the tests returned without any
  exception (``BaseException`` included, so ``SystemExit``/``KeyboardInterrupt`` fail). A run
  passes only if that line is there, B exited with 0 and A completed normally. ``sys.exit(0)``
  or ``os._exit(0)`` before the asserts, a killed harness, or junk written to random fds all
  fail. The nonce is in B's memory, which is why a determined attacker is out of scope.

Running as root vs. as a normal user
------------------------------------
Root is exempt from ``RLIMIT_NPROC`` and may write anywhere. So when the evaluator's effective
uid is 0, B switches to ``SandboxLimits.user`` (default ``nobody``; uid/gid 65534 if the account
does not exist) with no supplementary groups. The working directory is a fresh temporary
directory owned by that user; everything else (the repository, the data, the evaluator's files)
is protected by ordinary file permissions. If the interpreter or its standard library lives
where that user cannot read (e.g. a pyenv interpreter under root's home), B keeps ``O_PATH`` handles to those
``sys.path`` directories opened before the switch and imports through ``/proc/self/fd/N``; this
exposes those directories (world-readable files anyway) but nothing else of that home directory.

When the evaluator is not root, B runs as the same user: the rlimits apply (``RLIMIT_NPROC`` is
set to the user's current task count plus ``max_processes``, since that limit counts all of the
user's processes), but **file protection then relies on the user's own permissions** - the
program could delete files the user can delete - and it could still signal the user's other
processes if it went looking for them (``os.kill(-1, 9)``). Use a container, or run the
evaluation as root so the ``nobody`` switch applies, for untrusted code at scale.

Other choices
-------------
* ``-I`` (isolated: no ``PYTHON*`` variables, no user site, script dir not on ``sys.path``),
  ``-B`` (no ``.pyc`` written by the sandbox) and ``-S``: the ``site`` module is skipped (it costs
  ~15 ms per program) and the evaluator's site-packages directories are appended to ``sys.path``
  instead, so generated code can still ``import numpy``; ``.pth`` files are not processed.
  ``exit``/``quit`` are still defined.
* The environment is minimal: ``PATH``, ``LANG=C.UTF-8``, ``HOME`` and ``TMPDIR`` = the working
  directory, BLAS/OpenMP pools limited to 1 thread, and a per-run marker variable.
* stdout/stderr go to files in a second temporary directory the program cannot reach by path;
  only the first ``max_output_bytes`` of each are read back. A file that grew past the cap gives
  status ``output_limit``.
* At the end the evaluator always kills A's whole process group; if A did not complete
  normally it also kills every process that carries this run's marker variable.
* No ``preexec_fn`` is used (it is unsafe with the thread pool of
  :func:`~semalign_core.evaluation.code_tasks.score_programs`); the limits are applied by the
  trusted bootstrap in B before any candidate code runs.

Linux only (``/proc``, ``prctl``, rlimits).
"""

from __future__ import annotations

import math
import os
import pwd
import secrets
import signal
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from semalign_core.errors import ArtifactError, InvalidParameterError

__all__ = ["SandboxLimits", "SandboxResult", "run_sandboxed", "split_tests", "TEST_SEPARATOR",
           "STATUSES"]

STATUSES = ("passed", "failed", "timeout", "memory", "crashed", "output_limit")

#: A line equal to this separates candidate code from its tests inside one program string.
#: :func:`run_sandboxed` splits at the *last* such line; everything after it is trusted test code.
TEST_SEPARATOR = "# ---- semalign sandbox: tests below ----"

_MARKER_VAR = "SEMALIGN_SANDBOX_RUN"
_STARTUP_GRACE_S = 5.0  # interpreter start-up + cleanup allowance on top of wall_s
_RESULT_CAP = 65536
_REPORT_CAP = 4096


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run.

    ``wall_s``: wall-clock seconds for candidate + tests (interpreter start-up not counted);
    ``cpu_s``: CPU seconds (``RLIMIT_CPU``); ``memory_mb``: address space (``RLIMIT_AS``);
    ``max_output_bytes``: cap on stdout, on stderr and on any file the program writes
    (``RLIMIT_FSIZE``); ``max_processes``: processes/threads the program may add
    (``RLIMIT_NPROC``); ``user``: account the program runs as when the evaluator is root
    (``None`` keeps root - no process limit, no file protection; only for debugging).
    """

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 1024
    max_output_bytes: int = 64_000
    max_processes: int = 32
    user: str | None = "nobody"

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "max_output_bytes", "max_processes"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise InvalidParameterError(
                    f"SandboxLimits.{name} must be a positive number, got {value!r}")
        if self.memory_mb < 64:
            raise InvalidParameterError(
                f"SandboxLimits.memory_mb={self.memory_mb} is too small for a Python interpreter "
                "(use at least 64)")


@dataclass
class SandboxResult:
    """Outcome of one program. ``passed`` is true only for ``status == "passed"``.

    ``returncode``: exit status of the process that ran the program (negative signal number),
    or of the harness if it died first, ``None`` if the evaluator had to kill it.
    ``stdout``/``stderr``: the first ``max_output_bytes`` of each (UTF-8, invalid bytes
    replaced). ``wall_s``: total wall time including interpreter start-up and cleanup.
    ``error``: the exception class the program or its tests raised, when there was one.
    """

    passed: bool
    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# The bootstrap run by the harness process A (and, after fork, by B). Trusted code.
# ---------------------------------------------------------------------------------------------

_BOOTSTRAP = r'''
import os, sys

def _count_tasks(uid):
    """Tasks (threads) whose real uid is `uid`: what RLIMIT_NPROC counts."""
    n = 0
    want = ("\nUid:\t%d\t" % uid).encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open("/proc/" + name + "/status", os.O_RDONLY)
            try:
                data = os.read(fd, 8192)
            finally:
                os.close(fd)
        except OSError:
            continue
        if want in data:
            i = data.find(b"\nThreads:")
            n += int(data[i + 9:data.find(b"\n", i + 1)]) if i >= 0 else 1
    return n

def _children(me):
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat", "rb") as f:
                data = f.read()
            if int(data[data.rfind(b")") + 2:].split()[1]) == me:
                kids.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return kids

def _reap_all(deadline):
    """Kill and reap every remaining child (orphans are re-parented to us: subreaper)."""
    import signal, time
    me = os.getpid()
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return True
        kids = _children(me)
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001 if kids else 0.005)
    return False

def _wait(pid, timeout):
    """wait4(pid) with a timeout; None on timeout."""
    import time
    deadline = time.monotonic() + timeout
    try:
        pfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pfd = None
    if pfd is not None:
        import select
        poller = select.poll()
        poller.register(pfd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.close(pfd)
                return None
            if poller.poll(max(1, int(left * 1000))):
                break
        os.close(pfd)
        _, status, ru = os.wait4(pid, 0)
        return status, ru
    delay = 0.0005
    while True:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid:
            return status, ru
        if time.monotonic() >= deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.02)

def _main():
    import signal, time
    raw = sys.stdin.buffer.read()
    head, _, body = raw.partition(b"\n")
    cfg = {}
    for item in head.split(b"\0"):
        key, _, val = item.decode("utf-8", "surrogateescape").partition("=")
        cfg[key] = val if key in ("nonce", "site") else (None if val == "" else
                                                         float(val) if key == "wall_s" else int(val))
    cfg["site"] = [p for p in cfg["site"].split("\x1f") if p]
    n_prog, n_test = cfg["prog_len"], cfg["test_len"]
    prog = body[:n_prog].decode("utf-8", "surrogatepass")
    test = None if n_test < 0 else body[n_prog:n_prog + n_test].decode("utf-8", "surrogatepass")
    del raw, body
    prctl = None
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass
    _exit, _write = os._exit, os.write
    rep_fd = cfg["report_fd"]
    apid = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            _child(cfg, prog, test, prctl, apid)
        finally:
            _exit(70)
    os.close(cfg["result_fd"])
    cfg["nonce"] = None
    del prog, test
    got = _wait(pid, cfg["wall_s"])
    if got is None:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        _, status, ru = os.wait4(pid, 0)
        what = "timeout"
    else:
        status, ru = got
        if os.WIFSIGNALED(status):
            what = "signal %d" % os.WTERMSIG(status)
        else:
            what = "exit %d" % os.WEXITSTATUS(status)
    cpu = ru.ru_utime + ru.ru_stime
    clean = _reap_all(time.monotonic() + 5.0)
    _write(rep_fd, ("CHILD %s cpu %.3f maxrss_kb %d clean %d\n"
                    % (what, cpu, ru.ru_maxrss, clean)).encode())
    _exit(0)

def _child(cfg, prog, test, prctl, apid,
           _exit=os._exit, _write=os.write, _BaseException=BaseException, _compile=compile,
           _exec=exec, _dict=dict):
    # ---- set-up (trusted; any failure is a harness failure, exit 71) ----
    try:
        import builtins, resource, signal, types
        os.close(cfg["report_fd"])
        nul = os.open(os.devnull, os.O_RDONLY)
        os.dup2(nul, 0)
        os.close(nul)
        res_fd = cfg["result_fd"]
        soft_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        top = 1024 if soft_nofile < 0 else max(128, min(soft_nofile, 1024))
        hi = 100 + int.from_bytes(os.urandom(2), "little") % (top - 100)
        while True:
            try:
                os.fstat(hi)
            except OSError:
                break
            hi = 100 + (hi - 99) % (top - 100)
        os.dup2(res_fd, hi, inheritable=False)
        os.close(res_fd)
        res_fd = hi
        nonce_line = ("PASS " + cfg["nonce"] + "\n").encode()
        cfg["nonce"] = None
        uid, gid = cfg["uid"], cfg["gid"]
        sys.path.extend(p for p in cfg["site"] if p not in sys.path)
        held = {}
        if uid is not None:
            for p in sys.path:
                if p and os.path.isdir(p):
                    held[p] = os.open(p, os.O_PATH | os.O_DIRECTORY)
        base = _count_tasks(uid if uid is not None else os.getuid())
        if uid is not None:
            base += 1  # B itself, once it has switched to uid
        lim = resource.setrlimit
        lim(resource.RLIMIT_CORE, (0, 0))
        lim(resource.RLIMIT_FSIZE, (cfg["fsize"], cfg["fsize"]))
        lim(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
        lim(resource.RLIMIT_NPROC, (base + cfg["nproc"], base + cfg["nproc"]))
        if uid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            if os.getuid() != uid or os.geteuid() != uid:
                raise RuntimeError("privilege drop failed")
            remap = {}
            for p, fd in held.items():
                if os.access(p, os.R_OK | os.X_OK):
                    os.close(fd)
                else:
                    remap[p] = "/proc/self/fd/%d" % fd
            if remap:
                def _m(path):
                    for old, new in remap.items():
                        if path == old or path.startswith(old + "/"):
                            return new + path[len(old):]
                    return path
                sys.path[:] = [_m(p) for p in sys.path]
                for mod in list(sys.modules.values()):
                    pth = getattr(mod, "__path__", None)
                    if isinstance(pth, list):
                        pth[:] = [_m(p) for p in pth]
                sys.path_importer_cache.clear()
        if prctl is not None:
            prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
            prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG (after the uid change)
        if os.getppid() != apid:
            _exit(72)
        lim(resource.RLIMIT_AS, (cfg["as_bytes"], cfg["as_bytes"]))
        try:
            import _sitebuiltins
            builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
            builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
        except Exception:
            pass
        pristine = _dict(builtins.__dict__)
        module = types.ModuleType("__candidate__")
        sys.modules["__candidate__"] = module
        ns = module.__dict__
        ns["__builtins__"] = builtins
        cfg.clear()
    except BaseException as e:
        try:
            _write(2, ("sandbox set-up failed: %r\n" % (e,)).encode())
        finally:
            _exit(71)

    # ---- the candidate and its tests (untrusted from here on) ----
    tns = None
    try:
        _exec(_compile(prog, "<candidate>", "exec"), ns)
        if test is not None:
            tns = _dict(ns)
            tns["__builtins__"] = _dict(pristine)
            _exec(_compile(test, "<tests>", "exec"), tns)
    except _BaseException as exc:
        try:
            name = exc.__class__.__name__
            if not isinstance(name, str):
                name = "?"
        except _BaseException:
            name = "?"
        try:
            _write(res_fd, b"FAIL " + name.encode("ascii", "replace")[:200] + b"\n")
        except _BaseException:
            pass
        try:
            ns.clear()
            if tns is not None:
                tns.clear()
        except _BaseException:
            pass
        _flush()
        try:
            _write(2, _format_exc(exc, prog, test).encode("utf-8", "replace"))
        except _BaseException:
            try:
                _write(2, b"(traceback unavailable) " + name.encode("ascii", "replace") + b"\n")
            except _BaseException:
                pass
        _flush()
        _exit(1)
    try:
        _write(res_fd, nonce_line)
    except _BaseException:
        _exit(3)
    _flush()
    _exit(0)

def _format_exc(exc, prog, test):
    """A short traceback without importing `traceback` (that import costs ~20 ms per run)."""
    srcs = {"<candidate>": prog.splitlines(), "<tests>": (test or "").splitlines()}
    frames = []
    tb = exc.__traceback__
    tb = tb.tb_next if tb is not None else None  # skip the bootstrap's own frame
    while tb is not None and len(frames) < 5000:
        co = tb.tb_frame.f_code
        entry = '  File "%s", line %s, in %s\n' % (co.co_filename, tb.tb_lineno, co.co_name)
        lines = srcs.get(co.co_filename)
        if lines and tb.tb_lineno and 0 < tb.tb_lineno <= len(lines):
            entry += "    %s\n" % lines[tb.tb_lineno - 1].strip()
        frames.append(entry)
        tb = tb.tb_next
    if len(frames) > 30:
        frames = frames[:10] + ["  [... %d more frames ...]\n" % (len(frames) - 30)] + frames[-20:]
    out = ["Traceback (most recent call last):\n"] + frames
    if isinstance(exc, SyntaxError):
        out.append('  File "%s", line %s\n    %s\n' % (exc.filename, exc.lineno,
                                                      (exc.text or "").strip()))
        msg = exc.msg
    else:
        try:
            msg = str(exc)
        except BaseException:
            msg = "<unprintable>"
    name = exc.__class__.__name__
    out.append("%s: %s\n" % (name, msg) if msg else "%s\n" % name)
    return "".join(out)

def _flush():
    for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            s.flush()
        except BaseException:
            pass

_main()
'''


# ---------------------------------------------------------------------------------------------
# Evaluator side
# ---------------------------------------------------------------------------------------------


def split_tests(program: str) -> tuple[str, str | None]:
    """Split a program at its last :data:`TEST_SEPARATOR` line into (candidate, tests).

    Returns ``(program, None)`` when there is no separator line.
    """
    lines = program.splitlines(keepends=True)
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].rstrip("\r\n") == TEST_SEPARATOR:
            return "".join(lines[:i]), "".join(lines[i + 1:])
    return program, None


def _encode_header(header: dict) -> bytes:
    """``key=value`` items separated by NUL (json would cost the harness ~10 ms of imports)."""
    items = []
    for key, val in header.items():
        if key == "site":
            val = "\x1f".join(val)
        elif val is None:
            val = ""
        items.append(f"{key}={val}")
    text = "\0".join(items)
    if "\n" in text:
        raise InvalidParameterError("site-packages paths must not contain newlines")
    return text.encode("utf-8", "surrogateescape")


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


def _site_dirs() -> list[str]:
    dirs: list[str] = []
    try:
        dirs.extend(site.getsitepackages())
    except AttributeError:  # pragma: no cover - very old virtualenv
        pass
    return [d for d in dirs if os.path.isdir(d)]


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


def _kill_marked(marker: bytes, timeout: float = 5.0) -> None:
    """SIGKILL every process whose initial environment carries this run's marker."""
    deadline = time.monotonic() + timeout
    me = os.getpid()
    while True:
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
        if not found or time.monotonic() > deadline:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


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
        import select

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


def _parse_report(report: bytes) -> dict:
    """Parse A's line ``CHILD <exit N|signal N|timeout> cpu X maxrss_kb K clean C``."""
    for line in report.decode("ascii", "replace").splitlines():
        parts = line.split()
        if not parts or parts[0] != "CHILD":
            continue
        out: dict = {}
        rest = parts[1:]
        if rest[:1] == ["timeout"]:
            out["kind"], rest = "timeout", rest[1:]
        elif len(rest) >= 2 and rest[0] in ("exit", "signal"):
            out["kind"], out["code"], rest = rest[0], int(rest[1]), rest[2:]
        for key, val in zip(rest[::2], rest[1::2]):
            try:
                out[key] = float(val)
            except ValueError:
                pass
        return out
    return {}


def run_sandboxed(program: str, limits: SandboxLimits = SandboxLimits(), *,
                  test: str | None = None) -> SandboxResult:
    """Run ``program`` (then ``test``) in a fresh, limited process; see the module docstring.

    If ``test`` is None and ``program`` contains a :data:`TEST_SEPARATOR` line, the part after
    the last such line is used as the tests. Without tests, the program passes when it runs to
    completion without an exception.
    """
    if not isinstance(program, str):
        raise InvalidParameterError(f"program must be a str, got {type(program).__name__}")
    if not sys.platform.startswith("linux"):
        raise ArtifactError(
            "the code sandbox needs Linux (/proc, prctl, rlimits); score HumanEval/MBPP "
            "inside a Linux machine or container")
    if test is None:
        program, test = split_tests(program)
    uid, gid = _sandbox_identity(limits)
    nonce = secrets.token_hex(16)
    run_id = secrets.token_hex(8)
    marker = f"{_MARKER_VAR}={run_id}".encode()
    prog_b = program.encode("utf-8", "surrogatepass")
    test_b = b"" if test is None else test.encode("utf-8", "surrogatepass")
    cap = int(limits.max_output_bytes)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="semalign-sbx-", ignore_cleanup_errors=True) as top:
        # top (0711): the sandbox user may traverse it but not list it; work/ is its own
        # directory; io/ (0700, evaluator only) holds the stdout/stderr files.
        os.chmod(top, 0o711)
        work, io = os.path.join(top, "work"), os.path.join(top, "io")
        os.mkdir(work, 0o700)
        os.mkdir(io, 0o700)
        if uid is not None:
            os.chown(work, uid, gid)
        out_f = open(Path(io) / "stdout", "w+b")
        err_f = open(Path(io) / "stderr", "w+b")
        res_r, res_w = os.pipe()
        rep_r, rep_w = os.pipe()
        header = {
            "nonce": nonce, "result_fd": res_w, "report_fd": rep_w,
            "prog_len": len(prog_b), "test_len": -1 if test is None else len(test_b),
            "uid": uid, "gid": gid, "site": _site_dirs(),
            "wall_s": float(limits.wall_s), "cpu_s": int(math.ceil(limits.cpu_s)),
            "as_bytes": int(limits.memory_mb) * 1024 * 1024, "fsize": cap + 1,
            "nproc": int(limits.max_processes),
        }
        payload = _encode_header(header) + b"\n" + prog_b + test_b
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work,
            "TMPDIR": work, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1", _MARKER_VAR: run_id,
        }
        timed_out = False
        proc = None
        try:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-B", "-c", _BOOTSTRAP],
                    stdin=subprocess.PIPE, stdout=out_f, stderr=err_f, cwd=work, env=env,
                    pass_fds=(res_w, rep_w), start_new_session=True, close_fds=True)
            finally:
                os.close(res_w)
                os.close(rep_w)
            try:
                try:
                    proc.stdin.write(payload)
                finally:
                    proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            if not _wait_exit_no_reap(proc, limits.wall_s + _STARTUP_GRACE_S):
                timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            result = _read_fd_nonblocking(res_r, _RESULT_CAP)
            report = _read_fd_nonblocking(rep_r, _REPORT_CAP)
            info = _parse_report(report)
            if timed_out or proc.returncode != 0 or not info or not info.get("clean", 0):
                _kill_marked(marker)
        except BaseException:
            # e.g. KeyboardInterrupt in the evaluator: leave nothing running behind us
            if proc is not None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
            _kill_marked(marker)
            out_f.close()
            err_f.close()
            raise
        finally:
            os.close(res_r)
            os.close(rep_r)
        try:
            out_size = os.fstat(out_f.fileno()).st_size
            err_size = os.fstat(err_f.fileno()).st_size
            out_f.seek(0)
            stdout = out_f.read(cap)
            err_f.seek(0)
            stderr = err_f.read(cap)
        finally:
            out_f.close()
            err_f.close()
    wall = time.monotonic() - t0
    return _classify(limits, nonce, proc.returncode, timed_out, info, result, stdout, stderr,
                     out_size, err_size, wall)


def _classify(limits: SandboxLimits, nonce: str, harness_rc: int, timed_out: bool, info: dict,
              result: bytes, stdout: bytes, stderr: bytes, out_size: int, err_size: int,
              wall: float) -> SandboxResult:
    lines = result.decode("utf-8", "replace").splitlines()
    pass_line = f"PASS {nonce}" in lines
    fails = [ln[5:].strip() for ln in lines if ln.startswith("FAIL ")]
    error = fails[-1] if fails else None
    kind = info.get("kind")
    code = info.get("code")
    if kind == "exit":
        returncode: int | None = int(code)
    elif kind == "signal":
        returncode = -int(code)
    elif timed_out or kind == "timeout":
        returncode = None
    else:
        returncode = harness_rc
    cpu = info.get("cpu", 0.0)
    cap = limits.max_output_bytes
    if out_size > cap or err_size > cap:
        status = "output_limit"
    elif timed_out or kind == "timeout":
        status = "timeout"
    elif kind == "signal" and (code == signal.SIGXCPU
                               or (code == signal.SIGKILL and cpu >= math.ceil(limits.cpu_s))):
        status = "timeout"
    elif pass_line and harness_rc == 0 and kind == "exit" and code == 0:
        status = "passed"
    elif error == "MemoryError" or (error is None and b"MemoryError" in stderr[-2000:]):
        status = "memory"
    elif (kind == "signal" and code == signal.SIGKILL
          and info.get("maxrss_kb", 0) * 1024 >= 0.8 * limits.memory_mb * 1024 * 1024):
        status = "memory"  # killed near the memory limit: most likely the kernel's OOM killer
    elif harness_rc != 0 or kind != "exit":
        status = "crashed"
    else:
        status = "failed"
    return SandboxResult(
        passed=status == "passed", status=status, returncode=returncode,
        stdout=stdout.decode("utf-8", "replace"), stderr=stderr.decode("utf-8", "replace"),
        wall_s=wall, error=error)
