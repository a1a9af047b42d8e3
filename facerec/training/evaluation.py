"""Verification and identification metrics on distances between unit embeddings (plain numpy).

A pair is accepted as the same person when its Euclidean distance is at most the threshold (FaceNet's
convention). Verification follows FaceNet's LFW protocol: 10 contiguous folds, the threshold chosen on
nine and the accuracy measured on the tenth; the ROC, its area and the true-accept rate at a false-accept
rate of 1e-3 use all pairs. Identification puts the first image of every identity in a gallery and asks
which gallery identity is nearest to each other image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerec.errors import FacerecError
from facerec.pipeline.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Roc:
    """False- and true-accept rates at each threshold, from accepting nothing to accepting everything."""

    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray  # accept when distance <= threshold; -inf first

    @property
    def auc(self) -> float:
        """The area under the curve (trapezoids)."""
        return float(np.sum(np.diff(self.far) * (self.tar[1:] + self.tar[:-1]) / 2))


def _sorted_counts(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct distances ascending, with how many genuine and impostor pairs lie at or below each."""
    order = np.argsort(distances, kind="stable")
    values, same = distances[order], same[order]
    genuine, impostor = np.cumsum(same), np.cumsum(~same)
    last_of_run = np.append(values[1:] != values[:-1], True)
    return values[last_of_run], genuine[last_of_run], impostor[last_of_run]


def roc(distances: np.ndarray, same: np.ndarray) -> Roc:
    """The ROC of pairs at `distances` whose ground truth is `same` (both classes must be present)."""
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    _require_both(same)
    values, genuine, impostor = _sorted_counts(distances, same)
    return Roc(
        far=np.concatenate([[0.0], impostor / (~same).sum()]),
        tar=np.concatenate([[0.0], genuine / same.sum()]),
        thresholds=np.concatenate([[-np.inf], values]),
    )


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) of the threshold with the highest accuracy, midway between distances."""
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    values, genuine, impostor = _sorted_counts(distances, same)
    correct = np.concatenate([[(~same).sum()], genuine + (~same).sum() - impostor])  # accept none, <= each
    best = int(np.argmax(correct))
    if best == 0:
        threshold = values[0] - 1e-6
    elif best == len(values):
        threshold = values[-1] + 1e-6
    else:
        threshold = (values[best - 1] + values[best]) / 2
    return float(threshold), float(correct[best] / len(same))


@dataclass(frozen=True)
class FoldAccuracy:
    accuracies: list[float]
    thresholds: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))


def kfold_accuracy(distances: np.ndarray, same: np.ndarray, folds: int = 10) -> FoldAccuracy:
    """Accuracy on each of `folds` contiguous folds with the best threshold of the others (LFW protocol)."""
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    folds = min(folds, len(same))
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 pairs")
    accuracies, thresholds = [], []
    for test in np.array_split(np.arange(len(same)), folds):
        train = np.setdiff1d(np.arange(len(same)), test)
        threshold, _ = best_threshold(distances[train], same[train])
        accuracies.append(float(np.mean((distances[test] <= threshold) == same[test])))
        thresholds.append(threshold)
    return FoldAccuracy(accuracies, thresholds)


@dataclass(frozen=True)
class TarAtFar:
    tar: float
    far: float  # the rate reached, at most the one asked for
    threshold: float
    impostor_pairs: int


def tar_at_far(distances: np.ndarray, same: np.ndarray, far: float = 1e-3) -> TarAtFar:
    """The true-accept rate at the largest threshold whose false-accept rate is at most `far`.

    With fewer than 1/far impostor pairs the rate cannot be resolved, and this is the rate at zero false
    accepts; `impostor_pairs` says how many there were.
    """
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    _require_both(same)
    impostors = np.sort(distances[~same])
    allowed = int(np.floor(far * len(impostors)))
    threshold = np.nextafter(impostors[allowed], -np.inf) if allowed < len(impostors) else np.inf
    return TarAtFar(
        tar=float(np.mean(distances[same] <= threshold)),
        far=float(np.mean(impostors <= threshold)),
        threshold=float(threshold),
        impostor_pairs=len(impostors),
    )


def _require_both(same: np.ndarray) -> None:
    if same.all() or not same.any():
        raise ValueError("verification needs both genuine and impostor pairs")


def label_pairs(
    labels: np.ndarray, impostors: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, same): every genuine pair of `labels`, then up to `impostors` impostor pairs
    sampled without replacement, shuffled together (so that contiguous folds mix both).
    """
    labels = np.asarray(labels)
    first, second = np.triu_indices(len(labels), k=1)
    same = labels[first] == labels[second]
    rng = np.random.default_rng(seed)
    impostor = np.flatnonzero(~same)
    if len(impostor) > impostors:
        impostor = np.sort(rng.choice(impostor, impostors, replace=False))
    keep = rng.permutation(np.concatenate([np.flatnonzero(same), impostor]))
    return first[keep], second[keep], same[keep]


def pair_distances(embeddings: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Euclidean distances between the embeddings of each pair."""
    return np.linalg.norm(embeddings[first] - embeddings[second], axis=1)


@dataclass(frozen=True)
class Identification:
    accuracy: float  # nearest gallery identity is the probe's own
    probes: int
    gallery: int


def identification(embeddings: np.ndarray, labels: np.ndarray) -> Identification:
    """Rank-1 accuracy with the first image of each identity as its gallery entry and the others as probes.

    Identities with a single image stay in the gallery as distractors.
    """
    labels = np.asarray(labels)
    _, first = np.unique(labels, return_index=True)
    in_gallery = np.zeros(len(labels), dtype=bool)
    in_gallery[first] = True
    probes = np.flatnonzero(~in_gallery)
    if len(probes) == 0:
        raise ValueError("identification needs an identity with at least two images")
    gallery = np.flatnonzero(in_gallery)
    distances = np.linalg.norm(embeddings[probes][:, None, :] - embeddings[gallery][None, :, :], axis=2)
    nearest = labels[gallery][np.argmin(distances, axis=1)]
    return Identification(float(np.mean(nearest == labels[probes])), len(probes), len(gallery))


@dataclass(frozen=True)
class PairsFile:
    """Image pairs from an LFW `pairs.txt`, in file order, and how many folds its header declares."""

    first: list[Path]
    second: list[Path]
    same: np.ndarray
    folds: int


def read_pairs(path: Path, root: Path) -> PairsFile:
    """Read LFW's pairs format: a header `FOLDS PAIRS_PER_FOLD` (or just a count, one fold), then
    `NAME N M` for a genuine pair and `NAME1 N NAME2 M` for an impostor one. Image N of NAME is
    `root/NAME/NAME_NNNN.jpg` (or another image suffix).
    """
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines or not all(field.isdigit() for field in lines[0]) or len(lines[0]) > 2:
        raise FacerecError(f"{path}: line 1: expected 'FOLDS PAIRS_PER_FOLD' (LFW pairs.txt format)")
    folds = int(lines[0][0]) if len(lines[0]) == 2 else 1
    first, second, same = [], [], []
    for number, fields in enumerate(lines[1:], start=2):
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            names = (fields[0], fields[1], fields[0], fields[2])
        elif len(fields) == 4 and fields[1].isdigit() and fields[3].isdigit():
            names = tuple(fields)
        else:
            raise FacerecError(f"{path}: line {number}: expected 'NAME N M' or 'NAME1 N NAME2 M'")
        first.append(_lfw_image(root, names[0], int(names[1]), path, number))
        second.append(_lfw_image(root, names[2], int(names[3]), path, number))
        same.append(len(fields) == 3)
    return PairsFile(first, second, np.array(same, dtype=bool), folds)


def _lfw_image(root: Path, name: str, number: int, pairs: Path, line: int) -> Path:
    stem = Path(root) / name / f"{name}_{number:04d}"
    for suffix in IMAGE_SUFFIXES:
        if stem.with_suffix(suffix).exists():
            return stem.with_suffix(suffix)
    raise FacerecError(f"{pairs}: line {line}: no image {stem}.jpg")
