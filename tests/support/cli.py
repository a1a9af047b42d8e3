"""The CLI as a user runs it: `python -m facerec` in a real process of its own.

`start` gives a Popen-like process. It is forked from this worker's zygote (tests/support/zygote.py: a
Python that has imported torch and facerec once, which saves the suite two thirds of each run's start-up),
or started fresh with `sys.executable -m facerec` when the run's interpreter would differ (another
PYTHONPATH or PYTHON* variable) or FACEREC_TEST_FRESH=1 is set.
tests/contract/test_cli_process.py checks that both give the same answers.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

ZYGOTE = Path(__file__).with_name("zygote.py")
FRESH_VARIABLE = "FACEREC_TEST_FRESH"


class Forked:
    """A `python -m facerec` process forked by the zygote; poll/wait/send_signal/kill as subprocess.Popen."""

    def __init__(self, path: str, args: list[str], env: dict[str, str], cwd: str, fds: list[int]) -> None:
        self.args = args
        self.log = os.path.join(os.path.dirname(path), "zygote.log")
        self.returncode: int | None = None
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.conn.connect(path)
        request = json.dumps({"args": args, "env": env, "cwd": cwd}).encode()
        socket.send_fds(self.conn, [request], fds)
        self.pid: int = self._receive(None)["pid"]

    def _receive(self, timeout: float | None) -> dict:
        self.conn.settimeout(timeout)
        message = self.conn.recv(4096)
        if not message:
            raise RuntimeError(f"the zygote has gone (its log: {self.log})")
        return json.loads(message)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = self._receive(0)["status"]
            except (BlockingIOError, TimeoutError):
                return None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self.returncode = self._receive(timeout)["status"]
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """This worker's zygote, started on first use and ended with the worker."""

    lock = threading.Lock()
    path: str | None = None

    @classmethod
    def socket_path(cls) -> str:
        with cls.lock:
            if cls.path is None:
                cls.path = cls._start()
            return cls.path

    @classmethod
    def _start(cls) -> str:
        folder = tempfile.mkdtemp(prefix="facerec-zygote-")
        path = os.path.join(folder, "socket")
        log = open(os.path.join(folder, "zygote.log"), "w")  # noqa: SIM115 - the zygote writes it all along
        process = subprocess.Popen(
            [sys.executable, str(ZYGOTE), path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
        )
        if process.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the zygote did not start: {Path(log.name).read_text()}")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        atexit.register(process.stdin.close)  # its stdin closing ends it (atexit runs this first)
        return path


def fresh(env: dict[str, str]) -> bool:
    """Whether the run needs a new interpreter: one read at start-up differs from this one's."""
    if env.get(FRESH_VARIABLE) == "1":
        return True
    names = {name for name in {*env, *os.environ} if name.startswith("PYTHON")}
    return any(env.get(name) != os.environ.get(name) for name in names)


def start(
    *args: object,
    cwd: Path | None = None,
    env: dict | None = None,
    stdin: int | IO | None = subprocess.DEVNULL,
    stdout: int | IO | None = None,
    stderr: int | IO | None = None,
) -> subprocess.Popen | Forked:
    """`python -m facerec ARGS` with os.environ updated by `env`; the streams as subprocess.Popen's
    (a file, a descriptor, DEVNULL, or None for this process's own)."""
    full_env = {**os.environ, **(env or {})}
    words = [str(arg) for arg in args]
    if fresh(full_env):
        return subprocess.Popen(
            [sys.executable, "-m", "facerec", *words],
            cwd=cwd, env=full_env, stdin=stdin, stdout=stdout, stderr=stderr,
        )  # fmt: skip
    opened = [_descriptor(stream, default) for stream, default in ((stdin, 0), (stdout, 1), (stderr, 2))]
    try:
        directory = os.path.abspath(cwd if cwd is not None else os.getcwd())
        return Forked(Zygote.socket_path(), words, full_env, directory, [fd for fd, _ in opened])
    finally:
        for fd, mine in opened:
            if mine:
                os.close(fd)


def _descriptor(stream: int | IO | None, default: int) -> tuple[int, bool]:
    """A descriptor for the stream, and whether it was opened here (and is closed once sent)."""
    if stream is None:
        return default, False
    if stream == subprocess.DEVNULL:
        return os.open(os.devnull, os.O_RDWR), True
    if isinstance(stream, int):
        return stream, False
    return stream.fileno(), False


def run_cli(
    *args: object, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `python -m facerec ARGS` to its end, its output captured (as subprocess.run does)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = start(*args, cwd=cwd, env=env, stdout=out, stderr=err)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(["facerec", *map(str, args)], code, _text(out), _text(err))


def _text(stream: IO[bytes]) -> str:
    """The output as text=True reads it: UTF-8, universal newlines."""
    return stream.read().decode().replace("\r\n", "\n").replace("\r", "\n")
