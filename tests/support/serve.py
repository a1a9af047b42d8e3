"""A real `facerec serve` process for the tests: started on a free port of 127.0.0.1, its output kept,
stopped or killed. Nothing stands in for the server: clients talk HTTP to the process a user runs."""

from __future__ import annotations

import math
import os
import re
import signal
import threading
from pathlib import Path

import requests

from support.cli import start

STARTUP_S = 120  # loading torch and the models on a busy 2-core machine
ADDRESS = re.compile(r"^facerec serve: (http://\S+/) ")


class Server:
    """`python -m facerec serve ARGS --port 0` with `env`, in `cwd`; `url` is where it listens."""

    def __init__(self, *args: object, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        read, write = os.pipe()
        self.process = start("serve", "--port", "0", *args, env=env, cwd=cwd, stdout=write, stderr=write)
        os.close(write)
        self.stream = os.fdopen(read, "r")
        self.lines: list[str] = []
        self.url: str | None = None
        self._started = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._started.wait(STARTUP_S) or self.url is None:
            self.kill()
            raise AssertionError("facerec serve did not start:\n" + self.output)

    def _drain(self) -> None:
        """Keep every line the server prints; note its address from the first line that gives it."""
        with self.stream:
            for line in self.stream:
                self.lines.append(line)
                found = ADDRESS.match(line)
                if found and self.url is None:
                    self.url = found.group(1)
                    self._started.set()
        self._started.set()  # the output ended: the server is gone

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """Interrupt (as Ctrl-C does) and wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


def post_image(url: str, path: Path, field: str = "image", **options) -> requests.Response:
    """POST the file at `path` as the multipart field `field`, named by its file name."""
    with open(path, "rb") as image:
        return requests.post(url, files={field: (Path(path).name, image)}, timeout=120, **options)


def holds_lock(pid: int, file: Path) -> bool:
    """Whether process `pid` holds a flock on `file` (Linux's /proc/locks)."""
    inode = str(os.stat(file).st_ino)
    return any(
        fields[1] == "FLOCK" and fields[4] == str(pid) and fields[5].split(":")[-1] == inode
        for fields in (line.split() for line in Path("/proc/locks").read_text().splitlines())
        if len(fields) > 5
    )


def assert_same_json(got, expected, where: str = "", tolerance: float = 1e-5) -> None:
    """Equal JSON, floats within `tolerance` or a millionth of their size: a batch's make-up, and the
    number of threads torch runs an operation on (the server's detection workers run on fewer than the
    CLI), move the last bits of a float32 (and a float printed to 4 decimals by one unit of the last:
    tolerance 1e-4)."""
    if isinstance(expected, float) and isinstance(got, float):
        assert math.isclose(got, expected, rel_tol=1e-6, abs_tol=tolerance), f"{where}: {got} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), f"{where}: {got} != {expected}"
        for key in expected:
            assert_same_json(got[key], expected[key], f"{where}.{key}", tolerance)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), f"{where}: {got} != {expected}"
        for number, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same_json(a, b, f"{where}[{number}]", tolerance)
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"
