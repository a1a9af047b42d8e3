"""Video: face_recognition's video example against `facerec identify CLIP`, side by side in one run.

The peer is the logic of face_recognition's `examples/facerec_from_video_file.py`: every frame, HOG
face_locations, face_encodings, compare_faces at tolerance 0.50, the first match names the face (the
example's writing of an output video is left out, which favours it). facerec runs `facerec identify CLIP
--json --per-frame` with its defaults (MTCNN every few frames, tracks, each track named from its best
views) on a gallery of the same known photos with the same dlib ResNet (`--backbone dlib-resnet`).

Two clips:
- face_recognition's `short_hamilton_clip.mp4` (640x360, 29.97 fps, 275 frames) with its known people
  `lin-manuel-miranda.png` and `alex-lacamoire.png`; Lin-Manuel Miranda is on stage, Alex Lacamoire is
  not in the clip, so any frame naming him is wrong, as is a frame naming two faces Lin-Manuel Miranda;
- a 1080p "crowd": the five people of face_recognition's knn example, each a different photo than the
  one enrolled (`knn/test`), pasted on a 1920x1080 stage and drifting across it for 10 s at 30 fps. The
  peer is timed on its first frames only (HOG on 1080p takes seconds a frame) and its rate extrapolated.

Each side runs in its own process. The peer's rate is its frames over its loop's time (model loading
left out, which favours it); facerec's is its frames over its whole process (loading torch and the models
included). "x real time" divides by the clip's own frame rate: above 1.0x is faster than the video plays.

    .venv/bin/python benchmarks/bench_video.py [--peer-frames 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_embed import cpu_line, mtcnn_home, wait_for_idle

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HAMILTON = SHARED / "video" / "short_hamilton_clip.mp4"
TOLERANCE = 0.50  # the example's


def known_people(clip: str) -> dict[str, Path]:
    photos = SHARED / "faces" / "photos"
    if clip == "hamilton":
        return {
            "lin_manuel_miranda": photos / "lin-manuel-miranda.png",
            "alex_lacamoire": photos / "alex-lacamoire.png",
        }
    return {
        folder.name: sorted(folder.iterdir())[0]
        for folder in sorted((SHARED / "faces" / "knn" / "train").iterdir())
    }


def crowd_clip(target: Path, seconds: int = 10, fps: int = 30) -> Path:
    """The 1080p crowd (see the module docstring), H.264."""
    import av
    from PIL import Image

    faces = []
    for photo in sorted((SHARED / "faces" / "knn" / "test").iterdir()):
        with Image.open(photo) as image:
            picture = image.convert("RGB")
            picture.thumbnail((420, 420))
            faces.append(picture)
    with av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        for index in range(seconds * fps):
            stage = Image.new("RGB", (1920, 1080), (40, 40, 48))
            drift = index * 2
            for number, face in enumerate(faces):
                x = 60 + number * 370 + (drift if number % 2 else -drift) % 120
                y = 200 + (number % 2) * 300 + (drift // 3) % 80
                stage.paste(face, (x, y))
            out.mux(stream.encode(av.VideoFrame.from_image(stage)))
        out.mux(stream.encode(None))
    return target


def peer_worker(clip: str, path: str, limit: int) -> None:
    """face_recognition's example loop; prints its timings and the names per frame."""
    started = time.perf_counter()
    import av
    import face_recognition

    known = known_people(clip)
    names = list(known)
    encodings = [
        face_recognition.face_encodings(face_recognition.load_image_file(known[n]))[0] for n in names
    ]
    ready = time.perf_counter()
    per_frame = []
    with av.open(path) as video:
        for index, frame in enumerate(video.decode(video=0)):
            if limit and index >= limit:
                break
            rgb = frame.to_ndarray(format="rgb24")
            locations = face_recognition.face_locations(rgb)
            found = []
            for encoding in face_recognition.face_encodings(rgb, locations):
                match = face_recognition.compare_faces(encodings, encoding, tolerance=TOLERANCE)
                found.append(names[match.index(True)] if True in match else None)
            per_frame.append(found)
    done = time.perf_counter()
    print(json.dumps({"load_s": ready - started, "work_s": done - ready, "frames": per_frame}))


def facerec_side(path: Path, gallery: Path, env: dict[str, str]) -> dict:
    """`facerec identify --json --per-frame` timed whole, and from its first printed frame (by then torch
    and the models are loaded) to its end."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "facerec", "identify", str(path), "--gallery", str(gallery)]
    process = subprocess.Popen(
        [*command, "--json", "--per-frame"], env=env, stdout=subprocess.PIPE, text=True
    )
    lines, first = [], None
    for line in process.stdout:
        first = first or time.perf_counter()
        lines.append(line)
    if process.wait() != 0:
        sys.exit("facerec identify failed")
    done = time.perf_counter()
    frames = [json.loads(line) for line in lines]
    return {
        "whole_s": done - started,
        "work_s": done - first,
        "frames": [[face["identity"] for face in frame["faces"]] for frame in frames],
    }


def summary(frames: list[list[str | None]], wrong: set[str], main: str | None) -> dict:
    """Frames naming the main person (or anyone, without one), and frames naming someone absent or the
    main person twice (unknown for the crowd: "-")."""
    if main is None:
        return {"named": sum(any(faces) for faces in frames), "wrong": "-"}
    bad = sum(any(name in wrong for name in faces) or faces.count(main) > 1 for faces in frames)
    return {"named": sum(main in faces for faces in frames), "wrong": bad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--peer-frames", type=int, default=40, help="Frames of the 1080p clip the peer runs on."
    )
    parser.add_argument("--wait", type=float, default=60, help="Seconds to wait for a quiet machine.")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        peer_worker(args.worker[0], args.worker[1], int(args.worker[2]))
        return
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        env = {**os.environ, "TORCH_HOME": str(mtcnn_home(folder)), "FACEREC_MIRROR": "http://127.0.0.1:9"}
        clips = {
            "hamilton": (HAMILTON, 29.97, 0),
            "crowd": (crowd_clip(folder / "crowd.mp4"), 30.0, args.peer_frames),
        }
        print(f"{cpu_line()}; {os.cpu_count()} cores\n")
        print(
            "| clip | side | frames | s | fps | x real time | frames naming the main person (or any) | wrong frames |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for clip, (path, rate, limit) in clips.items():
            people = folder / clip / "people"
            for name, photo in known_people(clip).items():
                (people / name).mkdir(parents=True)
                (people / name / photo.name).symlink_to(photo)
            gallery = folder / clip / "gallery"
            command = [
                sys.executable,
                "-m",
                "facerec",
                "index",
                str(people),
                "--gallery",
                str(gallery),
                "--backbone",
                "dlib-resnet",
            ]
            subprocess.run(command, env=env, check=True, capture_output=True)
            main_person, wrong = (
                ("lin_manuel_miranda", {"alex_lacamoire"}) if clip == "hamilton" else (None, set())
            )
            wait_for_idle(args.wait)
            peer = subprocess.run(
                [sys.executable, __file__, "--worker", clip, str(path), str(limit)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            peer = json.loads(peer.stdout.splitlines()[-1])
            count = len(peer["frames"])
            said = summary(peer["frames"], wrong, main_person)
            fps = count / peer["work_s"]
            print(
                f"| {clip} | face_recognition example | {count} | {peer['work_s']:.2f} | {fps:.1f} | {fps / rate:.2f}x | {said['named']} | {said['wrong']} |"
            )
            wait_for_idle(args.wait)
            ours = facerec_side(path, gallery, env)
            count = len(ours["frames"])
            said = summary(ours["frames"], wrong, main_person)
            for label, seconds, frames in (
                ("facerec identify (whole process)", ours["whole_s"], count),
                ("facerec identify (from its first frame out)", ours["work_s"], count - 1),
            ):
                fps = frames / seconds
                print(
                    f"| {clip} | {label} | {count} | {seconds:.2f} | {fps:.1f} | {fps / rate:.2f}x "
                    f"| {said['named']} | {said['wrong']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
