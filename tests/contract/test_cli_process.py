"""The suite's CLI runs are forked from a zygote that has imported torch (tests/support/zygote.py); a run
forked from it answers as a fresh `python -m facerec` does: the same output, errors and exit status, in
its own working directory and environment, and a Ctrl-C ends it as it ends a fresh one."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest

from support import SHARED
from support.cli import FRESH_VARIABLE, Forked, fresh, run_cli, start
from support.serve import Server

PHOTO = SHARED / "faces" / "test_images_aligned" / "angelina_jolie" / "1.png"


def both(*args, **kwargs) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    env = kwargs.pop("env", {})
    forked = run_cli(*args, env=env, **kwargs)
    new = run_cli(*args, env={**env, FRESH_VARIABLE: "1"}, **kwargs)
    return forked, new


def test_a_forked_run_answers_as_a_fresh_interpreter(seeded_weights, tmp_path, env):
    shutil.copy(PHOTO, tmp_path / "face.png")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    # relative paths: read from the run's working directory; TORCH_HOME from its environment
    args = ("embed", "face.png", "empty.jpg", "--detector", "none", "--weights", seeded_weights, "--json")
    forked, new = both(*args, cwd=tmp_path, env=env)
    assert forked.returncode == new.returncode == 1  # the empty file, named in one line
    assert forked.stdout == new.stdout and '"image": "face.png"' in forked.stdout
    assert forked.stderr == new.stderr == "empty.jpg: cannot decode image: empty file\n"


def test_usage_errors_and_unknown_commands_exit_as_a_fresh_interpreter(env):
    for args in (("no-such-command",), ("identify", "--top-k", "none")):
        forked, new = both(*args, env=env)
        assert forked.returncode == new.returncode == 2
        assert forked.stderr == new.stderr and forked.stdout == new.stdout == ""


def test_ctrl_c_ends_a_forked_server_as_a_fresh_one(seeded_weights, tmp_path, env):
    for extra in ({}, {FRESH_VARIABLE: "1"}):
        args = ("--gallery", tmp_path / "gallery", "--weights", seeded_weights)
        server = Server(*args, env={**env, **extra}, cwd=tmp_path)
        assert isinstance(server.process, Forked) == (not extra)
        assert server.stop() == 130, server.output


def test_a_run_whose_interpreter_differs_starts_fresh(tmp_path):
    assert fresh({"PYTHONPATH": str(tmp_path)}) and fresh({FRESH_VARIABLE: "1"})
    process = start("--version", env={"PYTHONPATH": str(tmp_path)}, stdout=subprocess.DEVNULL)
    assert isinstance(process, subprocess.Popen) and process.wait(60) == 0


def test_a_forked_run_killed_reports_the_signal(seeded_weights, tmp_path, env):
    args = ("--gallery", tmp_path / "gallery", "--weights", seeded_weights)
    killed = Server(*args, env=env, cwd=tmp_path)
    assert isinstance(killed.process, Forked) and killed.process.poll() is None
    killed.process.kill()
    assert killed.process.wait(60) == -signal.SIGKILL
    waited = Server(*args, env=env, cwd=tmp_path)
    with pytest.raises(subprocess.TimeoutExpired):
        waited.process.wait(0.01)
    waited.process.send_signal(signal.SIGTERM)
    assert waited.process.wait(60) == -signal.SIGTERM
