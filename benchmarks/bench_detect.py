"""Face detection speed: MTCNN over every photo in ../shared/faces, whole process, facerec against facenet-pytorch.

Each side runs in a fresh process, as a user would run it, on the same images in the same order:

- facenet-pytorch: a script that builds `MTCNN(keep_all=True)` and calls `detect(image, landmarks=True)`
  on each photo, opened with PIL (EXIF orientation applied, RGB), and writes what it found as JSON Lines.
  It is installed into this environment for the benchmark only (`pip install --no-deps`).
- facerec: the command `facerec detect IMAGES... --json`, with facenet-pytorch's weight files already in
  its cache (a temporary TORCH_HOME), so nothing is downloaded.

The parent times each whole process and reads its peak resident memory and CPU time from `wait4`.
Rounds alternate the two sides and the best round of each counts; each round first waits (up to `--wait`
seconds) for the CPUs to go idle, and the table says how many cores other processes kept busy. Both
sides use torch's default threads. Detections are identical when every image has the same number of
faces and each pair, both largest first, overlaps at IoU 0.95 or more with scores within 0.01.

    .venv/bin/python benchmarks/bench_detect.py [--rounds 3]
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import PEER, busy_cpu_seconds, ensure_peer, wait_for_idle

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
SIDES = ("facenet-pytorch", "facerec")


def photos() -> list[Path]:
    return sorted(path for path in (SHARED / "faces").rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)


# The facenet-pytorch worker process.


def facenet_pytorch_worker(images: list[str]) -> None:
    """facenet-pytorch's MTCNN over the images; one JSON line per image on stdout, as facerec prints them."""
    from facenet_pytorch import MTCNN
    from PIL import Image, ImageOps

    detector = MTCNN(keep_all=True)
    for path in images:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        boxes, probs, points = detector.detect(image, landmarks=True)
        faces = []
        if boxes is not None:
            for box, prob, landmarks in zip(boxes, probs, points, strict=True):
                faces.append({"box": box.tolist(), "score": float(prob), "landmarks": landmarks.tolist()})
        print(json.dumps({"image": path, "faces": faces}), flush=True)


# The parent process.


def run_side(side: str, images: list[Path], torch_home: Path, out: Path, wait_s: float) -> dict:
    """One side's whole process: wall time, CPU time, peak RSS, and its JSON Lines in `out`."""
    if side == "facerec":
        command = [sys.executable, "-m", "facerec", "detect", *map(str, images), "--json"]
    else:
        command = [sys.executable, __file__, "--worker", *map(str, images)]
    env = {**os.environ, "TORCH_HOME": str(torch_home)}
    wait_for_idle(wait_s)
    busy = busy_cpu_seconds()
    started = time.perf_counter()
    with open(out, "w") as stdout, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS and CPU time
        elapsed = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            stderr.seek(0)
            sys.exit(f"{side} failed:\n{stderr.read().decode()}")
    cpu = usage.ru_utime + usage.ru_stime
    others = max(busy_cpu_seconds() - busy - cpu, 0.0) / elapsed
    return {"wall_s": elapsed, "cpu_s": cpu, "peak_rss_mb": usage.ru_maxrss / 1024, "other_cores": others}


def box_iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def agreement(peer_out: Path, our_out: Path) -> dict:
    """How closely facerec's detections follow facenet-pytorch's, image by image."""
    peer = [json.loads(line) for line in peer_out.read_text().splitlines()]
    ours = [json.loads(line) for line in our_out.read_text().splitlines()]
    result = {
        "images": len(peer),
        "same_count": 0,
        "faces": 0,
        "min_iou": 1.0,
        "max_score": 0.0,
        "max_landmark": 0.0,
    }
    for expected, found in zip(peer, ours, strict=True):
        if len(expected["faces"]) != len(found["faces"]):
            continue
        result["same_count"] += 1
        for a, b in zip(expected["faces"], found["faces"], strict=True):
            result["faces"] += 1
            result["min_iou"] = min(result["min_iou"], box_iou(a["box"], b["box"]))
            result["max_score"] = max(result["max_score"], abs(a["score"] - b["score"]))
            moved = float(np.abs(np.array(a["landmarks"]) - np.array(b["landmarks"])).max())
            result["max_landmark"] = max(result["max_landmark"], moved)
    result["identical"] = (
        result["same_count"] == result["images"] and result["min_iou"] >= 0.95 and result["max_score"] <= 0.01
    )
    return result


def table(best: dict[str, dict], count: int, agree: dict) -> str:
    peer, ours = best["facenet-pytorch"], best["facerec"]
    rows = [
        ("whole process, s", f"{peer['wall_s']:.2f}", f"{ours['wall_s']:.2f}", f"{peer['wall_s'] / ours['wall_s']:.2f}x"),
        ("per image, ms", f"{1000 * peer['wall_s'] / count:.0f}", f"{1000 * ours['wall_s'] / count:.0f}", ""),
        ("CPU time, s", f"{peer['cpu_s']:.2f}", f"{ours['cpu_s']:.2f}", f"{peer['cpu_s'] / ours['cpu_s']:.2f}x"),
        ("peak RSS, MB", f"{peer['peak_rss_mb']:.0f}", f"{ours['peak_rss_mb']:.0f}", ""),
        ("other processes, cores busy", f"{peer['other_cores']:.2f}", f"{ours['other_cores']:.2f}", ""),
    ]  # fmt: skip
    lines = [
        f"| {count} photos, MTCNN | {PEER.replace('==', ' ')} | facerec | speedup |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {a} | {b} | {speedup} |" for name, a, b, speedup in rows]
    lines.append(
        f"\ndetections identical: {'yes' if agree['identical'] else 'NO'} ({agree['same_count']}/{agree['images']} "
        f"images with the same number of faces, {agree['faces']} faces, min IoU {agree['min_iou']:.5f}, "
        f"max score difference {agree['max_score']:.1e}, max landmark difference {agree['max_landmark']:.4f} px)"
    )
    return "\n".join(lines)


def compare(args: argparse.Namespace) -> None:
    ensure_peer()
    images = photos()
    with tempfile.TemporaryDirectory() as folder:
        torch_home = Path(folder) / "torch-home"
        (torch_home / "checkpoints").mkdir(parents=True)
        for net in ("pnet", "rnet", "onet"):
            shutil.copy(SHARED / "weights" / "mtcnn" / f"{net}.pt", torch_home / "checkpoints")
        best: dict[str, dict] = {}
        for round_number in range(1, args.rounds + 1):
            for side in SIDES:
                timings = run_side(side, images, torch_home, Path(folder) / f"{side}.jsonl", args.wait)
                print(
                    f"round {round_number} {side:15s} {timings['wall_s']:.2f} s, CPU {timings['cpu_s']:.2f} s, "
                    f"peak RSS {timings['peak_rss_mb']:.0f} MB, other processes {timings['other_cores']:.2f} cores"
                )
                if side not in best or timings["wall_s"] < best[side]["wall_s"]:
                    best[side] = timings
        agree = agreement(Path(folder) / "facenet-pytorch.jsonl", Path(folder) / "facerec.jsonl")
    print()
    print(table(best, len(images), agree))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for idle CPUs per run")
    parser.add_argument("--worker", nargs="+", metavar="IMAGE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        facenet_pytorch_worker(args.worker)
    else:
        compare(args)


if __name__ == "__main__":
    main()
