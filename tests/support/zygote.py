"""A Python that has imported torch and facerec once, and forks a real `python -m facerec` process per run.

Why: importing torch costs 2-3 s of CPU, and the suite runs the CLI some three hundred times; on a 2-core
machine that import alone was a third of the suite's time. Each run is still a process of its own, with
its own arguments, environment, working directory, stdin/stdout/stderr, signals and exit status; it runs
facerec's `__main__` through runpy as `python -m facerec` does. What it shares with the others is only
the modules already imported (no model, gallery or registry is built before the fork), so a run that
needs a different interpreter (another PYTHONPATH or any other PYTHON* variable, read at start-up) is
started fresh instead (tests/support/cli.py decides), and FACEREC_TEST_FRESH=1 starts every run fresh.

Protocol, over a Unix SOCK_SEQPACKET socket: the client sends one JSON message {args, env, cwd} with the
three file descriptors for stdin, stdout and stderr; the zygote answers {"pid": N}, then {"status": S}
(the exit code, negative for a signal, as subprocess reports it) when that process has ended. The zygote
exits when its stdin closes, which is when the pytest worker that started it has gone.

Run as `python zygote.py SOCKET`: it prints "ready" once it listens.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import traceback

# What every facerec command imports at its top (and the drivers of the stores under test): the shared
# part of each run. Nothing here builds a model or reads the plugin registry.
PRELOAD = ("torch", "numpy", "PIL.Image", "facerec.api", "facerec.pipeline.engine", "facerec.gallery.stores")
LIMIT = 1 << 20  # the largest request: arguments and environment of one run


def preload() -> None:
    from facerec.cli import BUILTIN_COMMANDS  # every built-in command's module, not yet added to the CLI

    for name in (*PRELOAD, *BUILTIN_COMMANDS.values()):
        importlib.import_module(name)


def run_child(request: dict, fds: list[int], closing: list[socket.socket]) -> None:
    """In the forked process: become `python -m facerec ARGS` in the request's cwd and environment."""
    for sock in closing:
        sock.close()
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = os.getcwd()  # `python -m` puts the working directory first
    sys.argv = ["-m", *request["args"]]
    code: int = 0
    try:
        runpy.run_module("facerec", run_name="__main__", alter_sys=True)
    except SystemExit as done:
        code = exit_code(done.code)
    except KeyboardInterrupt:
        finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as CPython ends on an uncaught Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        code = 1
    finish()
    os._exit(code)


def exit_code(code: object) -> int:
    """What CPython exits with for `raise SystemExit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def finish() -> None:
    """What an interpreter does on its way out: the atexit functions, then the buffers."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()


def send(conn: socket.socket, message: dict) -> None:
    with contextlib.suppress(OSError):  # the client has gone; its process still runs to its end
        conn.send(json.dumps(message).encode())


def serve(path: str) -> None:
    preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    children: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [], 0.05)
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            return  # the pytest worker has gone
        if listener in readable:
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, LIMIT, 3)
            pid = os.fork()
            if pid == 0:
                run_child(json.loads(message), fds, [listener, conn, *children.values()])
            for fd in fds:
                os.close(fd)
            send(conn, {"pid": pid})
            children[pid] = conn
        reap(children)


def reap(children: dict[int, socket.socket]) -> None:
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = children.pop(pid)
        send(conn, {"status": os.waitstatus_to_exitcode(status)})
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
