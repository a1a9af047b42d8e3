"""A real Milvus standalone server for the tests, from the `milvus` package (2.3.x, "embedded Milvus").

The package ships the server binary (compressed) and a config template; `MilvusServer` unpacks the binary
into its data folder, writes the config and runs `milvus run standalone` as a child process (no
preexec_fn: nothing runs in the child before exec, which gRPC's threads in this process need). Its metadata
lives in an etcd embedded in that process and its segments on the local disk, all under the data folder.

Ports. The package picks each component's port by trying from Milvus's defaults upwards (19530, ...), but
its embedded etcd always takes 2379 and 2380, so two servers (two pytest-xdist workers, a benchmark beside
the tests) would collide. Here every port is one the kernel handed out, and etcd gets a config file of its
own (`etcd.config.path`) with its client and peer ports. Milvus listens on every interface, not only on
loopback (it has no setting for that), so it runs with authentication on (Milvus's own first user, root,
with its first password, as a fresh deployment has them): clients give `http://root:Milvus@HOST:PORT`.

`started` waits for the health endpoint and for a first gRPC call, and fails in one message with the end
of the server's log when the process exits or STARTUP_S pass: never a hang, never a silent skip.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STARTUP_S = 180.0  # about 10 s on two idle cores (6 of them unpacking the binary); a loaded machine is slower
POLL_S = 0.2
USER, PASSWORD = "root", "Milvus"  # what a new Milvus with authentication starts with
LOG_LINES = 15


class MilvusServerFailed(RuntimeError):
    """The server did not start; the message says why, with the end of its log."""


@dataclass(frozen=True)
class Running:
    """A started server: its URI with the user and password, its process id, its data folder."""

    uri: str
    pid: int
    data: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _with_etcd_config(template: str, folder: Path, client: int) -> str:
    """The config template with an `etcd.config.path` naming an etcd config on free ports."""
    peer = free_port()
    etcd = folder / "etcd.yaml"
    etcd.write_text(
        "name: default\n"
        f"listen-client-urls: http://127.0.0.1:{client}\n"
        f"advertise-client-urls: http://127.0.0.1:{client}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-cluster: default=http://127.0.0.1:{peer}\n"
    )
    text, found = re.subn(r"^etcd:\n", f"etcd:\n  config:\n    path: {etcd}\n", template, count=1, flags=re.M)
    if not found:
        raise MilvusServerFailed("the milvus package's config template has no etcd section")
    return text


@contextlib.contextmanager
def started(folder: Path) -> Iterator[Running]:
    """A Milvus server with its data, logs and binary under `folder`, for the `with` block; its `uri` has
    the user and password (http://root:Milvus@127.0.0.1:PORT, as `--gallery milvus:URI` takes it). Stopped
    (killed if need be) after."""
    from milvus import MilvusServer, MilvusServerConfig

    folder.mkdir(parents=True, exist_ok=True)
    etcd = free_port()
    config = MilvusServerConfig(data_dir=str(folder / "data"))
    config.template_text = _with_etcd_config(config.template_text, folder, etcd)
    ports = {key: free_port() for key in config.configurable_items if key.endswith("_port")}
    ports["etcd_port"] = etcd
    config.update(**ports)
    config.set("authorization_enabled", True)
    for component in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode"):
        config.set(f"{component}.ip", "127.0.0.1")  # what each component tells the others: loopback
    server = MilvusServer(config, wait_for_started=False)
    server.webservice_port = free_port()  # the health and metrics port (the package tries 9091 up)
    uri = f"http://{USER}:{PASSWORD}@127.0.0.1:{ports['proxy_port']}"
    try:
        server.start()
        _wait(server, uri, folder)
        yield Running(uri, server.server_proc.pid, folder / "data")
    finally:
        server.stop()
        shutil.rmtree(folder / "data" / "bin", ignore_errors=True)  # 250 MB, unpacked again by every start


def _wait(server, uri: str, folder: Path) -> None:
    """Until the server answers its health check and a gRPC call; MilvusServerFailed when it exits or
    STARTUP_S pass first."""
    from pymilvus import MilvusClient, MilvusException

    deadline = time.monotonic() + STARTUP_S
    health = f"http://127.0.0.1:{server.webservice_port}/healthz"
    healthy = False
    while time.monotonic() < deadline:
        status = server.server_proc.poll()
        if status is not None:
            raise MilvusServerFailed(f"the Milvus server exited with status {status}{_log_tail(folder)}")
        try:
            if not healthy:
                with urllib.request.urlopen(health, timeout=2) as answer:
                    healthy = b"OK" in answer.read()
            if healthy:
                client = MilvusClient(uri, timeout=5)
                client.list_collections()
                client.close()
                return
        except (OSError, urllib.error.URLError, MilvusException):
            pass
        time.sleep(POLL_S)
    raise MilvusServerFailed(
        f"the Milvus server did not answer at {uri} within {STARTUP_S:.0f} s{_log_tail(folder)}"
    )


def _log_tail(folder: Path) -> str:
    """Its log's errors (a panic's first line among them), else its last lines."""
    logs = sorted((folder / "data" / "logs").glob("milvus-std*.log"))
    lines = [line for log in logs for line in log.read_text("utf-8", "replace").splitlines()]
    errors = [line[:300] for line in lines if "[ERROR]" in line or line.startswith("panic:")]
    shown = "\n".join(errors[:LOG_LINES] or lines[-LOG_LINES:]) or "(no log written)"
    return f"; data and logs in {folder}; from its log:\n{shown}"
