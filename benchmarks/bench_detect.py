"""Face detection: every built-in detector side by side, then MTCNN against facenet-pytorch.

Detectors (each in processes of its own, built from the registry as `facerec detect --detector NAME`
builds it, its files already in a cache or installed): ms per photo on the shared photos
(../shared/faces/photos and ../shared/faces/knn/test) scaled to 640 px and to 1920 px on their long side,
and per frame of the Hamilton clip (640x360; frames spread over the whole clip, its stage of four
people included), one frame at a time as `facerec identify CLIP` detects, and eight at a time. Each
image goes through `facerec.pipeline.engine.detect_bounded`, the pipeline's own call (a detector's
`max_pixels` applies), `--rounds` times, and each image's best round counts; each detector runs in
`--processes` processes (2), the detectors taking turns, and its fastest process counts: MTCNN's ms a
640 px photo went from 33 to 44 from one process to the next, and sharing one process with the other
detectors it took 43-50.

Recall: on the photos at each size and on the frames, the faces found by any detector (boxes of
different detectors overlapping at IoU 0.5 or more are one face) are the union; each detector's count
of them is printed, of those that two detectors or more found (the union holds every detector's false
positives), and of MTCNN's. A detector that is not registered is skipped, and the table says so; so is
centerface at bf16 on a machine without native bf16 (its column shows what `-D precision=bf16` gains
where the CPU has AVX512-BF16 or AMX).

Peer (whole processes, as a user runs them), over every photo in ../shared/faces:

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

    .venv/bin/python benchmarks/bench_detect.py [--rounds 3] [--processes 2] [--frames 40] [--skip detectors|peer]
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
from bench_embed import (
    PEER,
    busy_cpu_seconds,
    children_cpu_seconds,
    cpu_line,
    ensure_peer,
    mtcnn_home,
    wait_for_idle,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
SIDES = ("facenet-pytorch", "facerec")
# (column, registered name, options): the far-faces model of blazeface too, its default being for selfies,
# and centerface at bf16 where this machine runs bf16 natively (elsewhere the detector refuses it)
DETECTORS = (
    ("mtcnn", "mtcnn", {}),
    ("dlib-cnn", "dlib-cnn", {}),
    ("centerface", "centerface", {}),
    ("centerface bf16", "centerface", {"precision": "bf16"}),
    ("blazeface", "blazeface", {}),
    ("blazeface full", "blazeface", {"range": "full"}),
)
SIZES = (640, 1920)
CLIP = SHARED / "video" / "short_hamilton_clip.mp4"
SAME_FACE = 0.5  # IoU at which two detectors' boxes are one face
BATCH = 8


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


# The detectors, side by side (this process).


def recall_photos() -> list[Path]:
    folders = (SHARED / "faces" / "photos", SHARED / "faces" / "knn" / "test")
    return [path for folder in folders for path in sorted(folder.iterdir())]


def scaled(path: Path, longest: int):
    """The photo (EXIF-oriented RGB) resized so that its long side is `longest` pixels."""
    from PIL import Image

    from facerec.pipeline.images import load_image

    image = load_image(path)
    factor = longest / max(image.size)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.BILINEAR)


def clip_frames(count: int) -> list:
    """`count` frames of the Hamilton clip spread evenly over it, as RGB images: its close-ups and the
    stage with four people at its end both count."""
    import av

    with av.open(str(CLIP)) as container:
        frames = [frame.to_image().convert("RGB") for frame in container.decode(video=0)]
    step = max(len(frames) / count, 1.0)
    return [frames[int(index * step)] for index in range(min(count, len(frames)))]


def build_detector(column: str):
    """The detector of DETECTORS' `column`, warmed up (weights read); else why it cannot run here (not
    registered, or an option this machine cannot run)."""
    from PIL import Image

    from facerec.contract.registry import registry
    from facerec.errors import UsageError

    name, options = next((name, options) for c, name, options in DETECTORS if c == column)
    if name not in registry().names("detector"):
        return "not registered"
    try:
        detector = registry().create("detector", name, **options)
    except UsageError as error:
        return str(error)
    detector.detect([Image.new("RGB", (64, 64))])
    return detector


def timed(detector, batches: list[list], rounds: int) -> tuple[float, list]:
    """Mean ms per image of `detector` over `batches` (lists of images), each batch's best round; and
    the boxes it found in every image (in the last round)."""
    from facerec.pipeline.engine import detect_bounded

    best = [float("inf")] * len(batches)
    found: list = []
    for round_number in range(rounds):
        for index, batch in enumerate(batches):
            started = time.perf_counter()
            faces = detect_bounded(detector, batch)
            best[index] = min(best[index], time.perf_counter() - started)
            if round_number == rounds - 1:
                found.extend([list(face.box) for face in image_faces] for image_faces in faces)
    count = sum(len(batch) for batch in batches)
    return 1000 * sum(best) / count, found


def detector_worker(column: str, rounds: int, frames_timed: int) -> None:
    """One detector's measurements, in a process of its own: one JSON line of ms per image and the boxes
    found, by measurement."""
    detector = build_detector(column)
    if isinstance(detector, str):
        print(json.dumps({"skipped": detector}))
        return
    speed, found = {}, {}
    for size in SIZES:
        images = [scaled(path, size) for path in recall_photos()]
        speed[f"photos {size}"], found[f"photos {size}"] = timed(
            detector, [[image] for image in images], rounds
        )
    frames = clip_frames(frames_timed)
    speed["frames"], found["frames"] = timed(detector, [[frame] for frame in frames], rounds)
    batched = [frames[start : start + BATCH] for start in range(0, len(frames), BATCH)]
    speed["frames batched"], _ = timed(detector, batched, rounds)
    print(json.dumps({"speed": speed, "found": found, "frame size": list(frames[0].size)}))


def recall(found: dict[str, list]) -> dict[str, tuple[int, dict[str, int]]]:
    """From the boxes each detector (by column) found in the same images, per set of target faces
    (`union`: found by any; `agreed`: by two detectors or more, the two columns of blazeface, and those of
    centerface, counting as one; `mtcnn`: MTCNN's), its size and how many of them each detector found."""
    detector_of = {column: name for column, name, _ in DETECTORS}
    images = len(next(iter(found.values())))
    targets: dict[str, list[list[list[float]]]] = {"union": [], "agreed": [], "mtcnn": []}
    for index in range(images):
        boxes: list[list[float]] = []
        finders: list[set[str]] = []  # the detectors that found each box of the union
        for column, faces in found.items():
            for face in faces[index]:
                same = [k for k, box in enumerate(boxes) if box_iou(face, box) >= SAME_FACE]
                if same:
                    finders[same[0]].add(detector_of[column])
                else:
                    boxes.append(face)
                    finders.append({detector_of[column]})
        targets["union"].append(boxes)
        targets["agreed"].append([box for box, names in zip(boxes, finders, strict=True) if len(names) >= 2])
        targets["mtcnn"].append(found["mtcnn"][index] if "mtcnn" in found else [])

    def hits(column: str, boxes_by_image: list[list[list[float]]]) -> int:
        return sum(
            any(box_iou(face, box) >= SAME_FACE for face in found[column][index])
            for index, boxes in enumerate(boxes_by_image)
            for box in boxes
        )

    return {
        label: (sum(map(len, boxes)), {column: hits(column, boxes) for column in found})
        for label, boxes in targets.items()
    }


def side_by_side(args: argparse.Namespace) -> None:
    results, skipped, others = run_detectors(args)
    if not results:
        sys.exit(f"no detector ran: {'; '.join(skipped)}")
    print(detectors_table(results, args.rounds, args.processes))
    print(f"\nother processes kept {others:.2f} cores busy on average during these measurements")
    if skipped:
        print(f"skipped: {'; '.join(skipped)}")


def run_detectors(args: argparse.Namespace) -> tuple[dict[str, dict], list[str], float]:
    """Each column's worker, one after the other, `--processes` times over: their results by column
    (each measurement the fastest process's), the columns skipped (with why), and the cores other
    processes kept busy meanwhile."""
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "TORCH_HOME": str(mtcnn_home(Path(folder)))}
        busy, ours, started = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
        for _ in range(args.processes):
            for column, _, _ in DETECTORS:
                wait_for_idle(args.wait)
                print(f"{column}", file=sys.stderr, flush=True)
                command = [sys.executable, __file__, "--detector-worker", column]
                command += ["--rounds", str(args.rounds), "--frames", str(args.frames)]
                output = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
                if output.returncode != 0:
                    sys.exit(f"{column} failed:\n{output.stderr}")
                result = json.loads(output.stdout.strip().splitlines()[-1])
                if "skipped" in result:
                    skipped[column] = f"{column} ({result['skipped']})"
                elif column in results:
                    kept = results[column]["speed"]
                    kept.update({key: min(kept[key], value) for key, value in result["speed"].items()})
                else:
                    results[column] = result
        elapsed = time.perf_counter() - started
        others = max(busy_cpu_seconds() - busy - (children_cpu_seconds() - ours), 0.0) / elapsed
    return results, list(skipped.values()), others


def detectors_table(results: dict[str, dict], rounds: int, processes: int) -> str:
    """The speed and recall table, a column per detector of DETECTORS ("skipped" where none ran)."""
    some = next(iter(results.values()))
    (width, height), frames = some["frame size"], len(some["found"]["frames"])
    labels = {f"photos {size}": f"per photo at {size} px, ms" for size in SIZES}
    labels |= {
        "frames": f"per video frame ({width}x{height}), ms",
        "frames batched": f"per video frame, {BATCH} at a time, ms",
    }
    rows = [
        (
            label,
            {c: f"{r['speed'][key]:.{0 if key.startswith('photos') else 1}f}" for c, r in results.items()},
        )
        for key, label in labels.items()
    ]
    targets = {
        "union": "faces found {where}, of the {total} any detector found",
        "agreed": "faces found {where}, of the {total} two detectors or more found",
        "mtcnn": "faces found {where}, of MTCNN's {total}",
    }
    for key in [*(f"photos {size}" for size in SIZES), "frames"]:
        where = f"in the {frames} frames" if key == "frames" else f"at {key.split()[1]} px"
        for label, (total, counts) in recall({c: r["found"][key] for c, r in results.items()}).items():
            if total or label != "mtcnn":
                text = targets[label].format(where=where, total=total)
                rows.append((text, {c: str(n) for c, n in counts.items()}))
    columns = [column for column, _, _ in DETECTORS]
    lines = [
        f"{len(recall_photos())} photos, {frames} frames, {rounds} rounds in each of {processes} processes a"
        f" detector; {cpu_line()}; {os.cpu_count()} cores",
        "",
        f"| detector | {' | '.join(columns)} |",
        f"| --- |{' ---: |' * len(columns)}",
    ]
    lines += [
        f"| {label} | {' | '.join(values.get(c, 'skipped') for c in columns)} |" for label, values in rows
    ]
    return "\n".join(lines)


# The peer comparison (whole processes).


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
    parser.add_argument(
        "--processes", type=int, default=2, help="processes per detector (the fastest counts), in turn"
    )
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for idle CPUs per run")
    parser.add_argument("--frames", type=int, default=40, help="frames of the Hamilton clip timed")
    parser.add_argument("--skip", choices=("detectors", "peer"), help="leave out one of the two sections")
    parser.add_argument("--worker", nargs="+", metavar="IMAGE", help=argparse.SUPPRESS)
    parser.add_argument("--detector-worker", metavar="COLUMN", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        facenet_pytorch_worker(args.worker)
        return
    if args.detector_worker:
        detector_worker(args.detector_worker, args.rounds, args.frames)
        return
    if args.skip != "detectors":
        side_by_side(args)
    if args.skip != "peer":
        print()
        compare(args)


if __name__ == "__main__":
    main()
