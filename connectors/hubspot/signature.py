"""HubSpot request signatures (v3, and v1/v2 where the mapping allows), over the raw body.

Written here rather than taken from `hubspot.utils.signature`: the SDK helper skips the URI
decode table of HubSpot's docs and accepts timestamps from the future.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from datetime import datetime

MAX_SKEW_MS = 300_000
"""HubSpot: reject requests whose timestamp is more than 5 minutes old. We also reject ones
more than 5 minutes in the future: a captured request must not stay valid for longer."""

_DECODE = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}
"""The only percent-encodings HubSpot decodes before signing; `%20` and the rest stay."""
_DECODE_RE = re.compile("|".join(_DECODE), re.IGNORECASE)


class SignatureError(Exception):
    """The request is not provably from HubSpot. The message is safe to return to the caller."""


def decode_uri(uri: str) -> str:
    return _DECODE_RE.sub(lambda m: _DECODE[m.group(0).upper()], uri)


def signed_uri(
    path: str, query: str, headers: Mapping[str, str], public_url: str | None = None
) -> str:
    """The URL HubSpot called, as it signed it.

    Behind a proxy or API gateway the request we see is not the one HubSpot sent, so the
    public URL (`ELASTICITY_PUBLIC_URL`) wins: either the full webhook URL or its base.
    """
    suffix = f"?{query}" if query else ""
    if public_url:
        base = public_url.rstrip("/")
        full = base if base.endswith(path.rstrip("/")) and path.strip("/") else base + path
        return full + suffix
    proto = headers.get("x-forwarded-proto", "").split(",")[0].strip() or "https"
    host = headers.get("x-forwarded-host", "").split(",")[0].strip() or headers.get("host", "")
    return f"{proto}://{host}{path}{suffix}"


def v3_signature(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = method.upper().encode() + decode_uri(uri).encode() + body + timestamp.encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def v2_signature(secret: str, method: str, uri: str, body: bytes) -> str:
    return hashlib.sha256(
        secret.encode() + method.upper().encode() + uri.encode() + body
    ).hexdigest()


def v1_signature(secret: str, body: bytes) -> str:
    return hashlib.sha256(secret.encode() + body).hexdigest()


def verify(
    *,
    secret: str,
    method: str,
    uri: str,
    body: bytes,
    headers: Mapping[str, str],
    now: datetime,
    accepted: Iterable[str],
) -> str:
    """Check the request's signature; return the version that verified it.

    A v3 header, when v3 is accepted, is the only one checked: a failed v3 never falls back to
    the older, replayable versions.
    """
    accepted = set(accepted)
    v3 = headers.get("x-hubspot-signature-v3")
    if v3 is not None and "v3" in accepted:
        _check_timestamp(headers.get("x-hubspot-request-timestamp"), now)
        expected = v3_signature(secret, method, uri, body, headers["x-hubspot-request-timestamp"])
        _compare(expected, v3, "v3")
        return "v3"
    legacy = headers.get("x-hubspot-signature")
    version = (headers.get("x-hubspot-signature-version") or "v1").strip().lower()
    if legacy is None:
        wanted = " or ".join(
            f"X-HubSpot-Signature{'-v3' if v == 'v3' else ''} ({v})" for v in sorted(accepted)
        )
        raise SignatureError(f"missing signature header: expected {wanted}")
    if version not in accepted or version == "v3":
        raise SignatureError(f"signature version {version!r} is not accepted by this mapping")
    if version == "v2":
        expected = v2_signature(secret, method, uri, body)
    else:
        expected = v1_signature(secret, body)
    _compare(expected, legacy.strip().lower(), version)
    return version


def _check_timestamp(raw: str | None, now: datetime) -> None:
    if raw is None:
        raise SignatureError("missing X-HubSpot-Request-Timestamp header")
    try:
        sent_ms = int(raw.strip())
    except ValueError:
        raise SignatureError("X-HubSpot-Request-Timestamp is not epoch milliseconds") from None
    skew = now.timestamp() * 1000 - sent_ms
    if skew > MAX_SKEW_MS:
        raise SignatureError("stale request: timestamp more than 5 minutes old")
    if skew < -MAX_SKEW_MS:
        raise SignatureError("request timestamp more than 5 minutes in the future")


def _compare(expected: str, given: str, version: str) -> None:
    if not hmac.compare_digest(expected.encode(), given.strip().encode()):
        raise SignatureError(f"{version} signature does not match")
