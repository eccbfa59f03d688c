"""Per-sample namespaces for the code sandbox: the ``bwrap`` (bubblewrap) command line, the
one-time probe that decides the isolation mode, and the per-run identities used as root.

:func:`~semalign_core.evaluation.sandbox.run_sandboxed` starts its harness through
:func:`bwrap_argv` when :func:`isolation_mode` says ``"namespaces"``. Each sample then gets its
own PID, mount, network, IPC and UTS namespaces: ``/`` holds only read-only binds of ``/usr``
(and the ``/lib``-style links or dirs), the interpreter's prefix, the site-packages directories
and the harness file, a fresh ``/proc`` and a minimal ``/dev``; ``/tmp`` (``disk_mb``) and
``/dev/shm`` (1 MiB) are private tmpfs mounts, so all the sample can write vanishes with it.
Nothing of the repository, ``/etc``, ``/root`` or home directories is visible; no network.

Identity, so that no sample can signal another or share its process count:

* **root evaluator**: no user namespace (an inner uid mapped to host root would be exempt from
  ``RLIMIT_NPROC``); the harness keeps only ``CAP_SETUID``/``CAP_SETGID``/``CAP_KILL`` and the
  candidate and tests processes switch to a *distinct* uid per concurrent run (:func:`run_uid`).
* **other users**: a new user namespace (``--unshare-user``, nested ones disabled) in which the
  harness, candidate and tests processes are uid 65534; the process count is kept per namespace.

Mode selection (:func:`isolation_mode`): ``SandboxLimits.isolation`` or the environment
variable :data:`ISOLATION_ENV` - ``auto`` (namespaces when ``bwrap`` works here, else the
rlimit-only mode with one warning), ``require`` (an error when namespaces are unavailable; CI
uses it) or ``off``. The probe runs once per process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from semalign_core.errors import ArtifactError, InvalidParameterError

__all__ = [
    "ISOLATION_ENV",
    "ISOLATION_CHOICES",
    "INNER_CHILD",
    "INNER_HOME",
    "isolation_mode",
    "bwrap_argv",
    "run_uid",
]

#: Environment variable that sets the isolation choice when ``SandboxLimits.isolation`` is None.
ISOLATION_ENV = "SEMALIGN_SANDBOX_ISOLATION"
ISOLATION_CHOICES = ("auto", "require", "off")
#: Where the harness file appears inside the namespaces (a neutral path: no repository layout).
INNER_CHILD = "/opt/semalign-sandbox/sandbox_child.py"
#: The sample's working directory, home and TMPDIR inside the namespaces (a private tmpfs).
INNER_HOME = "/tmp"

_NOBODY = 65534
_SHM_BYTES = 1 << 20
_ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ROOT_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL")
# per-run uids for a root evaluator: a random block, so two evaluators rarely share one
_UID_BASE = 1_500_000_000 + secrets.randbelow(1 << 16) * 4096
_log = logging.getLogger(__name__)
_lock = threading.Lock()
_probed: dict[str, str | None] = {}  # "bwrap" -> None (works) or the reason it does not
_warned: list[bool] = []
_uids_in_use: set[int] = set()


def isolation_mode(choice: str | None, interpreter_dirs: Sequence[str]) -> str:
    """``"namespaces"`` or ``"rlimits"`` for the choice ``auto``/``require``/``off`` (None:
    :data:`ISOLATION_ENV`, default ``auto``). Raises ArtifactError for ``require`` without
    working namespaces; warns once for ``auto`` without them."""
    given = choice
    choice = choice if choice is not None else os.environ.get(ISOLATION_ENV, "") or "auto"
    if choice not in ISOLATION_CHOICES:
        raise InvalidParameterError(
            f"sandbox isolation must be one of {ISOLATION_CHOICES}, got {choice!r} "
            f"(from {'SandboxLimits.isolation' if choice == given else ISOLATION_ENV})"
        )
    if choice == "off":
        return "rlimits"
    reason = _probe(tuple(interpreter_dirs))
    if reason is None:
        return "namespaces"
    if choice == "require":
        raise ArtifactError(f"sandbox isolation was required but is unavailable: {reason}")
    with _lock:
        if not _warned:
            _warned.append(True)
            _log.warning(
                "code sandbox: no per-sample namespaces (%s). Running with rlimits only: "
                "samples share the machine's /tmp and /dev/shm, can read what this user can "
                "read, and (when not root) can signal each other. Install bubblewrap "
                "(apt-get install bubblewrap) or set %s=require to make this an error.",
                reason,
                ISOLATION_ENV,
            )
    return "rlimits"


def _probe(interpreter_dirs: tuple[str, ...]) -> str | None:
    """None when a trivial interpreter run under ``bwrap`` works here, else why not (cached)."""
    with _lock:
        if "bwrap" in _probed:
            return _probed["bwrap"]
        _probed["bwrap"] = reason = _probe_once(interpreter_dirs)
        return reason


def _probe_once(interpreter_dirs: tuple[str, ...]) -> str | None:
    if shutil.which("bwrap") is None:
        return "bwrap (bubblewrap) is not installed"
    code = "import os; print(os.getpid(), os.getcwd())"
    argv = bwrap_argv(
        [_interpreter(), "-I", "-S", "-B", "-c", code],
        interpreter_dirs=interpreter_dirs,
        child_program=None,
        disk_bytes=1 << 20,
    )
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap failed to start: {e}"
    if done.returncode != 0 or not done.stdout.startswith(b"2 "):
        err = done.stderr.decode("utf-8", "replace").strip()[-300:]
        return f"bwrap does not work here (exit {done.returncode}: {err})"
    return None


def _interpreter() -> str:
    """The real interpreter binary (a venv's ``python`` is a link into the base prefix)."""
    return os.path.realpath(sys.executable)


def bwrap_argv(
    inner: Sequence[str],
    *,
    interpreter_dirs: Sequence[str],
    child_program: Path | None,
    disk_bytes: int,
) -> list[str]:
    """The ``bwrap`` command that runs ``inner`` in fresh namespaces (see the module docstring).
    ``interpreter_dirs``: extra read-only directories (site-packages); ``child_program``: the
    harness file, bound at :data:`INNER_CHILD`."""
    root = os.geteuid() == 0
    argv = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session"]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts"]
    argv += ["--unshare-cgroup-try"]
    if root:
        argv += ["--cap-drop", "ALL"]
        for cap in _ROOT_CAPS:
            argv += ["--cap-add", cap]
    else:
        argv += ["--unshare-user", "--disable-userns", "--uid", str(_NOBODY), "--gid", str(_NOBODY)]
    argv += _filesystem_args(interpreter_dirs, child_program, disk_bytes)
    return [*argv, "--chdir", INNER_HOME, "--", *inner]


def _filesystem_args(
    interpreter_dirs: Sequence[str], child_program: Path | None, disk_bytes: int
) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in _ROOT_LINKS:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--perms", "1777", "--size", str(int(disk_bytes)), "--tmpfs", INNER_HOME]
    args += ["--perms", "1777", "--size", str(_SHM_BYTES), "--tmpfs", "/dev/shm"]
    # after the private /tmp: an interpreter or venv that lives under /tmp (a CI checkout) must be
    # bound on top of it, not hidden by it
    for path in _read_only_dirs(interpreter_dirs):
        args += ["--ro-bind", path, path]
    if child_program is not None:
        args += ["--ro-bind", str(child_program), INNER_CHILD]
    return args


def _read_only_dirs(extra: Sequence[str]) -> list[str]:
    """The interpreter's prefixes and ``extra``, minus those already under ``/usr`` or another."""
    wanted = [sys.base_prefix, sys.base_exec_prefix, os.path.dirname(_interpreter()), *extra]
    kept: list[str] = []
    for path in sorted({os.path.abspath(p) for p in wanted if p and os.path.isdir(p)}):
        covered = [*kept, "/usr"]
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in covered):
            kept.append(path)
    return kept


@contextlib.contextmanager
def run_uid() -> Iterator[int]:
    """A uid (= gid) no other concurrent run of this process uses, for a root evaluator's
    candidate process; it needs no account."""
    with _lock:
        uid = _UID_BASE
        while uid in _uids_in_use:
            uid += 1
        _uids_in_use.add(uid)
    try:
        yield uid
    finally:
        with _lock:
            _uids_in_use.discard(uid)
