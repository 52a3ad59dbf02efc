"""API keys for the HTTP service: a file of SHA-256 hashes, checked against `Authorization: Bearer <key>`.

Key file format, one entry per line:

    # comments start with '#', on their own line or after a hash
    3f0a...e9c1      # 64 lowercase hex digits: the SHA-256 of the key's UTF-8 bytes

Blank lines and surrounding whitespace are ignored. Any other line (uppercase hex included: the format is the
lowercase `sha256sum` / `hashlib.hexdigest()` spelling, so there is one way to write each hash) is a `ValueError`
naming the file and line number, never the line's content, which might be a plain key pasted by mistake.

The service stores and compares hashes only. A request is authenticated by hashing the presented key and comparing
the result with every stored hash in constant time (`hmac.compare_digest`, no early exit), so the time taken does
not tell which key matched or how far a guess got. A matched key is identified by a label, the first 12 hex digits
of its hash: enough to tell keys apart in logs and metrics, useless for authenticating.

An empty key file (or one with comments only) gives an enabled `ApiKeys` that accepts no key: authentication fails
closed. `ApiKeys.disabled()` is the explicit "no auth configured" value.

Making a key (the key goes to stdout, its line for the key file to stderr):

    python -m serve.auth new-key > my.key 2>> keys.txt
    python -m serve.auth hash < my.key >> keys.txt      # the line for a key you already have (read from stdin)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
from collections.abc import Iterable
from pathlib import Path

LABEL_HEX_DIGITS = 12
_HASH_RE = re.compile(r"[0-9a-f]{64}")


def hash_key(key: str) -> str:
    """The key file's line for `key`: the lowercase hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_label(key_hash: str) -> str:
    """The short, non-secret name of a stored key: the first hex digits of its hash."""
    return key_hash[:LABEL_HEX_DIGITS]


def load_key_hashes(path: str | Path) -> frozenset[str]:
    """The hashes in a key file (see the module docstring); `ValueError` at the first malformed line."""
    hashes = set()
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not _HASH_RE.fullmatch(entry):
            # The content is left out on purpose: a malformed line may well be a plain key.
            raise ValueError(
                f"{path}, line {number}: expected a key hash (64 lowercase hex digits, the SHA-256 of the key)"
            )
        hashes.add(entry)
    return frozenset(hashes)


class ApiKeys:
    """The accepted keys, as hashes. `authenticate` answers a header with a key label or None."""

    def __init__(self, key_hashes: Iterable[str], *, enabled: bool = True) -> None:
        hashes = sorted(set(key_hashes))
        for h in hashes:
            if not _HASH_RE.fullmatch(h):
                raise ValueError("key hashes must be 64 lowercase hex digits (the SHA-256 of the key)")
        self._hashes: tuple[str, ...] = tuple(hashes)
        self._enabled = enabled

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        return cls(load_key_hashes(path))

    @classmethod
    def disabled(cls) -> ApiKeys:
        """No auth configured: `enabled` is False and `authenticate` accepts nothing (callers check `enabled`)."""
        return cls((), enabled=False)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def __len__(self) -> int:
        return len(self._hashes)

    def __repr__(self) -> str:
        return f"ApiKeys(enabled={self._enabled}, keys={len(self._hashes)})"

    def authenticate(self, authorization_header: str | None) -> str | None:
        """The label of the key in `Authorization: Bearer <key>` (scheme case-insensitive), else None."""
        if not self._enabled or not authorization_header:
            return None
        parts = authorization_header.strip().split(None, 1)
        if len(parts) != 2 or parts[0].lower() != "bearer":
            return None
        presented = hash_key(parts[1].strip())
        matched = None
        # Every stored hash is compared, even after a match: the time taken must not depend on which key it was.
        for stored in self._hashes:
            if hmac.compare_digest(stored, presented):
                matched = stored
        return None if matched is None else key_label(matched)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["new-key"]:
        key = secrets.token_urlsafe(32)
        print(key)
        print(hash_key(key), file=sys.stderr)
        return 0
    if args == ["hash"]:
        key = sys.stdin.read().strip()
        if not key:
            print("no key on stdin", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    print("usage: python -m serve.auth new-key | hash < KEYFILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
