"""HMAC-SHA256 signatures for the JSON intake (`X-Elasticity-Signature`).

Header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>`. Several `v1=`
values may be sent while a secret is rotated. The timestamp must be within five minutes of
our clock either way, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from crm_elasticity.connectors.salesforce.api_facts import SIGNATURE_TOLERANCE_SECONDS


class SignatureError(Exception):
    pass


def compute(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value a sender (Apex, a relay) attaches."""
    return f"t={timestamp},v1={compute(secret, timestamp, body)}"


def verify(
    header: str | None,
    body: bytes,
    secret: str,
    now: datetime,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
) -> None:
    """Return quietly, or raise SignatureError saying what is wrong (never the expected value)."""
    if not header:
        raise SignatureError("missing X-Elasticity-Signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value.strip())
    if timestamp is None or not candidates:
        raise SignatureError("malformed X-Elasticity-Signature header; expected t=...,v1=...")
    skew = now.timestamp() - timestamp
    if abs(skew) > tolerance:
        raise SignatureError(f"signature timestamp outside the {tolerance}s window")
    expected = compute(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("signature does not match the body")
