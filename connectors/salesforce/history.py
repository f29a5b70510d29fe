"""Past engagement from a Salesforce org, as canonical events: the best history an org keeps.

Salesforce keeps no log of email events of its own. What it keeps is field history: with
tracking on for a field, `ContactHistory` / `LeadHistory` holds a row for each change (the
record, the field, the new value, when). The mapping's signal fields are exactly the fields
whose changes are engagement, so each history row of a tracked signal field becomes the event
the signal means, dated by the value when it is an instant (the open a date field records) and
by the change otherwise. Which signal fields are tracked is read from `FieldDefinition`
(`IsFieldHistoryTracked`); an untracked field has no past to export, and the export says so.

Rows are read `ORDER BY Id` through the client's resumable query (the URI budget, the retry
policy and the daily API reserve of `sync`), and the checkpoint is the last row id written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from simple_salesforce.format import format_soql, quote_soql_value

from connectors.base import HistoryPage
from connectors.salesforce.client import SalesforceClient
from connectors.salesforce.soql import literal
from connectors.signals import event_from_signal, parse_instant
from core.mapping import Mapping as ProgramMapping
from core.mapping import Signal

AFTER = "field_history_after_id"
PAGE = 2000
NOT_TRACKED = (
    "not available: field history tracking is off for this field; turn it on in Setup (Object "
    "Manager > {sobject} > Fields & Relationships > Set History Tracking) to keep history from "
    "now on"
)
NOT_READ = {
    "EmailMessage / Task": "not read: emails sent from Salesforce are one-to-one sales emails "
    "logged as activities, not the program's sends, and EmailMessage records opens only "
    "(FirstOpenedDate/LastOpenedDate), no clicks",
    "CampaignMember": "not read: campaign member status history is not exported",
}
SKIP_NO_EVENT = "changes that mean no event (a value the signal does not match, or cleared)"


def _value(raw: Any) -> str | None:
    """A history value as the signal compares it: booleans as `true`/`false`."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw)


class FieldHistory:
    def __init__(self, client: SalesforceClient, mapping: ProgramMapping, sobject: str,
                 page_size: int = PAGE) -> None:  # fmt: skip
        self.client = client
        self.mapping = mapping
        self.sobject = sobject
        self.history = f"{sobject}History"
        self.parent = f"{sobject}Id"
        self.page_size = page_size
        self.signals: dict[str, list[Signal]] = {}
        for signal in mapping.signals:
            self.signals.setdefault(signal.property, []).append(signal)

    def export(
        self, since: datetime, until: datetime, cursor: Mapping[str, str] | None
    ) -> Iterator[HistoryPage]:
        after = (cursor or {}).get(AFTER)
        resume = {AFTER: after} if after else {}
        tracked, known = self._tracked(sorted(self.signals))
        for name in sorted(set(self.signals) - set(tracked)):
            note = (NOT_TRACKED.format(sobject=self.sobject) if name in known
                    else f"not available: {self.sobject} has no field {name}")  # fmt: skip
            yield HistoryPage(f"{self.history}.{name}", available=False, cursor=dict(resume),
                              note=note)  # fmt: skip
        for page in self._rows(tracked, since, until, after) if tracked else ():
            resume = page.cursor
            yield page
        for source, note in NOT_READ.items():
            # The latest cursor: a checkpoint saved now must not send a resume back to the start.
            yield HistoryPage(source, available=False, note=note, cursor=dict(resume))

    def _tracked(self, fields: list[str]) -> tuple[list[str], set[str]]:
        """The fields with history tracking on, and every field the object has."""
        rows = self.client.lookup_in(
            "read which signal fields keep history",
            "SELECT Id, QualifiedApiName, IsFieldHistoryTracked FROM FieldDefinition "
            "WHERE EntityDefinition.QualifiedApiName = {sobject} AND QualifiedApiName IN {fields}",
            fields, "fields", sobject=self.sobject,
        )  # fmt: skip
        tracked = sorted(r["QualifiedApiName"] for r in rows if r.get("IsFieldHistoryTracked"))
        return tracked, {r["QualifiedApiName"] for r in rows}

    def _rows(self, fields: list[str], since: datetime, until: datetime,
              after: str | None) -> Iterator[HistoryPage]:  # fmt: skip
        source = f"{self.history} ({', '.join(fields)})"
        window = (
            f"Field IN {quote_soql_value(fields)} AND CreatedDate >= {literal(since)} "
            f"AND CreatedDate <= {literal(until, round_up=True)}"
        )

        def soql(last: str | None) -> str:
            resume = format_soql(" AND Id > {}", last) if last else ""
            return (
                f"SELECT Id, {self.parent}, Field, NewValue, CreatedDate FROM {self.history} "  # noqa: S608 - names from the validated mapping
                f"WHERE {window}{resume} ORDER BY Id"
            )

        # A tracked field means the org keeps the history object: no need to ask whether it
        # exists first.
        page = HistoryPage(source, cursor={AFTER: after} if after else {})
        for row in self.client.query(f"read {self.history}", soql, after):
            self._add(page, row)
            page.cursor = {AFTER: row["Id"]}
            if page.read >= self.page_size:
                yield page
                page = HistoryPage(source, cursor=dict(page.cursor))
        yield page  # the rest, or an empty page: the source is reported even with no rows

    def _add(self, page: HistoryPage, row: dict[str, Any]) -> None:
        page.read += 1
        changed_at = parse_instant(row.get("CreatedDate"))
        value = _value(row.get("NewValue"))
        record_id = row.get(self.parent)
        kept = []
        if changed_at is not None and record_id:
            for signal in self.signals.get(row.get("Field") or "", []):
                event = event_from_signal(self.mapping, signal, record_id, value, changed_at,
                                          "salesforce_field_history")  # fmt: skip
                if event is not None:
                    kept.append(event)
        if not kept:
            page.skipped[SKIP_NO_EVENT] = page.skipped.get(SKIP_NO_EVENT, 0) + 1
        for n, event in enumerate(kept):
            # One history row is one change: its id names the event on every export.
            event_id = f"salesforce:history:{row['Id']}" + (f":{n}" if n else "")
            page.events.append(replace(event, event_id=event_id))
