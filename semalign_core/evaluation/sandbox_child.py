"""The program the sandbox runs as its harness process A and candidate process B, and its protocol.

:func:`~semalign_core.evaluation.sandbox.run_sandboxed` starts this file *by path* as
``python -I -S -B <this file>`` (see that module for the threat model). It must import nothing
but the standard library, and only cheap modules: it starts once per generated program, and
``import semalign_core`` would run the package ``__init__`` (cache set-up) in every sandbox.

Protocol, evaluator -> A (stdin, then closed): :func:`encode_request` - one header line of
``key=value`` items separated by NUL (nonce, pipe fds, uid/gid, site-packages dirs, limits, the
two lengths), then the candidate's bytes and the tests' bytes. A -> evaluator, on the *report
pipe*: one line from :func:`format_report` (``CHILD <exit N|signal N|timeout> cpu X maxrss_kb K
clean C``), read back by :func:`parse_report`. B -> evaluator, on the *result pipe*:
``PASS <nonce>`` after the tests returned, or ``FAIL <exception class>``.

* **A** reads the request, becomes a child subreaper, forks B, waits for it with the wall-clock
  limit, kills and reaps every process B left behind (orphans, even after ``setsid()``, are
  re-parented to A), then writes the report. B closes the report pipe before any candidate code
  runs, so the candidate cannot forge the report.
* **B** closes the report pipe, reads stdin from ``/dev/null``, moves the result pipe to a random
  high fd (not inheritable across ``exec``), sets ``RLIMIT_CORE``/``FSIZE``/``CPU``/``NPROC``,
  drops privileges when running as root (keeping ``O_PATH`` handles to ``sys.path`` directories
  it could not read afterwards), sets ``PR_SET_NO_NEW_PRIVS`` and a parent-death signal, sets
  ``RLIMIT_AS`` last, then runs the candidate as module ``__candidate__`` and the tests in a copy
  of its namespace whose builtins are a snapshot taken before the candidate ran.
"""

import builtins
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
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38

# B's exit codes when the harness, not the candidate, failed
EXIT_FORK_RETURNED = 70
EXIT_SETUP_FAILED = 71
EXIT_PARENT_GONE = 72

_REAP_S = 5.0  # how long A keeps killing leftover processes before giving up
_STR_FIELDS = ("nonce", "site")
_PATH_SEP = "\x1f"


# ---------------------------------------------------------------------------------------------
# Protocol (used by both sides)
# ---------------------------------------------------------------------------------------------


def encode_request(header: dict, program: bytes, tests: bytes | None) -> bytes:
    """The bytes the evaluator writes to A's stdin. ``header`` holds every field but the lengths;
    values are str, int, float, None or (``site``) a list of paths. ValueError on a newline."""
    fields = dict(header, prog_len=len(program), test_len=-1 if tests is None else len(tests))
    items = []
    for key, val in fields.items():
        if key == "site":
            val = _PATH_SEP.join(val)
        items.append(f"{key}={'' if val is None else val}")
    head = "\0".join(items)
    if "\n" in head:
        raise ValueError("sandbox request fields (site-packages paths) must not contain newlines")
    return head.encode("utf-8", "surrogateescape") + b"\n" + program + (tests or b"")


def decode_request(raw: bytes) -> tuple[dict, str, str | None]:
    """Inverse of :func:`encode_request`: (header, program, tests or None)."""
    head, _, body = raw.partition(b"\n")
    cfg = {}
    for item in head.split(b"\0"):
        key, _, val = item.decode("utf-8", "surrogateescape").partition("=")
        if key in _STR_FIELDS:
            cfg[key] = val
        else:
            cfg[key] = None if val == "" else float(val) if key == "wall_s" else int(val)
    cfg["site"] = [p for p in cfg["site"].split(_PATH_SEP) if p]
    n_prog, n_test = cfg["prog_len"], cfg["test_len"]
    prog = body[:n_prog].decode("utf-8", "surrogatepass")
    test = None if n_test < 0 else body[n_prog : n_prog + n_test].decode("utf-8", "surrogatepass")
    return cfg, prog, test


def format_report(what: str, cpu_s: float, maxrss_kb: int, clean: bool) -> bytes:
    """A's one report line; ``what`` is ``exit N``, ``signal N`` or ``timeout``."""
    return f"CHILD {what} cpu {cpu_s:.3f} maxrss_kb {maxrss_kb:d} clean {clean:d}\n".encode()


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


# ---------------------------------------------------------------------------------------------
# Process A: the harness
# ---------------------------------------------------------------------------------------------


def main() -> None:
    """A: read the request, fork B, wait for it, clean up, report. Never returns."""
    cfg, prog, test = decode_request(sys.stdin.buffer.read())
    prctl = _subreaper_prctl()
    exit_now = os._exit  # bound before the fork: B's candidate may replace os._exit
    apid = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            _candidate_process(cfg, prog, test, prctl, apid)
        finally:
            exit_now(EXIT_FORK_RETURNED)
    os.close(cfg["result_fd"])
    cfg["nonce"] = None
    del prog, test
    what, rusage = _wait_for_candidate(pid, cfg["wall_s"])
    clean = _reap_all(time.monotonic() + _REAP_S)
    os.write(
        cfg["report_fd"],
        format_report(what, rusage.ru_utime + rusage.ru_stime, rusage.ru_maxrss, clean),
    )
    os._exit(0)


def _subreaper_prctl():
    """Make this process a child subreaper; libc's ``prctl``, or None where ctypes or libc is
    unavailable (the rlimits and the final kill still apply)."""
    try:
        import ctypes  # optional: minimal Pythons lack it; only needed for prctl

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        return prctl
    except Exception:
        return None


def _wait_for_candidate(pid: int, wall_s: float):
    """Wait for B (SIGKILL at the wall-clock limit): ("exit N" | "signal N" | "timeout", rusage)."""
    got = _wait(pid, wall_s)
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


def _reap_all(deadline: float) -> bool:
    """Kill and reap every remaining child (orphans are re-parented to us: subreaper).
    True when none is left before ``deadline``."""
    me = os.getpid()
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
    """B: set up limits and identity, then run the untrusted code. Never returns."""
    try:
        res_fd, nonce_line, pristine, ns = _set_up(cfg, prctl, apid)
    except BaseException as e:
        try:
            os.write(2, f"sandbox set-up failed: {e!r}\n".encode())
        finally:
            os._exit(EXIT_SETUP_FAILED)
    _run_untrusted(prog, test, ns, pristine, res_fd, nonce_line)


def _set_up(cfg: dict, prctl, apid: int):
    """Everything B does before candidate code runs; (result fd, pass line, builtins snapshot,
    candidate namespace). The order matters: see the comments."""
    os.close(cfg["report_fd"])
    nul = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nul, 0)
    os.close(nul)
    res_fd = _move_to_random_high_fd(cfg["result_fd"])
    nonce_line = pass_line(cfg["nonce"])
    cfg["nonce"] = None
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
    pristine, ns = _candidate_namespace()
    cfg.clear()
    return res_fd, nonce_line, pristine, ns


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
    _exit=os._exit,
    _write=os.write,
    _BaseException=BaseException,
    _compile=compile,
    _exec=exec,
    _dict=dict,
):
    """Run the candidate, then the tests; write the pass line only if both returned. Never
    returns. Everything it calls is bound as a default argument, before the candidate could
    patch ``os``, ``builtins`` or this module."""
    tns = None
    try:
        _exec(_compile(prog, "<candidate>", "exec"), ns)
        if test is not None:
            tns = _dict(ns)
            tns["__builtins__"] = _dict(pristine)
            _exec(_compile(test, "<tests>", "exec"), tns)
    except _BaseException as exc:
        _report_failure(exc, prog, test, ns, tns, res_fd)
        _exit(1)
    try:
        _write(res_fd, nonce_line)
    except _BaseException:
        _exit(3)
    _flush()
    _exit(0)


def _report_failure(
    exc, prog, test, ns, tns, res_fd, _write=os.write, _BaseException=BaseException
):
    """``FAIL <class>`` on the result pipe first, then a traceback on stderr (best effort)."""
    try:
        name = exc.__class__.__name__
        if not isinstance(name, str):
            name = "?"
    except _BaseException:
        name = "?"
    try:
        _write(res_fd, fail_line(name))
    except _BaseException:
        pass
    try:  # drop the candidate's objects: their __del__ may print
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


def _format_exc(exc, prog: str, test) -> str:
    """A short traceback without importing `traceback` (that import costs ~20 ms per run)."""
    srcs = {"<candidate>": prog.splitlines(), "<tests>": (test or "").splitlines()}
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
