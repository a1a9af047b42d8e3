"""The demo set: ageitgey/face_recognition's five-person example (MIT), downloaded and verified.

Its `train/<person>/` photos fill an empty `datasets/custom_images/` (the gallery to index) and its `test/`
photos go to `datasets/demo_photos/` (the photos to identify). Every file comes through the same
download code as the weights (so `FACEREC_MIRROR` applies) and is checked against the SHA-256 below.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from facerec.errors import FacerecError
from facerec.pipeline.weights import download, sha256_file

BASE_URL = "https://github.com/ageitgey/face_recognition/raw/master/examples/knn_examples/"
GALLERY_DIR = Path("datasets/custom_images")
PHOTOS_DIR = Path("datasets/demo_photos")

# Path under knn_examples/ -> SHA-256 of the file as published.
FILES = {
    "test/alex_lacamoire1.jpg": "69c21d12ef62965b8c409db5672783ac1532cc7bfd2beffe81003fb3bd580364",
    "test/johnsnow_test1.jpg": "eb08fa837c8a86051eb6ca5370b76bb926a7f7deef8c449d06f9a280267f80b5",
    "test/kit_with_rose.jpg": "b8ecc2e34fe0af3101cf7b7dc0502c51d3b48d972b200462e7f5359a7c609fec",
    "test/obama1.jpg": "a2840cf4fd84072fc998e54033665793ca78fc5be77da0aba6e6b95d99d0ad15",
    "test/obama_and_biden.jpg": "b8781c1f734616a942ce67626e104151f7d891bc7064ae8a3db175f064357a1a",
    "train/alex_lacamoire/img1.jpg": "348e0a705ebd86f531553298348913a0483a70c966f1eebea5d8409b2421516b",
    "train/biden/biden.jpg": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
    "train/biden/biden2.jpg": "593ae76f7fdafe582535e288751e665f0533d5c9d5dc7264db24d7e6b6ce4730",
    "train/kit_harington/john1.jpeg": "74872ce95f0af6366f2b58a7017b72debf6ed91c197fe7bf6a759c32ebe06543",
    "train/kit_harington/john2.jpeg": "c0970011d277d4772d488f60478b59fce212dabe824ce8e0c8032673ccad76ac",
    "train/obama/obama.jpg": "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
    "train/obama/obama2.jpg": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
    "train/rose_leslie/img1.jpg": "0f3903bcc72a9c54ea8fb2075464fd6dc74a4fe55a09e8095ab948020b697baa",
    "train/rose_leslie/img2.jpg": "274a9c97300ed1657faa1c293979c75013f2998ee0403c79fbbc10be67b442d2",
}


def has_identities(folder: Path) -> bool:
    """Whether `folder` already holds photos in identity folders (empty or hidden folders do not count)."""
    if not folder.is_dir():
        return False
    people = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return any(f.is_file() and not f.name.startswith(".") for person in people for f in person.rglob("*"))


def fetch_file(relative: str, target: Path, advice: str) -> None:
    """The demo file `relative` (a key of FILES) at `target`, downloaded and verified unless it is there
    with its SHA-256; a failed download is one line ending with `advice`, what the caller suggests."""
    digest = FILES[relative]
    if target.is_file() and sha256_file(target) == digest:
        return
    try:
        download(BASE_URL + relative, target, digest)
    except FacerecError as error:
        failure = str(error).partition("; ")[0]  # the rest of download's message is about weights
        raise FacerecError(f"{failure}; {advice}") from None


def fetch(
    gallery_dir: Path = GALLERY_DIR, photos_dir: Path = PHOTOS_DIR, note: Callable[[str], None] | None = None
) -> list[Path]:
    """Download what is missing of the demo set; returns the test photos, in name order.

    The gallery part is only written into a `gallery_dir` without identity folders: a user's own people
    are never mixed with the demo's. Files already in place with the right SHA-256 are not fetched again.
    """
    note = note or (lambda message: None)
    fill_gallery = not has_identities(gallery_dir)
    if not fill_gallery:
        note(f"{gallery_dir} already holds identity folders: indexing those, not the demo's people")
    advice = (
        "the demo downloads its photos and weights: connect to the network, or set "
        "FACEREC_MIRROR=http://host:port to a mirror serving the same paths, or put your own photos "
        f"in {gallery_dir}/<person>/ and run `facerec index {gallery_dir} --weights FILE`"
    )
    photos = []
    for relative in FILES:
        split, _, rest = relative.partition("/")
        if split == "train" and not fill_gallery:
            continue
        target = (gallery_dir if split == "train" else photos_dir) / rest
        if split == "test":
            photos.append(target)
        fetch_file(relative, target, advice)
    return sorted(photos)
