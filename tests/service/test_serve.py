"""`facerec serve`: a real server process on 127.0.0.1, a real HTTP client, a real gallery on disk made by
`facerec index` with seeded weights; enrollments, a concurrent `facerec index` and a SIGKILL."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import torch
from PIL import Image

from support import SHARED
from support.cli import run_cli
from support.gallery import shrink, small_people, weights_cache
from support.serve import Server, assert_same_json, holds_lock, post_image

READ_KEY = "read-key-0123456789abcdef"
WRITE_KEY = "write-key-0123456789abcdef"
READ = {"Authorization": f"Bearer {READ_KEY}"}
WRITE = {"Authorization": f"Bearer {WRITE_KEY}"}
TEST_PHOTOS = SHARED / "faces" / "knn" / "test"


@pytest.fixture(scope="module")
def made(tmp_path_factory, seeded_weights):
    """The demo's people (shrunk) indexed by `facerec index`, photos to send, a keys file."""
    root = tmp_path_factory.mktemp("serve")
    people = small_people(root / "people")
    env = {"TORCH_HOME": str(weights_cache(root / "torch-home")), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    gallery = root / "gallery"
    result = run_cli("index", people, "--gallery", gallery, "--weights", seeded_weights, env=env)
    assert result.returncode == 0, result.stderr
    photos = root / "photos"
    shrink(TEST_PHOTOS / "obama1.jpg", photos / "obama1.jpg")
    shrink(TEST_PHOTOS / "obama_and_biden.jpg", photos / "pair.jpg")
    shrink(SHARED / "faces" / "test_images" / "angelina_jolie" / "1.jpg", photos / "newcomer.jpg")
    Image.new("RGB", (200, 200), (128, 128, 128)).save(photos / "blank.png")
    keys = root / "keys"
    keys.write_text(f"# the test's keys\n{READ_KEY} read\n{WRITE_KEY} write\n")
    copy = root / "gallery-copy"  # for the kill test, as `facerec index` left it
    shutil.copytree(gallery, copy)
    return SimpleNamespace(
        root=root, people=people, env=env, gallery=gallery, copy=copy, photos=photos, keys=keys,
        weights=seeded_weights,
    )  # fmt: skip


@pytest.fixture(scope="module")
def server(made):
    """One server for the module's tests: keys, a 1 MB upload limit, at most 4 image requests at once."""
    running = Server(
        "--gallery", made.gallery, "--api-keys", made.keys, "--max-upload", "1MB", "--max-queue", "4",
        env=made.env,
    )  # fmt: skip
    yield running
    assert running.stop() == 130  # Ctrl-C: the requests under way finish, then it exits as interrupted
    assert READ_KEY not in running.output and WRITE_KEY not in running.output  # keys are never logged
    assert "Traceback" not in running.output


def api(server: Server, path: str) -> str:
    return server.url + path.lstrip("/")


def cli_json(made, *args: object, cwd: Path | None = None) -> list[dict]:
    result = run_cli(*args, "--json", cwd=cwd, env=made.env)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_health_and_identities_are_the_gallery_as_the_cli_shows_it(made, server):
    health = requests.get(api(server, "/health"), timeout=30)
    listing = requests.get(api(server, "/v1/identities"), headers=READ, timeout=30)
    assert listing.status_code == 200 and health.status_code == 200
    shown = cli_json(made, "gallery", "--gallery", made.gallery)
    assert listing.json() == shown
    assert health.json() == {
        "status": "ok",
        "gallery": (made.gallery / "CURRENT").read_text().strip(),
        "identities": len(shown),
        "faces": sum(item["faces"] for item in shown),
    }
    biden = requests.get(api(server, "/v1/identities/biden"), headers=READ, timeout=30).json()
    assert biden["identity"] == "biden"
    assert sorted(face["source"] for face in biden["faces"]) == sorted(
        str(path) for path in (made.people / "biden").iterdir()
    )
    for face in biden["faces"]:
        assert len(face["face_id"]) == 16 and len(face["box"]) == 4 and face["added"].startswith("20")


def test_detect_embed_identify_answer_what_the_cli_prints(made, server):
    names = ["obama1.jpg", "pair.jpg", "blank.png"]  # one face, several, none
    with ThreadPoolExecutor(2) as pool:  # the two commands start up side by side
        identifying = pool.submit(
            cli_json, made, "identify", *names, "--gallery", made.gallery, cwd=made.photos
        )
        embedded = cli_json(made, "embed", *names, "--weights", made.weights, cwd=made.photos)
        identified = identifying.result()
    assert len(identified[1]["faces"]) > 1
    for name, by_identify, by_embed in zip(names, identified, embedded, strict=True):
        photo = made.photos / name
        answers = {
            endpoint: post_image(api(server, f"/v1/{endpoint}"), photo, headers=READ)
            for endpoint in ("detect", "embed", "identify")
        }
        assert {answer.status_code for answer in answers.values()} == {200}
        assert_same_json(answers["identify"].json(), by_identify, name)
        assert_same_json(answers["embed"].json(), by_embed, name)
        detected = [
            {key: face[key] for key in ("box", "score", "landmarks")} for face in by_identify["faces"]
        ]
        assert_same_json(answers["detect"].json(), {"image": name, "faces": detected}, name)
    narrow = post_image(
        api(server, "/v1/identify"),
        made.photos / "pair.jpg",
        headers=READ,
        params={"top_k": 1, "threshold": 0},
    ).json()
    for face in narrow["faces"]:
        assert len(face["candidates"]) == 1 and face["identity"] is None and face["distance"] > 0


def test_verify_compares_the_largest_faces(made, server):
    def verify(first: str, second: str, **params) -> requests.Response:
        with open(made.photos / first, "rb") as a, open(made.photos / second, "rb") as b:
            return requests.post(
                api(server, "/v1/verify"),
                files={"image1": (first, a), "image2": (second, b)},
                headers=READ,
                params=params,
                timeout=120,
            )

    same = verify("obama1.jpg", "obama1.jpg").json()
    assert same["distance"] < 1e-5 and same["same"] is True and same["threshold"] == 1.0
    detected = post_image(api(server, "/v1/detect"), made.photos / "obama1.jpg", headers=READ).json()
    assert same["faces"] == [detected["faces"][0]] * 2
    vectors = [
        torch.tensor(
            post_image(api(server, "/v1/embed"), made.photos / name, headers=READ).json()["faces"][0][
                "embedding"
            ]
        )
        for name in ("obama1.jpg", "pair.jpg")
    ]
    other = verify("obama1.jpg", "pair.jpg", threshold=0.001).json()
    assert math.isclose(other["distance"], float(torch.dist(*vectors)), abs_tol=1e-5)
    assert other["same"] is False and other["threshold"] == 0.001
    faceless = verify("obama1.jpg", "blank.png")
    assert faceless.status_code == 400 and faceless.json() == {"error": "blank.png: no face found"}


def truncated_jpeg(made) -> Path:
    data = (made.photos / "obama1.jpg").read_bytes()
    target = made.root / "truncated.jpg"
    target.write_bytes(data[: len(data) // 2])
    return target


def bomb_png(made) -> Path:
    """A PNG of 12000 x 12000 pixels in a few kilobytes: decoding it would take 144 million pixels."""
    target = made.root / "bomb.png"
    Image.new("1", (12000, 12000)).save(target)
    return target


def test_every_error_is_one_json_line_with_its_status(made, server):
    photo = made.photos / "obama1.jpg"
    text = made.root / "notes.txt"
    text.write_text("not a photo\n")
    big = made.root / "big.bin"
    big.write_bytes(b"\0" * 1_500_000)
    enroll = api(server, "/v1/identities/someone/faces")
    cases = [
        (post_image(api(server, "/v1/detect"), photo), 401, "an API key is needed"),
        (post_image(api(server, "/v1/detect"), photo, headers={"Authorization": "Bearer nope-nope-nope-nope"}), 401, "unknown API key"),
        (post_image(enroll, photo, headers=READ), 403, "may only read"),
        (requests.delete(api(server, "/v1/identities/biden"), headers=READ, timeout=30), 403, "may only read"),
        (requests.get(api(server, "/v1/nothing"), headers=READ, timeout=30), 404, "no such endpoint"),
        (requests.get(api(server, "/v1/identities/nobody"), headers=READ, timeout=30), 404, "no identity 'nobody'"),
        (requests.delete(api(server, "/v1/identities/biden/faces/0123456789abcdef"), headers=WRITE, timeout=30), 404, "no face '0123456789abcdef'"),
        (requests.get(api(server, "/v1/identify"), headers=READ, timeout=30), 405, "GET is not allowed"),
        (requests.post(api(server, "/v1/identify"), headers=READ, timeout=30), 400, "image: Field required"),
        (post_image(api(server, "/v1/identify"), photo, headers=READ, params={"top_k": 0}), 400, "top_k:"),
        (post_image(api(server, "/v1/identify"), photo, headers=READ, params={"threshold": -1}), 400, "threshold:"),
        (post_image(api(server, "/v1/detect"), truncated_jpeg(made), headers=READ), 400, "truncated.jpg: cannot decode image"),
        (post_image(api(server, "/v1/detect"), bomb_png(made), headers=READ), 400, "bomb.png: refused"),
        (post_image(enroll, made.photos / "blank.png", headers=WRITE), 400, "blank.png: no face found"),
        (post_image(api(server, "/v1/identities/a%5Cb/faces"), photo, headers=WRITE), 400, "must not contain"),
        (post_image(api(server, "/v1/identities/%20a/faces"), photo, headers=WRITE), 400, "spaces"),
        (post_image(api(server, "/v1/identities/a%07/faces"), photo, headers=WRITE), 400, "control characters"),
        (post_image(api(server, "/v1/detect"), text, headers=READ), 415, "notes.txt: not an image"),
        (post_image(api(server, "/v1/detect"), big, headers=READ), 413, "larger than --max-upload (1000000 bytes)"),
        (requests.post(api(server, "/v1/detect"), data=_chunks(big), headers={**READ, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}, timeout=30), 413, "larger than --max-upload"),
    ]  # fmt: skip
    for response, status, says in cases:
        where = f"{response.request.method} {response.request.url}"
        assert response.status_code == status, f"{where}: {response.status_code} {response.text}"
        assert response.headers["content-type"] == "application/json", where
        body = response.json()
        assert list(body) == ["error"] and says in body["error"] and "\n" not in body["error"], where
    assert requests.get(api(server, "/v1/identities"), headers=WRITE, timeout=30).status_code == 200


BOUNDARY = "facerec-test-boundary"


def _chunks(path: Path):
    """The file as the multipart field `image`, streamed without a length: requests sends it chunked."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n\r\n'
    data = head.encode() + path.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


def enrolled_photo(server: Server, identity: str, photo: Path, status: int = 201) -> dict:
    answer = post_image(api(server, f"/v1/identities/{identity}/faces"), photo, headers=WRITE)
    assert answer.status_code == status, answer.text
    return answer.json()


def test_enroll_then_identify_then_delete(made, server):
    photo = made.photos / "obama1.jpg"
    enrolled = enrolled_photo(server, "Zoë Ö", photo)
    detected = post_image(api(server, "/v1/detect"), photo, headers=READ).json()
    assert enrolled == {
        "identity": "Zoë Ö",
        "face_id": enrolled["face_id"],
        "box": detected["faces"][0]["box"],
    }
    assert enrolled_photo(server, "Zoë Ö", photo, status=200) == enrolled  # the same photo again
    conflict = post_image(api(server, "/v1/identities/other/faces"), photo, headers=WRITE)
    assert conflict.status_code == 409 and "already enrolled" in conflict.json()["error"]

    (face,) = post_image(api(server, "/v1/identify"), photo, headers=READ).json()["faces"]
    assert face["identity"] == "Zoë Ö" and face["distance"] < 1e-4
    (stored,) = requests.get(api(server, "/v1/identities/Zoë Ö"), headers=READ, timeout=30).json()["faces"]
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    kept = Path(stored["source"])
    assert stored["face_id"] == enrolled["face_id"] and kept.parent == made.gallery.resolve() / "uploads"
    assert kept.name == f"{digest}.jpeg" and hashlib.sha256(kept.read_bytes()).hexdigest() == digest
    assert {"identity": "Zoë Ö", "faces": 1} in cli_json(made, "gallery", "--gallery", made.gallery)

    gone = requests.delete(
        api(server, f"/v1/identities/Zoë Ö/faces/{enrolled['face_id']}"), headers=WRITE, timeout=30
    )
    assert gone.status_code == 204 and not kept.exists()
    (face,) = post_image(api(server, "/v1/identify"), photo, headers=READ).json()["faces"]
    assert face["identity"] != "Zoë Ö"
    assert requests.get(api(server, "/v1/identities/Zoë Ö"), headers=READ, timeout=30).status_code == 404


def test_deleting_an_identity_removes_its_faces_and_keeps_indexed_ones_out(made, server):
    enrolled_photo(server, "Ada", made.photos / "obama1.jpg")
    enrolled_photo(server, "Ada", made.photos / "newcomer.jpg")
    gone = requests.delete(api(server, "/v1/identities/Ada"), headers=WRITE, timeout=30)
    assert gone.status_code == 204
    assert requests.get(api(server, "/v1/identities/Ada"), headers=READ, timeout=30).status_code == 404
    assert not any((made.gallery / "uploads").iterdir())

    # A face from the indexed folder stays deleted when the folder is indexed again, while its file is unchanged.
    rose = made.people / "rose_leslie"
    before = requests.get(api(server, "/v1/identities/rose_leslie"), headers=READ, timeout=30).json()["faces"]
    deleted = next(face for face in before if face["source"] == str(sorted(rose.iterdir())[0]))
    assert (
        requests.delete(
            api(server, f"/v1/identities/rose_leslie/faces/{deleted['face_id']}"), headers=WRITE, timeout=30
        ).status_code
        == 204
    )
    again = run_cli("index", made.people, "--gallery", made.gallery, env=made.env)
    assert again.returncode == 0 and "already up to date" in again.stdout, again.stderr
    assert f"{deleted['source']}: deleted through facerec serve, skipped" in again.stderr
    after = requests.get(api(server, "/v1/identities/rose_leslie"), headers=READ, timeout=30).json()["faces"]
    assert [face["face_id"] for face in after] == [face["face_id"] for face in before if face != deleted]


def test_a_full_queue_answers_503_while_the_event_loop_stays_free(made, server):
    start = threading.Barrier(13)
    finished: dict[str, float] = {}

    def identify(number: int) -> requests.Response:
        start.wait()
        answer = post_image(api(server, "/v1/identify"), made.photos / "pair.jpg", headers=READ)
        finished[f"identify{number}-{answer.status_code}"] = time.monotonic()
        return answer

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(identify, number) for number in range(12)]
        start.wait()
        time.sleep(0.02)  # the image requests are in flight
        assert requests.get(api(server, "/health"), timeout=30).status_code == 200
        health_done = time.monotonic()
        answers = [future.result() for future in futures]
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 4, statuses
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers["Retry-After"] == "1" and "server busy" in answer.json()["error"]
    # /health was answered while the admitted requests were still being computed
    assert health_done < max(when for name, when in finished.items() if name.endswith("-200"))


def test_a_concurrent_index_loses_nothing_and_is_served_at_once(made, server):
    enrolled_photo(server, "Zoë", made.photos / "obama1.jpg")
    (made.people / "newcomer").mkdir()
    shutil.copyfile(made.photos / "newcomer.jpg", made.people / "newcomer" / "1.jpg")
    index = subprocess.Popen(
        [sys.executable, "-m", "facerec", "index", str(made.people), "--gallery", str(made.gallery)],
        env={**os.environ, **made.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not holds_lock(index.pid, made.gallery / "LOCK") and index.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert index.poll() is None, "the index ended before it was seen writing"
    with ThreadPoolExecutor(3) as pool:
        enrolling = pool.submit(enrolled_photo, server, "Ada", made.photos / "pair.jpg")
        reads = []
        while index.poll() is None and len(reads) < 60:
            reads.append(post_image(api(server, "/v1/identify"), made.photos / "obama1.jpg", headers=READ))
        _, err = index.communicate(timeout=120)
        ada = enrolling.result(timeout=120)
    assert index.returncode == 0, err
    assert reads and {read.status_code for read in reads} == {200}
    assert all(read.json()["faces"][0]["identity"] == "Zoë" for read in reads)
    health = requests.get(api(server, "/health"), timeout=30).json()
    assert health["gallery"] == (made.gallery / "CURRENT").read_text().strip()
    names = {
        item["identity"]
        for item in requests.get(api(server, "/v1/identities"), headers=READ, timeout=30).json()
    }
    assert {"Zoë", "Ada", "newcomer", "obama", "biden"} <= names
    newcomer = post_image(api(server, "/v1/identify"), made.photos / "newcomer.jpg", headers=READ).json()
    assert newcomer["faces"][0]["identity"] == "newcomer" and newcomer["faces"][0]["distance"] < 1e-4
    ada_faces = requests.get(api(server, "/v1/identities/Ada"), headers=READ, timeout=30).json()["faces"]
    assert [f["face_id"] for f in ada_faces] == [ada["face_id"]]


def variants(photo: Path, folder: Path, count: int) -> list[Path]:
    """`count` PNG copies of `photo`, each with another corner pixel: other bytes, the same face."""
    folder.mkdir()
    image = Image.open(photo).convert("RGB")
    paths = []
    for number in range(count):
        image.putpixel((0, 0), (number, 255 - number, 7))
        paths.append(folder / f"v{number:02d}.png")
        image.save(paths[-1])
    return paths


def test_enrollments_answered_201_survive_a_sigkill(made):
    photos = variants(made.photos / "obama1.jpg", made.root / "variants", 24)
    env = {**made.env, "TMPDIR": str(made.root)}  # where the killed server leaves its spool folder
    server = Server("--gallery", made.copy, env=env)
    created: list[dict] = []
    remaining = list(photos)
    lock = threading.Lock()

    def enroll_until_killed() -> None:
        while True:
            with lock:
                if not remaining:
                    return
                photo = remaining.pop()
            try:
                answer = post_image(server.url + "v1/identities/burst/faces", photo)
            except requests.ConnectionError:
                return
            if answer.status_code == 201:
                with lock:
                    created.append(answer.json())

    workers = [threading.Thread(target=enroll_until_killed) for _ in range(4)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 120
    while len(created) < 6 and time.monotonic() < deadline and any(w.is_alive() for w in workers):
        time.sleep(0.005)
    server.kill()
    for worker in workers:
        worker.join()
    assert 6 <= len(created) < len(photos), "the kill did not come during the burst"

    restarted = Server("--gallery", made.copy, env=env)
    try:
        listed = requests.get(restarted.url + "v1/identities/burst", timeout=30).json()["faces"]
        current = made.copy / "CURRENT"
        version = current.read_text()
        current.write_text("garbage\n")  # and a gallery damaged under a running server says so, in one line
        damaged = requests.get(restarted.url + "health", timeout=30)
        current.write_text(version)
    finally:
        restarted.stop()
    assert damaged.status_code == 500
    assert damaged.json() == {
        "error": f"{made.copy / 'CURRENT'}: not a gallery version name ('garbage'); `facerec gallery --repair` "
        "(or `facerec index DIR`) rebuilds what can be rebuilt"
    }
    ids = {face["face_id"]: face for face in listed}
    for answer in created:
        assert answer["face_id"] in ids
        assert Path(ids[answer["face_id"]]["source"]).is_file()
    shown = run_cli("gallery", "--gallery", made.copy, env=made.env)
    assert shown.returncode == 0, shown.stderr


def test_without_keys_it_listens_only_on_loopback(made, tmp_path):
    refused = run_cli("serve", "--host", "0.0.0.0", "--gallery", made.gallery, env=made.env)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "Error: --host 0.0.0.0: without API keys (--api-keys FILE or FACEREC_API_KEYS) the server listens "
        "only on loopback addresses (127.0.0.1, ::1, localhost); give keys to serve other machines"
    ]
    bad = tmp_path / "keys"
    bad.write_text("secret-secret-secret-1 admin\n")
    refused = run_cli("serve", "--api-keys", bad, "--gallery", made.gallery, env=made.env)
    assert refused.returncode == 2 and "secret" not in refused.stderr
    assert refused.stderr.strip() == f"Error: --api-keys {bad}, line 1: expected 'KEY read' or 'KEY write'"


def embedded_together(batcher, faces: torch.Tensor) -> list[torch.Tensor]:
    """Each face submitted as its own job by its own thread, all at once; the results in order."""
    start = threading.Barrier(len(faces))

    def submit(number: int) -> torch.Tensor:
        start.wait()
        return batcher.submit(faces[number : number + 1]).result(timeout=60)

    batcher.start()
    try:
        with ThreadPoolExecutor(len(faces)) as pool:
            return list(pool.map(submit, range(len(faces))))
    finally:
        batcher.stop()


def test_the_batcher_embeds_concurrent_requests_in_fewer_calls_with_the_same_results():
    from facerec.pipeline.engine import load_backbone
    from facerec.service.batching import Batcher

    backbone = load_backbone("inception-resnet", pretrained="none", device="cpu")
    faces = torch.randn(4, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    alone = torch.cat([backbone.embed(faces[i : i + 1]) for i in range(4)])
    batching = Batcher.of_tensors(backbone.embed, max_rows=32, max_wait=0.05)
    assert torch.allclose(torch.cat(embedded_together(batching, faces)), alone, atol=1e-5)
    assert batching.calls < 4
    one_by_one = Batcher.of_tensors(backbone.embed, max_rows=1, max_wait=0.05)
    assert torch.allclose(torch.cat(embedded_together(one_by_one, faces)), alone, atol=1e-5)
    assert one_by_one.calls == 4


def test_edits_create_a_gallery_empty_it_and_wait_for_another_writer(tmp_path, monkeypatch):
    from facerec.contract.faces import Face
    from facerec.gallery.local import folder as store
    from facerec.gallery.provenance import Provenance
    from facerec.gallery.stores import open_store
    from facerec.service import edits
    from facerec.service.errors import ServiceError

    gallery = tmp_path / "gallery"
    folder = open_store(gallery)
    made = Provenance("inception-resnet", None, None, None, "mtcnn", embedding_size=4, threshold=1.0)
    photos = [Image.new("RGB", (8, 8), (number, 0, 0)) for number in range(2)]
    data = []
    for photo in photos:
        out = tmp_path / "photo.png"
        photo.save(out)
        data.append(out.read_bytes())
    face = Face((1.0, 1.0, 6.0, 6.0))
    first = edits.enroll(folder, made, "Ada", data[0], "PNG", face, torch.tensor([1.0, 0, 0, 0]))
    edits.enroll(folder, made, "Ada", data[1], "PNG", face, torch.tensor([0, 1.0, 0, 0]))
    snapshot = store.read(gallery)
    assert snapshot.identities() == {"Ada": 2} and snapshot.provenance == made
    snapshot.close()
    assert len(list((gallery / "uploads").iterdir())) == 2

    edits.delete(folder, "Ada", first.to_json()["face_id"])
    edits.delete(folder, "Ada")
    snapshot = store.read(gallery)
    assert len(snapshot) == 0 and snapshot.vectors().shape == (0, 4)
    snapshot.close()
    assert not any((gallery / "uploads").iterdir())
    with pytest.raises(ServiceError, match="no identity 'Ada'") as missing:
        edits.delete(folder, "Ada")
    assert missing.value.status == 404

    monkeypatch.setattr(edits, "LOCK_WAIT", 0.2)
    with store.locked(gallery), pytest.raises(ServiceError, match="another process has been writing") as busy:
        edits.enroll(folder, made, "Ada", data[0], "PNG", face, torch.tensor([1.0, 0, 0, 0]))
    assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "5"}
