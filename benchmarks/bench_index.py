"""Indexing speed: faces per second of a first index of a folder, and what re-indexing it costs.

The folder holds `--photos` pictures in `<person>/` folders, made from ../shared's one-person photos:
each source scaled to fit 800 pixels (a phone photo as people keep them), then at 100/85/70/55 %,
mirrored or not, saved at JPEG quality 92 or 80, so every file has its own bytes and one face. Both sides detect with MTCNN (facenet-pytorch's
defaults) and embed every face found with Inception-ResNet-v1 under the same seeded weights
(../shared/tools/seeded_weights.py, salt 0); timings are the whole process, as a user waits for it,
and the work alone (after imports), as the process itself measures it.

- facenet-pytorch: `MTCNN(keep_all=True)` then `InceptionResnetV1` on the crops, photo by photo, the loop
  of its examples; it keeps nothing, so a second run costs what the first did.
- facerec: `facerec.open_gallery(G).index(FOLDER)`, which is what `facerec index` runs: a first index, a
  second with nothing changed, a third after one photo was added; and `facerec index` itself on the
  unchanged folder. Then a first `facerec index` into new galleries in one process and spread over two
  with `torchrun --nproc-per-node 2`.

    .venv/bin/pip install --no-deps facenet-pytorch==2.6.0   # the peer, for this benchmark only
    .venv/bin/python benchmarks/bench_index.py [--photos 192]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import product
from pathlib import Path

from bench_embed import cpu_line, mtcnn_home

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FACES = SHARED / "faces"
SOURCES = [
    *sorted((FACES / "knn" / "train").glob("*/*.*")),
    *sorted((FACES / "test_images").glob("*/1.jpg")),
    *[FACES / "knn" / "test" / name for name in ("alex_lacamoire1.jpg", "johnsnow_test1.jpg", "obama1.jpg")],
]
LONGEST_SIDE = 800
VARIANTS = list(product((92, 80), (1.0, 0.85, 0.7, 0.55), (False, True)))  # JPEG quality, scale, mirrored


def make_folder(target: Path, photos: int) -> list[Path]:
    """`photos` distinct pictures under target/<person>/; returns them in order."""
    from PIL import Image, ImageOps

    made = []
    for number, ((quality, scale, mirror), source) in enumerate(product(VARIANTS, SOURCES)):
        if number == photos:
            break
        with Image.open(source) as original:
            image = ImageOps.exif_transpose(original).convert("RGB")
        image.thumbnail((LONGEST_SIDE, LONGEST_SIDE))
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        if mirror:
            image = ImageOps.mirror(image)
        person = source.parent.name if source.parent.name != "test" else source.stem.rstrip("0123456789")
        path = target / person / f"{source.stem}-{int(scale * 100)}{'-m' if mirror else ''}-q{quality}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=quality)
        made.append(path)
    return made


# The worker processes: each prints one JSON line with its own timing of the work.


def peer_worker(folder: Path, weights: Path) -> dict:
    import torch
    from facenet_pytorch import MTCNN, InceptionResnetV1
    from PIL import Image

    mtcnn = MTCNN(keep_all=True)
    network = InceptionResnetV1().eval()
    state = torch.load(weights, weights_only=True)
    network.load_state_dict({k: v for k, v in state.items() if not k.startswith("logits.")})
    start = time.perf_counter()
    faces = 0
    gallery = []
    for path in sorted(folder.glob("*/*.jpg")):
        crops = mtcnn(Image.open(path).convert("RGB"))
        if crops is None:
            continue
        with torch.no_grad():
            gallery.append((path.parent.name, network(crops)[0]))
        faces += 1
    return {"work_s": time.perf_counter() - start, "faces": faces, "embedded": faces}


def facerec_worker(folder: Path, gallery: Path, weights: Path) -> dict:
    import facerec.api

    start = time.perf_counter()
    report = facerec.api.open_gallery(gallery).index(folder, weights=weights)
    faces = report.embedded + report.reused + report.unchanged
    return {"work_s": time.perf_counter() - start, "faces": faces, "embedded": report.embedded}


# The parent.


def run(command: list[str], env: dict) -> dict:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    return {**result, "wall_s": wall, "load": load}


def worker(*args: str) -> list[str]:
    return [sys.executable, __file__, "--worker", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=192)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        side, *paths = args.worker
        work = peer_worker if side == "facenet-pytorch" else facerec_worker
        print(json.dumps(work(*map(Path, paths))))
        return

    with tempfile.TemporaryDirectory(prefix="bench-index-") as temp:
        temp = Path(temp)
        photos = make_folder(temp / "people", args.photos)
        weights = temp / "seeded.pt"
        subprocess.run(
            [
                sys.executable,
                SHARED / "tools" / "seeded_weights.py",
                SHARED / "reference" / "inception_resnet_v1.shapes.json",
                weights,
                "--salt",
                "0",
            ],
            check=True,
        )
        env = {**os.environ, "TORCH_HOME": str(mtcnn_home(temp)), "FACEREC_MIRROR": "http://127.0.0.1:9"}
        folder, gallery = str(temp / "people"), str(temp / "gallery")

        rows = [
            (
                "facenet-pytorch: MTCNN + InceptionResnetV1 loop",
                run(worker("facenet-pytorch", folder, str(weights)), env),
            )
        ]
        rows.append(("facerec index: first run", run(worker("facerec", folder, gallery, str(weights)), env)))
        rows.append(
            ("facerec index: nothing changed", run(worker("facerec", folder, gallery, str(weights)), env))
        )
        (temp / "people" / "new-person").mkdir()
        shutil.copyfile(SOURCES[-1], temp / "people" / "new-person" / "new.jpg")
        rows.append(
            ("facerec index: one photo added", run(worker("facerec", folder, gallery, str(weights)), env))
        )
        cli = [sys.executable, "-m", "facerec", "index", folder, "--gallery", gallery]
        rows.append(("`facerec index` CLI: nothing changed", run(cli, env)))
        rows += spread_rows(folder, temp, weights, env)
    print(table(rows, len(photos)))
    print(cpu_line())


def spread_rows(folder: str, temp: Path, weights: Path, env: dict) -> list[tuple[str, dict]]:
    """A first `facerec index` of the folder in one process (torch's threads, then one thread), then
    spread over two processes with torchrun (one thread each, torchrun's default: the cores are shared
    out, not oversubscribed). One process on one thread against two is the scaling a second machine
    gives; on one machine's cores, one process already uses them all."""
    args = ["-m", "facerec", "index", folder, "--weights", str(weights), "--gallery"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    one_thread = {**env, "OMP_NUM_THREADS": "1"}
    return [
        ("`facerec index` CLI, 1 process: first run", run([sys.executable, *args, str(temp / "g1")], env)),
        (
            "`facerec index` CLI, 1 process, 1 thread: first run",
            run([sys.executable, *args, str(temp / "g3")], one_thread),
        ),
        (
            "`torchrun --nproc-per-node 2 -m facerec index` (1 thread each): first run",
            run([*torchrun, *args, str(temp / "g2")], env),
        ),
    ]


def table(rows: list[tuple[str, dict]], photos: int) -> str:
    first = rows[1][1]
    lines = [
        f"{photos} photos; machine load average at each start in the last column",
        "| run | faces in gallery | whole process (s) | work (s) | faces embedded/s (work) | vs first facerec run (whole) | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows:
        faces, work, embedded = r.get("faces", ""), r.get("work_s"), r.get("embedded")
        rate = f"{embedded / work:.2f}" if work and embedded else ""
        lines.append(
            f"| {name} | {faces} | {r['wall_s']:.2f} | {'' if work is None else f'{work:.2f}'} | {rate} "
            f"| {100 * r['wall_s'] / first['wall_s']:.1f} % | {r['load']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
