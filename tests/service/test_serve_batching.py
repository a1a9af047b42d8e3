"""Detection batched across requests: concurrent photos give the faces each gives alone.

A real `facerec serve` (MTCNN, seeded weights) answers photos one at a time, then the same photos sent
all at once by as many client threads, which its detector's batcher detects together (a long
--batch-wait-ms lets every request join the first batch); every answer must be the same, to the bit.
The batcher itself is run in process on the real pipeline, to see that concurrent images do share
detector calls.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch
from PIL import Image

from facerec.pipeline.engine import build_pipeline
from facerec.pipeline.images import load_image
from facerec.service.batching import Batcher, torch_threads
from facerec.service.models import detection_batcher
from support import KNN, PHOTOS
from support.gallery import shrink, weights_cache
from support.serve import Server

SOURCES = [
    PHOTOS / "multiface.jpg",
    PHOTOS / "two_people.jpg",
    PHOTOS / "obama_small.jpg",
    PHOTOS / "obama_partial_face.jpg",
    KNN / "test" / "obama_and_biden.jpg",
    KNN / "test" / "kit_with_rose.jpg",
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """The photos at the tests' small size (different sizes each), a photo without faces, and a
    damaged JPEG (answered 400 while the others of its batch are answered)."""
    folder = tmp_path_factory.mktemp("photos")
    made = [shrink(source, folder / source.name) for source in SOURCES]
    blank = folder / "blank.png"
    Image.new("RGB", (300, 200), (90, 120, 150)).save(blank)
    damaged = folder / "damaged.jpg"
    damaged.write_bytes(made[0].read_bytes()[:2000])
    return [*made, blank, damaged]


@pytest.fixture(scope="module")
def server(tmp_path_factory, seeded_weights):
    root = tmp_path_factory.mktemp("serve-batching")
    env = {"TORCH_HOME": str(weights_cache(root / "torch-home")), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    running = Server(
        "--gallery", root / "gallery", "--weights", seeded_weights, "--batch-wait-ms", "500", env=env
    )  # fmt: skip
    yield running
    assert running.stop() == 130
    assert "Traceback" not in running.output


def detect(server: Server, photo: Path) -> tuple[int, dict]:
    answer = requests.post(
        server.url + "v1/detect", files={"image": (photo.name, photo.read_bytes())}, timeout=120
    )
    return answer.status_code, answer.json()


def test_concurrent_photos_give_the_faces_each_gives_alone(server, photos):
    alone = [detect(server, photo) for photo in photos]
    assert [status for status, _ in alone] == [200] * (len(photos) - 1) + [400]
    assert sum(len(answer["faces"]) for _, answer in alone[:-1]) >= 8
    assert alone[-2][1]["faces"] == []
    sent = photos * 2  # 16 requests at once: every photo twice in the batch
    start = threading.Barrier(len(sent))

    def together(photo: Path) -> tuple[int, dict]:
        start.wait()
        return detect(server, photo)

    with ThreadPoolExecutor(len(sent)) as pool:
        concurrent = list(pool.map(together, sent))
    assert concurrent == alone * 2


@pytest.fixture
def torch_threads_kept():
    """A thread that first runs torch after another thread set torch's count begins with that count:
    the count the test began with is set again, on a fresh thread (on one whose count already equals it
    setting it changes nothing), so that later tests' threads begin with it."""
    before = torch.get_num_threads()
    yield before
    again = threading.Thread(target=torch.set_num_threads, args=(before,))
    again.start()
    again.join()


def test_the_detector_batcher_detects_concurrent_images_in_fewer_calls(
    photos, monkeypatch, tmp_path, torch_threads_kept
):
    monkeypatch.setenv("TORCH_HOME", str(weights_cache(tmp_path / "torch-home")))
    pipeline = build_pipeline(embed=False, device="cpu")
    images = [load_image(photo) for photo in photos[:-1]]
    batcher = detection_batcher(pipeline, max_images=16, max_wait=0.5)
    with ThreadPoolExecutor(1, initializer=torch_threads, initargs=(batcher.torch_threads,)) as one:
        # one at a time, on as many threads of torch as the batcher's workers: only batching differs
        alone = [one.submit(pipeline.find, [image]).result()[0] for image in images]
    start = threading.Barrier(len(images))

    def submit(image: Image.Image) -> list:
        start.wait()
        return batcher.submit(image).result(timeout=120)

    batcher.start()
    try:
        with ThreadPoolExecutor(len(images)) as pool:
            together = list(pool.map(submit, images))
    finally:
        batcher.stop()
    assert together == alone
    assert batcher.calls < len(images)


def side_by_side(answer, **options) -> tuple[list, Batcher]:
    """Four jobs through a batcher of two workers whose calls each wait until the other's has started
    (so they return only if the workers run batches side by side); `answer(job)` is each job's result.
    The results, and the batcher, stopped."""
    both = threading.Barrier(2, timeout=30)

    def call(jobs: list[int]) -> list:
        both.wait()  # a second batch must be running too
        return [answer(job) for job in jobs]

    batcher = Batcher(call, limit=1, max_wait=0.0, size=lambda job: 1, threads=2, **options)
    batcher.start()
    try:
        futures = [batcher.submit(job) for job in range(4)]
        return [future.result(timeout=60) for future in futures], batcher
    finally:
        batcher.stop()


def test_a_batcher_with_two_workers_runs_two_batches_at_once_and_stops_both():
    """Every job gets its own result, and stop ends both workers."""
    results, batcher = side_by_side(lambda job: job * 10)
    assert results == [0, 10, 20, 30]
    assert batcher.calls == 4  # and stop returned: it joins the workers


def test_each_worker_runs_torch_on_the_threads_it_is_given_and_leaves_the_callers_alone(torch_threads_kept):
    """Two workers on one thread of torch each (as the server's detection workers on 2 cores): every
    batch's call sees one, whatever count the thread that made the batcher has."""
    results, _ = side_by_side(lambda job: torch.get_num_threads(), torch_threads=1)
    assert results == [1, 1, 1, 1]
    assert torch.get_num_threads() == torch_threads_kept


def test_the_detection_workers_share_the_cores(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(weights_cache(tmp_path / "torch-home")))
    batcher = detection_batcher(build_pipeline(embed=False, device="cpu"), max_images=16, max_wait=0.0)
    assert batcher.torch_threads == max(1, torch.get_num_threads() // len(batcher._threads))
