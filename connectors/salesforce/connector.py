"""`SalesforceConnector`: the `Connector` interface on Salesforce (Contact or Lead)."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar

from pydantic import ValidationError

from crm_elasticity.connectors.base import (
    Connector,
    ConnectorError,
    CrmRecord,
    HandoffTask,
    HistoryPage,
    ProvisionReport,
    WebhookIntake,
    WebhookRejected,
    WebhookRequest,
    WebhookResponse,
    WriteRequest,
    WriteResult,
)
from crm_elasticity.connectors.salesforce import outbound, signature
from crm_elasticity.connectors.salesforce.api_facts import (
    OUTBOUND_ACK,
    RESUME_ID,
    SIGNATURE_HEADER,
    TASK_PRIORITY,
    USER_ID_PREFIX,
)
from crm_elasticity.connectors.salesforce.bulk import BulkUpdater
from crm_elasticity.connectors.salesforce.campaign import CampaignMirror
from crm_elasticity.connectors.salesforce.client import SalesforceClient
from crm_elasticity.connectors.salesforce.composite import CollectionWriter
from crm_elasticity.connectors.salesforce.config import (
    Credentials,
    SalesforceOptions,
    credentials_from_env,
    load_options,
)
from crm_elasticity.connectors.salesforce.records import Codec
from crm_elasticity.connectors.salesforce.soql import Queries, SoqlAfter, in_chunks
from crm_elasticity.core.mapping import Mapping
from crm_elasticity.core.models import EVENT, Event

log = logging.getLogger(__name__)

OUTBOUND_PATH, EVENTS_PATH = "/webhooks/salesforce", "/webhooks/salesforce/events"


class SalesforceConnector(Connector):
    vendor: ClassVar[str] = "salesforce"
    options_model = SalesforceOptions
    webhook_paths: ClassVar[tuple[str, ...]] = (OUTBOUND_PATH, EVENTS_PATH)
    write_page: ClassVar[int] = 50_000
    """Owed writes per `write_records` call: large, so a big sync becomes one Bulk 2.0 job."""

    def __init__(
        self,
        mapping: Mapping,
        credentials: Credentials,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(mapping)
        if mapping.object not in ("Contact", "Lead"):
            raise ConnectorError(
                f"mapping object must be Contact or Lead for Salesforce, got {mapping.object!r}"
            )
        self.sobject = mapping.object
        self.options = load_options(mapping)
        self.credentials = credentials
        self._said_no_token = False
        self.client = SalesforceClient(credentials, self.options, self.calls, sleep, jitter)
        self.codec = Codec(mapping)
        self.queries = Queries(mapping, self.codec, self.sobject)
        self.collections = CollectionWriter(self.client)
        self.bulk = BulkUpdater(self.client, sleep)
        self.campaign = (
            CampaignMirror(self.client, mapping, self.options, self.sobject)
            if self.options.campaign_mirror
            else None
        )

    @classmethod
    def from_env(cls, mapping: Mapping, env: MappingABC[str, str]) -> SalesforceConnector:
        return cls(mapping, credentials_from_env(env))

    # ---- provisioning ----------------------------------------------------------------------

    @classmethod
    def offline_plan(cls, mapping: Mapping) -> ProvisionReport:
        from crm_elasticity.connectors.salesforce.provision import offline_plan

        plan = offline_plan(mapping, load_options(mapping), mapping.object)
        return ProvisionReport(plan, dry_run=True)

    def provision(self, dry_run: bool = False) -> ProvisionReport:
        from crm_elasticity.connectors.salesforce.provision import Provisioner

        return Provisioner(self.client, self.mapping, self.options, self.sobject).run(dry_run)

    # ---- webhooks --------------------------------------------------------------------------

    def parse_webhook(self, request: WebhookRequest) -> WebhookIntake:
        if request.path.rstrip("/") == EVENTS_PATH:
            return self._parse_events(request)
        return self._parse_outbound(request)

    def _parse_outbound(self, request: WebhookRequest) -> WebhookIntake:
        """An Outbound Message proves itself by the secret in its endpoint URL; the org id it
        carries is checked too, but it is no secret (web-to-lead forms publish it)."""
        token = self.credentials.outbound_token
        if token is None:
            if not self._said_no_token:
                self._said_no_token = True
                log.warning(
                    "refusing every Salesforce outbound message: SALESFORCE_OUTBOUND_TOKEN is "
                    "not set (set it, and end the Outbound Message endpoint URL with "
                    "?token=<the same value>)"
                )
            raise outbound.reject(403, "SALESFORCE_OUTBOUND_TOKEN is not configured")
        if not outbound.token_matches(request.query, token.get_secret_value()):
            raise outbound.reject(401, "the endpoint URL carries no token or a wrong one")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "text/xml":
            raise outbound.reject(415, f"expected Content-Type text/xml, got {content_type!r}")
        expected = self.credentials.org_id
        if not expected:
            raise outbound.reject(403, "SALESFORCE_ORG_ID is not configured; refusing messages")
        envelope = outbound.parse_envelope(request.body)
        if not outbound.same_org(expected, envelope.organization_id):
            raise outbound.reject(403, "OrganizationId does not match SALESFORCE_ORG_ID")
        found = outbound.events_from_envelope(
            envelope, self.mapping, self.sobject, request.received_at
        )
        response = WebhookResponse(200, OUTBOUND_ACK, "text/xml; charset=utf-8")
        return WebhookIntake(found.events, response, ignored=found.ignored)

    def _parse_events(self, request: WebhookRequest) -> WebhookIntake:
        secret = self.credentials.webhook_secret
        if secret is None:
            raise WebhookRejected(403, "SALESFORCE_WEBHOOK_SECRET is not configured")
        try:
            signature.verify(
                request.headers.get(SIGNATURE_HEADER),
                request.body,
                secret.get_secret_value(),
                request.received_at,
            )
        except signature.SignatureError as exc:
            raise WebhookRejected(401, str(exc)) from None
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: json.loads recurses per nesting level; too deep is a client error.
            raise WebhookRejected(400, "body is not JSON") from None
        items = payload.get("events") if isinstance(payload, dict) else payload
        if not isinstance(items, list):
            raise WebhookRejected(400, 'expected {"events": [...]} or a JSON array of events')
        events: list[Event] = []
        for i, item in enumerate(items):
            try:
                event = EVENT.validate_python(item)
            except ValidationError as exc:
                problem = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in problem["loc"]) or "event"
                raise WebhookRejected(400, f"events[{i}].{where}: {problem['msg']}") from None
            events.append(event if event.source else replace(event, source="salesforce_json"))
        return WebhookIntake(events)

    # ---- reads -----------------------------------------------------------------------------

    def _pages(self, what: str, soql: SoqlAfter, after: str | None) -> Iterator[list[CrmRecord]]:
        page: list[CrmRecord] = []
        for raw in self.client.query(what, soql, after):
            page.append(self.codec.record(raw))
            if len(page) >= self.options.page_size:
                yield page
                page = []
        if page:
            yield page

    def read_records(self, contact_ids: Sequence[str]) -> dict[str, CrmRecord]:
        ids = sorted(set(contact_ids))
        found: dict[str, CrmRecord] = {}
        version = self.options.api_version
        for chunk in in_chunks(ids, lambda c: self.queries.by_ids(c)(RESUME_ID), version):
            for page in self._pages(
                f"read {len(chunk)} {self.sobject} records", self.queries.by_ids(chunk), None
            ):
                found.update((r.contact_id, r) for r in page)
        return found

    def find_due(self, now: datetime, after: str | None) -> Iterator[list[CrmRecord]]:
        return self._pages("find records with time rules due", self.queries.due(now), after)

    def find_engaged_since(
        self, since: datetime | None, after: str | None
    ) -> Iterator[list[CrmRecord]]:
        return self._pages(
            "find engagement since the last sync", self.queries.engaged_since(since), after
        )

    def iter_all(self, after: str | None) -> Iterator[list[CrmRecord]]:
        return self._pages(f"read every {self.sobject}", self.queries.everyone(), after)

    # ---- history ---------------------------------------------------------------------------

    def export_history(
        self, since: datetime, until: datetime, cursor: MappingABC[str, str] | None
    ) -> Iterator[HistoryPage]:
        from crm_elasticity.connectors.salesforce.history import OrgHistory

        return OrgHistory(self.client, self.mapping, self.sobject, self.options).export(
            since, until, cursor
        )

    # ---- writes ----------------------------------------------------------------------------

    def write_records(self, requests: Sequence[WriteRequest]) -> WriteResult:
        rows = {r.contact_id: self.codec.fields_for(r) for r in requests}
        result = WriteResult(written=[cid for cid, row in rows.items() if not row])
        rows = {cid: row for cid, row in rows.items() if row}
        if len(rows) > self.options.bulk_threshold:
            order = [spec.property for spec in self.mapping.fields.values()]
            order += sorted({k for row in rows.values() for k in row} - set(order))
            outcome = self.bulk.update(self.sobject, rows, order)
            result.written += outcome.written
            result.failed.update(outcome.failed)
            retry = {rid: {"id": rid, **rows[rid]} for rid in outcome.locked}
        else:
            retry = {cid: {"id": cid, **row} for cid, row in rows.items()}
        if retry:
            saved = self.collections.save(self.sobject, retry)
            result.written += list(saved.ok)
            result.failed.update(saved.failed)
        self._mirror({r.contact_id: r.fields for r in requests}, result)
        return result

    def _mirror(self, values: dict[str, dict[str, Any]], result: WriteResult) -> None:
        if self.campaign is None:
            return
        written = set(result.written)
        statuses = {
            cid: str(getattr(v["campaign_status"], "value", v["campaign_status"]))
            for cid, v in values.items()
            if cid in written and v.get("campaign_status")
        }
        for cid, message in self.campaign.mirror(statuses).items():
            log.warning("Campaign mirror: could not move %s: %s", cid, message)

    def create_tasks(self, tasks: Sequence[HandoffTask]) -> WriteResult:
        """One Task per hand-off key, even when a crash makes the runner offer it again or a
        create times out after Salesforce committed it: the key is stored on the Task, looked
        up before creating, and looked up again before any create is re-sent."""
        if not tasks:
            return WriteResult()
        by_key = {task_key(t.key): t for t in tasks}
        existing = self._existing_tasks(sorted(by_key))
        rows = {
            key: self._task_row(task, key) for key, task in by_key.items() if key not in existing
        }
        result = WriteResult(written=[by_key[k].key for k in existing])
        if rows:
            saved = self.collections.save("Task", rows, create=True, existing=self._existing_tasks)
            result.written += [by_key[k].key for k in saved.ok]
            result.failed.update({by_key[k].key: m for k, m in saved.failed.items()})
        return result

    def _existing_tasks(self, keys: list[str]) -> dict[str, str]:
        """Hand-off key -> id of the Task already carrying it."""
        field = self.options.handoff_key_field
        rows = self.client.lookup_in(
            "find existing hand-off tasks",
            "SELECT Id, {f:literal} FROM Task WHERE {f:literal} IN {keys} ORDER BY Id",
            keys,
            "keys",
            f=field,
        )
        return {row[field]: row["Id"] for row in rows}

    def _task_row(self, task: HandoffTask, key: str) -> dict[str, Any]:
        row = {
            "WhoId": task.contact_id,
            "Subject": task.subject[:255],
            "Description": task.body,
            "Priority": TASK_PRIORITY.get(task.priority, "Normal"),
            "Status": "Not Started",
            "ActivityDate": task.due_at.date().isoformat(),
            self.options.handoff_key_field: key,
        }
        if task.owner_id and task.owner_id.startswith(USER_ID_PREFIX):
            row["OwnerId"] = task.owner_id  # a queue-owned Lead leaves the Task with us
        return row


def task_key(key: str) -> str:
    """The runner's key can exceed a text field; a digest is short, stable and unique."""
    return hashlib.sha256(key.encode()).hexdigest()[:40]
