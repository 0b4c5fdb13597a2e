"""Sealing secrets that must be read back (webhook signing keys): AES-256-GCM under the server key.

Bearer tokens and passwords are only ever compared, so they are stored hashed. An HMAC signing
secret has to be used in clear each time a webhook is signed or an inbound request verified, so
hashing is impossible; sealing it means a copy of the database alone does not reveal it. The key
comes from configuration (``ICP_SECRET_KEY``) or a file made once in the data directory (0600).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from icp.config import ConfigError, Settings

KEY_FILE = "secret.key"
_NONCE = 12
_VERSION = b"\x01"  # the first byte of a sealed value: lets the format change later


class SealError(ValueError):
    """A sealed value could not be opened (wrong key or corrupted)."""


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError("the secret key must be 32 bytes (base64 of 32 random bytes)")
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, *, context: str) -> bytes:
        """Encrypt ``plaintext``; ``context`` (e.g. the endpoint id) is bound in, so a sealed
        value copied to another row does not open there."""
        nonce = secrets.token_bytes(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def open(self, sealed: bytes, *, context: str) -> str:
        if len(sealed) < 1 + _NONCE + 16 or sealed[:1] != _VERSION:
            raise SealError("not a sealed value")
        nonce, body = sealed[1:1 + _NONCE], sealed[1 + _NONCE:]
        try:
            return self._aead.decrypt(nonce, body, context.encode()).decode()
        except InvalidTag:
            raise SealError("the sealed value does not open with this server's key") from None


def load_box(settings: Settings) -> SecretBox:
    """The configured key, or the data directory's key file (created on first use)."""
    if settings.secret_key:
        try:
            return SecretBox(base64.b64decode(settings.secret_key, validate=True))
        except binascii.Error:
            raise ConfigError("secret_key must be base64 of 32 random bytes") from None
    path = Path(settings.data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole to a private temporary file, then linked into place: link fails if the
        # name exists, so two nodes starting together on one data directory agree on one key,
        # and nobody ever reads a half-written file.
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(base64.b64encode(secrets.token_bytes(32)) + b"\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        return SecretBox(base64.b64decode(path.read_bytes().strip(), validate=True))
    except binascii.Error:
        raise ConfigError(f"{path} does not hold base64 of 32 bytes") from None
