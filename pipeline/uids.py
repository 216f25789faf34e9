"""The one rule for a DICOM UID (PS3.5 9.1): components of digits separated by dots, no
leading zero in a component (except "0" itself), at most 64 characters. The receive path,
the archive's file names, STOW-RS URLs, the cohort CSV, the cache's file names and the SR
builders all check UIDs with it. And the one file digest (SHA-256, read in chunks) the
archive, ``egfr-node check``/``backup`` and the bundle manifests use."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["InvalidUID", "is_uid", "check_uid", "sha256_of"]

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


class InvalidUID(ValueError):
    """A UID that cannot be a DICOM UID (and so cannot name a file)."""


def is_uid(text: object) -> bool:
    """Whether ``text`` is a valid DICOM UID."""
    return isinstance(text, str) and len(text) <= 64 and _UID.fullmatch(text) is not None


def check_uid(name: str, value: object) -> str:
    """``value`` (trailing NULs and spaces, DICOM's padding, removed) if it is a valid DICOM
    UID; InvalidUID naming ``name`` otherwise."""
    if not isinstance(value, str) or not value:
        raise InvalidUID(f"{name} is missing")
    text = value.strip("\x00 ")
    if not is_uid(text):
        raise InvalidUID(f"{name} {text[:70]!r} is not a valid UID")
    return text


def sha256_of(path: Path) -> str:
    """The SHA-256 of the file at ``path`` (hex), read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
