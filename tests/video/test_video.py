"""Video as a user runs it: face_recognition's Hamilton clip, its two known people, real subprocesses.

Lin-Manuel Miranda is on stage in the clip; Alex Lacamoire, the other known person, is not in it. The
gallery holds one photo of each (face_recognition's own example photos) under dlib-resnet's real weights.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import av
import pytest

from support import SHARED
from support.cli import run_cli
from support.gallery import weights_cache

CLIP = SHARED / "video" / "short_hamilton_clip.mp4"
FRAMES = 275
LIN, ALEX = "lin_manuel_miranda", "alex_lacamoire"
STRIDE = "3"


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """A gallery of the two known people, and the environment to run the CLI offline in."""
    root = tmp_path_factory.mktemp("video")
    env = {"TORCH_HOME": str(weights_cache(root / "torch-home")), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    for name, photo in ((LIN, "lin-manuel-miranda.png"), (ALEX, "alex-lacamoire.png")):
        (root / "people" / name).mkdir(parents=True)
        shutil.copy(SHARED / "faces" / "photos" / photo, root / "people" / name / photo)
    gallery = root / "gallery"
    made = run_cli("index", root / "people", "--gallery", gallery, "--backbone", "dlib-resnet", env=env)
    assert made.returncode == 0, made.stderr
    return root, gallery, env


@pytest.fixture(scope="module")
def tracks(known):
    """`identify CLIP --json` with its annotated copy: the track objects and the OUTDIR."""
    root, gallery, env = known
    out = root / "annotated"
    result = run_cli(
        "identify", CLIP, "--gallery", gallery, "--json", "--stride", STRIDE, "--annotate", out, env=env
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()], out


def frames_named(records: list[dict]) -> Counter:
    """How many frames each identity is named in, counting a frame once per face."""
    return Counter(record["identity"] for record in records for _ in record["frames"])


def test_lin_manuel_mirandas_tracks_are_named_and_nobody_else_is(tracks):
    records, _ = tracks
    assert {tuple(record) for record in records} == {
        ("video", "track", "identity", "distance", "candidates", "start", "end", "frames")
    }
    named = frames_named(records)
    assert named[LIN] >= 117  # 1.5x the 78 frames face_recognition's video example names him in
    assert ALEX not in named  # he is not in the clip
    for record in records:
        assert record["video"] == str(CLIP) and 0 <= record["start"] <= record["end"] <= FRAMES / 29.97
        frames = [frame for frame, *_ in record["frames"]]
        assert frames == sorted(set(frames)) and all(len(box) == 5 for box in record["frames"])
        if record["identity"] is not None:
            assert record["distance"] <= 0.38  # dlib-v1's threshold
    lin_frames = [frame for record in records if record["identity"] == LIN for frame, *_ in record["frames"]]
    assert len(lin_frames) == len(set(lin_frames))  # never two faces named him in one frame


def test_per_frame_output_agrees_with_the_tracks(known, tracks):
    _, gallery, env = known
    records, _ = tracks
    result = run_cli(
        "identify", CLIP, "--gallery", gallery, "--json", "--per-frame", "--stride", STRIDE, env=env
    )
    assert result.returncode == 0, result.stderr
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert [frame["frame"] for frame in frames] == list(range(FRAMES))
    seen: dict[int, list[list[float]]] = {}
    for frame in frames:
        for face in frame["faces"]:
            seen.setdefault(face["track"], []).append([frame["frame"], *(round(v, 2) for v in face["box"])])
    assert seen == {record["track"]: record["frames"] for record in records}


def test_the_annotated_copy_keeps_every_frame_and_the_rate(tracks):
    _, out = tracks
    (written,) = out.iterdir()
    assert written.name == "short_hamilton_clip.mp4"
    with av.open(str(written)) as copy, av.open(str(CLIP)) as source:
        stream = copy.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == source.streams.video[0].average_rate
        assert sum(1 for _ in copy.decode(video=0)) == FRAMES


def test_a_clip_in_a_persons_folder_enrolls_views_of_its_main_face(known, tmp_path):
    _, _, env = known
    people = tmp_path / "people"
    (people / LIN).mkdir(parents=True)
    shutil.copy(CLIP, people / LIN / "on-stage.mp4")
    (people / ALEX).mkdir()
    shutil.copy(SHARED / "faces" / "photos" / "alex-lacamoire.png", people / ALEX)
    gallery = tmp_path / "gallery"
    made = run_cli("index", people, "--gallery", gallery, "--backbone", "dlib-resnet", env=env)
    assert made.returncode == 0, made.stderr
    assert "on-stage.mp4: a video, enrolled" in made.stderr
    listed = run_cli("gallery", "--gallery", gallery, "--json", env=env)
    counts = {record["identity"]: record["faces"] for record in map(json.loads, listed.stdout.splitlines())}
    assert counts[ALEX] == 1 and 2 <= counts[LIN] <= 5
    photo = SHARED / "faces" / "photos" / "lin-manuel-miranda.png"
    found = run_cli("identify", photo, "--gallery", gallery, "--json", env=env)
    assert json.loads(found.stdout)["faces"][0]["identity"] == LIN
    again = run_cli("index", people, "--gallery", gallery, env=env)
    assert again.returncode == 0 and "already up to date" in again.stdout  # incremental, as for photos


def faststart(target: Path) -> Path:
    """The clip remuxed with its index first, as phones and web videos are, so a cut copy still plays."""
    with av.open(str(CLIP)) as source, av.open(str(target), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return target


def test_damaged_and_wrong_files_are_one_line_each_and_the_rest_is_answered(known, tmp_path):
    _, gallery, env = known
    whole = faststart(tmp_path / "whole.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) * 6 // 10])
    index_last = tmp_path / "index-last.mp4"
    index_last.write_bytes(CLIP.read_bytes()[: CLIP.stat().st_size * 6 // 10])  # its index is gone
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 50)
    text = tmp_path / "notes.mp4"
    text.write_text("hello")
    photo = SHARED / "faces" / "photos" / "lin-manuel-miranda.png"
    result = run_cli(
        "identify",
        cut,
        index_last,
        fake,
        text,
        photo,
        "--gallery",
        gallery,
        "--json",
        "--stride",
        "5",
        env=env,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 4 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"{cut}: the file ends after frame ") and "(truncated?)" in lines[0]
    assert lines[1].startswith(f"{index_last}: cannot open video")
    assert lines[2].startswith(f"{fake}: cannot open video")
    assert lines[3] == f"{text}: cannot decode image: not an image file"
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert any(record.get("video") == str(cut) and record["identity"] == LIN for record in records)
    assert records[-1]["image"] == str(photo) and records[-1]["faces"][0]["identity"] == LIN


class _Clip(http.server.BaseHTTPRequestHandler):
    """Serves one file (`served`, a class attribute) whole, as a plain web server does."""

    served: Path

    def do_GET(self):
        data = self.served.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_watch_drops_frames_instead_of_lagging_and_reports_tracks(known, tmp_path):
    """An HTTP stream (the clip as web video is served: index first) played at its own pace, detection
    on every frame: slower than the stream on this machine, so frames are dropped (and counted), and the
    tracks still come out."""
    _, gallery, env = known
    _Clip.served = faststart(tmp_path / "web.mp4")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Clip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/short_hamilton_clip.mp4"
        result = run_cli("watch", url, "--gallery", gallery, "--json", "--stride", "1", env=env)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{url}: ") and line.endswith(f" of {FRAMES} frames dropped to keep up")
    records = [json.loads(record) for record in result.stdout.splitlines()]
    assert records and all(record["video"] == url for record in records)
    # A live source prints a named track again when its name changes, so an early record may hold a
    # name its later views undo: which frames are dropped decides those views (an unknown face here was
    # 0.373 from Alex on its first three views under the 0.38 threshold, and 0.40-0.44 at its end, on an
    # AMD EPYC). Each track's last record is its decision.
    last = {record["track"]: record for record in records}
    decided = Counter(record["identity"] for record in last.values())
    assert decided[LIN] >= 1 and ALEX not in decided


def test_watch_stops_on_ctrl_c_with_the_open_tracks_and_status_130(known):
    _, gallery, env = known
    command = [sys.executable, "-m", "facerec", "watch", str(CLIP), "--gallery", str(gallery), "--json"]
    command += ["--per-frame"]
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first = process.stdout.readline()  # a frame has been reported: the run is under way
    process.send_signal(signal.SIGINT)
    rest, errors = process.communicate(timeout=120)
    assert process.returncode == 130, errors
    frames = [json.loads(line) for line in [first, *rest.splitlines()]]
    indices = [frame["frame"] for frame in frames]  # frames dropped to keep up are not reported
    assert len(frames) > 0 and indices == sorted(set(indices)) and indices[-1] < FRAMES - 1
    assert errors.splitlines()[-1] == "stopped: the open tracks were reported"


def test_unreachable_stream_and_bad_sources_are_one_line(known):
    _, gallery, env = known
    gone = run_cli("watch", "http://127.0.0.1:9/live.mp4", "--gallery", gallery, env=env)
    assert gone.returncode == 1
    (line,) = gone.stderr.splitlines()
    assert line.startswith("http://127.0.0.1:9/live.mp4: cannot open video after 4 tries: ")
    both = run_cli("watch", str(CLIP), "--camera", "0", "--gallery", gallery, env=env)
    assert (
        both.returncode == 2
        and both.stderr.strip() == "Error: --camera: give either SOURCE or --camera, not both"
    )
    none = run_cli("watch", "--gallery", gallery, env=env)
    assert none.returncode == 2 and "SOURCE: give a video file" in none.stderr
    photo = SHARED / "faces" / "photos" / "obama3.jpg"
    still = run_cli("watch", photo, "--gallery", gallery, env=env)
    assert still.returncode == 2 and still.stdout == ""
    assert still.stderr == f"Error: {photo}: not a video; `facerec identify` names the faces of photos\n"


def test_the_python_api_gives_the_clis_tracks(known, tracks, monkeypatch):
    import facerec

    _, gallery, env = known
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    records, _ = tracks
    found = [
        track.to_json() for track in facerec.open_gallery(gallery, "cpu").tracks(CLIP, stride=int(STRIDE))
    ]
    assert [(r["track"], r["identity"], r["frames"]) for r in found] == [
        (r["track"], r["identity"], r["frames"]) for r in records
    ]
