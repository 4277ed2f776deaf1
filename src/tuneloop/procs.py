"""Process trees for the long-running commands (`tuneloop serve`, `tuneloop dashboard`).

`bentoml serve` and `prefect server start` each start further processes (BentoML's arbiter and
workers, Prefect's uvicorn). Run through `run_tree`, the whole tree goes when the command does:
SIGTERM/SIGINT is forwarded to the server (which stops gracefully: the prediction log is
flushed), whatever is left after a grace period is killed, and processes orphaned on the way are
caught because this process is made their subreaper (Linux). The server also gets SIGTERM if this
process dies outright (PR_SET_PDEATHSIG). A busy port is one clear message before anything starts.

Workers call `exit_with_parent` so that a worker never outlives its server, even a server killed
with SIGKILL.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from tuneloop.errors import TuneloopError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36  # <linux/prctl.h>
STOP_GRACE_S = 30.0  # BentoML's graceful shutdown flushes the prediction log: seconds, not minutes


class PortInUse(TuneloopError):
    """The port a server should listen on is taken."""


class AllocatorMissing(TuneloopError):
    """`serve.allocator: jemalloc` where no jemalloc library can be found."""


JEMALLOC = "jemalloc"


def with_allocator(env: dict[str, str], allocator: str) -> dict[str, str]:
    """`env` for a server's process tree with the malloc `allocator` asks for (`serve.allocator`).

    `jemalloc` (or `auto` where it is installed) preloads libjemalloc into every process started with `env`.
    Measured (issue 9, 2 cores, the service's forward path fed random batches of 1-16 texts for 120 s):
    torch-int8 RSS +14.2% from second 24 to 120 with glibc (+5.3% with its arenas capped), +2.1% and
    ~170 MB lower with jemalloc, whose RSS goes down as well as up; glibc keeps the freed memory of
    torch's variable-size tensors fragmented. `auto` without jemalloc and `system` leave glibc's malloc
    (arenas capped by `cap_malloc_arenas`). Preloading must happen before the process starts, so a Bento
    served by `bentoml serve` directly needs `LD_PRELOAD=libjemalloc.so.2` set by whoever starts it.

    Raises:
        AllocatorMissing: `jemalloc` asked for but not found.
    """
    if allocator == "system" or not sys.platform.startswith("linux"):
        if allocator == "jemalloc":
            raise AllocatorMissing("serve.allocator: jemalloc preloads a library, which works on Linux only")
        return env
    from ctypes.util import find_library

    library = find_library(JEMALLOC)  # a soname such as libjemalloc.so.2, which ld.so finds as it finds any
    if library is None:
        if allocator == "jemalloc":
            raise AllocatorMissing(
                "serve.allocator is jemalloc but no jemalloc library is installed: install it (Debian/Ubuntu: "
                "apt install libjemalloc2) or set serve.allocator: auto (glibc's malloc where it is missing)."
            )
        return env
    preload = env.get("LD_PRELOAD", "").replace(":", " ").split()
    if library in preload:
        return env
    return {**env, "LD_PRELOAD": " ".join([library, *preload])}


def malloc_in_use() -> str:
    """`jemalloc` when this process has jemalloc loaded (preloaded by `with_allocator`), else `system`."""
    try:
        with open("/proc/self/maps") as maps:
            return JEMALLOC if any(JEMALLOC in line for line in maps) else "system"
    except OSError:
        return "system"


def require_free_port(host: str, port: int, what: str) -> None:
    """Raise `PortInUse` naming the port and the fix when something already listens on it.

    Bound with SO_REUSEADDR, as the servers bind, so a port in TIME_WAIT counts as free.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(
                f"port {port} on {host} is already in use, so {what} cannot start there: stop the process "
                f"listening on it (`lsof -i :{port}`) or pick another port with --port."
            ) from None


def _prctl(option: int, value: int) -> bool:
    """Linux prctl(2); False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _child_setup() -> None:
    """In the child before exec: its own process group, and SIGTERM when the parent dies."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_tree(
    cmd: Sequence[str], env: dict[str, str], name: str, is_worker: Callable[[list[str]], bool] | None = None
) -> int:
    """Run `cmd` as a server until it exits or this process gets SIGTERM/SIGINT; returns its exit code.

    On a signal the server gets SIGTERM and `STOP_GRACE_S` to stop; then every process still left in
    the tree is killed. A process for which `is_worker(cmdline)` holds that dies while the server runs
    is logged (its supervisor restarts it).
    """
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    child = subprocess.Popen(list(cmd), env=env, start_new_session=True, preexec_fn=_child_setup)
    stopping = threading.Event()

    def forward(signum: int, _: FrameType | None) -> None:
        if not stopping.is_set():
            log.warning("%s: %s received, stopping (up to %.0f s)", name, signal.Signals(signum).name, STOP_GRACE_S)
        stopping.set()
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = _supervise(child, name, stopping, is_worker)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        kill_tree(child)
    return code


def _supervise(
    child: subprocess.Popen[bytes], name: str, stopping: threading.Event, is_worker: Callable[[list[str]], bool] | None
) -> int:
    """Wait for `child`, logging workers that die under it; past the grace period after a stop, kill it."""
    workers: dict[int, str] = {}
    stop_deadline: float | None = None
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return child.wait(timeout=1.0)
        if stopping.is_set():
            stop_deadline = stop_deadline or time.monotonic() + STOP_GRACE_S
            if time.monotonic() > stop_deadline:
                log.error("%s did not stop within %.0f s of SIGTERM: killing it", name, STOP_GRACE_S)
                child.kill()
            continue
        if is_worker is not None:
            workers = _watch_workers(child.pid, workers, is_worker, name)


def _watch_workers(
    pid: int, known: dict[int, str], is_worker: Callable[[list[str]], bool], name: str
) -> dict[int, str]:
    """The worker processes under `pid` now; logs each one of `known` that is gone."""
    now = {p.pid: " ".join(cmd) for p, cmd in _descendants(pid) if is_worker(cmd)}
    for gone in known.keys() - now.keys():
        log.error("%s: worker process %d died (its supervisor starts another)", name, gone)
    return now


def _descendants(pid: int) -> list[tuple[Any, list[str]]]:
    """(process, command line) of every live descendant of `pid`."""
    import psutil

    found = []
    try:
        for proc in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found.append((proc, proc.cmdline()))
    except psutil.Error:
        pass
    return found


def kill_tree(child: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """Leave nothing of `child`'s tree running: SIGTERM to what is left (orphans included, which this
    process reaps as their subreaper), then SIGKILL after `grace_s`."""
    import psutil

    left = [p for p, _ in _descendants(os.getpid())]
    if child.poll() is None:
        left.append(psutil.Process(child.pid))
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(left, timeout=grace_s)
    for proc in alive:
        log.error("process %d did not stop on SIGTERM: killing it", proc.pid)
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=grace_s)


M_ARENA_MAX = -8  # <malloc.h>


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for threads started from now on; False where that is not glibc.

    glibc gives each thread that allocates its own arena (up to 8 per core), and torch's variable-size
    tensors, allocated from BentoML's inference threads, leave freed memory fragmented across them.
    Measured (bench/serve_soak.py, 70% load, a shared 2-core machine): worker RSS +22.5% from minute
    2 to 10 with glibc's default, +15.2% capped at 2 (+14% vs +4.4% from minute 2 to 5 in shorter
    runs). It slows the growth; it does not stop it (issue 9 asks <= 5%). Same as MALLOC_ARENA_MAX.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def exit_with_parent(interval_s: float = 1.0) -> threading.Thread:
    """In a server or training worker: stop gracefully (SIGTERM to itself) when the process that started it
    is gone.

    A worker whose arbiter (or torchrun agent) was killed (SIGKILL, OOM) is reparented; it would go on
    serving with no supervisor and hold the port, or go on training and race a resumed run for its
    checkpoints. Checked every `interval_s` on a daemon thread.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        log.error("worker %d: its parent process %d (server or launcher) is gone; stopping", os.getpid(), parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STOP_GRACE_S)
        os._exit(1)  # the graceful stop hung: leave anyway

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread
