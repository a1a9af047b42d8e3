"""The models of one server process, loaded once, and the stages every uploaded image goes through.

Stage one decodes and detects. On a small pool of CPU threads, off the event loop, the image's size is
read from its header, room for its pixels is held in the server's pixel budget
(facerec.service.limits.PixelBudget: a huge image is refused, or waits, before any pixel is decoded),
and the upload is written to a private spool file and decoded exactly as `facerec detect` reads a file
(facerec.pipeline.images.load_image with its guards against bombs and truncated files). The image then
goes to the detector's batcher (facerec.service.batching), which detects the images of concurrent
requests in one `detect` call of the engine's own pipeline (facerec.pipeline.engine.Pipeline.find:
the detector does whatever batching it can, MTCNN running its R-Net and O-Net over the candidates of
all the images at once); back on a CPU thread, the faces are cut by the aligner and standardized by
the backbone's recipe, and the room is given back. Stage two hands the faces to the backbone's
batcher, which embeds the faces of concurrent requests in one backbone call. The pool is as large as
the machine has cores: more threads would only share them.

`--max-detect-batch 1` turns detection batching off: each image is then decoded, detected and cut in
one go on its CPU thread, images side by side on the pool's threads.

Threads that run torch side by side share the cores rather than each take them all: the backbone's
batcher runs torch on all of the process's threads (torch's count when the models are loaded), each
of the two detection workers on half of them, each thread of the pools on its share
(facerec.service.batching.torch_threads).
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from PIL import Image, UnidentifiedImageError

from facerec import defaults
from facerec.contract.faces import Face
from facerec.gallery.provenance import Provenance
from facerec.pipeline.engine import ImageResult, Pipeline
from facerec.pipeline.images import ImageError, load_image
from facerec.pipeline.standardize import standardize_pictures
from facerec.service.batching import Batcher, torch_threads
from facerec.service.errors import ServiceError
from facerec.service.limits import PixelBudget

T = TypeVar("T")
# Detection batches run side by side: while one is in a detector's Python and numpy parts (one core),
# the other's networks use the rest. Two are enough for that; more would split torch's threads between
# them and hold more batches in memory at once.
DETECTION_WORKERS = 2


@dataclass(frozen=True)
class Upload:
    """An uploaded image: the client's file name (what the JSON's `image` says) and its bytes."""

    name: str
    data: bytes


@dataclass
class Prepared:
    """An upload after stage one: its faces (largest first, with crops), standardized for the backbone."""

    result: ImageResult
    faces: torch.Tensor
    format: str  # PIL's name of the file's format (JPEG, PNG, ...)


@dataclass
class Decoded:
    """An upload decoded, holding `held` pixels of the budget until its faces are cut."""

    upload: Upload
    image: Image.Image
    format: str
    held: int


class Models:
    """The pipeline (detector, aligner, backbone) of the gallery's models, `made` their provenance;
    `pixels` is the budget stage one holds room in while it decodes and detects. Batching: at most
    `max_faces` faces a backbone call and `max_images` images a detection call (1: each alone, on
    the CPU threads), each batch waiting at most `max_wait` seconds for more once it has its first."""

    def __init__(
        self,
        pipeline: Pipeline,
        made: Provenance,
        pixels: PixelBudget,
        max_faces: int = 32,
        max_wait: float = 0.005,
        workers: int | None = None,
        max_images: int = 16,
    ) -> None:
        self.pipeline = pipeline
        self.made = made
        self.detecting = replace(pipeline, backbone=None)
        cores = torch.get_num_threads()
        self.batcher = Batcher.of_tensors(pipeline.backbone.embed, max_faces, max_wait, cores)
        self.finder = detection_batcher(self.detecting, max_images, max_wait) if max_images > 1 else None
        self.workers = workers or os.cpu_count() or 1
        share = {"initializer": torch_threads, "initargs": (max(1, cores // self.workers),)}
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="facerec-cpu", **share)
        self.videos = ThreadPoolExecutor(self.workers, thread_name_prefix="facerec-video", **share)
        self.stopping = threading.Event()
        self.spool = tempfile.mkdtemp(prefix="facerec-serve-")
        self.pixels = pixels

    def start(self) -> None:
        self.batcher.start()
        if self.finder is not None:
            self.finder.start()

    def stop(self) -> None:
        """Stop: videos still being read end at their next frame (`stopping`), the pools finish, then
        the batchers, which the videos' last frames and faces may still need."""
        self.stopping.set()
        self.executor.shutdown()
        self.videos.shutdown()
        if self.finder is not None:
            self.finder.stop()
        self.batcher.stop()
        shutil.rmtree(self.spool, ignore_errors=True)

    async def on_cpu(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in the CPU pool, awaited without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, work, *args)

    async def on_video(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in the video pool: an uploaded clip holds its thread for as long as it is read,
        and must not hold the CPU threads that photos and live frames need."""
        return await asyncio.get_running_loop().run_in_executor(self.videos, work, *args)

    async def detect(self, upload: Upload) -> Prepared:
        """Stage one for `upload`; ServiceError 415 for what is not an image, 400 for a bad image."""
        if self.finder is None:
            return await self.on_cpu(self._prepare, upload)
        decoded = await self._decoded(upload)
        try:
            faces = await self.finder.run(decoded.image)
            return await self.on_cpu(self._cut, decoded, faces)
        finally:
            self.pixels.release(decoded.held)

    async def embed(self, prepared: Prepared) -> ImageResult:
        """Stage two: the result of stage one with its faces' embeddings."""
        faces = prepared.faces
        found = await self.batcher.run(faces) if len(faces) else torch.empty(0, self.made.embedding_size)
        prepared.result.embeddings = found
        return prepared.result

    def find(self, images: Sequence[Image.Image]) -> list[list[Face]]:
        """The faces of decoded images (video frames), from a worker thread: through the detector's
        batcher, or with batching off on this thread."""
        if self.finder is None:
            return self.detecting.find(images)
        waiting = [self.finder.submit(image) for image in images]
        return [future.result() for future in waiting]

    def decoded(self, upload: Upload) -> Image.Image:
        """The upload's image, decoded as `facerec detect` reads a file (load_image's guards);
        ServiceError 400 when it cannot be."""
        with tempfile.NamedTemporaryFile(dir=self.spool) as spooled:
            spooled.write(upload.data)
            spooled.flush()
            try:
                return load_image(spooled.name)
            except ImageError as error:
                raise ServiceError(400, f"{upload.name}: {error.reason}") from None

    async def _decoded(self, upload: Upload) -> Decoded:
        """`_decode` on a CPU thread. A request cancelled meanwhile (the server stopping) gives the
        room back when the decoding ends: nobody else would."""
        decoding = self.executor.submit(self._decode, upload)
        try:
            return await asyncio.wrap_future(decoding)
        except asyncio.CancelledError:
            decoding.add_done_callback(self._release_decoded)
            raise

    def _release_decoded(self, decoding: Future) -> None:
        if not decoding.cancelled() and decoding.exception() is None:
            self.pixels.release(decoding.result().held)

    def _decode(self, upload: Upload) -> Decoded:
        kind, size = image_header(upload)
        held = self.pixels.hold(upload.name, size)
        try:
            return Decoded(upload, self.decoded(upload), kind, held)
        except BaseException:
            self.pixels.release(held)
            raise

    def _cut(self, decoded: Decoded, faces: list[Face]) -> Prepared:
        """The faces' input pictures, standardized for the backbone."""
        crops = self.detecting.pictures(decoded.image, faces) if faces else []
        result = ImageResult(decoded.upload.name, faces=faces, crops=crops)
        size = self.pipeline.recipe.size
        standardized = (
            standardize_pictures(crops, self.pipeline.recipe) if crops else torch.empty(0, 3, size, size)
        )
        return Prepared(result, standardized, decoded.format)

    def _prepare(self, upload: Upload) -> Prepared:
        """Stage one on this thread (detection batching off)."""
        decoded = self._decode(upload)
        try:
            (faces,) = self.detecting.find([decoded.image])
            return self._cut(decoded, faces)
        finally:
            self.pixels.release(decoded.held)


def detection_batcher(detecting: Pipeline, max_images: int, max_wait: float) -> Batcher:
    """The detector's batcher: `detecting.find` on batches of at most `max_images` images, and at most
    the detector's working size in pixels (the most it works on in one image, so a batch's memory stays
    that of one large photo; each image counted at the size it is detected at, facerec.pipeline.engine.
    detect_bounded), on DETECTION_WORKERS workers (see facerec.service.batching)."""
    limit = getattr(detecting.detector, "max_pixels", defaults.DETECTION_PIXELS) or defaults.DETECTION_PIXELS

    def working_pixels(image: Image.Image) -> int:
        return min(image.width * image.height, limit)

    threads = min(DETECTION_WORKERS, os.cpu_count() or 1)
    share = max(1, torch.get_num_threads() // threads)
    return Batcher(
        detecting.find, limit, max_wait, working_pixels, max_images, "facerec-detector", threads, share
    )


def warm_up(pipeline: Pipeline) -> None:
    """Load every model of `pipeline` now (parts load their networks on first use): a missing weights
    file is reported before the server listens, and the first requests do not pay for the loading."""
    size = pipeline.recipe.size
    pipeline.detector.detect([Image.new("RGB", (size, size))])
    pipeline.backbone.embed(torch.zeros(1, 3, size, size))


def image_header(upload: Upload) -> tuple[str, tuple[int, int]]:
    """The format PIL recognizes in the upload's first bytes and the image's size (width, height);
    ServiceError 415 when no format is recognized.

    Only the header is read here (PIL decodes lazily): decoding, with every guard, is
    facerec.pipeline.images.load_image's. An image PIL refuses to open (too many pixels, malformed) has
    size (0, 0): load_image refuses it the same way before decoding a pixel, so it needs no room.
    """
    if not upload.data:
        raise ServiceError(400, f"{upload.name}: the upload is empty")
    try:
        with Image.open(io.BytesIO(upload.data)) as image:
            return image.format or "unknown", image.size
    except UnidentifiedImageError:
        raise ServiceError(
            415, f"{upload.name}: not an image (send a JPEG, PNG, WebP, GIF, BMP or TIFF file)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError, SyntaxError, ValueError):
        # too large or malformed to open: load_image says which, as 400. (The warning is raised where
        # warnings were made errors: load_image does that, and catch_warnings is not thread-safe.)
        return "unknown", (0, 0)
