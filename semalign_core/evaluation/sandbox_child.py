"""The program the sandbox runs as its harness A, candidate process B and tests process C.

:func:`~semalign_core.evaluation.sandbox.run_sandboxed` starts this file *by path* as
``python -I -S -B <this file>`` (see that module for the threat model). It must import nothing
but the standard library, and only cheap modules: it starts once per generated program, and
``import semalign_core`` would run the package ``__init__`` (cache set-up) in every sandbox.

Protocol, evaluator -> A (stdin, then closed): :func:`encode_request` - one header line of
``key=value`` items separated by NUL (nonce, pipe fds, uid/gid, site-packages dirs, limits, the
lengths), then the candidate's, the tests' and (optional) the prompt's bytes. A -> evaluator, on
the *report pipe*: one line from :func:`format_report` (``CHILD <exit N|signal N|timeout> cpu X
maxrss_kb K [shared 1] clean C``), read back by :func:`parse_report`. -> evaluator, on the
*result pipe*: ``PASS <nonce>`` after the tests returned, or ``FAIL <exception class>``.

* **A** reads the request, makes itself non-dumpable (so processes of the same uid cannot read
  its memory or fds through ``/proc``) and a child subreaper, forks C (tests) and B (candidate),
  waits for C with the wall-clock limit, kills and reaps every process left behind (orphans,
  even after ``setsid()``, are re-parented to A), then writes the report. Without tests only B
  runs, and B's fate is reported.
* **B** closes the report and result pipes, reads stdin from ``/dev/null``, sets
  ``RLIMIT_CORE``/``FSIZE``/``CPU``/``NPROC``, drops privileges when running as root (keeping
  ``O_PATH`` handles to ``sys.path`` directories it could not read afterwards), sets
  ``PR_SET_NO_NEW_PRIVS`` and a parent-death signal, sets ``RLIMIT_AS`` last, runs the candidate
  as module ``__candidate__``, then serves C's calls of its functions.
* **C** does the same set-up but keeps the result pipe, and never runs candidate code: it
  executes the prompt (trusted helper definitions, e.g. HumanEval/32's ``poly``) and the tests
  in its own fresh interpreter state, imports the modules they use itself, and reaches the
  candidate's functions through proxies that send the arguments to B and get the results back
  as core values (:mod:`marshal` of None/bool/int/float/complex/str/bytes/tuple/list/dict/set
  only; never pickle). So B's monkeypatches of builtins, stdlib modules or prompt helpers cannot
  change what the asserts see, and B never holds the result pipe.
* Where a value cannot cross (an instance of a candidate class, a generator, a C-side object
  passed as an argument...), C exits with :data:`EXIT_NEEDS_SHARED` and A reruns the program
  the old way, candidate and tests in one process B' (tests in a copy of the candidate's
  namespace with a snapshot of the builtins); the report then says ``shared 1``.
"""

import builtins
import marshal
import os
import resource
import select
import sys
import time
import types

# signal.SIGKILL on Linux: `import signal` loads enum & co.: ~7 ms CPU per run
_SIGKILL = 9
# prctl(2) options (linux/prctl.h)
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38

# B's exit codes when the harness, not the candidate, failed
EXIT_FORK_RETURNED = 70
EXIT_SETUP_FAILED = 71
EXIT_PARENT_GONE = 72
#: C's exit code when a value could not cross between C and B: A reruns in one process
EXIT_NEEDS_SHARED = 73
#: C's exit code when B died or broke the channel: A reports B's fate instead of C's
EXIT_PEER_DIED = 74

_REAP_S = 5.0  # how long A keeps killing leftover processes before giving up
_STR_FIELDS = ("nonce", "site", "stubs")
_LIST_FIELDS = ("site", "stubs")
_PATH_SEP = "\x1f"
# what may cross between B and C (exact types: subclasses could carry an always-true __eq__)
_CORE_TYPES = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    tuple,
    list,
    dict,
    set,
    frozenset,
)
_MUTABLE_TYPES = (list, dict, set, bytearray)
_MSG_CAP = 1 << 28  # bytes in one message between B and C
# stdlib modules that print, open windows or start browsers when imported: never pre-imported
_NOISY_MODULES = frozenset({"this", "antigravity", "turtle", "tkinter", "idlelib", "webbrowser"})


# ---------------------------------------------------------------------------------------------
# Protocol (used by both sides)
# ---------------------------------------------------------------------------------------------


def encode_request(
    header: dict, program: bytes, tests: bytes | None, prompt: bytes | None = None
) -> bytes:
    """The bytes the evaluator writes to A's stdin. ``header`` holds every field but the lengths;
    values are str, int, float, None or (``site``) a list of paths. ValueError on a newline.
    ``prompt`` (trusted definitions the tests may use) is only sent when given."""
    fields = dict(header, prog_len=len(program), test_len=-1 if tests is None else len(tests))
    if prompt is not None:
        fields["prompt_len"] = len(prompt)
    items = []
    for key, val in fields.items():
        if key in _LIST_FIELDS:
            val = _PATH_SEP.join(val)
        items.append(f"{key}={'' if val is None else val}")
    head = "\0".join(items)
    if "\n" in head:
        raise ValueError("sandbox request fields (site-packages paths) must not contain newlines")
    return (
        head.encode("utf-8", "surrogateescape") + b"\n" + program + (tests or b"") + (prompt or b"")
    )


def decode_request(raw: bytes) -> tuple[dict, str, str | None]:
    """Inverse of :func:`encode_request`: (header, program, tests or None); the prompt, when
    sent, is in ``header["prompt"]``."""
    head, _, body = raw.partition(b"\n")
    cfg = {}
    for item in head.split(b"\0"):
        key, _, val = item.decode("utf-8", "surrogateescape").partition("=")
        if key in _STR_FIELDS:
            cfg[key] = val
        else:
            cfg[key] = None if val == "" else float(val) if key == "wall_s" else int(val)
    for key in _LIST_FIELDS:
        if key in cfg:
            cfg[key] = [p for p in cfg[key].split(_PATH_SEP) if p]
    n_prog, n_test = cfg["prog_len"], cfg["test_len"]
    prog = body[:n_prog].decode("utf-8", "surrogatepass")
    test = None if n_test < 0 else body[n_prog : n_prog + n_test].decode("utf-8", "surrogatepass")
    if "prompt_len" in cfg:
        start = n_prog + max(n_test, 0)
        cfg["prompt"] = body[start : start + cfg["prompt_len"]].decode("utf-8", "surrogatepass")
    return cfg, prog, test


def format_report(
    what: str, cpu_s: float, maxrss_kb: int, clean: bool, shared: bool = False
) -> bytes:
    """A's one report line; ``what`` is ``exit N``, ``signal N`` or ``timeout``; ``shared``:
    the tests ran in the candidate's process (the fallback)."""
    extra = " shared 1" if shared else ""
    return f"CHILD {what} cpu {cpu_s:.3f} maxrss_kb {maxrss_kb:d}{extra} clean {clean:d}\n".encode()


def parse_report(report: bytes) -> dict:
    """``{"kind": "exit"|"signal"|"timeout", "code": N, "cpu": s, "maxrss_kb": K, "clean": 0|1}``
    from A's report; ``{}`` when there is no report line (A died before writing it)."""
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


def pass_line(nonce: str) -> bytes:
    """What B writes on the result pipe once the tests returned."""
    return ("PASS " + nonce + "\n").encode()


def fail_line(exception_name: str) -> bytes:
    """What B writes on the result pipe when the candidate or the tests raised."""
    return b"FAIL " + exception_name.encode("ascii", "replace")[:200] + b"\n"


def is_core(value, _type=type, _core=_CORE_TYPES, _len=len) -> bool:
    """True when ``value`` is built only from :data:`_CORE_TYPES` (exact types, dict keys too)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = _type(item)
        if kind not in _core:
            return False
        if kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind in (tuple, list, set, frozenset):
            stack.extend(item)
        if _len(stack) > 10_000_000:
            return False
    return True


def send_msg(fd: int, obj, _dumps=marshal.dumps, _write=os.write, _is_core=is_core) -> None:
    """Write one length-prefixed :mod:`marshal` message; ValueError unless ``obj`` is core."""
    if not _is_core(obj):
        raise ValueError("only core values cross between the candidate and the tests")
    data = _dumps(obj)
    view = memoryview(len(data).to_bytes(8, "little") + data)
    while view:
        view = view[_write(fd, view) :]


def recv_msg(fd: int, _loads=marshal.loads, _is_core=is_core):
    """Read one message: the value, or None at end of file; ValueError when malformed."""
    head = _read_exact(fd, 8)
    if head is None:
        return None
    size = int.from_bytes(head, "little")
    if size > _MSG_CAP:
        raise ValueError("message too large")
    data = _read_exact(fd, size)
    if data is None:
        return None
    try:
        obj = _loads(data)
    except (EOFError, TypeError) as e:
        raise ValueError(f"malformed message: {e}") from None
    if not _is_core(obj):
        raise ValueError("message holds a non-core value")
    return obj


def _read_exact(fd: int, size: int, _read=os.read):
    chunks, got = [], 0
    while got < size:
        chunk = _read(fd, min(size - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------
# Process A: the harness
# ---------------------------------------------------------------------------------------------


def main() -> None:
    """A: read the request, run B (and C), wait, clean up, report. Never returns."""
    cfg, prog, test = decode_request(sys.stdin.buffer.read())
    prctl = _harness_prctl()
    deadline = time.monotonic() + cfg["wall_s"]
    if test is None:
        what, rusage = _run_in_one_process(cfg, prog, None, prctl, deadline)
        shared = False
    else:
        _preimport(test, cfg.get("prompt"))
        what, rusage, shared = _run_in_two_processes(cfg, prog, test, prctl, deadline)
    os.close(cfg["result_fd"])
    cfg["nonce"] = None
    clean = _reap_all(time.monotonic() + _REAP_S, cfg.get("pidns"))
    cpu = rusage.ru_utime + rusage.ru_stime
    os.write(cfg["report_fd"], format_report(what, cpu, rusage.ru_maxrss, clean, shared))
    os._exit(0)


def _preimport(*sources) -> None:
    """Import in A the stdlib modules the tests and the prompt may use, so that B and C start
    with them loaded; each gets its own copy at the fork, so B's patches cannot reach C."""
    for source in sources:
        try:
            names = _global_names(compile(source, "<preimport>", "exec"))
        except Exception:
            continue
        for name in names & sys.stdlib_module_names - _NOISY_MODULES:
            if not name.startswith("_"):
                try:
                    __import__(name)
                except Exception:
                    pass


def _fork(run, close: tuple = (), _exit=os._exit) -> int:
    """Fork a child that closes ``close`` and calls ``run()``, which must not return."""
    pid = os.fork()
    if pid == 0:
        try:
            for fd in close:
                os.close(fd)
            run()
        finally:
            _exit(EXIT_FORK_RETURNED)  # bound before the fork: the candidate may replace os._exit
    return pid


def _run_in_one_process(cfg: dict, prog: str, test, prctl, deadline: float):
    """B runs the candidate and then the tests (no tests, or the fallback); (what, rusage)."""
    apid = os.getpid()
    pid = _fork(lambda: _candidate_process(cfg, prog, test, prctl, apid))
    return _wait_for_candidate(pid, deadline - time.monotonic())


def _run_in_two_processes(cfg: dict, prog: str, test: str, prctl, deadline: float):
    """C runs the tests, B serves the candidate's functions; (what, rusage, shared)."""
    apid = os.getpid()
    c2b_r, c2b_w = os.pipe()
    b2c_r, b2c_w = os.pipe()
    cpid = _fork(lambda: _tests_process(cfg, test, c2b_w, b2c_r, prctl, apid), (c2b_r, b2c_w))
    bpid = _fork(lambda: _server_process(cfg, prog, c2b_r, b2c_w, prctl, apid), (c2b_w, b2c_r))
    for fd in (c2b_r, c2b_w, b2c_r, b2c_w):
        os.close(fd)
    what, rusage = _wait_for_candidate(cpid, deadline - time.monotonic())
    if what == f"exit {EXIT_PEER_DIED}":  # B died or broke the channel: its fate is the result
        what, rusage = _wait_for_candidate(bpid, max(0.0, deadline - time.monotonic()))
        return what, rusage, False
    _kill_and_reap(bpid)
    if what != f"exit {EXIT_NEEDS_SHARED}":
        return what, rusage, False
    _reap_all(time.monotonic() + _REAP_S, cfg.get("pidns"))  # B's leftovers must not see the rerun
    what, rusage = _run_in_one_process(cfg, prog, test, prctl, deadline)
    return what, rusage, True


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, _SIGKILL)
    except OSError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _harness_prctl():
    """Make A non-dumpable (no ``/proc`` access to its memory or fds by processes of the same
    uid, inherited by B and C) and a child subreaper; libc's ``prctl``, or None where ctypes or
    libc is unavailable (the rlimits and the final kill still apply)."""
    try:
        import ctypes  # optional: minimal Pythons lack it; only needed for prctl

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
        prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        return prctl
    except Exception:
        return None


def _wait_for_candidate(pid: int, wall_s: float):
    """Wait for B (SIGKILL at the wall-clock limit): ("exit N" | "signal N" | "timeout", rusage)."""
    got = _wait(pid, max(0.0, wall_s))
    if got is None:
        try:
            os.kill(pid, _SIGKILL)
        except OSError:
            pass
        _, status, rusage = os.wait4(pid, 0)
        return "timeout", rusage
    status, rusage = got
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}", rusage
    return f"exit {os.WEXITSTATUS(status)}", rusage


def _wait(pid: int, timeout: float):
    """wait4(pid) with a timeout: (status, rusage), or None on timeout."""
    deadline = time.monotonic() + timeout
    try:
        pfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pfd = None
    if pfd is None:
        return _wait_polling(pid, deadline)
    try:
        poller = select.poll()
        poller.register(pfd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if poller.poll(max(1, int(left * 1000))):
                break
    finally:
        os.close(pfd)
    _, status, rusage = os.wait4(pid, 0)
    return status, rusage


def _wait_polling(pid: int, deadline: float):
    """:func:`_wait` for kernels without pidfd: poll with a growing sleep."""
    delay = 0.0005
    while True:
        wpid, status, rusage = os.wait4(pid, os.WNOHANG)
        if wpid:
            return status, rusage
        if time.monotonic() >= deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _reap_all(deadline: float, own_pid_namespace=None) -> bool:
    """Kill and reap every remaining child (orphans are re-parented to us: subreaper).
    True when none is left before ``deadline``. In a PID namespace of its own (``pidns`` in the
    header), one ``kill(-1)`` first stops them all at once, so a fork bomb cannot refill."""
    me = os.getpid()
    if own_pid_namespace:
        try:
            os.kill(-1, _SIGKILL)  # every process here but the namespace's init and us
        except OSError:
            pass
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return True
        kids = _children(me)
        for kid in kids:
            try:
                os.kill(kid, _SIGKILL)
            except OSError:
                pass
        time.sleep(0.001 if kids else 0.005)
    return False


def _children(parent: int) -> list:
    """Pids whose parent is ``parent``, from ``/proc/*/stat``."""
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat", "rb") as f:
                data = f.read()
            if int(data[data.rfind(b")") + 2 :].split()[1]) == parent:
                kids.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return kids


# ---------------------------------------------------------------------------------------------
# Process B: set-up (trusted), then the candidate and its tests (untrusted)
# ---------------------------------------------------------------------------------------------


def _candidate_process(cfg: dict, prog: str, test, prctl, apid: int) -> None:
    """B (one process: no tests, or the fallback): set up limits and identity, then run the
    candidate and the tests. Never returns."""
    with _SetUpOrExit():
        res_fd, nonce_line = _take_result_pipe(cfg)
        _confine(cfg, prctl, apid)
        pristine, ns = _candidate_namespace()
        guard = None
        if test is not None:
            guard = (_snapshot_modules(), cfg.get("prompt"), set(cfg.get("stubs", ())))
        cfg.clear()
    _run_untrusted(prog, test, ns, pristine, res_fd, nonce_line, guard)


def _server_process(cfg: dict, prog: str, from_c: int, to_c: int, prctl, apid: int) -> None:
    """B (beside C): without the result pipe, run the candidate, then serve C's calls."""
    with _SetUpOrExit():
        os.close(cfg["result_fd"])
        cfg["nonce"] = None
        _confine(cfg, prctl, apid)
        _, ns = _candidate_namespace()
        cfg.clear()
    _serve_untrusted(prog, ns, from_c, to_c)


def _tests_process(cfg: dict, test: str, to_b: int, from_b: int, prctl, apid: int) -> None:
    """C: the prompt and the tests in this process's own state; never runs candidate code."""
    with _SetUpOrExit():
        res_fd, nonce_line = _take_result_pipe(cfg)
        trusted = (cfg.get("prompt"), set(cfg.get("stubs", ())), bool(cfg.get("strict")))
        _confine(cfg, prctl, apid)
        cfg.clear()
    _run_tests(test, trusted, to_b, from_b, res_fd, nonce_line)


class _SetUpOrExit:
    """Context: a failure during set-up prints it and exits with EXIT_SETUP_FAILED."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        try:
            os.write(2, f"sandbox set-up failed: {exc!r}\n".encode())
        finally:
            os._exit(EXIT_SETUP_FAILED)


def _take_result_pipe(cfg: dict):
    """(result fd moved to a random high number, pass line); forgets the nonce."""
    res_fd = _move_to_random_high_fd(cfg["result_fd"])
    nonce_line = pass_line(cfg["nonce"])
    cfg["nonce"] = None
    return res_fd, nonce_line


def _confine(cfg: dict, prctl, apid: int) -> None:
    """Everything B and C do before untrusted input reaches them: stdin, rlimits, identity,
    no new privileges, parent-death signal. The order matters: see the comments."""
    os.close(cfg["report_fd"])
    nul = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nul, 0)
    os.close(nul)
    uid, gid = cfg["uid"], cfg["gid"]
    sys.path.extend(p for p in cfg["site"] if p not in sys.path)
    # handles opened while still root, for directories `nobody` cannot read
    held = _hold_path_dirs() if uid is not None else {}
    # counted before the switch: RLIMIT_NPROC counts every task of the user
    base = _count_tasks(uid if uid is not None else os.getuid())
    if uid is not None:
        base += 1  # B itself, once it has switched to uid
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_FSIZE, cfg["fsize"])
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
    _limit(resource.RLIMIT_NPROC, base + cfg["nproc"])
    if uid is not None:
        _drop_privileges(uid, gid)
        _import_through_held(held)
    if prctl is not None:
        prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)  # after setuid, which clears it
    if os.getppid() != apid:
        os._exit(EXIT_PARENT_GONE)
    _limit(resource.RLIMIT_AS, cfg["as_bytes"])  # last: set-up itself may allocate


def _limit(which: int, value: int) -> None:
    resource.setrlimit(which, (value, value))


def _move_to_random_high_fd(fd: int) -> int:
    """Move ``fd`` to a free, random, non-inheritable fd in [100, 1024) so the candidate cannot
    find the result pipe at a known number."""
    soft_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    top = 1024 if soft_nofile < 0 else max(128, min(soft_nofile, 1024))
    hi = 100 + int.from_bytes(os.urandom(2), "little") % (top - 100)
    while True:
        try:
            os.fstat(hi)
        except OSError:
            break
        hi = 100 + (hi - 99) % (top - 100)
    os.dup2(fd, hi, inheritable=False)
    os.close(fd)
    return hi


def _hold_path_dirs() -> dict:
    """``O_PATH`` handles to every ``sys.path`` directory, opened before dropping privileges."""
    return {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in sys.path if p and os.path.isdir(p)}


def _drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError("privilege drop failed")


def _import_through_held(held: dict) -> None:
    """Import from directories the new user cannot read through ``/proc/self/fd/N``; close the
    handles of the readable ones."""
    remap = {}
    for path, fd in held.items():
        if os.access(path, os.R_OK | os.X_OK):
            os.close(fd)
        else:
            remap[path] = f"/proc/self/fd/{fd}"
    if not remap:
        return

    def moved(path):
        for old, new in remap.items():
            if path == old or path.startswith(old + "/"):
                return new + path[len(old) :]
        return path

    sys.path[:] = [moved(p) for p in sys.path]
    for mod in list(sys.modules.values()):
        pth = getattr(mod, "__path__", None)
        if isinstance(pth, list):
            pth[:] = [moved(p) for p in pth]
    sys.path_importer_cache.clear()


def _count_tasks(uid: int) -> int:
    """Tasks (threads) whose real uid is ``uid``: what RLIMIT_NPROC counts."""
    n = 0
    want = f"\nUid:\t{uid}\t".encode()
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
            n += int(data[i + 9 : data.find(b"\n", i + 1)]) if i >= 0 else 1
    return n


def _candidate_namespace():
    """(snapshot of the builtins, namespace of module ``__candidate__``)."""
    try:
        import _sitebuiltins  # `exit`/`quit` come from `site`, which -S skips

        builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
        builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    except Exception:
        pass
    pristine = dict(builtins.__dict__)
    module = types.ModuleType("__candidate__")
    sys.modules["__candidate__"] = module
    ns = module.__dict__
    ns["__builtins__"] = builtins
    return pristine, ns


def _run_untrusted(
    prog,
    test,
    ns,
    pristine,
    res_fd,
    nonce_line,
    guard=None,
    _exit=os._exit,
    _write=os.write,
    _BaseException=BaseException,
    _compile=compile,
    _exec=exec,
    _dict=dict,
):
    """Run the candidate, then the tests; write the pass line only if both returned. Never
    returns. Everything it calls is bound as a default argument, before the candidate could
    patch ``os``, ``builtins`` or this module. ``guard``: see :func:`_undo_patches`."""
    tns = None
    try:
        _exec(_compile(prog, "<candidate>", "exec"), ns)
        if test is not None:
            tns = _dict(ns)
            tns["__builtins__"] = _dict(pristine)
            if guard is not None:
                _undo_patches(guard, ns, tns)
            _exec(_compile(test, "<tests>", "exec"), tns)
    except _BaseException as exc:
        _report_failure(exc, {"<candidate>": prog, "<tests>": test}, (ns, tns), res_fd)
        _exit(1)
    try:
        _write(res_fd, nonce_line)
    except _BaseException:
        _exit(3)
    _flush()
    _exit(0)


def _snapshot_modules() -> list:
    """(name, module, copy of its namespace) of every loaded module but ``sys``/``builtins``."""
    skip = ("sys", "builtins", "__main__", "__candidate__")
    return [
        (name, mod, dict(vars(mod)))
        for name, mod in list(sys.modules.items())
        if name not in skip and isinstance(mod, types.ModuleType)
    ]


def _undo_patches(
    guard, ns, tns, _modules=sys.modules, _vars=vars, _len=len, _any=any, _exec=exec, _cc=compile
):
    """One-process fallback only, before the tests: put back every module (and every attribute
    of it) loaded before the candidate ran, and the prompt's own helpers in the tests' namespace.
    A best effort: candidate code the tests call can patch again, or forge the pass line."""
    saved, prompt, stubs = guard
    missing = tns  # any object the candidate cannot have stored in a module
    for name, mod, space in saved:
        _modules[name] = mod
        now = _vars(mod)
        if _len(now) != _len(space) or _any(now.get(k, missing) is not v for k, v in space.items()):
            now.clear()
            now.update(space)
    if prompt is not None:
        _exec(_cc(prompt, "<prompt>", "exec"), tns)
        tns.update((name, ns[name]) for name in stubs if name in ns)


def _serve_untrusted(
    prog,
    ns,
    from_c,
    to_c,
    _exit=os._exit,
    _recv=recv_msg,
    _send=send_msg,
    _BaseException=BaseException,
    _compile=compile,
    _exec=exec,
):
    """B beside C: run the candidate, describe the names C asked for, then answer C's calls
    until C closes the channel. Never returns. Bound like :func:`_run_untrusted`."""
    try:
        _exec(_compile(prog, "<candidate>", "exec"), ns)
    except _BaseException as exc:
        _report_failure(exc, {"<candidate>": prog}, (ns,), to_c, True)
        _exit(1)
    try:
        _flush()  # A kills B as soon as C is done: the output must be out by then
        wanted = _recv(from_c)
        _send(to_c, ("ready", _describe(ns, wanted[1] if type(wanted) is tuple else ())))
        while True:
            msg = _recv(from_c)
            if msg is None:
                break
            reply = _answer(ns, msg)
            _flush()
            _send(to_c, reply)
    except _BaseException:
        _exit(2)
    _flush()
    _exit(0)


def _describe(ns, names, _BaseException=BaseException) -> dict:
    """How each wanted name the candidate defined crosses to C: ``("function",)`` (called
    through a proxy), ``("module", name)`` (C imports it itself), ``("value", v)`` (a core
    value) or ``("opaque",)`` (cannot cross)."""
    out = {}
    for name in names:
        if type(name) is not str or name.startswith("__") or name not in ns:
            continue
        try:
            value = ns[name]
            if isinstance(value, types.ModuleType):
                module = value.__name__
                out[name] = ("module", module) if type(module) is str else ("opaque",)
            elif callable(value) and not isinstance(value, type):
                out[name] = ("function",)
            else:
                out[name] = ("value", plain(value))
        except _BaseException:
            out[name] = ("opaque",)
    return out


def _answer(ns, msg, _BaseException=BaseException, _is_core=is_core, _type=type):
    """B's reply to ``("call", name, args, kwargs)``: ``("ok", result, [(i, arg)...])`` with
    the mutable arguments as they are after the call, ``("raise", class, text)`` or
    ``("opaque",)`` when the result cannot cross."""
    if _type(msg) is not tuple or len(msg) != 4 or msg[0] != "call":
        return ("raise", "SandboxProtocolError", "bad request")
    _, name, args, kwargs = msg
    try:
        result = ns[name](*args, **kwargs)
    except _BaseException as exc:
        return ("raise", _exception_name(exc), _exception_text(exc))
    changed = [(i, a) for i, a in enumerate(args) if _type(a) in _MUTABLE_TYPES]
    try:
        return ("ok", plain(result), plain(changed))
    except _BaseException:
        return ("opaque",)


def plain(value, _is_core=is_core, _isinstance=isinstance):
    """``value`` itself when it is core, else rebuilt from exact core types: subclasses
    (``Counter``, ``OrderedDict``, named tuples, ``numpy.float64``...) become their base type,
    dropping any ``__eq__`` of theirs. TypeError when something is not a core value at all."""
    if _is_core(value):
        return value
    for scalar in (bool, int, float, complex, str, bytes, bytearray):
        if _isinstance(value, scalar):
            return scalar(value)
    if _isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    for container in (list, tuple, set, frozenset):
        if _isinstance(value, container):
            return container(plain(v) for v in value)
    raise TypeError(f"{type(value).__name__} values cannot cross to the tests")


def _exception_text(exc, _BaseException=BaseException) -> str:
    try:
        text = str(exc)
        return text[:2000] if type(text) is str else ""
    except _BaseException:
        return ""


class _NeedsShared(BaseException):
    """A value cannot cross between C and B: rerun in one process (EXIT_NEEDS_SHARED)."""


class _PeerGone(BaseException):
    """B died or closed the channel: A reports B's fate (EXIT_PEER_DIED)."""


class SandboxProtocolError(Exception):
    """B sent something that is not a valid reply."""


def _run_tests(
    test: str, trusted: tuple, to_b: int, from_b: int, res_fd: int, nonce_line: bytes
) -> None:
    """C: prompt, then the names the tests use from B, then the tests; the pass line only if
    they returned. ``trusted``: (prompt or None, the functions it only declares, strict: a value
    that cannot cross fails instead of asking for the fallback). Never returns."""
    prompt, stubs, strict = trusted
    tns = {"__name__": "__candidate__", "__builtins__": builtins}
    sources = {"<tests>": test, "<prompt>": prompt}
    try:
        code = compile(test, "<tests>", "exec")
        own = _run_prompt(prompt, stubs, tns) if prompt is not None else set()
        wanted = _global_names(code) - own
        try:
            send_msg(to_b, ("want", sorted(wanted)))
        except OSError:
            pass  # B already exited; its verdict may still be in the pipe: read on
        _bind_candidate_names(tns, _receive(from_b), to_b, from_b, res_fd)
        exec(code, tns)
    except _NeedsShared:
        if not strict:
            os._exit(EXIT_NEEDS_SHARED)
        os.write(res_fd, fail_line("UncrossableValue"))
        os._exit(1)
    except _PeerGone:
        os._exit(EXIT_PEER_DIED)
    except BaseException as exc:
        _report_failure(exc, sources, (tns,), res_fd)
        os._exit(1)
    os.write(res_fd, nonce_line)
    _flush()
    os._exit(0)


def _run_prompt(prompt: str, stubs: set, tns: dict) -> set:
    """Execute the trusted prompt in the tests' namespace; the names the candidate must not
    provide: every name the prompt bound except its stubs, and the builtins."""
    exec(compile(prompt, "<prompt>", "exec"), tns)
    return (set(tns) - stubs) | set(dir(builtins))


def _global_names(code) -> set:
    """Every name a code object and the code nested in it may look up (a superset: attribute
    names are included; asking B for a name it does not define costs nothing)."""
    names, stack = set(), [code]
    while stack:
        co = stack.pop()
        names.update(co.co_names)
        stack.extend(c for c in co.co_consts if isinstance(c, types.CodeType))
    return names


def _receive(from_b: int):
    try:
        msg = recv_msg(from_b)
    except (ValueError, OSError) as e:
        raise SandboxProtocolError(str(e)) from None
    if msg is None:
        raise _PeerGone
    return msg


def _bind_candidate_names(tns: dict, msg, to_b: int, from_b: int, res_fd: int) -> None:
    """Put what B described into the tests' namespace: proxies, fresh modules, values."""
    if type(msg) is not tuple or len(msg) != 2 or msg[0] not in ("ready", "failed"):
        raise SandboxProtocolError("bad hello")
    if msg[0] == "failed":  # the candidate raised before defining anything: its class is the error
        os.write(res_fd, fail_line(str(msg[1])))
        os._exit(1)
    for name, desc in msg[1].items():
        kind = desc[0] if type(desc) is tuple and desc else None
        if kind == "function":
            tns[name] = _proxy(name, to_b, from_b)
        elif kind == "module" and len(desc) == 2 and type(desc[1]) is str:
            tns[name] = _fresh_module(desc[1])
        elif kind == "value" and len(desc) == 2:
            tns[name] = desc[1]
        else:
            raise _NeedsShared


def _fresh_module(name: str):
    """The module ``name`` as imported by C itself (never B's object)."""
    if not all(part.isidentifier() for part in name.split(".")):
        raise _NeedsShared
    try:
        __import__(name)
        return sys.modules[name]
    except Exception:
        raise _NeedsShared from None


def _proxy(name: str, to_b: int, from_b: int):
    """A function of C that runs B's ``name`` on copies of its arguments."""

    def call(*args, **kwargs):
        return _remote_call(name, args, kwargs, to_b, from_b)

    call.__name__ = call.__qualname__ = name
    return call


def _remote_call(name: str, args: tuple, kwargs: dict, to_b: int, from_b: int):
    request = ("call", name, list(args), kwargs)
    if not is_core(request):
        raise _NeedsShared
    try:
        send_msg(to_b, request)
    except OSError:
        raise _PeerGone from None
    reply = _receive(from_b)
    kind = reply[0] if type(reply) is tuple and reply else None
    if kind == "ok" and len(reply) == 3 and type(reply[2]) is list:
        _copy_back(args, reply[2])
        return reply[1]
    if kind == "raise" and len(reply) == 3:
        raise _rebuilt_exception(reply[1], reply[2])
    if kind == "opaque":
        raise _NeedsShared
    raise SandboxProtocolError("bad reply")


def _copy_back(args: tuple, changed: list) -> None:
    """Apply B's in-place changes of list/dict/set/bytearray arguments to C's originals."""
    for item in changed:
        if type(item) is not tuple or len(item) != 2 or type(item[0]) is not int:
            raise SandboxProtocolError("bad argument update")
        i, new = item
        if not 0 <= i < len(args) or type(args[i]) is not type(new):
            raise SandboxProtocolError("bad argument update")
        if isinstance(new, (list, bytearray)):
            args[i][:] = new
        else:
            args[i].clear()
            args[i].update(new)


def _rebuilt_exception(name, text) -> BaseException:
    """The candidate's exception, as the builtin class of that name when there is one."""
    cls = getattr(builtins, name, None) if type(name) is str and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls = type(
            name if type(name) is str and name.isidentifier() else "CandidateError",
            (Exception,),
            {},
        )
    try:
        return cls(text)
    except Exception:
        return Exception(text)


def _report_failure(
    exc,
    sources: dict,
    namespaces: tuple,
    res_fd: int,
    to_tests: bool = False,
    _write=os.write,
    _send=send_msg,
    _BaseException=BaseException,
):
    """``FAIL <class>`` on the result pipe (B beside C: a ``failed`` message to C) first, then a
    traceback on stderr (best effort). ``sources``: file name -> source, for the traceback."""
    name = _exception_name(exc)
    try:
        if to_tests:
            _send(res_fd, ("failed", name))
        else:
            _write(res_fd, fail_line(name))
    except _BaseException:
        pass
    try:  # drop the candidate's objects: their __del__ may print
        for ns in namespaces:
            if ns is not None:
                ns.clear()
    except _BaseException:
        pass
    _flush()
    try:
        _write(2, _format_exc(exc, sources).encode("utf-8", "replace"))
    except _BaseException:
        try:
            _write(2, b"(traceback unavailable) " + name.encode("ascii", "replace") + b"\n")
        except _BaseException:
            pass
    _flush()


def _exception_name(exc, _BaseException=BaseException) -> str:
    try:
        name = exc.__class__.__name__
        return name if type(name) is str else "?"
    except _BaseException:
        return "?"


def _format_exc(exc, sources: dict) -> str:
    """A short traceback without importing `traceback` (that import costs ~20 ms per run)."""
    srcs = {name: (text or "").splitlines() for name, text in sources.items()}
    frames = []
    tb = exc.__traceback__
    tb = tb.tb_next if tb is not None else None  # skip the harness's own frame
    while tb is not None and len(frames) < 5000:
        co = tb.tb_frame.f_code
        entry = f'  File "{co.co_filename}", line {tb.tb_lineno}, in {co.co_name}\n'
        lines = srcs.get(co.co_filename)
        if lines and tb.tb_lineno and 0 < tb.tb_lineno <= len(lines):
            entry += f"    {lines[tb.tb_lineno - 1].strip()}\n"
        frames.append(entry)
        tb = tb.tb_next
    if len(frames) > 30:
        frames = frames[:10] + [f"  [... {len(frames) - 30} more frames ...]\n"] + frames[-20:]
    return "".join(["Traceback (most recent call last):\n", *frames, _exception_line(exc)])


def _exception_line(exc) -> str:
    """The last line(s) of a traceback: ``Name: message`` (with the source line for syntax)."""
    where = ""
    if isinstance(exc, SyntaxError):
        source = (exc.text or "").strip()
        where = f'  File "{exc.filename}", line {exc.lineno}\n    {source}\n'
        msg = exc.msg
    else:
        try:
            msg = str(exc)
        except BaseException:
            msg = "<unprintable>"
    name = exc.__class__.__name__
    return where + (f"{name}: {msg}\n" if msg else f"{name}\n")


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass


if __name__ == "__main__":
    main()
