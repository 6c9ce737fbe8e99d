"""A TVM RPC tracker and servers on this machine, as child processes: for the tests, the tuning
bench, and for trying ``--rpc-tracker`` on one machine before using several.

    with LocalCluster(servers=2, key="cpu", cores=[[0], [1]]) as cluster:
        compile(..., target=LlvmOptions(tune=64, tuning_db="db", rpc_tracker=cluster.tracker,
                                        rpc_key="cpu"))

The processes are TVM's own (``python -m tvm.exec.rpc_tracker`` / ``rpc_server``); each runs in
its own process group, so stopping one also stops the session processes it forked.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time

from compiler.errors import CompileError

from .tune import parse_tracker, servers_under_key

RPC_EXTRA_HINT = "pip install aot-compiler[rpc]"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalCluster:
    """A tracker on a free localhost port and ``servers`` RPC servers registered under ``key``;
    ``cores[i]`` (optional) pins server i to those cores with ``taskset`` and sizes its TVM
    thread pool to match."""

    def __init__(self, servers: int = 1, key: str = "local", cores: list[list[int]] | None = None,
                 start_timeout: float = 60.0):
        self.key = key
        self.start_timeout = start_timeout
        self.port = free_port()
        self.tracker = f"127.0.0.1:{self.port}"
        self._tracker_proc: subprocess.Popen | None = None
        self.servers: list[subprocess.Popen] = []
        self._wanted = servers
        self._cores = cores or [None] * servers

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if importlib.util.find_spec("tornado") is None:  # TVM's tracker needs it
            raise CompileError(f"the RPC tracker needs tornado: {RPC_EXTRA_HINT}")
        self._tracker_proc = _spawn([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                     "--port", str(self.port), "--port-end", str(self.port + 1), "--silent"])
        self._wait(lambda: _tracker_answers(self.tracker), "the tracker to answer")
        for cores in self._cores[:self._wanted]:
            self.add_server(cores)

    def add_server(self, cores: list[int] | None = None) -> subprocess.Popen:
        """Start one more server and wait until the tracker lists it."""
        before = len(self.servers)
        port = free_port()
        command = [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", self.tracker, "--key", self.key,
                   "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1), "--silent"]
        env = dict(os.environ)
        if cores:
            command = ["taskset", "-c", ",".join(map(str, cores)), *command]
            env["TVM_NUM_THREADS"] = str(len(cores))
        self.servers.append(_spawn(command, env))
        self._wait(lambda: servers_under_key(*parse_tracker(self.tracker), self.key) > before,
                   f"RPC server {before + 1} to register")
        return self.servers[-1]

    def kill_server(self, index: int) -> None:
        _kill(self.servers[index])

    def stop(self) -> None:
        for proc in self.servers:
            _kill(proc)
        if self._tracker_proc is not None:
            _kill(self._tracker_proc)

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            dead = [p for p in [self._tracker_proc, *self.servers] if p is not None and p.poll() is not None]
            if dead:
                raise RuntimeError(f"a local RPC process exited ({dead[0].args}) while waiting for {what}")
            try:
                if ready():
                    return
            except (OSError, CompileError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {self.start_timeout:.0f} s waiting for {what}")


def _tracker_answers(address: str) -> bool:
    from .tune import check_tracker

    check_tracker(address)
    return True


def _spawn(command: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process's whole group (a server forks one process per session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


__all__ = ["LocalCluster", "RPC_EXTRA_HINT", "free_port"]
