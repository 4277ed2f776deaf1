"""Process trees of `tuneloop serve` / `tuneloop dashboard` (tuneloop.procs), with a stand-in server:
SIGTERM/SIGINT stop the whole tree, orphans included; a dying worker is logged; a worker exits when
its server is killed outright; a busy port is one message, not a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tuneloop import procs
from tuneloop.procs import AllocatorMissing, PortInUse, require_free_port, with_allocator

# A stand-in for `bentoml serve`: starts one "worker" and, on SIGTERM, either stops it first
# (graceful) or just exits (leaving the worker orphaned, as BentoML's arbiter did on a killed group).
FAKE_SERVER = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    mode, pids = sys.argv[1], sys.argv[2]
    worker = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.1)", "--worker-id", "1"])
    def term(*_):
        if mode == "graceful":
            worker.terminate(); worker.wait()
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    open(pids, "w").write(f"{worker.pid}")
    while True:
        time.sleep(0.1)
    """
)
RUNNER = (
    "import os, sys, logging; logging.basicConfig(level=logging.INFO); from tuneloop.procs import run_tree; "
    "sys.exit(run_tree(sys.argv[1:], dict(os.environ), 'fake', lambda cmd: '--worker-id' in cmd))"
)


def start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, int, int]:
    """(runner, server pid, worker pid) once the stand-in server is up."""
    script, pids = tmp_path / "server.py", tmp_path / f"pids-{time.time_ns()}"
    script.write_text(FAKE_SERVER)
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, sys.executable, str(script), mode, str(pids)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 30
    while not (pids.exists() and pids.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    worker = int(pids.read_text())
    server = psutil.Process(worker).ppid()
    return runner, server, worker


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(("mode", "sig"), [("graceful", signal.SIGTERM), ("orphaning", signal.SIGINT)])
def test_a_signal_stops_the_whole_tree(tmp_path, mode, sig):
    runner, server, worker = start(tmp_path, mode)
    assert not gone(server) and not gone(worker)
    runner.send_signal(sig)
    assert runner.wait(20) == 0
    assert gone(server) and gone(worker), runner.stderr.read()
    assert f"{sig.name} received, stopping" in runner.stderr.read()


@pytest.mark.system
def test_a_dying_worker_is_logged(tmp_path):
    runner, _, worker = start(tmp_path, "graceful")
    time.sleep(1.5)  # the supervisor has seen the worker
    os.kill(worker, signal.SIGKILL)
    time.sleep(2.5)
    runner.send_signal(signal.SIGTERM)
    runner.wait(20)
    assert f"worker process {worker} died" in runner.stderr.read()


@pytest.mark.system
def test_a_worker_exits_when_its_server_is_killed_outright(tmp_path):
    code = (
        "import subprocess, sys, time; "
        "w = subprocess.Popen([sys.executable, '-c', 'from tuneloop.procs import exit_with_parent; import time; "
        "exit_with_parent(0.1); time.sleep(60)']); print(w.pid, flush=True); time.sleep(60)"
    )
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    worker = int(server.stdout.readline())
    time.sleep(1.0)  # the worker imported tuneloop and started its watch
    server.kill()
    server.wait(10)
    deadline = time.time() + 10
    while not gone(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert gone(worker)


def test_a_busy_port_is_one_clear_message():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is already in use.*--port"):
            require_free_port("127.0.0.1", port, "tuneloop serve")
        for command in ("serve", "dashboard"):
            result = subprocess.run(
                [sys.executable, "-m", "tuneloop", command, "--port", str(port)], capture_output=True, text=True
            )
            assert result.returncode == 1 and "already in use" in result.stderr, result.stderr
            assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    require_free_port("127.0.0.1", port, "tuneloop serve")  # free again: no error


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_arenas_can_be_capped():
    from tuneloop.procs import cap_malloc_arenas

    assert cap_malloc_arenas(2) is True


def test_allocator_preloads_jemalloc_once_and_keeps_other_preloads(monkeypatch):
    monkeypatch.setattr("ctypes.util.find_library", lambda name: "libjemalloc.so.2" if name == "jemalloc" else None)
    env = {"PATH": "/bin", "LD_PRELOAD": "libother.so"}
    assert with_allocator(env, "system") == env
    preloaded = with_allocator(env, "auto")
    assert preloaded["LD_PRELOAD"] == "libjemalloc.so.2 libother.so" and env["LD_PRELOAD"] == "libother.so"
    assert with_allocator(preloaded, "jemalloc") == preloaded  # not twice


def test_allocator_without_jemalloc_falls_back_or_says_how_to_install(monkeypatch):
    monkeypatch.setattr("ctypes.util.find_library", lambda name: None)
    assert with_allocator({"PATH": "/bin"}, "auto") == {"PATH": "/bin"}
    with pytest.raises(AllocatorMissing, match=r"apt install libjemalloc2.*serve.allocator: auto"):
        with_allocator({"PATH": "/bin"}, "jemalloc")


def test_a_process_started_with_the_allocator_runs_on_jemalloc():
    env = with_allocator(dict(os.environ), "auto")
    if "LD_PRELOAD" not in env or "jemalloc" not in env["LD_PRELOAD"]:
        pytest.skip("no jemalloc library on this machine (apt install libjemalloc2)")
    code = "from tuneloop.procs import malloc_in_use; print(malloc_in_use())"
    used = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert used.stdout.strip() == "jemalloc"
    assert procs.malloc_in_use() == ("jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "system")
