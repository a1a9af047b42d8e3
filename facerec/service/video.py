"""Videos over HTTP: a clip uploaded whole (POST /v1/videos) or frames pushed over a WebSocket
(facerec.service.stream), followed by facerec.video's Follower with the server's own models.

A Follower takes an Identifier (a pipeline, a head, thresholds). The server loads no second copy of its
models for videos: `ServedIdentifier` is an Identifier built from what the server holds. Its pipeline is
`BatchedPipeline`: frames go through the server's detector batcher and the faces to embed through its
backbone batcher, so the threads that detect and embed every photo also detect and embed the frames
of videos (a video never competes with photos for those cores; its frames and faces share batches
with theirs); alignment is the server's own detecting pipeline. Its head is the gallery version the
answer is given from.

An uploaded clip is spooled to a private file and read whole, frame by frame, on a thread of the video
pool (facerec.service.models.Models.on_video): a long clip holds that thread, never the CPU threads
photos and live frames need. While it is followed it holds room in the pixel budget for every frame
it can keep decoded at once: the frames waiting in the decoder's queue, those a Session holds between
two detection rounds, and the one being read.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import torch

from facerec.errors import FacerecError
from facerec.gallery.provenance import same_person_distance
from facerec.pipeline.standardize import standardize_pictures
from facerec.service import answers
from facerec.service.errors import ServiceError
from facerec.video.follow import MAX_STRIDE, Follower, TrackReport
from facerec.video.source import QUEUE_FRAMES, VideoSource, is_video

if TYPE_CHECKING:
    from collections.abc import Sequence

    from PIL import Image

    from facerec.contract.faces import Face
    from facerec.contract.parts import Head
    from facerec.service.models import Models
    from facerec.service.view import View

VIDEO_FORMATS = "MP4, MOV, MKV, WebM, AVI, FLV, MPEG-TS or Ogg"


class BatchedPipeline:
    """The three calls a Follower makes of a Pipeline, on the server's models: `find` through the
    detector's batcher, `pictures` by the detecting pipeline, `embed_pictures` through the backbone's
    batcher. Called from worker threads."""

    def __init__(self, models: Models) -> None:
        self.models = models

    def find(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        return self.models.find(images)

    def pictures(self, image: Image.Image, faces: Sequence[Face]) -> list[Image.Image]:
        return self.models.detecting.pictures(image, faces)

    def embed_pictures(self, pictures: Sequence[Image.Image]) -> torch.Tensor:
        if not pictures:
            return torch.empty(0, self.models.made.embedding_size)
        faces = standardize_pictures(list(pictures), self.models.pipeline.recipe)
        return self.models.batcher.submit(faces).result()


class NoOne:
    """The head of a gallery with nothing enrolled yet: no candidates for any face, so every track is
    unknown, as photos are answered then."""

    default_threshold = None

    def search(self, queries: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        return [[] for _ in range(len(queries))]


class ServedIdentifier:
    """What a Follower needs of an Identifier, from the server's models and a gallery view: `current`
    gives the view to name faces by, asked again at each naming round (a stream names faces by the
    version current then; an uploaded clip by the version current when it arrived)."""

    def __init__(self, models: Models, current: Callable[[], View]) -> None:
        self.models = models
        self.current = current
        self.pipeline = BatchedPipeline(models)
        self.distance_threshold = same_person_distance(current().provenance, models.made)

    @property
    def head(self) -> Head | NoOne:
        return self.current().head or NoOne()

    def default_threshold(self) -> float:
        return answers.identify_threshold(self.current(), self.models.made)


def follower(
    models: Models, current: Callable[[], View], threshold: float | None, top_k: int, stride: int | None
) -> Follower:
    """A Follower on the server's models (see ServedIdentifier); ServiceError 400 when no threshold is
    given and the gallery's weights declare none."""
    return Follower(ServedIdentifier(models, current), threshold, top_k, stride)


def held_frames(stride: int | None) -> int:
    """The most frames of one video decoded at once: the decoder's queue, the frames a Session holds
    (up to two strides: those up to the last detection and those since), the frame being read."""
    return QUEUE_FRAMES + 2 * (stride or MAX_STRIDE) + 1


def follow_upload(
    models: Models, following: Follower, name: str, upload: IO[bytes], stop: Callable[[], bool]
) -> dict[str, Any]:
    """The answer to POST /v1/videos for the uploaded file `upload` named `name`: every track, and a
    `warning` when part of it could not be read; ServiceError 400 (nothing decoded), 413, 415 or 503.
    Runs on a worker thread; reading ends early when `stop()` says True (the client left, or the
    server is stopping)."""
    with tempfile.NamedTemporaryFile(dir=models.spool, suffix=".video") as spooled:
        upload.seek(0)
        shutil.copyfileobj(upload, spooled)
        spooled.flush()
        if spooled.tell() == 0:
            raise ServiceError(400, f"{name}: the upload is empty")
        if not is_video(spooled.name):
            raise ServiceError(415, f"{name}: not a video (send an {VIDEO_FORMATS} file)")
        try:
            source = VideoSource(spooled.name, live=False)
        except FacerecError as error:
            raise ServiceError(400, str(error).replace(spooled.name, name)) from None
        try:
            with models.pixels.reserve(name, source.size, held_frames(following.stride)):
                events = following.follow(source, stop, name)
                tracks = [event.to_json() for event in events if isinstance(event, TrackReport)]
        finally:
            source.close()  # read to its end it is closed already; refused (413, 503) it is not
        said = source.summary()
        problem = said.replace(spooled.name, name).removeprefix(f"{name}: ") if said else None
    if source.decoded == 0:
        raise ServiceError(400, f"{name}: no frame could be decoded" + (f": {problem}" if problem else ""))
    answer: dict[str, Any] = {"video": name, "tracks": tracks}
    if problem:
        answer["warning"] = f"{name}: {problem}"
    return answer
