"""Faces followed from one detection to the next: ByteTrack's association, with embeddings to re-find a face.

Detections arrive every few frames. Each round matches them to the tracks in two stages, as ByteTrack
does: confident detections first, then the doubtful ones to the tracks still unmatched, each stage an
optimal assignment on box overlap (1 - IoU, SciPy's Hungarian solver) against each track's predicted
box (constant velocity from its last two detections). A doubtful detection never starts a track. A track
left unmatched is lost; lost for longer than `lost_s` it ends. A new track that the next round does not
find again is dropped as a one-off detection; found again, it is confirmed. A confident detection that matches no box
may still be a lost track's face coming back (after a turn of the head, an occlusion or a cut): the
caller embeds it and `resume` compares it with the lost tracks' embeddings before a new track starts.

Why not a tracker library: the well-kept ones (supervision's ByteTrack, boxmot) associate by boxes alone
or bring their own re-identification networks; facerec already embeds each new face to name it, so the
same embedding re-finds lost tracks at no extra cost. The assignment itself is SciPy's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from scipy.optimize import linear_sum_assignment

from facerec.contract.faces import Face

Box = tuple[float, float, float, float]
CONFIDENT = 0.9  # detection score from which a detection may start a track (MTCNN keeps >= 0.7)
MATCH_IOU = 0.3  # overlap below which a detection is not the same face as a track's predicted box


@dataclass
class Sighting:
    """Where a track's face is in one frame; `detected` False for a box interpolated between detections."""

    frame: int
    time: float
    face: Face
    detected: bool = True


@dataclass
class Track:
    """One face followed through time, with the embeddings of its best views and its current name."""

    number: int  # from 1, in the order tracks are confirmed (0 before)
    sightings: list[Sighting]
    lost_since: float | None = None  # time of the first round that did not find it
    views: list[tuple[float, torch.Tensor]] = field(default_factory=list)  # (quality, embedding), best first
    identity: str | None = None
    distance: float | None = None
    candidates: list[tuple[str, float]] = field(default_factory=list)
    named: bool = False
    confirmed: bool = False  # found again at the round after its first: a face, not a one-off detection

    @property
    def last(self) -> Sighting:
        return next(s for s in reversed(self.sightings) if s.detected)

    @property
    def start(self) -> float:
        return self.sightings[0].time

    @property
    def end(self) -> float:
        return self.sightings[-1].time

    def predicted(self, frame: int) -> Box:
        """The box expected at `frame`: the last detected box moved on at the pace of the last two."""
        detected = [s for s in self.sightings if s.detected][-2:]
        if len(detected) < 2 or detected[1].frame == detected[0].frame:
            return detected[-1].face.box
        (a, b), step = detected, (frame - detected[1].frame) / (detected[1].frame - detected[0].frame)
        return tuple(q + (q - p) * step for p, q in zip(a.face.box, b.face.box, strict=True))

    def embedding(self) -> torch.Tensor | None:
        """The mean of the best views' embeddings, as a unit vector (None before any view)."""
        if not self.views:
            return None
        mean = torch.stack([vector for _, vector in self.views]).mean(dim=0)
        return mean / mean.norm().clamp_min(1e-12)

    def frames_json(self) -> list[list[float]]:
        return [[s.frame, *(round(v, 2) for v in s.face.box)] for s in self.sightings]


def iou_matrix(a: list[Box], b: list[Box]) -> np.ndarray:
    """IoU of every box of `a` with every box of `b`, (len(a), len(b))."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    first, second = np.asarray(a, float)[:, None, :], np.asarray(b, float)[None, :, :]
    inner = np.clip(
        np.minimum(first[..., 2:], second[..., 2:]) - np.maximum(first[..., :2], second[..., :2]), 0, None
    )
    overlap = inner[..., 0] * inner[..., 1]
    area = lambda boxes: (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # noqa: E731
    return overlap / np.maximum(area(first) + area(second) - overlap, 1e-9)


def assign(tracks: list[Track], faces: list[Face], frame: int) -> list[tuple[int, int]]:
    """Optimal (track index, face index) pairs overlapping by at least MATCH_IOU."""
    overlap = iou_matrix([track.predicted(frame) for track in tracks], [face.box for face in faces])
    if overlap.size == 0:
        return []
    rows, cols = linear_sum_assignment(1 - overlap)
    return [(r, c) for r, c in zip(rows, cols, strict=True) if overlap[r, c] >= MATCH_IOU]


class Tracker:
    """The live tracks of one video (see the module docstring)."""

    def __init__(self, lost_s: float = 1.0) -> None:
        self.lost_s = lost_s
        self.tracks: list[Track] = []
        self.numbered = 0

    def update(
        self, frame: int, moment: float, faces: list[Face]
    ) -> tuple[list[Track], list[Face], list[Track]]:
        """One detection round: (tracks found again, confident faces no track took, tracks that ended)."""
        confident = [face for face in faces if face.score is None or face.score >= CONFIDENT]
        doubtful = [face for face in faces if face.score is not None and face.score < CONFIDENT]
        found: list[Track] = []
        open_tracks = list(self.tracks)
        fresh: list[Face] = []
        for group in (confident, doubtful):
            pairs = assign(open_tracks, group, frame)
            for row, col in pairs:
                self._extend(open_tracks[row], frame, moment, group[col])
                found.append(open_tracks[row])
            if group is confident:
                used = {col for _, col in pairs}
                fresh = [face for i, face in enumerate(group) if i not in used]
            taken = {row for row, _ in pairs}
            open_tracks = [track for i, track in enumerate(open_tracks) if i not in taken]
        ended, dropped = [], []
        for track in open_tracks:
            if not track.confirmed:  # seen once, not again: a one-off detection
                dropped.append(track)
                continue
            track.lost_since = moment if track.lost_since is None else track.lost_since
            if moment - track.lost_since > self.lost_s:
                ended.append(track)
        for track in found:
            if not track.confirmed:
                self.numbered += 1
                track.number, track.confirmed = self.numbered, True
        self.tracks = [track for track in self.tracks if track not in ended and track not in dropped]
        return found, fresh, ended

    def _extend(self, track: Track, frame: int, moment: float, face: Face) -> None:
        track.sightings.append(Sighting(frame, moment, face))
        track.lost_since = None

    def resume(
        self, frame: int, moment: float, face: Face, embedding: torch.Tensor | None, within: float
    ) -> Track:
        """The lost track whose embedding lies within `within` of the face's (the nearest), carried on with
        it; else a new track. Resumed tracks are not interpolated across the gap."""
        lost = [(t, t.embedding()) for t in self.tracks if t.lost_since is not None and t.views]
        if embedding is not None and lost:
            distances = [float((mean - embedding).norm()) for _, mean in lost]
            nearest = int(np.argmin(distances))
            if distances[nearest] <= within:
                self._extend(lost[nearest][0], frame, moment, face)
                return lost[nearest][0]
        track = Track(0, [Sighting(frame, moment, face)])  # numbered when confirmed
        self.tracks.append(track)
        return track

    def finish(self) -> list[Track]:
        """Every confirmed track still open, ended (the video is over)."""
        ended, self.tracks = [track for track in self.tracks if track.confirmed], []
        return ended


def quality(image: Image.Image, face: Face) -> float:
    """How good a view of a face is for naming it: its size, the detector's score, its sharpness (the
    variance of a Laplacian over the face) and, with landmarks, how frontal it is."""
    x1, y1, x2, y2 = face.box
    side = math.sqrt(max(face.area, 1.0))
    crop = image.crop((int(x1), int(y1), max(int(x2), int(x1) + 1), max(int(y2), int(y1) + 1)))
    grey = np.asarray(crop.convert("L").resize((48, 48), Image.BILINEAR), np.float32)
    laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    spread = float(laplacian.var())
    frontal = 1.0
    if face.landmarks is not None:
        (lx, _), (rx, _), (nx, _), _, _ = face.landmarks
        eyes = max(abs(rx - lx), 1e-6)
        frontal = max(0.0, 1.0 - abs(nx - (lx + rx) / 2) / eyes)
    return side * (face.score if face.score is not None else 1.0) * spread / (spread + 100.0) * frontal


def interpolated(before: Sighting, after: Sighting, frame: int, moment: float) -> Sighting:
    """The box between two detections of one track at `frame`, linearly."""
    share = (frame - before.frame) / (after.frame - before.frame)
    box = tuple(p + (q - p) * share for p, q in zip(before.face.box, after.face.box, strict=True))
    return Sighting(frame, moment, Face(box), detected=False)
