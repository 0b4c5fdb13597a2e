"""Attachments: what a file really is (sniffed from its first bytes, whatever it claims), and where it is kept.

Only types on the configured list are accepted (images and PDF by default), and only when the
content is that type: a file's declared type must agree with its signature, so an HTML page or a
script called ``photo.png`` is refused. Files live in ``ICP_DATA_DIR/attachments/<xx>/<id>``,
written to a temporary name and renamed into place, and are served with the sniffed type,
``nosniff`` and a sandboxing Content-Security-Policy.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path

ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "application/x-pdf": "application/pdf"}
UNDECLARED = frozenset({"", "application/octet-stream"})


def sniff(head: bytes) -> str | None:
    """The type the content's signature names, or None when it is none of the known ones."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def normalise_type(declared: str | None) -> str:
    base = (declared or "").split(";", 1)[0].strip().lower()
    return ALIASES.get(base, base)


class AttachmentRefused(ValueError):
    """The content is not an allowed type, or not the type it claims to be."""


def check_type(content: bytes, declared: str | None, allowed: frozenset[str]) -> str:
    """The content's type, if allowed and consistent with ``declared`` (raises `AttachmentRefused`)."""
    found = sniff(content[:16])
    if found is None or found not in allowed:
        raise AttachmentRefused("the content is not one of the accepted types: " + ", ".join(sorted(allowed)))
    claimed = normalise_type(declared)
    if claimed not in UNDECLARED and claimed != found:
        raise AttachmentRefused(f"the content is {found}, not {claimed}")
    return found


def new_id() -> str:
    return "att_" + secrets.token_hex(16)


def path_of(root: Path, attachment_id: str) -> Path:
    if not attachment_id.startswith("att_") or not all(c in "0123456789abcdef" for c in attachment_id[4:]):
        raise ValueError("not an attachment id")
    return root / attachment_id[4:6] / attachment_id


def store_file(root: Path, attachment_id: str, content: bytes) -> bytes:
    """Write the file durably (temporary name, fsync, rename); returns its SHA-256. Blocking: run it
    off the event loop."""
    target = path_of(root, attachment_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(content).digest()


def remove_file(root: Path, attachment_id: str) -> None:
    path_of(root, attachment_id).unlink(missing_ok=True)
