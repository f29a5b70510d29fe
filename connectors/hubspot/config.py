"""HubSpot settings from the environment and the mapping's `options`, validated once.

Secrets are `SecretStr`: they print as `**********` in every repr, log line and error.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingABC
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.core.mapping import Mapping, format_validation_error

DEFAULT_BASE_URL = "https://api.hubapi.com"

ENV_NAMES = {
    "access_token": "HUBSPOT_ACCESS_TOKEN",
    "client_secret": "HUBSPOT_CLIENT_SECRET",
    "base_url": "HUBSPOT_BASE_URL",
    "public_url": "ELASTICITY_PUBLIC_URL",
    "requests_per_10s": "HUBSPOT_RATE_LIMIT_PER_10S",
    "search_per_second": "HUBSPOT_SEARCH_RATE_PER_SECOND",
    "daily_reserve": "HUBSPOT_DAILY_RESERVE",
    "timeout_seconds": "HUBSPOT_TIMEOUT_SECONDS",
    "max_attempts": "HUBSPOT_MAX_ATTEMPTS",
    "write_concurrency": "HUBSPOT_WRITE_CONCURRENCY",
}


class HubSpotSettings(BaseModel):
    """Credentials and budgets. Defaults fit a Free/Starter private app (100 requests / 10 s);
    Professional/Enterprise apps may raise `requests_per_10s` to 190 (250 with the add-on)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    access_token: SecretStr = Field(min_length=1)
    client_secret: SecretStr | None = None
    base_url: str = DEFAULT_BASE_URL
    public_url: str | None = None
    requests_per_10s: int = Field(100, ge=1, le=10_000)
    search_per_second: float = Field(5.0, gt=0, le=1_000)
    daily_reserve: int = Field(0, ge=0, description="stop when the daily allowance left is this")
    timeout_seconds: float = Field(30.0, gt=0, le=300)
    max_attempts: int = Field(6, ge=1, le=20)
    max_wait_seconds: float = Field(120.0, gt=0, description="longest single back-off we accept")
    write_concurrency: int = Field(4, ge=1, le=16)

    @field_validator("base_url", "public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http(s) URL")
        return value

    @classmethod
    def from_env(cls, env: MappingABC[str, str]) -> HubSpotSettings:
        data = {field: env[name] for field, name in ENV_NAMES.items() if env.get(name)}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = []
            for item in exc.errors(include_url=False):
                name = ENV_NAMES.get(str(item["loc"][0]), str(item["loc"][0]))
                if item["type"] == "missing":
                    hint = " (a private app's access token; see the README)"
                    problems.append(f"{name} is not set{hint if name.endswith('TOKEN') else ''}")
                else:
                    # Never echo the input: it may be a secret pasted into the wrong variable.
                    problems.append(f"{name}: {item['msg'].removeprefix('Value error, ')}")
            raise ConnectorError("HubSpot configuration: " + "; ".join(problems)) from None


SignatureVersion = Literal["v1", "v2", "v3"]
_V3_ONLY: list[SignatureVersion] = ["v3"]


class HubSpotOptions(BaseModel):
    """The `options:` block of a HubSpot mapping file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    property_group: str = Field("elastic_program", pattern=r"^[a-z][a-z0-9_]*$")
    property_group_label: str = "Elastic email program"
    webhook_signatures: list[SignatureVersion] = Field(
        default_factory=lambda: _V3_ONLY.copy(),
        min_length=1,
        description="accepted signature versions; add v2 for workflow 'Send a webhook' actions",
    )
    signal_timestamps: dict[str, str] = Field(
        default_factory=lambda: {"hs_analytics_last_url": "hs_analytics_last_timestamp"},
        description="datetime property that moves when a non-date signal property changes",
    )
    workflow_id_properties: list[str] = Field(
        default_factory=lambda: ["hs_object_id", "objectId", "vid", "id"], min_length=1
    )
    handoff_key_property: str = Field("elastic_handoff_key", pattern=r"^[a-z][a-z0-9_]*$")
    task_contact_association_type_id: int = Field(204, ge=1)


def load_options(mapping: Mapping) -> HubSpotOptions:
    try:
        return HubSpotOptions.model_validate(mapping.options)
    except ValidationError as exc:
        problems = format_validation_error(f"mapping {mapping.program!r}", exc, ("options",))
        raise ConnectorError("\n".join(problems)) from None
