"""`facerec serve` over a clustered photo library: the people endpoints and the page's People section.

A real server process answers for a gallery `facerec cluster` made (a subprocess, as a user runs it)
from real photos with dlib-resnet's real weights. Each test changes only people the others leave alone
(Obama's are named and moved, Kit's and Biden's merged, Rose's named through the page, Paul's lone face
made a person of its own), so they pass in any order.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from PIL import Image

from support import FACES
from support.browser import chromium
from support.cli import run_cli
from support.gallery import shrink, weights_cache
from support.serve import Server, post_image

LIBRARY = {  # photo -> the one person in it
    "knn/train/obama/obama.jpg": "obama",
    "knn/train/obama/obama2.jpg": "obama",
    "photos/obama3.jpg": "obama",
    "knn/train/biden/biden.jpg": "biden",
    "knn/train/biden/biden2.jpg": "biden",
    "knn/train/kit_harington/john1.jpeg": "kit",
    "knn/train/kit_harington/john2.jpeg": "kit",
    "knn/train/rose_leslie/img1.jpg": "rose",
    "knn/train/rose_leslie/img2.jpg": "rose",
    "test_images/paul_rudd/1.jpg": "paul",  # one photo of him: nobody's person
}
SIZE = 600
READ_KEY = "read-key-0123456789abcdef"
WRITE_KEY = "write-key-0123456789abcdef"
READ = {"Authorization": f"Bearer {READ_KEY}"}
WRITE = {"Authorization": f"Bearer {WRITE_KEY}"}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> SimpleNamespace:
    """The library (photoNN.jpg, names that say nothing), its gallery from `facerec cluster --backbone
    dlib-resnet`, what the run printed, who is in each photo, a keys file and a photo to identify."""
    root = tmp_path_factory.mktemp("people")
    truth = {}
    for number, photo in enumerate(LIBRARY):
        target = shrink(FACES / photo, root / "photos" / f"photo{number:02d}.jpg", SIZE)
        truth[str(target)] = LIBRARY[photo]
    env = {"TORCH_HOME": str(weights_cache(root / "torch-home")), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    gallery = root / "gallery"
    result = run_cli(
        "cluster", root / "photos", "--gallery", gallery, "--backbone", "dlib-resnet", "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    keys = root / "keys"
    keys.write_text(f"{READ_KEY} read\n{WRITE_KEY} write\n")
    return SimpleNamespace(
        root=root,
        env=env,
        gallery=gallery,
        truth=truth,
        clustered=[json.loads(line) for line in result.stdout.splitlines()],
        keys=keys,
        obama=shrink(FACES / "knn" / "test" / "obama1.jpg", root / "obama1.jpg", SIZE),  # not in the library
    )


@pytest.fixture(scope="module")
def server(made):
    running = Server("--gallery", made.gallery, "--api-keys", made.keys, env=made.env)
    yield running
    assert running.stop() == 130
    assert "Traceback" not in running.output
    assert READ_KEY not in running.output and WRITE_KEY not in running.output


def person_of(made, who: str) -> dict:
    """The person `facerec cluster` made of `who`'s photos (all of them, and only them)."""
    photos = {image for image, person in made.truth.items() if person == who}
    found = [r for r in made.clustered if {face["image"] for face in r["faces"]} == photos]
    assert len(found) == 1 and found[0]["person"] is not None, (who, made.clustered)
    return found[0]


def lone_face(made) -> dict:
    """Paul's face, which `facerec cluster` left to nobody."""
    (face,) = made.clustered[-1]["faces"]
    assert made.clustered[-1]["person"] is None and made.truth[face["image"]] == "paul"
    return face


def get(server, path: str, headers: dict = READ) -> requests.Response:
    return requests.get(server.url + path.lstrip("/"), headers=headers, timeout=60)


def post(server, path: str, body: dict, headers: dict = WRITE) -> requests.Response:
    return requests.post(server.url + path.lstrip("/"), json=body, headers=headers, timeout=120)


def people_now(made) -> list[dict]:
    """What `facerec people --json` prints now."""
    result = run_cli("people", "--gallery", made.gallery, "--json", env=made.env)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def refused(answer: requests.Response, status: int, words: str) -> None:
    """An error answer: the status, and one line that says `words`."""
    assert answer.status_code == status, (answer.status_code, answer.text)
    error = answer.json()["error"]
    assert words in error and "\n" not in error and "Traceback" not in error, error


def test_the_people_are_listed_as_the_cli_lists_them(made, server):
    answer = get(server, "/v1/people")
    assert answer.status_code == 200
    expected = people_now(made)
    assert answer.json() == [
        {
            "person": r["person"],
            "name": r["name"],
            "faces": len(r["faces"]),
            "sample": [face["face_id"] for face in r["faces"][:4]],
        }
        for r in expected
    ]
    assert answer.json()[-1]["person"] is None  # the unassigned, last
    for record in expected[:-1]:
        one = get(server, f"/v1/people/{record['person']}")
        assert one.status_code == 200 and one.json() == record


def test_a_named_person_is_identified_by_its_name(made, server):
    obama = person_of(made, "obama")["person"]
    before = post_image(server.url + "v1/identify", made.obama, headers=READ)
    assert before.status_code == 200 and before.json()["faces"][0]["identity"] is None  # nobody named yet

    composed = post(server, f"/v1/people/{obama}/name", {"name": "Rene\u0301"})  # é as e + accent
    assert composed.status_code == 200 and composed.json()["name"] == "Ren\u00e9"  # kept in NFC
    named = post(server, f"/v1/people/{obama}/name", {"name": "Barack Obama"})
    assert named.status_code == 200
    assert named.json() == next(r for r in people_now(made) if r["person"] == obama)
    assert named.json()["name"] == "Barack Obama"

    after = post_image(server.url + "v1/identify", made.obama, headers=READ)
    assert after.status_code == 200 and after.json()["faces"][0]["identity"] == "Barack Obama"
    identities = get(server, "/v1/identities").json()
    assert {"identity": "Barack Obama", "faces": len(named.json()["faces"])} in identities
    assert all(item["identity"] for item in identities)  # the faces of nobody named are no identity


def test_merged_people_are_one(made, server):
    kit, biden = person_of(made, "kit"), person_of(made, "biden")
    merged = post(server, "/v1/people/merge", {"people": [kit["person"], biden["person"]]})
    assert merged.status_code == 200, merged.text
    assert merged.json()["person"] == kit["person"]
    assert {f["face_id"] for f in merged.json()["faces"]} == {
        f["face_id"] for f in kit["faces"] + biden["faces"]
    }
    refused(get(server, f"/v1/people/{biden['person']}"), 404, f"no person '{biden['person']}'")
    assert biden["person"] not in {r["person"] for r in get(server, "/v1/people").json()}
    assert merged.json() == next(r for r in people_now(made) if r["person"] == kit["person"])


def test_a_face_moved_to_a_new_person_is_that_person(made, server):
    obama = person_of(made, "obama")
    face = obama["faces"][0]
    moved = post(server, f"/v1/faces/{face['face_id']}/move", {"to": "new"})
    assert moved.status_code == 200, moved.text
    new = moved.json()
    assert new["person"] not in {r["person"] for r in made.clustered} and new["name"] is None
    assert new["faces"] == [face]
    listed = {r["person"]: r for r in get(server, "/v1/people").json()}
    assert listed[new["person"]]["sample"] == [face["face_id"]]
    assert face["face_id"] not in listed[obama["person"]]["sample"]


def test_what_cannot_be_done_is_refused_in_one_line(made, server):
    rose = person_of(made, "rose")["person"]
    paul = lone_face(made)["face_id"]
    refused(get(server, "/v1/people/p9999"), 404, "no person 'p9999'")
    refused(post(server, "/v1/people/p9999/name", {"name": "X"}), 404, "no person 'p9999'")
    refused(post(server, f"/v1/people/{rose}/name", {"name": "\u202egpj.exe"}), 400, "bidirectional")
    refused(post(server, f"/v1/people/{rose}/name", {"name": " Rose"}), 400, "spaces")
    refused(post(server, f"/v1/people/{rose}/name", {}), 400, "name: Field required")
    for kind in ("application/json", "application/x-www-form-urlencoded"):  # curl -d's, without -H
        headers = {**WRITE, "Content-Type": kind}
        not_json = requests.post(
            server.url + "v1/people/merge", data="p0001 p0002", headers=headers, timeout=60
        )
        refused(not_json, 400, "the body must be a JSON object")
    refused(post(server, "/v1/people/merge", {"people": [rose]}), 400, "two or more different people")
    refused(post(server, "/v1/people/merge", {"people": [rose, "p9999"]}), 404, "no person 'p9999'")
    refused(post(server, "/v1/faces/0123456789abcdef/move", {"to": "new"}), 404, "no face '0123456789abcdef'")
    refused(post(server, f"/v1/faces/{paul}/move", {"to": "p9999"}), 404, "no person 'p9999'")
    refused(post(server, f"/v1/people/{rose}/name", {"name": "X"}, headers=READ), 403, "may only read")
    refused(post(server, "/v1/people/merge", {"people": [rose, rose]}, headers={}), 401, "API key")
    refused(get(server, "/v1/people", headers={}), 401, "API key")

    made_person = post(server, f"/v1/faces/{paul}/move", {"to": "new"})  # nobody's face: a person now
    assert made_person.status_code == 200 and made_person.json()["faces"] == [lone_face(made)]
    paul_person = made_person.json()["person"]
    assert post(server, f"/v1/people/{paul_person}/name", {"name": "Paul"}).status_code == 200
    refused(
        post(server, f"/v1/people/{rose}/name", {"name": "Paul"}), 409, f"already the name of {paul_person}"
    )
    assert get(server, f"/v1/people/{rose}").json()["name"] != "Paul"  # nothing of a refusal was kept


def test_a_face_thumbnail_is_a_small_jpeg_of_it(made, server):
    face = lone_face(made)
    answer = get(server, f"/v1/faces/{face['face_id']}/thumbnail")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    picture = Image.open(io.BytesIO(answer.content))
    assert picture.format == "JPEG" and max(picture.size) == 128 and picture.mode == "RGB"
    refused(get(server, "/v1/faces/0123456789abcdef/thumbnail"), 404, "no face '0123456789abcdef'")
    photo = Path(face["image"])
    away = photo.with_suffix(".away")
    shutil.move(photo, away)
    try:
        refused(get(server, f"/v1/faces/{face['face_id']}/thumbnail"), 404, "is gone")
    finally:
        shutil.move(away, photo)


@pytest.fixture(scope="module")
def browser():
    """Chromium through Playwright; missing, it fails the test with what to install (never a skip)."""
    with chromium() as launched:
        yield launched


def test_the_page_names_a_person(made, server, browser, tmp_path):
    rose = person_of(made, "rose")["person"]
    page = browser.new_page(viewport={"width": 1000, "height": 1400})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    page.goto(server.url)
    page.fill("#key", WRITE_KEY)  # the server asks for keys: the page sends it with every call
    page.click("#save-key")
    row = page.locator(f"#people li[data-person='{rose}']")  # other rows name it too, in their selects
    row.wait_for()
    row.get_by_label(f"name of {rose}").fill("Rose Leslie")
    row.get_by_role("button", name="Name").click()
    page.locator("#people-said", has_text=f"{rose} is Rose Leslie").wait_for()
    row.locator(".person-title", has_text="Rose Leslie").wait_for()
    page.locator("#identities li", has_text="Rose Leslie (2)").wait_for()
    assert row.locator("img").count() == 2
    page.wait_for_function(
        "[...document.querySelectorAll('#people img')].every((img) => img.complete && img.naturalWidth > 0)"
    )

    screenshot = made.root / "people-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert get(server, f"/v1/people/{rose}").json()["name"] == "Rose Leslie"
    assert all(url.startswith(server.url) or url.startswith("blob:") for url in requested), requested
    page.close()
