"""Peak memory of identifying one very large photo: facerec with each built-in detector against its peers.

A camera's 24 MP photo, and a 60 MP one, made by scaling up ../shared/faces/photos/two_people.jpg (two
faces), are identified in a fresh process per side; the figure is the process's peak resident memory
(ru_maxrss from wait4). facerec identifies against a small gallery of the same two people (indexed
first, not measured); the peers do what their examples do with one photo:

- facenet-pytorch 2.6.0: MTCNN(keep_all=True) on the photo, InceptionResnetV1 on the crops;
- face_recognition 1.3.0: face_locations(model="cnn") then face_encodings.

Each process runs under an 8 GB data cap (RLIMIT_DATA) so a peer that needs more fails instead of taking
the machine; such a run is reported as "> 8 GB". Inception-ResNet runs under the project's seeded
weights (vggface2 cannot be downloaded here); memory does not depend on the weights' values.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 24 60]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_embed import PEER, cpu_line, ensure_peer, mtcnn_home, seeded_weights

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CAP = 8 * 10**9
SIDES = {
    "facenet-pytorch MTCNN + InceptionResnetV1": "facenet-pytorch",
    "face_recognition cnn + encodings": "face_recognition",
    "facerec identify, mtcnn + inception-resnet": "facerec:mtcnn:inception-resnet",
    "facerec identify, dlib-cnn + dlib-resnet": "facerec:dlib-cnn:dlib-resnet",
    "facerec identify, mtcnn + dlib-resnet": "facerec:mtcnn:dlib-resnet",
    "facerec identify, none + inception-resnet": "facerec:none:inception-resnet",
}


def peer_worker(side: str, photo: str, weights: str) -> None:
    """Runs in the measured process: one peer on one photo; prints how many faces it embedded."""
    if side == "facenet-pytorch":
        import torch
        from facenet_pytorch import MTCNN, InceptionResnetV1
        from PIL import Image

        image = Image.open(photo).convert("RGB")
        mtcnn = MTCNN(keep_all=True)
        network = InceptionResnetV1().eval()
        network.load_state_dict(torch.load(weights, weights_only=True))
        crops = mtcnn(image)
        with torch.inference_mode():
            faces = 0 if crops is None else len(network(crops))
    else:
        import face_recognition

        pixels = face_recognition.load_image_file(photo)
        faces = len(
            face_recognition.face_encodings(pixels, face_recognition.face_locations(pixels, model="cnn"))
        )
    print(json.dumps({"faces": faces}))


def measured(command: list[str], env: dict[str, str]) -> tuple[float | None, str]:
    """Peak RSS in MB of `command` (None when it ran out of the cap), and its last line of output."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (CAP, CAP))

    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=cap
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.stdout.close()
    last = (output.strip().splitlines() or [""])[-1]
    if os.waitstatus_to_exitcode(status) != 0:
        return None, last
    return usage.ru_maxrss / 1024, last


def photo_of(size_mp: int, folder: Path) -> Path:
    from PIL import Image

    width = int((size_mp * 1e6 * 1.5) ** 0.5)
    path = folder / f"two_people_{size_mp}mp.jpg"
    with Image.open(SHARED / "faces" / "photos" / "two_people.jpg") as source:
        source.convert("RGB").resize((width, width * 2 // 3), Image.BILINEAR).save(path, quality=90)
    return path


def galleries(folder: Path, env: dict[str, str], weights: Path) -> dict[str, Path]:
    """One small gallery per facerec side, made with its detector and backbone (identify refuses other
    models): the two people of the photo, each half of it at its own size."""
    from PIL import Image

    people = folder / "people"
    with Image.open(SHARED / "faces" / "photos" / "two_people.jpg") as source:
        image = source.convert("RGB")
        halves = {"left": (0, 0, image.width // 2, image.height), "right": (image.width // 2, 0, *image.size)}
        for name, box in halves.items():
            (people / name).mkdir(parents=True, exist_ok=True)
            image.crop(box).save(people / name / "1.jpg")
    made = {}
    for side in (side for side in SIDES.values() if side.startswith("facerec:")):
        _, detector, backbone = side.split(":")
        made[side] = folder / f"gallery-{detector}-{backbone}"
        command = [sys.executable, "-m", "facerec", "index", str(people), "--gallery", str(made[side])]
        command += ["--backbone", backbone, "--detector", detector]
        command += ["--weights", str(weights)] if backbone == "inception-resnet" else []
        subprocess.run(command, env=env, check=True, capture_output=True)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 60], help="Megapixels.")
    parser.add_argument("--worker", nargs=3, metavar=("SIDE", "PHOTO", "WEIGHTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        peer_worker(*args.worker)
        return
    ensure_peer()
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        env = {**os.environ, "TORCH_HOME": str(mtcnn_home(folder)), "FACEREC_MIRROR": "http://127.0.0.1:9"}
        weights = seeded_weights(folder)
        made = galleries(folder, env, weights)
        print(f"{cpu_line()}; {os.cpu_count()} cores; {PEER}; peak resident memory, MB\n")
        print("| side | " + " | ".join(f"{size} MP" for size in args.sizes) + " |")
        print("| --- |" + " ---: |" * len(args.sizes))
        photos = [photo_of(size, folder) for size in args.sizes]
        for label, side in SIDES.items():
            cells = []
            for photo in photos:
                if side.startswith("facerec:"):
                    command = [sys.executable, "-m", "facerec", "identify", str(photo), "--json"]
                    command += ["--gallery", str(made[side])]
                else:
                    command = [sys.executable, __file__, "--worker", side, str(photo), str(weights)]
                peak, last = measured(command, env)
                cells.append(f"{peak:,.0f}" if peak is not None else f"> {CAP // 10**9} GB ({last[:60]})")
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
