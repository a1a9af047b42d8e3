"""Naming the faces of a video: detect every few frames, track, embed each track's best views, name tracks.

Detection runs on a stride of frames: fixed (`stride`), or chosen as it goes so that detection takes
about half of the video's own time (`stride=None`), which keeps a file faster than real time and a live
source from falling behind. Between two detections a track's box is interpolated, so every frame gets
its faces. A track is embedded on a few of its best views (size, detector score, sharpness, how frontal
the landmarks are), not on every frame: a new view is embedded only when it is better than the worst
kept one, and the track's name is decided again from the mean of its views each time one is added, once
it has two (one view can be a poor one).

`follow` yields, in order, one `FrameReport` per frame (with the frame's picture, for drawing) and a
`TrackReport` when a track ends; for a live source also when a named track changes its name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from facerec.contract.faces import Face
from facerec.gallery.identify import decide, named_candidates
from facerec.video.source import Frame, VideoSource
from facerec.video.tracking import Sighting, Track, Tracker, interpolated, quality

if TYPE_CHECKING:
    from facerec.gallery.identify import Identifier

VIEWS = 3  # embedded views kept per track
BETTER = 1.15  # a view replaces the worst kept one when its quality is this much higher
NAME_VIEWS = 2  # views a track needs before it is given a name
DETECT_SHARE = 0.5  # with stride=None, the share of the video's time detection rounds may take
MAX_STRIDE = 15


@dataclass
class TrackReport:
    """A track as `identify`/`watch` print it: who, how sure, when and where in the frames."""

    video: str
    track: Track
    ended: bool = True

    def to_json(self) -> dict[str, Any]:
        track = self.track
        return {
            "video": self.video,
            "track": track.number,
            "identity": track.identity,
            "distance": track.distance,
            "candidates": [{"identity": name, "distance": d} for name, d in track.candidates],
            "start": round(track.start, 3),
            "end": round(track.end, 3),
            "frames": track.frames_json(),
        }


@dataclass
class FrameReport:
    """One frame with the faces its tracks have in it."""

    video: str
    frame: int
    time: float
    image: Image.Image
    faces: list[tuple[Sighting, Track]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        faces = []
        for sighting, track in self.faces:
            faces.append(
                {
                    **sighting.face.to_json(),
                    "track": track.number,
                    "identity": track.identity,
                    "distance": track.distance,
                }
            )
        return {"video": self.video, "frame": self.frame, "time": round(self.time, 3), "faces": faces}


@dataclass
class Following:
    """A video being followed: iterate for its reports; `source` says how reading went."""

    source: VideoSource
    events: Iterator[FrameReport | TrackReport]

    def __iter__(self) -> Iterator[FrameReport | TrackReport]:
        return self.events


class Follower:
    """Follows the faces of videos with one gallery's models and head (an Identifier)."""

    def __init__(
        self,
        identifier: Identifier,
        threshold: float | None = None,
        top_k: int = 3,
        stride: int | None = None,
    ) -> None:
        self.identifier = identifier
        self.pipeline = identifier.pipeline
        self.threshold = identifier.default_threshold() if threshold is None else threshold
        self.top_k = top_k
        self.stride = stride
        self.resume_within = identifier.distance_threshold  # None (a probability head): no re-finding

    def follow(
        self, source: VideoSource, stop: Callable[[], bool] | None = None, name: str | None = None
    ) -> Following:
        """See the module docstring; the source is read once, until it ends or `stop()` says True.
        `name` names the video in the reports (default: the source's own, a path or URL)."""
        return Following(source, self._events(source, stop, name or source.name))

    def session(self, name: str, fps: float, live: bool) -> Session:
        """Follow frames the caller pushes (`take` each, then `finish`): frames from a browser's camera,
        say. `name` is the video's name in the reports, `fps` its expected frame rate."""
        return Session(self, name, fps, live)

    def _events(
        self, source: VideoSource, stop: Callable[[], bool] | None, name: str
    ) -> Iterator[FrameReport | TrackReport]:
        run = self.session(name, source.fps, source.live)
        for frame in source.frames():
            yield from run.take(frame)
            if stop is not None and stop():
                break
        yield from run.finish()


class Session:
    """The state of following one video, frame by frame.

    Frames are reported one detection round late: a track born at one round is kept only if the next
    round finds it again (ByteTrack's activation), which rids the output of one-off false detections,
    and by then the frames in between have their interpolated boxes.
    """

    def __init__(self, follower: Follower, name: str, fps: float, live: bool) -> None:
        self.follower, self.name, self.fps, self.live = follower, name, fps, live
        self.tracker = Tracker()
        self.pending: list[Frame] = []  # frames since the last detection, waiting for its boxes
        self.held: list[Frame] = []  # frames up to the last detection, waiting for the next round
        self.last_detection: int | None = None
        self.next_detection = 0
        self.round_s: float | None = None  # running mean of a detection round's seconds
        self.rounds = 0

    def take(self, frame: Frame) -> Iterator[FrameReport | TrackReport]:
        """The reports this frame completes (those of earlier frames, and tracks that ended)."""
        if frame.index < self.next_detection:
            self.pending.append(frame)
            return
        started = time.perf_counter()
        (faces,) = self.follower.pipeline.find([frame.image])
        found, fresh, ended = self.tracker.update(frame.index, frame.time, faces)
        renamed = self._name(frame, found, fresh)
        for track in found:
            self._interpolate(track)
        yield from self._frames(self.held, ended)
        self.held, self.pending, self.last_detection = [*self.pending, frame], [], frame.index
        for track in ended:
            yield TrackReport(self.name, track)
        if self.live:
            yield from (TrackReport(self.name, t, ended=False) for t in renamed if t.confirmed)
        self._schedule(frame.index, time.perf_counter() - started)

    def finish(self) -> Iterator[FrameReport | TrackReport]:
        """The frames still held, those after the last detection (boxes held where they were), then
        every open track that was confirmed."""
        for track in self.tracker.tracks:
            if track.lost_since is None and track.confirmed:
                last = track.last
                track.sightings += [
                    Sighting(f.index, f.time, Face(last.face.box), False) for f in self.pending
                ]
        yield from self._frames([*self.held, *self.pending])
        self.held = self.pending = []
        for track in self.tracker.finish():
            yield TrackReport(self.name, track)

    def _schedule(self, index: int, spent_s: float) -> None:
        """The next frame to detect on. With stride None: as many frames on as keep a round (detection,
        naming) within DETECT_SHARE of the video's time, by a running mean of the rounds so far; the
        first round, which loads the models, does not count."""
        stride = self.follower.stride
        if stride is None:
            if self.rounds:
                self.round_s = spent_s if self.round_s is None else 0.8 * self.round_s + 0.2 * spent_s
            self.rounds += 1
            spent = self.round_s if self.round_s is not None else 1.0 / self.fps
            stride = min(MAX_STRIDE, max(1, math.ceil(spent * self.fps / DETECT_SHARE)))
        self.next_detection = index + stride

    def _interpolate(self, track: Track) -> None:
        """Boxes for the pending frames, when the track was also found at the previous detection."""
        detected = [s for s in track.sightings if s.detected]
        if len(detected) < 2 or detected[-2].frame != self.last_detection or not self.pending:
            return
        before, after = detected[-2], detected[-1]
        track.sightings.pop()
        track.sightings += [interpolated(before, after, f.index, f.time) for f in self.pending]
        track.sightings.append(after)

    def _frames(self, frames: list[Frame], ended: list[Track] = ()) -> Iterator[FrameReport]:
        """Reports for `frames` with the sightings of confirmed tracks (open, or `ended` just now)."""
        if not frames:
            return
        first = frames[0].index
        at: dict[int, list[tuple[Sighting, Track]]] = {}
        for track in (t for t in [*self.tracker.tracks, *ended] if t.confirmed):
            for sighting in reversed(track.sightings):
                if sighting.frame < first:
                    break
                at.setdefault(sighting.frame, []).append((sighting, track))
        for frame in frames:
            faces = sorted(at.get(frame.index, []), key=lambda pair: pair[0].face.area, reverse=True)
            yield FrameReport(self.name, frame.index, frame.time, frame.image, faces)

    def _name(self, frame: Frame, found: list[Track], fresh: list[Face]) -> list[Track]:
        """Embed the views worth embedding, start or resume tracks for fresh faces, decide names again;
        returns the named tracks whose name changed."""
        views = [(track, track.last.face) for track in found]
        scored = [(track, face, quality(frame.image, face)) for track, face in views]
        wanted = [(t, f, q) for t, f, q in scored if len(t.views) < VIEWS or q > BETTER * t.views[-1][0]]
        fresh_scored = [(None, face, quality(frame.image, face)) for face in fresh]
        todo = wanted + fresh_scored
        if not todo:
            return []
        pipeline = self.follower.pipeline
        vectors = pipeline.embed_pictures(pipeline.pictures(frame.image, [face for _, face, _ in todo]))
        touched, renamed = [], []
        for (track, face, value), vector in zip(todo, vectors, strict=True):
            if track is None:
                within = self.follower.resume_within
                track = self.tracker.resume(frame.index, frame.time, face, vector, within or -1.0)
            track.views = sorted([*track.views, (value, vector)], key=lambda view: -view[0])[:VIEWS]
            touched.append(track)
        embeddings = [track.embedding() for track in touched]
        head, top_k = self.follower.identifier.head, self.follower.top_k
        found_candidates = named_candidates(head, torch.stack(embeddings), top_k)
        for track, candidates in zip(touched, found_candidates, strict=True):
            decision = decide(track.last.face, candidates, self.follower.threshold)
            if len(track.views) < NAME_VIEWS:  # one view can be a poor one: a name waits for a second
                decision = replace(decision, identity=None)
            if track.named and decision.identity != track.identity:
                renamed.append(track)
            track.identity, track.distance, track.candidates = (
                decision.identity,
                decision.distance,
                candidates,
            )
            track.named = True
        return renamed
