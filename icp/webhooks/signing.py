"""Standard Webhooks v1 signatures: HMAC-SHA256 of ``id.timestamp.body`` under a ``whsec_`` secret.

A sender signs with every secret in ``secrets`` (the new one and, during a rotation overlap, the
old one) and sends the signatures space-separated; a receiver accepts the message when any of them
verifies under any of its secrets. Receivers can use the ``standardwebhooks`` reference library as
is: the tests check our signatures with it, unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as _random
from collections.abc import Mapping, Sequence
from enum import StrEnum

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# The specification's bounds for a symmetric key: shorter is guessable, longer buys nothing.
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64
MAX_MSG_ID_CHARS = 256
# Rotation needs two secrets; a handful more is a misconfiguration, and each one costs the
# receiver an HMAC per message.
MAX_SECRETS = 8
# A receiver bounds what it will parse before doing any HMAC work: 64 v1 signatures fit.
MAX_SIGNATURE_HEADER_CHARS = 4096
DEFAULT_TOLERANCE_S = 300

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

# The id and the timestamp are joined to the body with '.', so neither may contain one (the
# specification's warning); no whitespace or control characters either, as they go in headers.
_MSG_ID = re.compile(rf"[!-\-/-~]{{1,{MAX_MSG_ID_CHARS}}}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class Reason(StrEnum):
    """Why a message failed verification (``SignatureError.reason``)."""

    MISSING_HEADER = "missing_header"
    BAD_HEADER = "bad_header"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_OLD = "too_old"
    TOO_NEW = "too_new"
    NO_MATCH = "no_match"


class SignatureError(ValueError):
    """A webhook failed verification. ``reason`` says which check failed; the message is for logs,
    not for the sender (a receiver answers every failure the same way)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_…`` secret (the prefix is optional, as in the reference
    library). Raises ValueError naming the problem, never echoing the secret."""
    if not isinstance(secret, str):
        raise ValueError("a webhook secret must be a string")
    text = secret.removeprefix(SECRET_PREFIX)
    if not text:
        raise ValueError("the webhook secret is empty")
    try:
        # Unpadded base64 is accepted (the reference library accepts it too).
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the webhook secret is not valid base64 after the 'whsec_' prefix") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"the webhook secret must decode to {MIN_KEY_BYTES}-{MAX_KEY_BYTES} bytes, got {len(key)}"
        )
    return key


def _check_msg_id(msg_id: str) -> None:
    if not isinstance(msg_id, str) or not _MSG_ID.fullmatch(msg_id):
        raise ValueError(
            f"a webhook id must be 1-{MAX_MSG_ID_CHARS} printable ASCII characters without '.' or spaces"
        )


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp < 10**12:
        raise ValueError("a webhook timestamp must be whole Unix seconds")


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    return hmac.new(key, b"%s.%d.%s" % (msg_id.encode("ascii"), timestamp, body), hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature, ``v1,<base64>``, of ``msg_id.timestamp.body`` under ``secret``."""
    _check_msg_id(msg_id)
    _check_timestamp(timestamp)
    digest = _digest(secret_key(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated, in order."""
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets, not one string")
    if not 1 <= len(secrets) <= MAX_SECRETS:
        raise ValueError(f"sign with 1-{MAX_SECRETS} secrets, got {len(secrets)}")
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets)


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header a signed webhook request carries (the body is JSON)."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature_header(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        # A plain dict may spell the name in any case; multidicts already ignore case.
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate
    return value


def verify(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> str:
    """Check a received webhook and return its id (the receiver's idempotency key).

    The timestamp must be within ``tolerance_s`` of ``now`` (Unix seconds) either way, which
    bounds replays; then some ``v1`` signature must match under some secret, compared in constant
    time. Raises ``SignatureError`` with the failed check as its ``reason``.
    """
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets, not one string")
    if not secrets:
        raise ValueError("verify needs at least one secret")
    keys = [secret_key(s) for s in secrets]

    msg_id = _header(headers, ID_HEADER)
    stamp = _header(headers, TIMESTAMP_HEADER)
    signatures = _header(headers, SIGNATURE_HEADER)
    if not msg_id or not stamp or not signatures:
        missing = [n for n, v in ((ID_HEADER, msg_id), (TIMESTAMP_HEADER, stamp), (SIGNATURE_HEADER, signatures))
                   if not v]
        raise SignatureError(Reason.MISSING_HEADER, f"missing header(s): {', '.join(missing)}")
    if len(msg_id) > MAX_MSG_ID_CHARS or len(signatures) > MAX_SIGNATURE_HEADER_CHARS:
        raise SignatureError(Reason.BAD_HEADER, "webhook-id or webhook-signature is too long")
    if not _TIMESTAMP.fullmatch(stamp):
        raise SignatureError(Reason.BAD_TIMESTAMP, "webhook-timestamp is not whole Unix seconds")
    timestamp = int(stamp)
    if timestamp < now - tolerance_s:
        raise SignatureError(Reason.TOO_OLD, f"timestamp is {now - timestamp} s old (tolerance {tolerance_s} s)")
    if timestamp > now + tolerance_s:
        raise SignatureError(Reason.TOO_NEW, f"timestamp is {timestamp - now} s ahead (tolerance {tolerance_s} s)")

    try:
        id_bytes = msg_id.encode("ascii")
    except UnicodeEncodeError:
        raise SignatureError(Reason.BAD_HEADER, "webhook-id is not ASCII") from None
    content = b"%s.%d.%s" % (id_bytes, timestamp, body)
    expected = [hmac.new(key, content, hashlib.sha256).digest() for key in keys]
    for candidate in signatures.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue  # v1a (asymmetric) and future schemes are someone else's to check
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        for digest in expected:
            if hmac.compare_digest(digest, given):
                return msg_id
    raise SignatureError(Reason.NO_MATCH, "no signature matches any of the secrets")
