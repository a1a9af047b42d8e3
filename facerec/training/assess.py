"""An evaluation run: embed a labelled folder (or the images of an LFW pairs file), measure, write files.

Faces come through the face cache, as in training, so evaluating after each run of a fine-tuning does
not detect again. Each image contributes its largest face; images that cannot be read or show no face
are reported and left out (with the pairs they belong to). The run writes `metrics.json` and `roc.png` into its folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facerec.atomic import write_atomically
from facerec.errors import FacerecError
from facerec.gallery.enroll import scan
from facerec.pipeline.engine import LoadedBackbone
from facerec.pipeline.weights import sha256_file
from facerec.training import evaluation
from facerec.training.dataset import read_faces
from facerec.training.facecache import FaceCache
from facerec.training.plots import roc_curve

METRICS = "metrics.json"
ROC_PLOT = "roc.png"
EMBED_BATCH = 32
Report = Callable[[str], None]


def embed_images(
    cache: FaceCache, backbone: LoadedBackbone, images: Sequence[tuple[str, str]], report: Report
) -> dict[str, np.ndarray]:
    """The embedding of the largest face of each (path, SHA-256), by path, through the face cache;
    unusable images are reported and left out.
    """
    crops = cache.crops(images, report)
    kept = [(path, crop) for (path, _), crop in zip(images, crops, strict=True) if crop is not None]
    found = {}
    for start in range(0, len(kept), EMBED_BATCH):
        chunk = kept[start : start + EMBED_BATCH]
        vectors = backbone.embed(read_faces([crop for _, crop in chunk], cache.pipeline.recipe)).numpy()
        found.update((path, vector) for (path, _), vector in zip(chunk, vectors, strict=True))
    return found


def verification(distances: np.ndarray, same: np.ndarray, folds: int, far: float) -> dict[str, Any]:
    """FaceNet's verification figures for pairs at `distances` with ground truth `same`."""
    curve = evaluation.roc(distances, same)
    accuracy = evaluation.kfold_accuracy(distances, same, folds)
    at_far = evaluation.tar_at_far(distances, same, far)
    return {
        "pairs": len(same),
        "genuine": int(same.sum()),
        "impostor": int((~same).sum()),
        "auc": curve.auc,
        "accuracy": accuracy.mean,
        "accuracy_std": accuracy.std,
        "folds": len(accuracy.accuracies),
        "threshold": float(np.mean(accuracy.thresholds)),
        "tar_at_far": {
            "far": far,
            "tar": at_far.tar,
            "far_reached": at_far.far,
            "threshold": at_far.threshold,
            "impostor_pairs": at_far.impostor_pairs,
        },
        "roc": curve,
    }


def evaluate_folder(
    cache: FaceCache,
    backbone: LoadedBackbone,
    folder: Path,
    impostors: int,
    folds: int,
    far: float,
    seed: int,
    report: Report,
) -> dict[str, Any]:
    """Identification (gallery/probe) and verification (all genuine pairs, sampled impostor pairs)."""
    images = scan(Path(folder), report)
    embedded = embed_images(cache, backbone, [(image.source, image.sha256) for image in images], report)
    kept = [image for image in images if image.source in embedded]
    if not kept:
        raise FacerecError(f"{folder}: no faces found to evaluate")
    vectors = np.stack([embedded[image.source] for image in kept])
    names = sorted({image.identity for image in kept})
    labels = np.array([names.index(image.identity) for image in kept])
    first, second, same = evaluation.label_pairs(labels, impostors, seed)
    distances = evaluation.pair_distances(vectors, first, second)
    try:
        found = evaluation.identification(vectors, labels)
    except ValueError as error:
        raise FacerecError(f"{folder}: {error}") from None
    return {
        "images": len(kept),
        "identities": len(names),
        "identification": {"accuracy": found.accuracy, "probes": found.probes, "gallery": found.gallery},
        "verification": _checked(verification, distances, same, folds, far, folder),
    }


def evaluate_pairs(
    cache: FaceCache,
    backbone: LoadedBackbone,
    pairs_file: Path,
    root: Path,
    folds: int | None,
    far: float,
    report: Report,
) -> dict[str, Any]:
    """Verification on the pairs of an LFW `pairs.txt` whose images lie under `root`, in its folds."""
    pairs = evaluation.read_pairs(pairs_file, root)
    unique = sorted({str(p) for p in pairs.first + pairs.second})
    embedded = embed_images(cache, backbone, [(path, sha256_file(Path(path))) for path in unique], report)
    usable = np.array(
        [str(a) in embedded and str(b) in embedded for a, b in zip(pairs.first, pairs.second, strict=True)]
    )
    if not usable.all():
        report(f"{pairs_file}: {int((~usable).sum())} pairs left out (an image without a face)")
    first = np.stack([embedded[str(p)] for p, ok in zip(pairs.first, usable, strict=True) if ok])
    second = np.stack([embedded[str(p)] for p, ok in zip(pairs.second, usable, strict=True) if ok])
    distances = np.linalg.norm(first - second, axis=1)
    return {
        "images": len(embedded),
        "pairs_file": str(pairs_file),
        "verification": _checked(
            verification, distances, pairs.same[usable], folds or pairs.folds, far, pairs_file
        ),
    }


def _checked(measure: Callable, distances, same, folds, far, source) -> dict[str, Any]:
    try:
        return measure(distances, same, folds, far)
    except ValueError as error:
        raise FacerecError(f"{source}: {error}") from None


def write_results(out: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Write `metrics.json` (without the ROC points) and `roc.png` into `out`; returns what was written."""
    out.mkdir(parents=True, exist_ok=True)
    curve = metrics["verification"].pop("roc")
    at = metrics["verification"]["tar_at_far"]
    marked = (at["far"], at["tar"])
    roc_curve(out / ROC_PLOT, curve.far.tolist(), curve.tar.tolist(), curve.auc, marked)
    text = json.dumps(metrics, indent=2, ensure_ascii=False) + "\n"
    write_atomically(out / METRICS, lambda f: f.write(text.encode()))
    return metrics
