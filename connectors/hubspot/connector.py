"""`HubSpotConnector`: the `Connector` interface on HubSpot's CRM v3 APIs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Mapping as MappingABC
from datetime import datetime

from crm_elasticity.connectors.base import (
    Connector,
    CrmRecord,
    HandoffTask,
    HistoryPage,
    ProvisionReport,
    WebhookIntake,
    WebhookRejected,
    WebhookRequest,
    WriteRequest,
    WriteResult,
)
from crm_elasticity.connectors.hubspot.client import HubSpotClient
from crm_elasticity.connectors.hubspot.config import HubSpotOptions, HubSpotSettings, load_options
from crm_elasticity.connectors.hubspot.provision import Provisioner
from crm_elasticity.connectors.hubspot.queries import (
    KNOWN_DATETIME_PROPERTIES,
    due_groups,
    engaged_groups,
)
from crm_elasticity.connectors.hubspot.records import Contacts
from crm_elasticity.connectors.hubspot.search import prefetch
from crm_elasticity.connectors.hubspot.signature import SignatureError, signed_uri, verify
from crm_elasticity.connectors.hubspot.tasks import Tasks
from crm_elasticity.connectors.hubspot.webhooks import parse_body
from crm_elasticity.core.mapping import Mapping

KNOWN_OTHER_PROPERTIES = frozenset(
    {
        "hs_analytics_last_url",
        "hs_email_optout",
        "hs_email_hard_bounce_reason_enum",
        "hs_email_quarantined",
        "hs_email_bounce",
        "hs_email_open",
        "hs_email_click",
    }
)


class HubSpotConnector(Connector):
    vendor = "hubspot"
    options_model = HubSpotOptions
    webhook_paths = ("/webhooks/hubspot",)

    def __init__(
        self,
        mapping: Mapping,
        settings: HubSpotSettings,
        options: HubSpotOptions | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        prefetch_pages: int = 4,
    ) -> None:
        super().__init__(mapping)
        self.settings = settings
        self.options = options or load_options(mapping)
        self.client = HubSpotClient(settings, self.calls, sleep=sleep, clock=clock)
        self.contacts = Contacts(self.client, mapping)
        self.tasks = Tasks(self.client, self.options)
        self.prefetch_pages = prefetch_pages
        self._datetimes: set[str] | None = None

    @classmethod
    def from_env(cls, mapping: Mapping, env: MappingABC[str, str]) -> HubSpotConnector:
        return cls(mapping, HubSpotSettings.from_env(env), load_options(mapping))

    # ---- provisioning ----------------------------------------------------------------------

    @classmethod
    def offline_plan(cls, mapping: Mapping) -> ProvisionReport:
        from crm_elasticity.connectors.hubspot.provision import offline_plan

        return ProvisionReport(offline_plan(mapping, load_options(mapping)), dry_run=True)

    def provision(self, dry_run: bool = False) -> ProvisionReport:
        return Provisioner(self.client, self.mapping, self.options).run(dry_run)

    # ---- webhooks --------------------------------------------------------------------------

    def parse_webhook(self, request: WebhookRequest) -> WebhookIntake:
        secret = self.settings.client_secret
        if secret is None:
            # Our misconfiguration, not a bad request: 503 makes HubSpot retry after the fix.
            raise WebhookRejected(
                503, "HUBSPOT_CLIENT_SECRET is not set; cannot verify HubSpot signatures"
            )
        uri = signed_uri(request.path, request.query, request.headers, self.settings.public_url)
        try:
            verify(
                secret=secret.get_secret_value(),
                method=request.method,
                uri=uri,
                body=request.body,
                headers=request.headers,
                now=request.received_at,
                accepted=self.options.webhook_signatures,
            )
        except SignatureError as exc:
            raise WebhookRejected(401, f"signature rejected: {exc}") from None
        parsed = parse_body(request.body, self.mapping, self.options, request.received_at)
        return WebhookIntake(parsed.events, ignored=parsed.ignored)

    # ---- records ---------------------------------------------------------------------------

    def read_records(self, contact_ids: Sequence[str]) -> dict[str, CrmRecord]:
        return self.contacts.read(contact_ids)

    def write_records(self, requests: Sequence[WriteRequest]) -> WriteResult:
        return self.contacts.write(requests)

    def create_tasks(self, tasks: Sequence[HandoffTask]) -> WriteResult:
        return self.tasks.create(tasks) if tasks else WriteResult()

    # ---- scans -----------------------------------------------------------------------------

    def find_due(self, now: datetime, after: str | None) -> Iterator[list[CrmRecord]]:
        return prefetch(
            self.contacts.search(due_groups(self.mapping, now), after), self.prefetch_pages
        )

    def find_engaged_since(
        self, since: datetime | None, after: str | None
    ) -> Iterator[list[CrmRecord]]:
        groups = engaged_groups(self.mapping, self.options, since, self._datetime_signals())
        return prefetch(self.contacts.search(groups, after), self.prefetch_pages)

    def iter_all(self, after: str | None) -> Iterator[list[CrmRecord]]:
        return prefetch(self.contacts.list_all(after), self.prefetch_pages)

    # ---- history ---------------------------------------------------------------------------

    def export_history(
        self, since: datetime, until: datetime, cursor: MappingABC[str, str] | None
    ) -> Iterator[HistoryPage]:
        from crm_elasticity.connectors.hubspot.history import EmailHistory

        return EmailHistory(self.client, self.mapping).export(since, until, cursor)

    def _datetime_signals(self) -> set[str]:
        """Which signal properties are datetimes (filterable by "changed after"). HubSpot's
        own are known; a custom one costs one read of the property definitions, once."""
        if self._datetimes is None:
            names = {s.property for s in self.mapping.signals}
            known = KNOWN_DATETIME_PROPERTIES | KNOWN_OTHER_PROPERTIES
            found = names & KNOWN_DATETIME_PROPERTIES
            if names - known:
                data = self.client.call(
                    "properties.core",
                    "get_all",
                    "contacts",
                    archived=False,
                    what="read contact property types",
                    scope="crm.schemas.contacts.read",
                ).data
                found |= {
                    p["name"]
                    for p in (data or {}).get("results") or []
                    if p.get("name") in names and p.get("type") in ("datetime", "date")
                }
            self._datetimes = found
        return self._datetimes
