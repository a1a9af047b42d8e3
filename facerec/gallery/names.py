"""The one rule for identity names, wherever a name enters: a folder of `facerec index DIR` (and of
training and evaluation, which scan folders the same way) and the path of the HTTP API.

A name is kept in Unicode's composed form (NFC), so the two spellings of `René` (é as one code point,
or e followed by a combining accent; macOS writes file names the second way) are one identity. A name
is refused when it could not be a visible folder name, or would not show what it is: empty, starting
with '.' (hidden, as `index` skips such names), containing '/', '\\' or NUL, control characters,
bidirectional controls (U+202E would show `gpj.exe` as `exe.jpg`), text that is not valid UTF-8 (a
folder name no UTF-8 decoding gives), spaces around it, or more than MAX_NAME_BYTES bytes of UTF-8.
Other format characters stay allowed: the zero-width joiner and non-joiner are part of emoji and of
correct spelling in several scripts.
"""

from __future__ import annotations

import unicodedata

from facerec.errors import FacerecError

MAX_NAME_BYTES = 255  # a file name's limit on every common file system: a name can become a folder
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)  # ALM, LRM, RLM, the embeddings and overrides, the isolates


class NameRefused(FacerecError):
    """A name that cannot name an identity; `reason` says why, in a few words."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"identity {name!r}: {reason}")
        self.name = name
        self.reason = reason


def identity_name(name: str) -> str:
    """`name` in NFC, when it can name an identity; NameRefused (with the reason) when it cannot."""
    composed = unicodedata.normalize("NFC", name)
    reason = _problem(composed)
    if reason is not None:
        raise NameRefused(name, reason)
    return composed


def _problem(name: str) -> str | None:
    if not name:
        return "must not be empty"
    if name.startswith("."):
        return "must not start with '.' (a hidden name)"
    if "/" in name or "\\" in name:
        return "must not contain '/' or '\\'"
    if any("\ud800" <= char <= "\udfff" for char in name):
        return "is not valid UTF-8"
    if any(char in BIDI_CONTROLS for char in name):
        return "must not contain bidirectional control characters"
    if any(unicodedata.category(char) == "Cc" for char in name):  # NUL, the C0 and C1 sets, DEL
        return "must not contain control characters"
    if name != name.strip():
        return "must not start or end with spaces"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"must be at most {MAX_NAME_BYTES} bytes of UTF-8"
    return None
