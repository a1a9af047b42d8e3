"""The Python API: what `facerec index` and `facerec identify` do, in three lines.

import facerec

gallery = facerec.open_gallery(".facerec/gallery")
gallery.index("datasets/custom_images")
faces = gallery.identify("photo.jpg")  # [Identification(face, identity, distance, candidates), ...]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facerec import defaults
from facerec.gallery.enroll import IndexReport, Note, index_folder, repair_gallery
from facerec.gallery.identify import Identification, IdentifiedImage, Identifier, check_threshold
from facerec.gallery.models import ModelRequest
from facerec.gallery.stores import open_store
from facerec.pipeline.images import ImageError

if TYPE_CHECKING:
    from facerec.video.follow import Following, TrackReport


class Gallery:
    """A gallery (a folder, or a store URI such as `milvus:faces.db`): enroll folders of faces into it,
    identify the faces of photos against it.

    Models load on the first `identify` and stay loaded; a newer version of the gallery (written by
    `index`, here or in another process) is picked up by the next call.
    """

    def __init__(self, location: str | os.PathLike | None = None, device: str = "auto") -> None:
        if device not in (None, "auto"):  # refused here: an index with nothing new loads no model
            from facerec.pipeline.engine import resolve_device

            resolve_device(device)
        self.store = open_store(location)
        self.path = self.store.location
        self.device = device
        self._identifier: Identifier | None = None

    def index(
        self,
        folder: str | os.PathLike,
        *,
        head: str | None = None,
        head_options: dict[str, Any] | None = None,
        progress: bool = False,
        note: Note | None = None,
        **models: Any,
    ) -> IndexReport:
        """Enroll `folder/<identity>/<image>`; only new or changed images are embedded.

        `models` are ModelRequest fields (backbone, pretrained, weights, detector, detector_options,
        aligner, aligner_options, precision, calibration); by default the gallery's own, or
        inception-resnet/vggface2/mtcnn at fp32 for a new one.
        `note` receives one line per image that was skipped or had several faces.
        """
        request = ModelRequest(device=self.device, **models)
        return index_folder(self.store, Path(folder), request, head, head_options, progress, note)

    def repair(self, *, note: Note | None = None) -> IndexReport:
        """Check every file of the gallery against its recorded size and SHA-256 and rebuild what is
        damaged: the head from the vectors, the vectors from the photos still there, the current version
        from the newest readable one. `version` of the report is None when nothing was damaged."""
        return repair_gallery(self.store, ModelRequest(device=self.device), note)

    def identify(
        self, image: str | os.PathLike, *, threshold: float | None = None, top_k: int = defaults.TOP_K
    ) -> list[Identification]:
        """The faces of `image`, largest first; ImageError when the image cannot be used."""
        (result,) = self.identify_all([image], threshold=threshold, top_k=top_k)
        if result.error is not None:
            raise ImageError(result.path, result.error)
        return result.faces

    def identify_all(
        self,
        images: Iterable[str | os.PathLike],
        *,
        threshold: float | None = None,
        top_k: int = defaults.TOP_K,
        **models: Any,
    ) -> Iterator[IdentifiedImage]:
        """Results image by image (errors included, the stream goes on), as `facerec identify` prints them.

        `models` may name the models explicitly (as ModelRequest fields); they must be the gallery's.
        """
        check_threshold(threshold)
        images = list(images)
        return self._identified(models, images).run(images, threshold, top_k)

    def follow(
        self,
        source: str | os.PathLike,
        *,
        threshold: float | None = None,
        top_k: int = defaults.TOP_K,
        stride: int | None = None,
        live: bool | None = None,
        stop: Callable[[], bool] | None = None,
        **models: Any,
    ) -> Following:
        """The faces of a video file, stream or camera (`/dev/video0`, `rtsp://...`), as `facerec identify
        clip.mp4` and `facerec watch` see them: one FrameReport per frame, in order, and a TrackReport
        when a track ends (and, live, when a track's name changes). `stride`: detect every so many
        frames (None: as fast as keeps up). `stop`: polled once a frame; when it says True, reading
        ends and the open tracks are reported. The result's `source` says how reading went (dropped
        frames, damage). FacerecError when the source cannot be opened."""
        from facerec.video.follow import Follower
        from facerec.video.source import open_source

        check_threshold(threshold)
        follower = Follower(self._identified(models), threshold, top_k, stride)
        return follower.follow(open_source(os.fspath(source), live=live), stop)

    def tracks(self, source: str | os.PathLike, **options: Any) -> Iterator[TrackReport]:
        """The tracks of a video as they end (see `follow`, which takes the same options)."""
        from facerec.video.follow import TrackReport

        return (event for event in self.follow(source, **options) if isinstance(event, TrackReport))

    def _identified(self, models: dict[str, Any], photos: Sequence[str | os.PathLike] = ()) -> Identifier:
        """The identifier for `models` (the gallery's own when none are named), made once and kept up
        to date with the gallery's versions. `photos`: what `--precision auto` may check bf16 on."""
        if self._identifier is None or models:
            request = ModelRequest(device=self.device, photos=tuple(photos), **models)
            self._identifier = Identifier(self.store, request)
        else:
            self._identifier.refresh()
        return self._identifier

    def identities(self) -> dict[str, int]:
        """Enrolled faces per identity; empty when nothing was enrolled yet."""
        snapshot = self.store.read()
        if snapshot is None:
            return {}
        try:
            return snapshot.identities()
        finally:
            snapshot.close()


def open_gallery(location: str | os.PathLike | None = None, device: str = "auto") -> Gallery:
    """The gallery at `location`, a folder or a store URI (default: FACEREC_GALLERY, else
    .facerec/gallery); created by the first index."""
    return Gallery(location, device)
