"""Frames from a video file, a stream or a camera, decoded by FFmpeg through PyAV on a thread of their own.

A file is read whole, every frame in order: nothing is dropped, so its tracks are the same on any
machine. A live source (a camera, `rtsp://`, `http(s)://` as `facerec watch` reads them, or any file read
with `live=True`) is offered at the pace of its timestamps, and when the consumer falls behind the
oldest waiting frame is dropped and counted: a live view never lags further behind than a few frames.

A damaged file is decoded as far as it can be: packets FFmpeg cannot decode are skipped and counted, and
the reason reading stopped is kept (`problem`), so the caller names it in one line. A network source
that cannot be opened, or drops, is tried again with back-off before giving up in one line.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from facerec.errors import FacerecError, UsageError

QUEUE_FRAMES = 8  # frames waiting for the consumer; past this a live source drops its oldest
RETRY_DELAYS_S = (0.5, 1.0, 2.0)  # a network source's reconnection back-off, then one line
OPEN_TIMEOUT_S, READ_TIMEOUT_S = 10.0, 10.0
NETWORK = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://")
# The first bytes of the containers FFmpeg reads; a photo format never starts so (WebP is RIFF....WEBP).
MAGIC = (
    (4, b"ftyp"),  # MP4, MOV, 3GP (ISO base media)
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska, WebM
    (0, b"FLV"),
    (0, b"OggS"),
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),  # ASF, WMV
)


def is_video(path: str | Path) -> bool:
    """Whether the file at `path` is a video container, by its first bytes (not its name). Only a
    regular file is opened: a FIFO would block."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as file:
            head = file.read(400)
    except OSError:
        return False
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return True
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:  # MPEG transport stream
        return True
    return any(head[offset : offset + len(magic)] == magic for offset, magic in MAGIC)


def is_stream(spec: str) -> bool:
    """A camera device or a network URL: sources that are live by nature."""
    return spec.startswith(NETWORK) or spec.startswith("/dev/video")


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its number from 0 in decoding order, its time in seconds from the start."""

    index: int
    time: float
    image: Image.Image


class VideoSource:
    """A video opened for reading (`frames()` once); see the module docstring."""

    def __init__(self, spec: str, live: bool | None = None, retries: tuple[float, ...] = RETRY_DELAYS_S):
        self.name = spec
        self.live = is_stream(spec) if live is None else live
        self.retries = retries if spec.startswith(NETWORK) else ()
        self.dropped = 0  # live frames dropped because the consumer was behind
        self.undecodable = 0  # packets FFmpeg could not decode
        self.problem: str | None = None  # why reading stopped before the end, when it did
        self.decoded = 0
        self._container = self._open()
        stream = self._container.streams.video[0]
        if stream.codec_context is None:  # a container header with no codec FFmpeg knows behind it
            self._container.close()
            raise FacerecError(f"{self.name}: not a video (no decodable video stream)")
        self.fps = float(stream.average_rate or stream.guessed_rate or 30)
        self.rate = stream.average_rate or stream.guessed_rate
        self.frame_count = stream.frames or None
        self.size = (stream.codec_context.width, stream.codec_context.height)

    def close(self) -> None:
        """Release the source when its frames are not read (they close it when read to the end)."""
        self._container.close()

    def _open(self) -> Any:
        import av

        if not self.name.startswith((*NETWORK, "/dev/")) and not Path(self.name).is_file():
            raise FacerecError(f"{self.name}: no such file")
        options, form = {}, None
        if self.name.startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
        if self.name.startswith("/dev/video"):
            form = "v4l2"
        for attempt, delay in enumerate((*self.retries, None)):
            try:
                container = av.open(
                    self.name, format=form, options=options, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S)
                )
                break
            except (av.FFmpegError, OSError) as error:
                if delay is None:
                    tried = f" after {attempt + 1} tries" if self.retries else ""
                    raise FacerecError(f"{self.name}: cannot open video{tried}: {_reason(error)}") from None
                time.sleep(delay)
        if not container.streams.video:
            container.close()
            raise FacerecError(f"{self.name}: not a video (no video stream)")
        return container

    def frames(self) -> Iterator[Frame]:
        """The frames, decoded on a thread; for a live source at its own pace, dropping when behind."""
        waiting: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        stop = threading.Event()
        reader = threading.Thread(target=self._read, args=(waiting, stop), daemon=True, name="facerec-video")
        reader.start()
        try:
            while (item := waiting.get()) is not None:
                yield item
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                try:
                    waiting.get_nowait()
                except queue.Empty:
                    reader.join(0.05)
            self._container.close()

    def _read(self, waiting: queue.Queue, stop: threading.Event) -> None:
        started, first = time.monotonic(), None
        try:
            for frame in self._decoded(stop):
                if self.live:
                    first = frame.time if first is None else first
                    ahead = started + (frame.time - first) - time.monotonic()
                    if ahead > 0 and not self.name.startswith("/dev/"):
                        time.sleep(ahead)  # a file or HTTP stream played as a camera would deliver it
                    self._offer(waiting, frame)
                else:
                    while not stop.is_set():
                        try:
                            waiting.put(frame, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                if stop.is_set():
                    return
        finally:
            waiting.put(None)

    def _offer(self, waiting: queue.Queue, frame: Frame) -> None:
        """Queue `frame`, dropping the oldest waiting frame when the consumer is behind."""
        while True:
            try:
                waiting.put_nowait(frame)
                return
            except queue.Full:
                try:
                    waiting.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _decoded(self, stop: threading.Event) -> Iterator[Frame]:
        """Every frame of the container, numbered on across reconnections of a live network source."""
        index, offset = 0, 0.0
        while True:
            for frame in self._container_frames(stop, index, offset):
                index, offset = frame.index + 1, frame.time + 1.0 / self.fps
                self.decoded = index
                yield frame
            if self.problem is None or not (self.live and self.retries) or stop.is_set():
                break
            self._container.close()
            try:
                self._container = self._open()  # with back-off; one line when it stays down
            except FacerecError as error:
                self.problem = f"{self.problem}; {str(error).removeprefix(self.name + ': ')}"
                break
            self.problem = None
        if self.frame_count and index < self.frame_count and self.problem is None:
            self.problem = f"the file ends after frame {index} of {self.frame_count} (truncated?)"

    def _container_frames(self, stop: threading.Event, index: int, offset: float) -> Iterator[Frame]:
        import av

        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        try:
            for packet in self._container.demux(stream):
                if stop.is_set():
                    return
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    self.undecodable += 1
                    continue
                for frame in frames:
                    moment = frame.time - start if frame.time is not None else index / self.fps
                    yield Frame(index, offset + max(moment, 0.0), frame.to_image())
                    index += 1
        except (av.FFmpegError, OSError) as error:
            self.problem = f"reading stopped after frame {index}: {_reason(error)}"

    def summary(self) -> str | None:
        """One line on what went wrong while reading, or None when every frame was read."""
        parts = []
        if self.problem:
            parts.append(self.problem)
        if self.undecodable:
            parts.append(f"{self.undecodable} damaged packets skipped")
        if self.dropped:
            parts.append(f"{self.dropped} of {self.decoded} frames dropped to keep up")
        return f"{self.name}: {'; '.join(parts)}" if parts else None


def source_spec(spec: str, camera: int | None = None) -> str:
    """The source `spec` names, or camera number `camera` as its device; one of them, not both."""
    if camera is not None:
        if spec:
            raise UsageError("--camera: give either SOURCE or --camera, not both")
        return f"/dev/video{camera}"
    if not spec:
        raise UsageError("SOURCE: give a video file, a URL (rtsp://, http(s)://), /dev/videoN or --camera N")
    return spec


def open_source(spec: str, camera: int | None = None, live: bool | None = None) -> VideoSource:
    """The source `spec` names (a file, a URL, /dev/videoN), or camera number `camera`."""
    return VideoSource(source_spec(spec, camera), live)


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return " ".join(str(text).split()) or type(error).__name__
