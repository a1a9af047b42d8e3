"""Enrolling someone from a short video: the best views of the clip's main face, spread over the clip.

`facerec index DIR` takes a clip inside `DIR/<person>/` beside photos. The clip's faces are tracked
(facerec.video.tracking); its main track is the one seen in the most detections (the person holding the
phone, or filmed). The clip is cut into `count` equal spans of time and the best view of the main track
in each span (size, score, sharpness, frontality) is embedded, so the person is enrolled from several
angles and moments rather than from one frame repeated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from facerec.contract.faces import Face
from facerec.video.source import VideoSource
from facerec.video.tracking import Tracker, quality

VIEWS = 5  # faces a clip enrolls at most
STRIDE = 3  # detect every third frame: a phone clip's face barely moves in a tenth of a second


@dataclass
class View:
    """A candidate: the input picture of one face of the main track, and how good it is."""

    quality: float
    frame: int
    time: float
    face: Face
    picture: Image.Image


def best_views(
    pipeline: Any, path: str, count: int = VIEWS
) -> tuple[list[tuple[Face, float, torch.Tensor]], str | None]:
    """The best views of the clip's main face (see the module docstring) as (face, seconds into the clip,
    embedding), and a one-line problem
    (None when the clip was read whole). No face at all: an empty list. FacerecError (naming the file)
    when it cannot be opened as a video."""
    source = VideoSource(path, live=False)
    spans = max(count, 1)
    total = source.frame_count
    tracker, best = Tracker(), {}
    for frame in source.frames():
        if frame.index % STRIDE:
            continue
        (faces,) = pipeline.find([frame.image])
        found, fresh, _ = tracker.update(frame.index, frame.time, faces)
        tracks = found + [tracker.resume(frame.index, frame.time, face, None, -1.0) for face in fresh]
        span = min(spans - 1, frame.index * spans // total) if total else frame.index // (STRIDE * 10)
        for track in tracks:
            face = track.last.face
            value = quality(frame.image, face)
            kept = best.setdefault(id(track), (track, {}))[1]
            if span not in kept or value > kept[span].quality:
                kept[span] = View(
                    value, frame.index, frame.time, face, pipeline.pictures(frame.image, [face])[0]
                )
    if not best:
        return [], source.summary()
    track, views = max(best.values(), key=lambda item: sum(s.detected for s in item[0].sightings))
    chosen = (
        sorted(views.values(), key=lambda view: -view.quality)[:count]
        if total is None
        else list(views.values())
    )
    chosen.sort(key=lambda view: view.frame)
    vectors = pipeline.embed_pictures([view.picture for view in chosen])
    return [(v.face, v.time, vector) for v, vector in zip(chosen, vectors, strict=True)], source.summary()
