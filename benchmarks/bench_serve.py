"""Serving speed: identify requests over loopback HTTP at 1, 4 and 16 concurrent clients, `facerec serve`
with dynamic batching (of detection and of embedding) on and off, against the server a user would write
first; and the server's memory over a long run.

Every server is a real process listening on 127.0.0.1 and every request a real multipart upload from
a client thread (requests, one session per client); nothing leaves the machine. The gallery is the
demo's train people, indexed by `facerec index`; the query photos are ../shared's one- and many-face
photos (knn/test, test_images), scaled to fit `--size` pixels, sent in turn. All sides run
Inception-ResNet-v1 under the same seeded weights (../shared/tools/seeded_weights.py, salt 0) and
MTCNN with facenet-pytorch's defaults. With `--detector none` the gallery and the queries are the
aligned 160x160 faces of ../shared instead, as a client that crops faces itself sends them: no MTCNN,
the backbone is the work, and batching shows what it does on a CPU.

- `facerec serve`, batching on: the default (`--max-batch 32 --max-detect-batch 16 --batch-wait-ms 5`):
  the photos of concurrent requests detected in one detector call (MTCNN's R-Net and O-Net over all
  their candidates at once), their faces embedded in one backbone call;
- `facerec serve`, batching off: `--max-batch 1 --max-detect-batch 1`, each photo detected on a CPU
  thread of its own (two side by side on two cores) and its faces embedded in a backbone call of
  their own;
- the baseline: FastAPI with facenet-pytorch's `MTCNN(keep_all=True)` and `InceptionResnetV1` in an
  `async def` handler that detects, crops, embeds and compares with the gallery's vectors (a
  `torch.cdist`), one request at a time: the handler of the tutorials, run by uvicorn.

The three servers run side by side, idle but for the one measured. Each cell sends `--requests`
requests (at least 4 per client; at most `--time-limit` seconds) after a wait for idle CPUs; the
servers take turns over `--rounds` rounds and each keeps its fastest. A cell reports requests per
second, latency percentiles (p99 of few samples is close to their maximum), the server's CPU time per
request (steadier than wall time on a shared machine) and how many cores other processes kept busy
meanwhile. The table ends with the CPU's model and flags. Then `--soak` requests (16 clients) go to the batching server, whose
resident memory (VmRSS) is read before and after each quarter of them.

    .venv/bin/pip install --no-deps facenet-pytorch==2.6.0   # the baseline's models, for benchmarks only
    .venv/bin/python benchmarks/bench_serve.py [--size 640] [--requests 64] [--rounds 2] [--soak 2000]
    .venv/bin/python benchmarks/bench_serve.py --detector none --soak 0
"""

from __future__ import annotations

import argparse
import io
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench_embed import busy_cpu_seconds, cpu_line, ensure_peer, mtcnn_home, wait_for_idle
from fastapi import FastAPI, UploadFile  # at module level: the handler's annotations are read from here

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FACES = SHARED / "faces"
QUERIES = [*sorted((FACES / "knn" / "test").glob("*.jpg")), *sorted((FACES / "test_images").glob("*/1.jpg"))]
ALIGNED = sorted((FACES / "test_images_aligned").glob("*/1.png"))
ADDRESS = re.compile(r"^(?:facerec serve|baseline): (http://\S+/)")
LEVELS = (1, 4, 16)
SOAK_CLIENTS = 16
WARM_UP = 8


# The baseline server, run as `bench_serve.py --baseline PEOPLE WEIGHTS`.


def baseline_app(people: Path, weights: Path, detector: str):
    """FastAPI + facenet-pytorch, as its README and a first FastAPI tutorial combine them."""
    import numpy as np
    import torch
    from facenet_pytorch import MTCNN, InceptionResnetV1
    from PIL import Image

    mtcnn = MTCNN(keep_all=True)
    resnet = InceptionResnetV1().eval()
    state = torch.load(weights, weights_only=True)
    resnet.load_state_dict({k: v for k, v in state.items() if not k.startswith("logits.")})

    def faces_of(picture: Image.Image):
        """Boxes, scores and the network's input: MTCNN's, or (`none`) the whole photo as the face."""
        if detector == "none":
            pixels = torch.as_tensor(np.asarray(picture.resize((160, 160)), dtype=np.float32))
            return (
                [[0.0, 0.0, *map(float, picture.size)]],
                [None],
                ((pixels - 127.5) / 128).permute(2, 0, 1)[None],
            )
        boxes, scores = mtcnn.detect(picture)
        if boxes is None:
            return [], [], None
        return boxes.tolist(), scores.tolist(), mtcnn.extract(picture, boxes, None)

    names, vectors = [], []
    for path in sorted(people.glob("*/*")):
        faces = faces_of(Image.open(path).convert("RGB"))[2]
        if faces is not None:
            with torch.no_grad():
                vectors.append(resnet(faces[:1])[0])
            names.append(path.parent.name)
    gallery = torch.stack(vectors)
    app = FastAPI()

    @app.post("/v1/identify")
    async def identify(image: UploadFile):
        picture = Image.open(io.BytesIO(await image.read())).convert("RGB")
        boxes, scores, faces = faces_of(picture)
        if faces is None:
            return {"image": image.filename, "faces": []}
        with torch.no_grad():
            distances = torch.cdist(resnet(faces), gallery)
        nearest = distances.argmin(dim=1)
        return {
            "image": image.filename,
            "faces": [
                {"box": box, "score": score, "identity": names[i], "distance": float(d[i])}
                for box, score, i, d in zip(boxes, scores, nearest.tolist(), distances, strict=True)
            ],
        }

    return app


def serve_baseline(people: Path, weights: Path, detector: str) -> None:
    import uvicorn

    app = baseline_app(people, weights, detector)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    print(f"baseline: http://127.0.0.1:{listener.getsockname()[1]}/", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])


# The parent: servers, clients, tables.


class Server:
    """A server process started by `command`; `url` from the first line naming it."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = None
        for line in self.process.stderr:
            found = ADDRESS.match(line)
            if found:
                self.url = found.group(1)
                break
        if self.url is None:
            self.process.kill()
            self.process.wait()
            raise SystemExit(f"{' '.join(command)} did not start")
        threading.Thread(target=self.process.stderr.read, daemon=True).start()  # keep the pipe flowing

    def status(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


@dataclass
class Cell:
    requests: int
    wall_s: float
    latencies: list[float]
    failures: int
    cpu_s: float  # the server's
    other_cores: float  # cores kept busy meanwhile by processes other than the server and the clients

    @property
    def rate(self) -> float:
        return self.requests / self.wall_s

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] * 1000


def load(server: Server, photos: list[tuple[str, bytes]], clients: int, count: int, limit_s: float) -> Cell:
    """`count` identify requests from `clients` threads (or as many as fit in `limit_s`)."""
    import requests

    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + limit_s

    def client() -> None:
        nonlocal issued, failures
        session = requests.Session()
        while True:
            with lock:
                if issued >= count or time.monotonic() > deadline:
                    return
                name, data = photos[issued % len(photos)]
                issued += 1
            start = time.perf_counter()
            answer = session.post(server.url + "v1/identify", files={"image": (name, data)}, timeout=300)
            took = time.perf_counter() - start
            with lock:
                latencies.append(took)
                failures += answer.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    busy, server_cpu, own = busy_cpu_seconds(), server.cpu_s(), own_cpu_seconds()
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    served = server.cpu_s() - server_cpu
    others = busy_cpu_seconds() - busy - served - (own_cpu_seconds() - own)
    return Cell(len(latencies), wall, latencies, failures, served, max(others, 0.0) / wall)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prepare(
    temp: Path, size: int, detector: str
) -> tuple[Path, Path, Path, dict[str, str], list[tuple[str, bytes]]]:
    """Seeded weights, a weights cache with MTCNN, the people indexed, the query photos in memory.

    With the `none` detector, people and queries are the aligned 160x160 faces of ../shared (the photo
    is the face), as a client that crops faces itself sends them.
    """
    from PIL import Image, ImageOps

    def scaled(source: Path) -> bytes:
        with Image.open(source) as original:
            image = ImageOps.exif_transpose(original).convert("RGB")
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        return out.getvalue()

    weights = temp / "seeded.pt"
    subprocess.run(
        [sys.executable, SHARED / "tools" / "seeded_weights.py", SHARED / "reference" / "inception_resnet_v1.shapes.json", weights, "--salt", "0"],
        check=True,
    )  # fmt: skip
    env = {**os.environ, "TORCH_HOME": str(mtcnn_home(temp)), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    people = temp / "people"
    sources = ALIGNED if detector == "none" else sorted((FACES / "knn" / "train").glob("*/*"))
    queries = ALIGNED if detector == "none" else QUERIES
    read = Path.read_bytes if detector == "none" else scaled
    for source in sources:
        (people / source.parent.name).mkdir(parents=True, exist_ok=True)
        (people / source.parent.name / source.name).write_bytes(read(source))
    gallery = temp / "gallery"
    index = [sys.executable, "-m", "facerec", "index", people, "--gallery", gallery, "--weights", weights]
    subprocess.run([*index, "--detector", detector], env=env, check=True, capture_output=True)
    photos = [(f"{source.parent.name}-{source.name}", read(source)) for source in queries]
    return people, gallery, weights, env, photos


BATCHING_ON = "facerec serve, batching on"
BATCHING_OFF = "facerec serve, batching off (--max-batch 1 --max-detect-batch 1)"
BASELINE = "baseline: FastAPI + facenet-pytorch, one at a time"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640, help="Longest side of the photos sent, pixels.")
    parser.add_argument(
        "--detector", choices=("mtcnn", "none"), default="mtcnn", help="none: aligned faces are sent."
    )
    parser.add_argument("--requests", type=int, default=64, help="Requests per cell (at least 4 a client).")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds of every cell; the fastest counts.")
    parser.add_argument("--time-limit", type=float, default=120, help="Seconds at most per cell.")
    parser.add_argument("--wait", type=float, default=30, help="Seconds to wait for idle CPUs per cell.")
    parser.add_argument("--soak", type=int, default=2000, help="Requests of the memory run (0: none).")
    parser.add_argument("--baseline", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        serve_baseline(Path(args.baseline[0]), Path(args.baseline[1]), args.baseline[2])
        return

    ensure_peer()  # the baseline's facenet-pytorch
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as temp:
        people, gallery, weights, env, photos = prepare(Path(temp), args.size, args.detector)
        serve = [
            sys.executable,
            "-m",
            "facerec",
            "serve",
            "--port",
            "0",
            "--gallery",
            str(gallery),
            "--max-queue",
            "256",
        ]
        sides = {
            BATCHING_ON: serve,
            BATCHING_OFF: [*serve, "--max-batch", "1", "--max-detect-batch", "1"],
            BASELINE: [sys.executable, __file__, "--baseline", str(people), str(weights), args.detector],
        }  # fmt: skip
        servers: dict[str, Server] = {}
        try:
            for side, command in sides.items():  # one at a time: those started are stopped if one fails
                servers[side] = Server(command, env)
            cells = measure(servers, photos, args)
            memory = soak(servers[BATCHING_ON], photos, args.soak) if args.soak else None
        finally:
            for server in servers.values():
                server.stop()
    sent = (
        "aligned 160x160 faces, detector none"
        if args.detector == "none"
        else f"photos scaled to fit {args.size} px"
    )
    print(f"{len(photos)} {sent}, in turn; {os.cpu_count()} cores; loopback HTTP\n")
    print(speed_table(cells, list(sides)))
    print(cpu_line())
    if memory is not None:
        print()
        print(memory)


def measure(servers: dict[str, Server], photos: list[tuple[str, bytes]], args) -> dict[tuple[str, int], Cell]:
    """The fastest of `args.rounds` rounds of every (server, clients) cell; the servers take turns within
    a round, in another order each round, so that a change in the machine's load hits them alike."""
    for server in servers.values():
        load(server, photos, 1, WARM_UP, args.time_limit)
    best: dict[tuple[str, int], Cell] = {}
    for clients in LEVELS:
        count = max(args.requests, 4 * clients)
        for round_number in range(args.rounds):
            order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
            for side in order:
                wait_for_idle(args.wait)
                cell = load(servers[side], photos, clients, count, args.time_limit)
                if (side, clients) not in best or cell.rate > best[side, clients].rate:
                    best[side, clients] = cell
    return best


def soak(server: Server, photos: list[tuple[str, bytes]], count: int, steps: int = 4) -> str:
    """Resident memory before `count` more requests and after each quarter of them."""
    rows = [f"| before, after the speed runs | 0 | {server.status('VmRSS') / 1024:.0f} | |"]
    sent = failed = 0
    first = server.status("VmRSS")
    for step in range(1, steps + 1):
        cell = load(server, photos, SOAK_CLIENTS, count * step // steps - sent, float("inf"))
        sent, failed = sent + cell.requests, failed + cell.failures
        rss = server.status("VmRSS")
        rows.append(
            f"| after {sent} more ({failed} failed) | {sent} | {rss / 1024:.0f} | {(rss - first) / 1024:+.0f} |"
        )
    return "\n".join(
        [
            f"| resident memory of `facerec serve` (batching on, {SOAK_CLIENTS} clients) | requests | MiB | growth |",
            "| --- | ---: | ---: | ---: |",
            *rows,
        ]
    )


def speed_table(cells: dict[tuple[str, int], Cell], sides: list[str]) -> str:
    lines = [
        "| server | clients | requests | failed | req/s | vs baseline | p50 ms | p99 ms | server CPU ms/req | other cores busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for side in sides:
        for clients in LEVELS:
            cell = cells[side, clients]
            lines.append(
                f"| {side} | {clients} | {cell.requests} | {cell.failures} | {cell.rate:.2f} "
                f"| {cell.rate / cells[BASELINE, clients].rate:.2f}x | {cell.percentile(0.5):.0f} "
                f"| {cell.percentile(0.99):.0f} | {1000 * cell.cpu_s / cell.requests:.0f} | {cell.other_cores:.1f} |"
            )
    on, off = cells[BATCHING_ON, 16], cells[BATCHING_OFF, 16]
    lines.append(
        f"\nbatching on against off at 16 clients: {on.rate / off.rate:.2f}x the requests per second, "
        f"{off.cpu_s / off.requests / (on.cpu_s / on.requests):.2f}x less server CPU per request"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
