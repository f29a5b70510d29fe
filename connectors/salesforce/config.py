"""Validated configuration: the mapping's `options` and the `SALESFORCE_*` environment.

Both are checked once, when the connector is built, and every problem is reported at once.
Secrets are `SecretStr`, so they never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping as MappingABC
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.connectors.salesforce.api_facts import QUERY_BATCH
from crm_elasticity.core.mapping import Mapping, format_validation_error


class SalesforceOptions(BaseModel):
    """`options:` in a Salesforce mapping file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_version: str = Field("62.0", pattern=r"^\d{2,3}\.0$")
    bulk_threshold: int = Field(2000, ge=1, description="writes above this use Bulk API 2.0")
    campaign_mirror: bool = False
    campaign_name: str | None = Field(None, description="default: the program name")
    api_reserve_percent: float = Field(
        10.0, ge=0, lt=100, description="stop a sync when the org's daily allowance left is below"
    )
    permission_set: str = Field("Elasticity_Integration", pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    handoff_key_field: str = Field("Elastic_Handoff_Key__c", pattern=r"^[A-Za-z0-9_]+__c$")
    page_size: int = Field(QUERY_BATCH, ge=200, le=QUERY_BATCH)
    timeout_seconds: float = Field(60, gt=0)
    max_attempts: int = Field(5, ge=1, le=20)
    bulk_timeout_minutes: float = Field(120, gt=0)
    history_campaigns: dict[str, str] = Field(
        default_factory=dict,
        description="`elasticity history`: Campaign name -> the event a member's response means",
    )


def load_options(mapping: Mapping) -> SalesforceOptions:
    try:
        return SalesforceOptions.model_validate(mapping.options)
    except ValidationError as exc:
        where = f"mapping '{mapping.program}'"
        problems = format_validation_error(where, exc, prefix=("options",))
        raise ConnectorError("\n".join(problems)) from None


AuthKind = Literal["jwt", "password", "token"]

ENV = "SALESFORCE_"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Credentials(BaseModel):
    """How to obtain a session, and what the webhooks check against."""

    model_config = ConfigDict(frozen=True)

    kind: AuthKind
    domain: str = "login"
    instance_url: str | None = None
    access_token: SecretStr | None = None
    consumer_key: str | None = None
    username: str | None = None
    private_key_file: Path | None = None
    password: SecretStr | None = None
    security_token: SecretStr | None = None
    org_id: str | None = None
    outbound_token: SecretStr | None = None
    """The secret an Outbound Message endpoint URL carries (`?token=`)."""
    webhook_secret: SecretStr | None = None
    rewrite_to: str | None = None
    """Loopback base URL every request is sent to instead (integration fakes only)."""

    @property
    def can_regrant(self) -> bool:
        return self.kind != "token"

    @property
    def my_domain_prefix(self) -> str | None:
        """`acme.my` for https://acme.my.salesforce.com: where the JWT token request goes."""
        if not self.instance_url:
            return None
        host = urlsplit(self.instance_url).hostname or ""
        return host.removesuffix(".salesforce.com") if host.endswith(".salesforce.com") else None


def _get(env: MappingABC[str, str], name: str) -> str | None:
    value = env.get(ENV + name, "").strip()
    return value or None


def credentials_from_env(env: MappingABC[str, str]) -> Credentials:
    """Pick the auth path from what is set: JWT bearer, then username/password, then a ready
    access token. Raise `ConnectorError` naming what is missing (never a value)."""
    g = {
        n: _get(env, n)
        for n in (
            "INSTANCE_URL",
            "ACCESS_TOKEN",
            "CONSUMER_KEY",
            "USERNAME",
            "PRIVATE_KEY_FILE",
            "PASSWORD",
            "SECURITY_TOKEN",
            "DOMAIN",
            "ORG_ID",
            "OUTBOUND_TOKEN",
            "WEBHOOK_SECRET",
            "REWRITE_TO",
        )
    }
    common: dict[str, Any] = {  # the model validates each value
        "domain": g["DOMAIN"] or "login",
        "instance_url": g["INSTANCE_URL"],
        "org_id": g["ORG_ID"],
        "outbound_token": _outbound_token(g["OUTBOUND_TOKEN"]),
        "webhook_secret": g["WEBHOOK_SECRET"],
        "rewrite_to": _loopback(g["REWRITE_TO"]),
    }
    if g["CONSUMER_KEY"] and g["PRIVATE_KEY_FILE"]:
        if not g["USERNAME"]:
            raise ConnectorError("JWT bearer auth needs SALESFORCE_USERNAME (the integration user)")
        key = Path(g["PRIVATE_KEY_FILE"])
        if not key.is_file():
            raise ConnectorError(f"SALESFORCE_PRIVATE_KEY_FILE: no such file: {key}")
        return Credentials(
            kind="jwt",
            consumer_key=g["CONSUMER_KEY"],
            username=g["USERNAME"],
            private_key_file=key,
            **common,
        )
    if g["USERNAME"] and g["PASSWORD"]:
        return Credentials(
            kind="password",
            username=g["USERNAME"],
            password=SecretStr(g["PASSWORD"]),
            security_token=SecretStr(g["SECURITY_TOKEN"] or ""),
            **common,
        )
    if g["ACCESS_TOKEN"] and g["INSTANCE_URL"]:
        return Credentials(kind="token", access_token=SecretStr(g["ACCESS_TOKEN"]), **common)
    raise ConnectorError(
        "no Salesforce credentials: set SALESFORCE_CONSUMER_KEY, SALESFORCE_USERNAME and "
        "SALESFORCE_PRIVATE_KEY_FILE (JWT bearer, recommended), or SALESFORCE_USERNAME, "
        "SALESFORCE_PASSWORD and SALESFORCE_SECURITY_TOKEN, or SALESFORCE_ACCESS_TOKEN and "
        "SALESFORCE_INSTANCE_URL"
    )


OUTBOUND_TOKEN_MIN = 32
_URL_SAFE = re.compile(r"^[A-Za-z0-9_\-]+$")


def _outbound_token(value: str | None) -> str | None:
    """Long enough not to be guessed, and URL-safe so the endpoint URL carries it verbatim."""
    if value is None:
        return None
    if len(value) < OUTBOUND_TOKEN_MIN or not _URL_SAFE.match(value):
        raise ConnectorError(
            f"SALESFORCE_OUTBOUND_TOKEN must be at least {OUTBOUND_TOKEN_MIN} characters of "
            "letters, digits, '-' and '_'; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return value


def _loopback(url: str | None) -> str | None:
    """Plain-HTTP rewriting would leak the token anywhere but this machine."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
        raise ConnectorError(
            "SALESFORCE_REWRITE_TO must be a loopback URL such as "
            "http://127.0.0.1:8999 (it exists for local fakes)"
        )
    return f"{parts.scheme}://{parts.netloc}"
