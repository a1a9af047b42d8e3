"""Material for the video tests of `facerec serve`: a dlib-resnet gallery of the two people of the
Hamilton clip, made by `facerec index` from their photos, and short clips cut from it with PyAV.

The clip is 275 frames of 640x360; detection costs tens of milliseconds a frame on two cores, so the
tests follow a few seconds of it where Lin-Manuel Miranda faces the camera (from frame 84 on).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import av
import pytest

from support import PHOTOS, SHARED
from support.cli import run_cli
from support.gallery import weights_cache

HAMILTON = SHARED / "video" / "short_hamilton_clip.mp4"
LIN_FROM = 84  # the first frame of the clip with Lin-Manuel Miranda large and frontal
PEOPLE = {"lin_manuel_miranda": "lin-manuel-miranda.png", "alex_lacamoire": "alex-lacamoire.png"}


def cut(target: Path, start: int, count: int, options: dict[str, str] | None = None) -> Path:
    """Frames start..start+count of the Hamilton clip, encoded as H.264 in the MP4 `target`
    (`options`: the container's, such as movflags=faststart)."""
    with av.open(str(HAMILTON)) as source, av.open(str(target), "w", options=options or {}) as out:
        stream = source.streams.video[0]
        encoded = out.add_stream("libx264", rate=stream.average_rate, options={"preset": "veryfast"})
        encoded.width, encoded.height = stream.codec_context.width, stream.codec_context.height
        encoded.pix_fmt = "yuv420p"
        for number, frame in enumerate(source.decode(stream)):
            if number >= start + count:
                break
            if number >= start:
                copy = av.VideoFrame.from_ndarray(frame.to_ndarray(format="yuv420p"), format="yuv420p")
                copy.pts = number - start
                out.mux(encoded.encode(copy))
        out.mux(encoded.encode(None))
    return target


@pytest.fixture(scope="session")
def hamilton(tmp_path_factory) -> SimpleNamespace:
    """The people's gallery (`--backbone dlib-resnet`), a TORCH_HOME with MTCNN, offline downloads,
    `clip.mp4` (80 frames of Lin-Manuel Miranda), API keys; `cut` makes more clips of `source`."""
    root = tmp_path_factory.mktemp("hamilton")
    people = root / "people"
    for name, photo in PEOPLE.items():
        (people / name).mkdir(parents=True)
        shutil.copyfile(PHOTOS / photo, people / name / photo)
    env = {"TORCH_HOME": str(weights_cache(root / "torch-home")), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    gallery = root / "gallery"
    indexed = run_cli("index", people, "--gallery", gallery, "--backbone", "dlib-resnet", env=env)
    assert indexed.returncode == 0, indexed.stderr
    keys = root / "keys"
    read_key, write_key = "read-key-0123456789abcdef", "write-key-0123456789abcdef"
    keys.write_text(f"{read_key} read\n{write_key} write\n")
    return SimpleNamespace(
        root=root,
        env=env,
        gallery=gallery,
        clip=cut(root / "clip.mp4", LIN_FROM, 80),
        keys=keys,
        read_key=read_key,
        source=HAMILTON,
        lin_from=LIN_FROM,
        cut=cut,
    )
