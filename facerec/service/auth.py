"""API keys with scopes: who may read (detect, embed, identify, verify, list) and who may also write
(enroll, delete, name, merge and move people).

Keys come from `--api-keys FILE` and from the `FACEREC_API_KEYS` variable, in one format: entries
`KEY SCOPE` (SCOPE `read` or `write`), one a line in the file, separated by newlines or commas in the
variable; blank lines and lines starting with `#` are ignored. A key is at least MIN_KEY_LENGTH printable
ASCII characters without spaces, so that a typo or a placeholder cannot become a key.

Without keys, the server listens only on loopback addresses (`check_host`): anyone who can reach it
could enroll and delete.

A presented key is compared with every configured key through their SHA-256 digests with
hmac.compare_digest: the time taken does not depend on how much of a key matched, nor on which key it
was. No message, log line or error ever contains a key: a bad entry is named by its file and line.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from facerec.errors import UsageError

SCOPES = ("read", "write")  # write includes read
MIN_KEY_LENGTH = 16
ENVIRONMENT = "FACEREC_API_KEYS"
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class Keys:
    """The configured keys, kept only as SHA-256 digests with their scope."""

    digests: tuple[tuple[bytes, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.digests)

    def scope(self, presented: str) -> str | None:
        """The scope of `presented` (`read` or `write`), or None when it is no configured key.

        Every configured key is compared, whatever matched before, in constant time each.
        """
        digest = _digest(presented)
        found = None
        for known, scope in self.digests:
            if hmac.compare_digest(digest, known):
                found = scope
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def load_keys(file: Path | None, variable: str | None) -> Keys:
    """The keys of `file` (`--api-keys`) and of the variable's text (`FACEREC_API_KEYS`), together."""
    entries: list[tuple[str, str]] = []  # (key, scope)
    if file is not None:
        try:
            text = Path(file).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise UsageError(f"--api-keys {file}: cannot be read ({reason})") from None
        entries += _parse(text.splitlines(), lambda number: f"--api-keys {file}, line {number}")
    if variable:
        pieces = variable.replace(",", "\n").splitlines()
        entries += _parse(pieces, lambda number: f"{ENVIRONMENT}, entry {number}")
    return Keys(tuple((_digest(key), scope) for key, scope in entries))


def _parse(lines: list[str], where: Callable[[int], str]) -> list[tuple[str, str]]:
    """`(key, scope)` for each entry; a malformed one is refused by its place, never its text."""
    found = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) != 2 or parts[1] not in SCOPES:
            raise UsageError(f"{where(number)}: expected 'KEY read' or 'KEY write'")
        key, scope = parts
        if len(key) < MIN_KEY_LENGTH or not key.isascii() or not key.isprintable():
            raise UsageError(
                f"{where(number)}: a key must be at least {MIN_KEY_LENGTH} printable ASCII characters"
            )
        found.append((key, scope))
    return found


def key_refusal(keys: Keys, presented: str, needed: str) -> tuple[int, str] | None:
    """Why the key `presented` may not do what needs `needed` (`read` or `write`): (401, ...) for an
    unknown key, (403, ...) for a read key where writing is needed; None when it may."""
    scope = keys.scope(presented)
    if scope is None:
        return 401, "unknown API key"
    if not allows(scope, needed):
        return 403, "this API key may only read; changing the gallery needs a write key"
    return None


def allows(scope: str, needed: str) -> bool:
    """Whether a key of `scope` may do what needs `needed` (`write` keys may also read)."""
    return SCOPES.index(scope) >= SCOPES.index(needed)


def check_host(host: str, has_keys: bool) -> None:
    """Without keys the server may listen only on loopback addresses: anyone who can reach it could
    enroll and delete."""
    if has_keys or host in LOOPBACK_NAMES:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(
            f"--host {host}: without API keys (--api-keys FILE or FACEREC_API_KEYS) the server listens "
            "only on loopback addresses (127.0.0.1, ::1, localhost); give keys to serve other machines"
        )
