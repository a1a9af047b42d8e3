"""Remakes the salt-0 references by running facenet-pytorch 2.6.0 itself under the seeded weights.

The references are facenet-pytorch's own outputs, so they cannot be downloaded: where ../shared is not
beside the checkout, tests/support/material.py installs facenet-pytorch into the cache and runs this script with
it importable (a process of its own, so the test session never imports facenet-pytorch):

    python tests/support/references.py MATERIAL_DIR [PHOTO ...]

It reads MATERIAL_DIR/faces and MATERIAL_DIR/weights/mtcnn and writes the three files of
`material.REFERENCES` under MATERIAL_DIR, each made as ../shared/README.md says ("How the references were
made"). Given PHOTOs (paths relative to MATERIAL_DIR), the pipeline reference holds only those: enough for
tests/downloads/test_material.py to hold this script to ../shared's references in seconds rather than minutes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import MTCNN, InceptionResnetV1
from material import BACKBONE, PIPELINE, SHAPES
from PIL import Image
from seeded_weights import seeded_state_dict

SALT = 0
NUM_CLASSES = 8631  # vggface2's, as the released weights carry them
PHOTO_FOLDERS = ("faces/knn", "faces/photos", "faces/test_images")
ALIGNED_FOLDER = "faces/test_images_aligned"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def images_under(root: Path, folders: tuple[str, ...]) -> list[str]:
    """Every image below `folders`, as sorted paths relative to `root` (the order the references list)."""
    found = (
        p for folder in folders for p in (root / folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
    )
    return sorted(p.relative_to(root).as_posix() for p in found)


def seeded_network() -> tuple[InceptionResnetV1, dict[str, list[int]]]:
    """facenet-pytorch's InceptionResnetV1 with the 8631-class logits, seeded, in eval mode, and its
    layout (key -> shape, in state-dict order)."""
    network = InceptionResnetV1(classify=True, num_classes=NUM_CLASSES)
    shapes = {key: list(value.shape) for key, value in network.state_dict().items()}
    network.load_state_dict(seeded_state_dict(shapes, SALT))
    return network.eval(), shapes


@torch.no_grad()
def embed(network: InceptionResnetV1, faces: torch.Tensor) -> torch.Tensor:
    """Unit embeddings, as `InceptionResnetV1()` (classify=False) gives them."""
    network.classify = False
    return network(faces)


@torch.no_grad()
def logits(network: InceptionResnetV1, faces: torch.Tensor) -> torch.Tensor:
    network.classify = True
    return network(faces)


def standardized(picture: Image.Image) -> torch.Tensor:
    """An RGB picture as a CHW float32 tensor, (pixel - 127.5) / 128."""
    pixels = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32))
    return ((pixels - 127.5) / 128.0).permute(2, 0, 1)


def backbone_reference(root: Path, network: InceptionResnetV1) -> dict:
    """Embeddings and first logits of the faces facenet-pytorch's MTCNN aligned."""
    images = images_under(root, (ALIGNED_FOLDER,))
    faces = torch.stack([standardized(Image.open(root / image)) for image in images])
    scores = logits(network, faces)
    return {
        "salt": SALT,
        "input": "RGB 160x160, (pixel - 127.5) / 128, NCHW float32, eval mode",
        "images": images,
        "embeddings": embed(network, faces).tolist(),
        "logits_first16": scores[:, :16].tolist(),
        "logits_argmax": scores.argmax(dim=1).tolist(),
        "logits_num_classes": NUM_CLASSES,
    }


def seeded_detector(root: Path) -> MTCNN:
    """facenet-pytorch's MTCNN(keep_all=True) holding the MTCNN weights of the material."""
    detector = MTCNN(keep_all=True)
    for net in ("pnet", "rnet", "onet"):
        state = torch.load(root / "weights" / "mtcnn" / f"{net}.pt", weights_only=True)
        getattr(detector, net).load_state_dict(state)
    return detector.eval()


def photo_reference(root: Path, image: str, detector: MTCNN, network: InceptionResnetV1) -> dict:
    """One photo's detections (largest box first, as facenet-pytorch returns them) and crop embeddings."""
    picture = Image.open(root / image).convert("RGB")
    boxes, probs, points = detector.detect(picture, landmarks=True)
    faces = []
    if boxes is not None:
        vectors = embed(network, detector.extract(picture, boxes, None))
        for box, prob, landmarks, vector in zip(boxes, probs, points, vectors, strict=True):
            faces.append(
                {
                    "box": [float(v) for v in box],
                    "prob": float(prob),
                    "landmarks": [[float(x), float(y)] for x, y in landmarks],
                    "embedding": vector.tolist(),
                }
            )
    return {"image": image, "size": list(picture.size), "faces": faces}


def pipeline_reference(root: Path, network: InceptionResnetV1, photos: list[str]) -> dict:
    detector = seeded_detector(root)
    return {
        "salt": SALT,
        "detector": "MTCNN min_face_size=20 thresholds=[0.6,0.7,0.7] factor=0.709; "
        "faces sorted by box area, largest first",
        "crop": "box (no margin) cropped from the RGB image, resized to 160x160 with PIL bilinear, "
        "then (pixel - 127.5) / 128",
        "photos": [photo_reference(root, image, detector, network) for image in photos],
    }


def write(path: Path, text: str) -> None:
    """Write through a temporary name: a reference that exists is a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(text)
    partial.replace(path)


def remake(root: Path, photos: list[str]) -> None:
    network, shapes = seeded_network()
    write(root / BACKBONE, json.dumps(backbone_reference(root, network)))
    write(
        root / PIPELINE,
        json.dumps(pipeline_reference(root, network, photos or images_under(root, PHOTO_FOLDERS))),
    )
    write(root / SHAPES, json.dumps(shapes, indent=0))


if __name__ == "__main__":
    remake(Path(sys.argv[1]), sys.argv[2:])
