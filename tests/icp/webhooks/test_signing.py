"""Standard Webhooks signing: the shared test vector, the reference library verifying our
signatures unchanged, secret rotation, tampering, clock skew and header bounds."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from icp.webhooks import signing
from icp.webhooks.signing import Reason, SignatureError
from tests.shared import shared_file

BODY = b'{"type":"incident.created","seq":1,"timestamp":"2026-03-01T12:00:00.000Z","data":{}}'
NOW = 1_772_366_400


def _vector() -> dict[str, object]:
    data: dict[str, object] = json.loads(shared_file("fixtures", "webhooks", "test_vector_v1_hmac.json").read_text())
    return data


def _signed(secrets: list[str], msg_id: str = "msg_1", timestamp: int = NOW, body: bytes = BODY) -> dict[str, str]:
    return signing.headers(secrets, msg_id, timestamp, body)


# --- secrets ---------------------------------------------------------------------------------


def test_new_secret_is_whsec_and_32_random_bytes() -> None:
    a, b = signing.new_secret(), signing.new_secret()
    assert a.startswith("whsec_") and a != b
    assert len(signing.secret_key(a)) == 32


@pytest.mark.parametrize(
    ("secret", "needle"),
    [
        ("whsec_", "empty"),
        ("", "empty"),
        ("whsec_not base64!!", "base64"),
        ("whsec_" + base64.b64encode(b"x" * 16).decode(), "24-64 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24-64 bytes"),
    ],
)
def test_bad_secrets_are_refused_clearly(secret: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        signing.secret_key(secret)
    rest = secret.removeprefix("whsec_")
    assert not rest or rest not in str(info.value)  # the message never echoes the secret


def test_secret_prefix_and_padding_are_optional() -> None:
    key = bytes(range(32))
    text = base64.b64encode(key).decode()
    assert signing.secret_key("whsec_" + text) == key
    assert signing.secret_key(text) == key
    assert signing.secret_key("whsec_" + base64.b64encode(bytes(25)).decode().rstrip("=")) == bytes(25)


# --- the shared test vector ------------------------------------------------------------------


def test_fixture_vector_signs_and_verifies() -> None:
    v = _vector()
    hdrs = v["headers"]
    assert isinstance(hdrs, dict) and isinstance(v["secret"], str) and isinstance(v["body"], str)
    body = v["body"].encode()
    ts = int(hdrs["webhook-timestamp"])
    assert signing.sign(v["secret"], hdrs["webhook-id"], ts, body) == hdrs["webhook-signature"]
    assert signing.secret_key(v["secret"]) == base64.b64decode(str(v["secret_key_bytes_base64"]))
    assert signing.verify([v["secret"]], hdrs, body, now=ts + 10) == hdrs["webhook-id"]
    # The reference library agrees (its clock is real, so the vector is only checked by signing).
    wh = Webhook(v["secret"])
    assert wh.sign(hdrs["webhook-id"], datetime.fromtimestamp(ts, tz=UTC), v["body"]) == hdrs["webhook-signature"]


# --- interoperability with the reference library, unchanged -----------------------------------


def test_reference_library_verifies_our_signature() -> None:
    secret = signing.new_secret()
    now = int(time.time())
    hdrs = signing.headers([secret], "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", now, BODY)
    assert hdrs["content-type"] == "application/json"
    assert Webhook(secret).verify(BODY, hdrs) == json.loads(BODY)


def test_reference_library_accepts_either_secret_during_rotation() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    now = int(time.time())
    hdrs = signing.headers([new, old], "msg_rot", now, BODY)
    assert len(hdrs["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(BODY, hdrs)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(BODY, hdrs)


def test_we_verify_the_reference_library_signature() -> None:
    secret = signing.new_secret()
    now = int(time.time())
    sig = Webhook(secret).sign("msg_lib", datetime.fromtimestamp(now, tz=UTC), BODY.decode())
    hdrs = {"webhook-id": "msg_lib", "webhook-timestamp": str(now), "webhook-signature": sig}
    assert signing.verify([secret], hdrs, BODY, now=now) == "msg_lib"


# --- verification ------------------------------------------------------------------------------


def test_rotation_either_secret_verifies() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    hdrs = _signed([new, old])
    assert signing.verify([old], hdrs, BODY, now=NOW) == "msg_1"
    assert signing.verify([new], hdrs, BODY, now=NOW) == "msg_1"
    # A receiver that already rotated accepts a sender that has not, and the other way round.
    assert signing.verify([new, old], _signed([old]), BODY, now=NOW) == "msg_1"


def _reason(secrets: list[str], hdrs: dict[str, str], body: bytes = BODY, now: int = NOW) -> Reason:
    with pytest.raises(SignatureError) as info:
        signing.verify(secrets, hdrs, body, now=now)
    assert isinstance(info.value, ValueError)
    return info.value.reason


def test_tampering_with_body_id_or_timestamp_fails() -> None:
    secret = signing.new_secret()
    hdrs = _signed([secret])
    assert _reason([secret], hdrs, body=BODY + b" ") is Reason.NO_MATCH
    assert _reason([secret], {**hdrs, "webhook-id": "msg_2"}) is Reason.NO_MATCH
    assert _reason([secret], {**hdrs, "webhook-timestamp": str(NOW + 1)}) is Reason.NO_MATCH
    assert _reason([signing.new_secret()], hdrs) is Reason.NO_MATCH
    sig = hdrs["webhook-signature"]
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    assert _reason([secret], {**hdrs, "webhook-signature": flipped}) is Reason.NO_MATCH


def test_stale_and_future_timestamps_fail() -> None:
    secret = signing.new_secret()
    hdrs = _signed([secret], timestamp=NOW)
    assert signing.verify([secret], hdrs, BODY, now=NOW + 300) == "msg_1"
    assert signing.verify([secret], hdrs, BODY, now=NOW - 300) == "msg_1"
    assert _reason([secret], hdrs, now=NOW + 301) is Reason.TOO_OLD
    assert _reason([secret], hdrs, now=NOW - 301) is Reason.TOO_NEW
    assert signing.verify([secret], hdrs, BODY, now=NOW + 3000, tolerance_s=3600) == "msg_1"


@pytest.mark.parametrize("stamp", ["", "abc", "1.5", "-5", "1e9", " 123", "9" * 13])
def test_bad_timestamps_fail(stamp: str) -> None:
    secret = signing.new_secret()
    hdrs = {**_signed([secret]), "webhook-timestamp": stamp}
    assert _reason([secret], hdrs) in (Reason.BAD_TIMESTAMP, Reason.MISSING_HEADER)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_fail(missing: str) -> None:
    secret = signing.new_secret()
    hdrs = {k: v for k, v in _signed([secret]).items() if k != missing}
    with pytest.raises(SignatureError, match=missing) as info:
        signing.verify([secret], hdrs, BODY, now=NOW)
    assert info.value.reason is Reason.MISSING_HEADER


def test_header_names_are_case_insensitive() -> None:
    secret = signing.new_secret()
    hdrs = {k.title(): v for k, v in _signed([secret]).items()}
    assert signing.verify([secret], hdrs, BODY, now=NOW) == "msg_1"


def test_other_schemes_and_garbage_in_the_signature_header_are_skipped() -> None:
    secret = signing.new_secret()
    hdrs = _signed([secret])
    noisy = f"v1a,AAAA v2,BBBB v1,!!notbase64 nocomma {hdrs['webhook-signature']}"
    assert signing.verify([secret], {**hdrs, "webhook-signature": noisy}, BODY, now=NOW) == "msg_1"
    assert _reason([secret], {**hdrs, "webhook-signature": "v1a,AAAA v1,!!"}) is Reason.NO_MATCH


def test_header_size_bounds() -> None:
    secret = signing.new_secret()
    hdrs = _signed([secret])
    # A receiver refuses to parse oversized headers before doing any HMAC work.
    huge = " ".join([hdrs["webhook-signature"]] * 100)
    assert len(huge) > signing.MAX_SIGNATURE_HEADER_CHARS
    assert _reason([secret], {**hdrs, "webhook-signature": huge}) is Reason.BAD_HEADER
    assert _reason([secret], {**hdrs, "webhook-id": "m" * 257}) is Reason.BAD_HEADER
    # A sender signs with a bounded number of secrets and well-formed ids.
    with pytest.raises(ValueError, match="1-8 secrets"):
        signing.signature_header([secret] * 9, "msg_1", NOW, BODY)
    with pytest.raises(ValueError, match="1-8 secrets"):
        signing.signature_header([], "msg_1", NOW, BODY)
    assert len(signing.signature_header([secret] * 8, "msg_1", NOW, BODY)) < signing.MAX_SIGNATURE_HEADER_CHARS


@pytest.mark.parametrize("msg_id", ["", "a.b", "has space", "new\nline", "m" * 257, "ünï"])
def test_sender_refuses_ids_that_would_make_the_signed_content_ambiguous(msg_id: str) -> None:
    with pytest.raises(ValueError, match="webhook id"):
        signing.sign(signing.new_secret(), msg_id, NOW, BODY)


@pytest.mark.parametrize("timestamp", [-1, 1.5, True, 10**12])
def test_sender_refuses_bad_timestamps(timestamp: object) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        signing.sign(signing.new_secret(), "msg_1", timestamp, BODY)  # type: ignore[arg-type]


def test_one_string_is_not_a_list_of_secrets() -> None:
    secret = signing.new_secret()
    with pytest.raises(TypeError):
        signing.signature_header(secret, "msg_1", NOW, BODY)
    with pytest.raises(TypeError):
        signing.verify(secret, _signed([secret]), BODY, now=NOW)
