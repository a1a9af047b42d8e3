"""The models of one server process, loaded once, and the two stages every uploaded image goes through.

Stage one runs in a small pool of CPU threads, off the event loop: the image's size is read from its
header, room for its pixels is held in the server's pixel budget (facerec.service.limits.PixelBudget:
a huge image is refused, or waits, before any pixel is decoded), and the upload is written to a private
spool file and goes through the engine's own Pipeline without its backbone, exactly as `facerec detect`
reads a file (facerec.pipeline.images.load_image with its guards against bombs and truncated files, the
detector, the aligner); the aligned faces are standardized by the backbone's recipe. Stage two hands the
faces to the dynamic batcher (facerec.service.batching), which embeds the faces of concurrent requests
in one backbone call. The pool is as large as the machine has cores: more threads would only share them.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from PIL import Image, UnidentifiedImageError

from facerec.gallery.provenance import Provenance
from facerec.pipeline.engine import ImageResult, Pipeline
from facerec.pipeline.standardize import standardize_pictures
from facerec.service.batching import Batcher
from facerec.service.errors import ServiceError
from facerec.service.limits import PixelBudget

T = TypeVar("T")


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


class Models:
    """The pipeline (detector, aligner, backbone) of the gallery's models, `made` their provenance;
    `pixels` is the budget stage one holds room in while it decodes and detects."""

    def __init__(
        self,
        pipeline: Pipeline,
        made: Provenance,
        pixels: PixelBudget,
        max_faces: int = 32,
        max_wait: float = 0.005,
        workers: int | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.made = made
        self.detecting = replace(pipeline, backbone=None)
        self.batcher = Batcher(pipeline.backbone.embed, max_faces, max_wait)
        self.workers = workers or os.cpu_count() or 1
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="facerec-cpu")
        self.videos = ThreadPoolExecutor(self.workers, thread_name_prefix="facerec-video")
        self.stopping = threading.Event()
        self.spool = tempfile.mkdtemp(prefix="facerec-serve-")
        self.pixels = pixels

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        """Stop: videos still being read end at their next frame (`stopping`), the pools finish, then
        the batcher, which the videos' last faces may still need."""
        self.stopping.set()
        self.executor.shutdown()
        self.videos.shutdown()
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
        return await self.on_cpu(self._prepare, upload)

    async def embed(self, prepared: Prepared) -> ImageResult:
        """Stage two: the result of stage one with its faces' embeddings."""
        faces = prepared.faces
        found = await self.batcher.run(faces) if len(faces) else torch.empty(0, self.made.embedding_size)
        prepared.result.embeddings = found
        return prepared.result

    def _prepare(self, upload: Upload) -> Prepared:
        kind, size = image_header(upload)
        with tempfile.NamedTemporaryFile(dir=self.spool) as spooled:
            spooled.write(upload.data)
            spooled.flush()
            with self.pixels.reserve(upload.name, size):
                (result,) = self.detecting.run([spooled.name])
        result.path = upload.name
        if result.error is not None:
            raise ServiceError(400, f"{upload.name}: {result.error}")
        size = self.pipeline.recipe.size
        faces = (
            standardize_pictures(result.crops, self.pipeline.recipe)
            if result.crops
            else torch.empty(0, 3, size, size)
        )
        return Prepared(result, faces, kind)


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
