"""Clustering faces into people: every rule facerec has, against dlib's chinese whispers, in one run.

Quality: the labelled faces of ../shared (the five-person set's train and test photos with one known
person each, facenet-pytorch's four test people, face_recognition's photos of Obama, Alex Lacamoire and
Lin-Manuel Miranda: 21 faces of 10 people), each photo's largest face. facerec embeds them with
dlib-resnet (face_recognition's model) and clusters at its same-person distance, 0.38; the peer is
`dlib.chinese_whispers_clustering` at 0.5 on face_recognition's own encodings of the same faces, as
face_recognition's clustering example does. Scores: pairwise precision, recall and F1, and BCubed F.

Speed: synthetic galleries of 10k and 100k faces, people drawn as clusters on the 128-d sphere (4-6
faces each, spread like one person's photos), to time the neighbour search and the clustering alone.

    .venv/bin/python benchmarks/bench_cluster.py [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_embed import cpu_line, mtcnn_home

from facerec.people import clustering

SHARED = Path(__file__).resolve().parents[2] / "shared" / "faces"
LABELLED = {
    "alex_lacamoire": [
        "knn/train/alex_lacamoire/img1.jpg",
        "knn/test/alex_lacamoire1.jpg",
        "photos/alex-lacamoire.png",
    ],
    "biden": ["knn/train/biden/biden.jpg", "knn/train/biden/biden2.jpg"],
    "kit_harington": [
        "knn/train/kit_harington/john1.jpeg",
        "knn/train/kit_harington/john2.jpeg",
        "knn/test/johnsnow_test1.jpg",
    ],
    "obama": [
        "knn/train/obama/obama.jpg",
        "knn/train/obama/obama2.jpg",
        "knn/test/obama1.jpg",
        "photos/obama3.jpg",
        "photos/obama_small.jpg",
        "photos/obama_partial_face.jpg",
    ],
    "rose_leslie": ["knn/train/rose_leslie/img1.jpg", "knn/train/rose_leslie/img2.jpg"],
    "lin_manuel_miranda": ["photos/lin-manuel-miranda.png"],
    **{
        person: [f"test_images/{person}/1.jpg"]
        for person in ("angelina_jolie", "kate_siegel", "paul_rudd", "shea_whigham")
    },
}
DISTANCE = 0.38


def labelled() -> tuple[list[Path], list[str]]:
    paths = [SHARED / file for files in LABELLED.values() for file in files]
    return paths, [person for person, files in LABELLED.items() for _ in files]


def facerec_vectors(paths: list[Path]) -> np.ndarray:
    from facerec.pipeline.engine import build_pipeline

    pipeline = build_pipeline(backbone="dlib-resnet", device="cpu")
    return np.stack([result.embeddings[0].numpy() for result in pipeline.run(paths)])


def dlib_labels(paths: list[Path]) -> list[int]:
    import dlib
    import face_recognition

    encodings = []
    for path in paths:
        pixels = face_recognition.load_image_file(path)
        boxes = face_recognition.face_locations(pixels) or face_recognition.face_locations(
            pixels, model="cnn"
        )
        largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        encodings.append(dlib.vector(face_recognition.face_encodings(pixels, [largest])[0]))
    return list(dlib.chinese_whispers_clustering(encodings, 0.5))


def synthetic(count: int, width: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 7, count // 4)
    who = np.repeat(np.arange(len(sizes)), sizes)[:count]
    centres = rng.standard_normal((len(sizes), width)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = centres[who] + rng.standard_normal((len(who), width)).astype(np.float32) * (
        0.2 / np.sqrt(width)
    )
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    print(f"{cpu_line()}; {os.cpu_count()} cores\n")
    with tempfile.TemporaryDirectory() as work:
        os.environ["TORCH_HOME"] = str(mtcnn_home(Path(work)))
        paths, truth = labelled()
        vectors = facerec_vectors(paths)
        print(f"Quality on {len(paths)} labelled faces of {len(set(truth))} people\n")
        print("| rule | pairwise precision | pairwise recall | pairwise F1 | BCubed F |")
        print("| --- | ---: | ---: | ---: | ---: |")
        rows = [
            (f"facerec {rule} at {DISTANCE}", clustering.cluster(vectors, DISTANCE, rule))
            for rule in clustering.RULES
        ]
        rows.append(
            ("dlib chinese_whispers_clustering at 0.5 (face_recognition encodings)", dlib_labels(paths))
        )
        for name, labels in rows:
            precision, recall, f1 = clustering.pairwise_scores(labels, truth)
            print(
                f"| {name} | {precision:.3f} | {recall:.3f} | {f1:.3f} | {clustering.bcubed_f(labels, truth):.3f} |"
            )
    print("\nSpeed on synthetic 128-d galleries (seconds)\n")
    print("| faces | neighbour graph (FAISS) | " + " | ".join(clustering.RULES) + " |")
    print("| ---: | ---: |" + " ---: |" * len(clustering.RULES))
    for size in args.sizes:
        vectors = synthetic(size)
        started = time.perf_counter()
        graph = clustering.neighbour_graph(vectors, DISTANCE)
        cells = [f"{time.perf_counter() - started:.1f}"]
        for rule in clustering.RULES:
            started = time.perf_counter()
            if rule == "incremental":
                clustering.incremental(graph)
            elif rule == "dbscan":
                clustering.dbscan(graph, DISTANCE)
            else:
                clustering.chinese_whispers(graph)
            cells.append(f"{time.perf_counter() - started:.1f}")
        print(f"| {size:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
