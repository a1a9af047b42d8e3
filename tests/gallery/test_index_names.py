"""Identity names as `facerec index` reads them from folder names: one rule (facerec.gallery.names),
the one `facerec serve` applies to names in its paths. The two spellings of `René` (NFC and NFD, as
macOS writes file names) are one identity; a folder whose name hides what it is (a right-to-left
override, a control character) is named on stderr with why, and skipped."""

from __future__ import annotations

import json
import unicodedata

import pytest
from PIL import Image

from facerec.gallery.enroll import scan
from facerec.gallery.names import NameRefused, identity_name
from support.cli import run_cli

NFC = "Ren\u00e9"
NFD = "Rene\u0301"
OVERRIDE = "\u202egpj.exe"  # shows as `exe.jpg`
BELL = "bell\x07"


def picture(path, shade: int) -> None:
    """A small picture of its own bytes: with `--detector none` it is one face."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (shade, 255 - shade, 40)).save(path)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "must not be empty"),
        (".hidden", "must not start with '.'"),
        ("..", "must not start with '.'"),
        ("a/b", "must not contain '/'"),
        ("a\\b", "must not contain '/' or '\\'"),
        ("a\x00b", "must not contain control characters"),
        ("a\x85b", "must not contain control characters"),  # C1 (NEL)
        (BELL, "must not contain control characters"),
        (OVERRIDE, "must not contain bidirectional control characters"),
        *[(f"a{char}b", "bidirectional") for char in "\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069"],
        *[(f"a{char}b", "bidirectional") for char in "\u200e\u200f\u061c"],
        ("a\udcff", "is not valid UTF-8"),  # an undecodable byte of a file name, as Python reads it
        (" Ada", "must not start or end with spaces"),
        ("é" * 128, "must be at most 255 bytes"),
    ],
)
def test_refused_names_say_why(name, reason):
    with pytest.raises(NameRefused) as refused:
        identity_name(name)
    assert reason in refused.value.reason and "\n" not in str(refused.value)


def test_names_are_kept_in_nfc_and_other_unicode_is_kept():
    assert identity_name(NFD) == identity_name(NFC) == NFC
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # the joiner is part of the emoji
    for name in ("Zoë Ö", "Ada Lovelace", "میرزا\u200cعلی", family, "李小龍", "O'Brien (2)"):
        assert identity_name(name) == unicodedata.normalize("NFC", name)


def test_scan_makes_one_identity_of_both_spellings_and_skips_refused_folders(tmp_path):
    people = tmp_path / "people"
    picture(people / NFC / "1.png", 1)
    picture(people / NFD / "2.png", 2)
    picture(people / OVERRIDE / "1.png", 3)
    picture(people / BELL / "1.png", 4)
    notes: list[str] = []
    found = scan(people, notes.append)
    assert {image.identity for image in found} == {NFC}
    assert sorted(image.source for image in found) == sorted(
        [str(people / NFC / "1.png"), str(people / NFD / "2.png")]
    )
    assert sorted(notes) == sorted(
        [
            f"{str(people / OVERRIDE)!r}: not an identity name "
            "(must not contain bidirectional control characters), skipped",
            f"{str(people / BELL)!r}: not an identity name (must not contain control characters), skipped",
        ]
    )


def test_index_enrolls_both_spellings_as_one_identity_and_names_refused_folders(tmp_path, seeded_weights):
    people = tmp_path / "people"
    picture(people / NFC / "1.png", 1)
    picture(people / NFD / "2.png", 2)
    picture(people / OVERRIDE / "1.png", 3)
    picture(people / "Ada" / "1.png", 4)
    env = {"TORCH_HOME": str(tmp_path / "torch-home"), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    gallery = tmp_path / "gallery"
    indexed = run_cli(
        "index", people, "--gallery", gallery, "--weights", seeded_weights, "--detector", "none", env=env
    )
    assert indexed.returncode == 0, indexed.stderr
    assert indexed.stderr.splitlines() == [
        f"{str(people / OVERRIDE)!r}: not an identity name "
        "(must not contain bidirectional control characters), skipped"
    ]
    assert "\u202e" not in indexed.stderr  # named escaped: the override cannot reorder the line
    shown = run_cli("gallery", "--gallery", gallery, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line) for line in shown.stdout.splitlines()] == [
        {"identity": "Ada", "faces": 1},
        {"identity": NFC, "faces": 2},
    ]


def test_a_gallery_with_an_nfd_name_is_brought_to_nfc_without_embedding_again(tmp_path, seeded_weights):
    """A gallery written before names were normalised holds `René` in NFD; the next index keeps the
    vector and answers the NFC name."""
    from facerec.gallery.local.store import LocalStore
    from facerec.gallery.records import Change, Entry, now
    from facerec.gallery.stores import open_store

    people = tmp_path / "people"
    picture(people / NFD / "1.png", 1)
    env = {"TORCH_HOME": str(tmp_path / "torch-home"), "FACEREC_MIRROR": "http://127.0.0.1:9"}
    gallery = tmp_path / "gallery"
    made = run_cli(
        "index", people, "--gallery", gallery, "--weights", seeded_weights, "--detector", "none", env=env
    )
    assert made.returncode == 0, made.stderr
    store = open_store(str(gallery))
    assert isinstance(store, LocalStore)
    with store.locked():  # rewrite the entry as an older facerec wrote it: the folder's name as it was
        base, _ = store.recover()
        (entry,) = base.entries()
        old = Entry(NFD, entry.source, entry.sha256, entry.box, now())
        change = Change(
            base.provenance, base.head_name, dict(base.head_options), [], [old], base.vectors([0])
        )
        store.commit(base, change)
        base.close()
    again = run_cli("index", people, "--gallery", gallery, env=env)
    assert again.returncode == 0, again.stderr
    assert "(0 embedded, 1 reused, 0 unchanged, 1 removed, 0 skipped)" in again.stdout
    shown = run_cli("gallery", "--gallery", gallery, "--json", env=env)
    assert [json.loads(line) for line in shown.stdout.splitlines()] == [{"identity": NFC, "faces": 1}]
