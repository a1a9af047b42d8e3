"""face_recognition against facerec's ports of its dlib models: speed and verification accuracy, side by side.

face_recognition 1.3.0 runs three dlib models from face_recognition_models; facerec runs the same files
as the `dlib-cnn` detector, the `dlib-5point` aligner and the `dlib-resnet` backbone, through the engine
(`build_pipeline`, `create_detector`, `standardize_pictures`) as users run them. Each measurement runs
each side in a fresh process of its own, on the same decoded pixels (as face_recognition's
`load_image_file` decodes them; the photos carry no EXIF rotation):

- encode: the faces face_recognition's HOG detector finds (upsample 1) in every photo of ../shared/faces
  (knn/train, knn/test, photos, test_images), as given boxes: `face_recognition.face_encodings(image,
  known_face_locations=boxes)` photo by photo (5-point landmarks, chip, ResNet), against the pipeline's
  aligner and backbone on the same boxes, 8 photos and 32 faces to a batch as `Pipeline.run` takes them;
- align: the 5-point landmarks and the 150x150 chip of each of those faces: dlib's `shape_predictor`
  and `get_face_chip` (what `face_encodings` runs before its ResNet) photo by photo, against the
  `dlib-5point` aligner as the pipeline runs it, 8 photos at a time (`align_all`, through the engine's
  `cut`); the table gives the time per face;
- resnet: the ResNet alone on ready 150x150 chips (dlib's `get_face_chip` of those faces, repeated to
  `--chips`), 32 to a batch: dlib's `compute_face_descriptor(chips)` against the backbone's `embed` of
  `standardize_pictures(chips)`;
- cnn: the MMOD detector, photo by photo: `face_locations(image, number_of_times_to_upsample=1,
  model="cnn")` against the `dlib-cnn` detector, on `--cnn-photos` photos scaled (bicubic) so that their
  longest side is `--cnn-size` pixels: dlib's CPU detector takes over 15 s on a 600x600 photo.

Each side first runs once untimed (encode and resnet on their first input, cnn on a small blank
picture), so the timings leave out first-call setup such as facerec's lazy model loading, not the work.

Verification: the faces of the labelled photos with exactly one face found (knn/train/<person>,
knn/test/<person>*, test_images/<person>), every pair of them: same-person pairs and different-person
pairs. face_recognition decides on its raw encodings at its tolerance 0.6 (`compare_faces`), facerec on its
unit vectors at the threshold the `dlib-resnet` backbone declares for its `dlib-v1` weights; the two must
decide every pair alike.

Rounds alternate the sides and each measurement keeps each side's best round. Every run first waits (up
to `--wait` seconds) for the CPUs to go idle, and the table says how many cores other processes kept busy
and how many each side used. `--threads` sets torch's (and OpenMP's) threads; default: torch's default.

    .venv/bin/python benchmarks/bench_dlib.py [--rounds 3] [--threads N] [--tasks encode align resnet cnn]

The table ends with the CPU's model and flags.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import busy_cpu_seconds, children_cpu_seconds, cpu_line, wait_for_idle

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "faces"
FOLDERS = ("knn/train", "knn/test", "photos", "test_images")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
CNN_SOURCES = ("knn/test/kit_with_rose.jpg", "photos/two_people.jpg", "knn/train/obama/obama.jpg")
SIDES = ("face_recognition", "facerec")
TASKS = ("encode", "align", "resnet", "cnn")
UPSAMPLE = 1  # face_recognition's default number_of_times_to_upsample
CHIP_SIZE, CHIP_PADDING = 150, 0.25  # face_recognition's chips
BATCH = 32
TOLERANCE = 0.6  # face_recognition's compare_faces default
TARGETS = {"encode": 4.0, "cnn": 10.0}  # speedups issue 8 asks for


def decoded(path: Path) -> np.ndarray:
    """RGB pixels as face_recognition's load_image_file decodes a photo."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


# The worker processes: one side, one task; each writes its timings and outputs as JSON.


@dataclass
class Side:
    """One library's way to do each task, on pictures in its own form (made untimed by `picture`)."""

    picture: Callable[[np.ndarray], object]
    encode: Callable[[list, list], np.ndarray]  # pictures, css boxes per picture -> (faces, 128)
    align: Callable[[list, list], list]  # pictures, css boxes per picture -> 150x150 chips
    describe: Callable[[list], np.ndarray]  # 150x150 chips -> (chips, 128)
    locate: Callable[[object], list]  # picture -> face_recognition's css boxes


def face_recognition_side() -> Side:
    import dlib
    import face_recognition
    import face_recognition_models

    encoder = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())

    def encode(pictures: list, boxes: list) -> np.ndarray:
        return np.array(
            [
                encoding
                for picture, found in zip(pictures, boxes, strict=True)
                for encoding in face_recognition.face_encodings(picture, known_face_locations=found)
            ]
        )

    def align(pictures: list, boxes: list) -> list:
        return [
            dlib.get_face_chip(picture, predictor(picture, dlib.rectangle(left, top, right, bottom)), CHIP_SIZE, CHIP_PADDING)
            for picture, found in zip(pictures, boxes, strict=True)
            for top, right, bottom, left in found
        ]  # fmt: skip

    def describe(chips: list) -> np.ndarray:
        return np.array(encoder.compute_face_descriptor(chips))

    def locate(picture: np.ndarray) -> list:
        return face_recognition.face_locations(picture, number_of_times_to_upsample=UPSAMPLE, model="cnn")

    return Side(lambda pixels: pixels, encode, align, describe, locate)


def facerec_side() -> Side:
    from facerec.contract.faces import Face
    from facerec.pipeline.engine import batched, build_pipeline, create_detector, cut
    from facerec.pipeline.standardize import standardize_pictures

    pipeline = build_pipeline(detector="none", backbone="dlib-resnet", device="cpu")
    detector = create_detector("dlib-cnn", {"upsample": UPSAMPLE})

    def describe(chips: list) -> np.ndarray:
        return np.concatenate(
            [
                pipeline.backbone.embed(standardize_pictures(chunk, pipeline.recipe)).numpy()
                for chunk in batched(chips, pipeline.faces_per_batch)
            ]
        )

    def align_batch(pictures: list, boxes: list) -> list:
        """As Pipeline.run cuts a batch's faces: the engine's `cut`, every photo of the batch at once."""
        items = [
            (picture, [Face(box=(left, top, right + 1, bottom + 1)) for top, right, bottom, left in found])
            for picture, found in zip(pictures, boxes, strict=True)
        ]
        return [chip for chips in cut(detector, pipeline.aligner, items, pipeline.recipe) for chip in chips]

    def align(pictures: list, boxes: list) -> list:
        chips = []
        for chunk in batched(zip(pictures, boxes, strict=True), pipeline.images_per_batch):
            chips += align_batch(*zip(*chunk, strict=True))
        return chips

    def encode(pictures: list, boxes: list) -> np.ndarray:
        """As Pipeline.run after detection: a few photos at a time, aligned together, their faces embedded."""
        vectors = []
        for chunk in batched(zip(pictures, boxes, strict=True), pipeline.images_per_batch):
            vectors.append(describe(align_batch(*zip(*chunk, strict=True))))
        return np.concatenate(vectors)

    def locate(picture: Image.Image) -> list:
        return [css_box(face.box, picture.size) for face in detector.detect([picture])[0]]

    return Side(Image.fromarray, encode, align, describe, locate)


def css_box(box: tuple[float, ...], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A facerec box as face_recognition reports dlib's rectangle: (top, right, bottom, left), clipped."""
    left, top, right, bottom = (round(v) for v in box)
    width, height = size
    return max(top, 0), min(right - 1, width), min(bottom - 1, height), max(left, 0)


def timed(call: Callable, *args) -> tuple[object, float, float]:
    """call(*args), its wall time and the CPU time this process spent in it."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def encode_task(side: Side, inputs: dict, folder: Path) -> dict:
    pictures = [side.picture(decoded(Path(path))) for path in inputs["photos"]]
    boxes = inputs["boxes"]
    side.encode(pictures[:1], boxes[:1])
    vectors, wall, cpu = timed(side.encode, pictures, boxes)
    return {"wall_s": wall, "cpu_s": cpu, "vectors": vectors.tolist()}


def align_task(side: Side, inputs: dict, folder: Path) -> dict:
    pictures = [side.picture(decoded(Path(path))) for path in inputs["photos"]]
    boxes = inputs["boxes"]
    side.align(pictures[:1], boxes[:1])
    chips, wall, cpu = timed(side.align, pictures, boxes)
    return {"wall_s": wall, "cpu_s": cpu, "chips": np.stack([np.asarray(chip) for chip in chips]).tolist()}


def resnet_task(side: Side, inputs: dict, folder: Path) -> dict:
    faces = np.load(folder / "chips.npy")
    chips = [side.picture(faces[i % len(faces)]) for i in range(inputs["chips"])]

    def describe_all() -> np.ndarray:
        return np.concatenate([side.describe(chips[i : i + BATCH]) for i in range(0, len(chips), BATCH)])

    side.describe(chips[:BATCH])
    vectors, wall, cpu = timed(describe_all)
    return {"wall_s": wall, "cpu_s": cpu, "vectors": vectors.tolist()}


def cnn_task(side: Side, inputs: dict, folder: Path) -> dict:
    pictures = [side.picture(decoded(Path(path))) for path in inputs["cnn_photos"]]
    side.locate(side.picture(np.full((100, 100, 3), 128, dtype=np.uint8)))
    found, walls, cpus = zip(*(timed(side.locate, picture) for picture in pictures), strict=True)
    return {"wall_s": sum(walls), "cpu_s": sum(cpus), "per_photo_s": walls, "boxes": found}


def work(side_name: str, task: str, folder: Path, threads: int | None) -> None:
    """One side's run of one task; writes `<task>-<side>.json` in `folder`."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    side = {"face_recognition": face_recognition_side, "facerec": facerec_side}[side_name]()
    inputs = json.loads((folder / "inputs.json").read_text())
    run = {"encode": encode_task, "align": align_task, "resnet": resnet_task, "cnn": cnn_task}[task]
    result = run(side, inputs, folder)
    (folder / f"{task}-{side_name}.json").write_text(json.dumps(result))


# The parent process: inputs, rounds, tables.


def photos() -> list[Path]:
    found = [path for name in FOLDERS for path in (FACES / name).rglob("*")]
    return sorted(path for path in found if path.suffix.lower() in IMAGE_SUFFIXES)


def people() -> list[str]:
    return sorted(path.name for path in (FACES / "knn" / "train").iterdir() if path.is_dir())


def person(path: Path) -> str | None:
    """Who a labelled photo shows (its folder, or a knn/test file named after a person); else None."""
    parts = path.relative_to(FACES).parts
    if parts[:2] == ("knn", "train") or parts[0] == "test_images":
        return parts[-2]
    if parts[:2] == ("knn", "test"):
        return next((name for name in people() if path.stem.startswith(name)), None)
    return None


def prepare(folder: Path, args: argparse.Namespace) -> dict:
    """The inputs both sides share: photos and their HOG boxes, dlib's chips, the scaled CNN photos."""
    import dlib
    import face_recognition
    import face_recognition_models

    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    paths, boxes, chips = photos(), [], []
    print(f"finding faces in {len(paths)} photos with face_recognition's HOG detector (once, untimed)")
    for path in paths:
        pixels = decoded(path)
        found = face_recognition.face_locations(pixels, number_of_times_to_upsample=UPSAMPLE)
        boxes.append(found)
        for top, right, bottom, left in found:
            shape = predictor(pixels, dlib.rectangle(left, top, right, bottom))
            chips.append(dlib.get_face_chip(pixels, shape, CHIP_SIZE, CHIP_PADDING))
    np.save(folder / "chips.npy", np.stack(chips), allow_pickle=False)
    inputs = {
        "photos": [str(path) for path in paths],
        "boxes": boxes,
        "chips": args.chips,
        "cnn_photos": scaled_photos(folder, args.cnn_photos, args.cnn_size),
    }
    (folder / "inputs.json").write_text(json.dumps(inputs))
    return inputs


def scaled_photos(folder: Path, count: int, longest: int) -> list[str]:
    """The first `count` CNN photos, scaled (bicubic) to a longest side of `longest`, saved losslessly."""
    made = []
    for source in CNN_SOURCES[:count]:
        with Image.open(FACES / source) as image:
            scale = longest / max(image.size)
            size = (round(image.width * scale), round(image.height * scale))
            path = folder / f"{Path(source).stem}-{longest}.png"
            image.convert("RGB").resize(size, Image.BICUBIC).save(path)
        made.append(str(path))
    return made


def run_worker(side: str, task: str, folder: Path, args: argparse.Namespace) -> dict:
    """One worker process on idle CPUs if they get idle; its result and the cores others kept busy."""
    command = [sys.executable, __file__, "--worker", side, "--task", task, "--folder", str(folder)]
    env = dict(os.environ)
    if args.threads:
        command += ["--threads", str(args.threads)]
        env.update({name: str(args.threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    wait_for_idle(args.wait)
    busy, ours = busy_cpu_seconds(), children_cpu_seconds()
    started = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    others = (busy_cpu_seconds() - busy) - (children_cpu_seconds() - ours)
    if process.returncode != 0:
        sys.exit(f"{side} {task} worker failed:\n{process.stderr}")
    result = json.loads((folder / f"{task}-{side}.json").read_text())
    return {**result, "other_cores": max(others, 0.0) / elapsed}


def best_rounds(folder: Path, args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    """Each (task, side)'s fastest round; rounds alternate the sides."""
    best: dict[tuple[str, str], dict] = {}
    for round_number in range(1, args.rounds + 1):
        for task in args.tasks:
            for side in SIDES:
                result = run_worker(side, task, folder, args)
                print(
                    f"round {round_number} {task:6s} {side:16s} {result['wall_s']:7.2f} s, "
                    f"CPU {result['cpu_s']:7.2f} s, other processes {result['other_cores']:.2f} cores",
                    flush=True,
                )
                if (task, side) not in best or result["wall_s"] < best[task, side]["wall_s"]:
                    best[task, side] = result
    return best


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def max_distance(theirs: list, ours: list) -> float:
    """Largest Euclidean distance between facerec's unit vectors and dlib's scaled to unit length."""
    return float(np.linalg.norm(unit_rows(np.array(theirs)) - np.array(ours), axis=1).max())


def box_iou(a: tuple, b: tuple) -> float:
    """IoU of two inclusive (top, right, bottom, left) rectangles."""
    height = min(a[2], b[2]) - max(a[0], b[0]) + 1
    width = min(a[1], b[1]) - max(a[3], b[3]) + 1
    inter = max(height, 0) * max(width, 0)

    def area(box: tuple) -> int:
        return (box[2] - box[0] + 1) * (box[1] - box[3] + 1)

    return inter / (area(a) + area(b) - inter)


def detections_agree(theirs: list[list], ours: list[list]) -> str:
    """How closely facerec's boxes follow face_recognition's, photo by photo (best match per face)."""
    same = sum(len(a) == len(b) for a, b in zip(theirs, ours, strict=True))
    ious = [
        max((box_iou(a, b) for b in found), default=0.0)
        for faces, found in zip(theirs, ours, strict=True)
        for a in faces
    ]
    faces = sum(map(len, theirs))
    return (
        f"CNN boxes: same number of faces in {same}/{len(theirs)} photos ({faces} faces from dlib), "
        f"min IoU {min(ious, default=1.0):.4f}"
    )


def speed_rows(best: dict, inputs: dict) -> list[tuple[str, str, str, str]]:
    """Per task: wall time (what a user waits), CPU time (steadier on a shared machine), rates, load."""
    faces = sum(map(len, inputs["boxes"]))
    titles = {
        "encode": f"encodings for given boxes: {faces} faces in {len(inputs['photos'])} photos, s",
        "align": f"5-point landmarks + 150x150 chip for given boxes: {faces} faces, s",
        "resnet": f"ResNet alone: {inputs['chips']} ready 150x150 chips, batches of {BATCH}, s",
        "cnn": f"CNN detector (upsample {UPSAMPLE}): {len(inputs['cnn_photos'])} photos, s",
    }
    rates = {
        "encode": (faces, "encodings/s"),
        "align": (faces, "faces/s"),
        "resnet": (inputs["chips"], "chips/s"),
    }
    rows = []
    for task in (task for task in TASKS if (task, "facerec") in best):
        sides = best[task, "face_recognition"], best[task, "facerec"]
        rows.append((titles[task], *seconds_pair(*(side["wall_s"] for side in sides), TARGETS.get(task))))
        rows.append(("· CPU time, s", *seconds_pair(*(side["cpu_s"] for side in sides), None)))
        if task == "align":
            per_face = [1000 * side["wall_s"] / faces for side in sides]
            rows.append(
                ("· per face, ms", *(f"{ms:.2f}" for ms in per_face), f"{per_face[0] / per_face[1]:.2f}x")
            )
        if task in rates:
            count, unit = rates[task]
            rows.append((f"· {unit}", *(f"{count / side['wall_s']:.1f}" for side in sides), ""))
        else:
            rows += photo_rows(*sides, inputs["cnn_photos"])
        rows.append(("· CPU cores used", *(f"{side['cpu_s'] / side['wall_s']:.2f}" for side in sides), ""))
        rows.append(("· other processes, cores busy", *(f"{side['other_cores']:.2f}" for side in sides), ""))
    return rows


def seconds_pair(theirs: float, ours: float, target: float | None) -> tuple[str, str, str]:
    speedup = f"{theirs / ours:.2f}x" + (f" (target {target:g}x)" if target else "")
    return f"{theirs:.2f}", f"{ours:.2f}", speedup


def photo_rows(theirs: dict, ours: dict, paths: list[str]) -> list[tuple[str, str, str, str]]:
    rows = []
    for path, a, b in zip(paths, theirs["per_photo_s"], ours["per_photo_s"], strict=True):
        with Image.open(path) as image:
            width, height = image.size
        title = f"· {Path(path).stem} ({width}x{height}, {width * height / 1e6:.2f} MP), s"
        rows.append((title, f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}x"))
    return rows


def speed_table(best: dict, inputs: dict, threads: str) -> str:
    version = importlib.metadata.version
    lines = [
        f"| {threads} | face_recognition {version('face_recognition')} (dlib {version('dlib-bin')}) "
        "| facerec | speedup |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {a} | {b} | {speedup} |" for name, a, b, speedup in speed_rows(best, inputs)]
    notes = []
    if ("encode", "facerec") in best:
        notes.append(
            "encodings: max Euclidean distance, facerec's unit vectors vs face_recognition's scaled to unit "
            f"length: {max_distance(best['encode', 'face_recognition']['vectors'], best['encode', 'facerec']['vectors']):.1e}"
        )
    if ("align", "facerec") in best:
        theirs, ours = (np.array(best["align", side]["chips"], dtype=np.int16) for side in SIDES)
        notes.append(
            f"chips: facerec's against dlib's, mean |difference| {np.abs(theirs - ours).mean():.3f} grey levels, "
            f"{np.mean(theirs == ours):.2%} of values equal"
        )
    if ("resnet", "facerec") in best:
        notes.append(
            "ResNet alone, same measure on the same chips: "
            f"{max_distance(best['resnet', 'face_recognition']['vectors'], best['resnet', 'facerec']['vectors']):.1e}"
        )
    if ("cnn", "facerec") in best:
        notes.append(
            detections_agree(best["cnn", "face_recognition"]["boxes"], best["cnn", "facerec"]["boxes"])
        )
    return "\n".join([*lines, "", *notes, cpu_line()])


def labelled_faces(inputs: dict) -> list[tuple[int, str]]:
    """(index among all faces, person) for each labelled photo in which exactly one face was found."""
    labelled, first = [], 0
    for path, found in zip(inputs["photos"], inputs["boxes"], strict=True):
        name = person(Path(path))
        if name is not None and len(found) == 1:
            labelled.append((first, name))
        first += len(found)
    return labelled


def verification_table(best: dict, inputs: dict) -> str:
    from facerec.contract.registry import registry

    threshold = registry().create("backbone", "dlib-resnet").thresholds["dlib-v1"]
    faces = labelled_faces(inputs)
    pairs = list(combinations(faces, 2))
    same = np.array([a[1] == b[1] for a, b in pairs])
    sides = {
        "face_recognition": (np.array(best["encode", "face_recognition"]["vectors"]), TOLERANCE),
        "facerec": (np.array(best["encode", "facerec"]["vectors"]), threshold),
    }
    called = {}
    rows = {name: [] for name in ("same", "different", "accuracy", "largest", "smallest")}
    for side, (vectors, limit) in sides.items():
        distances = np.array([np.linalg.norm(vectors[a[0]] - vectors[b[0]]) for a, b in pairs])
        called[side] = distances <= limit
        rows["same"].append(f"{np.sum(called[side] & same)}/{np.sum(same)}")
        rows["different"].append(f"{np.sum(~called[side] & ~same)}/{np.sum(~same)}")
        rows["accuracy"].append(f"{np.mean(called[side] == same):.1%}")
        rows["largest"].append(f"{distances[same].max():.3f}")
        rows["smallest"].append(f"{distances[~same].min():.3f}")
    titles = {
        "same": "same person, called the same",
        "different": "different people, called different",
        "accuracy": "accuracy",
        "largest": "largest same-person distance",
        "smallest": "smallest different-person distance",
    }
    people_count = len({name for _, name in faces})
    lines = [
        f"| verification: {len(faces)} faces of {people_count} people, {len(pairs)} pairs "
        f"| face_recognition (raw encodings, tolerance {TOLERANCE}) "
        f"| facerec (unit vectors, threshold {threshold}) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {titles[key]} | {a} | {b} |" for key, (a, b) in rows.items()]
    agree = int(np.sum(called["face_recognition"] == called["facerec"]))
    lines.append(f"\nboth decide {agree}/{len(pairs)} pairs alike")
    return "\n".join(lines)


def threads_label(threads: int | None) -> str:
    if not threads:
        return "torch's default threads"
    return f"facerec on {threads} thread{'s' if threads > 1 else ''}"


def compare(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        inputs = prepare(folder, args)
        best = best_rounds(folder, args)
        print()
        print(speed_table(best, inputs, threads_label(args.threads)))
    if "encode" in args.tasks:
        print()
        print(verification_table(best, inputs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch's threads (default: torch's default)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--chips", type=int, default=64, help="chips for the ResNet alone")
    parser.add_argument(
        "--cnn-photos", type=int, default=len(CNN_SOURCES), choices=range(1, len(CNN_SOURCES) + 1)
    )
    parser.add_argument("--cnn-size", type=int, default=480, help="longest side of the CNN photos, pixels")
    parser.add_argument("--wait", type=float, default=60, help="seconds to wait for idle CPUs per run")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work(args.worker, args.task, args.folder, args.threads)
    else:
        compare(args)


if __name__ == "__main__":
    main()
