"""Past engagement from a Salesforce org, as canonical events: the best history an org keeps.

Salesforce keeps no log of marketing email events of its own. What an org does keep, read in
this order:

- **Field history.** With tracking on for a field, `ContactHistory` / `LeadHistory` holds a row
  for each change (the record, the field, the new value, when). The mapping's signal fields are
  exactly the fields whose changes are engagement, so each history row of a tracked signal
  field becomes the event the signal means, dated by the value when it is an instant (the open
  a date field records) and by the change otherwise. Which signal fields are tracked is read
  from `FieldDefinition` (`IsFieldHistoryTracked`); an untracked field has no past to export.
- **Campaign responses.** `CampaignMember` of the campaigns named in `options.
  history_campaigns`: a member with `HasResponded` (its status is one the campaign counts as
  responded) and a `FirstRespondedDate` in the window is one event, of the type the option
  names. The member keeps its current status and the date of its first response only, so a
  member responds at most once.
- **Email opens.** `EmailMessage` (Enhanced Email) records `FirstOpenedDate` and
  `LastOpenedDate` (and, on newer API versions, `FirstLinkClickedDate`) of an email a user sent
  from Salesforce, for any of its recipients. An open is attributed to the contact only when
  the email had one recipient (`EmailMessageRelation`) and it is one of the program's records.
  The email itself is not exported as a send: it is a one-to-one email, not the program's.

Every source is read `ORDER BY Id` through the client's resumable query (the URI budget, the
retry policy and the daily API reserve of `sync`); the checkpoint holds the last id written of
each source, and every event id names the record it came from, so a resumed or repeated export
appends nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, time
from typing import Any

from simple_salesforce.format import format_soql, quote_soql_value

from crm_elasticity.connectors.base import ConnectorError, HistoryPage
from crm_elasticity.connectors.instants import parse_instant
from crm_elasticity.connectors.salesforce.client import SalesforceClient
from crm_elasticity.connectors.salesforce.config import SalesforceOptions
from crm_elasticity.connectors.salesforce.soql import literal
from crm_elasticity.connectors.signals import event_from_signal
from crm_elasticity.core.mapping import Mapping as ProgramMapping
from crm_elasticity.core.mapping import Signal
from crm_elasticity.core.models import Event

AFTER = "field_history_after_id"
PAGE = 2000
NOT_TRACKED = (
    "not available: field history tracking is off for this field; turn it on in Setup (Object "
    "Manager > {sobject} > Fields & Relationships > Set History Tracking) to keep history from "
    "now on"
)
MEMBERS_AFTER = "campaign_members_after_id"
EMAILS_AFTER = "email_messages_after_id"
NOT_READ = {
    "Task (TaskSubtype Email)": "not read: a Task with TaskSubtype 'Email' logs a one-to-one email "
    "a user sent from Salesforce: a send, but not one of the program's, and counting it would "
    "make contacts Dormant for not answering sales email (its opens, where tracked, are on "
    "EmailMessage)",
    "EmailStatus (HTML email status)": "not read: the API offers EmailStatus through "
    "describeSObjects() only, not query()",
}
NO_CAMPAIGNS = (
    "not read: name the program's campaigns in options.history_campaigns (Campaign name: the "
    "event a member's response means, e.g. form_submit)"
)
SKIP_NO_EVENT = "changes that mean no event (a value the signal does not match, or cleared)"


def _value(raw: Any) -> str | None:
    """A history value as the signal compares it: booleans as `true`/`false`."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw)


class FieldHistory:
    def __init__(
        self, client: SalesforceClient, mapping: ProgramMapping, sobject: str, page_size: int = PAGE
    ) -> None:
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
            note = (
                NOT_TRACKED.format(sobject=self.sobject)
                if name in known
                else f"not available: {self.sobject} has no field {name}"
            )
            yield HistoryPage(
                f"{self.history}.{name}", available=False, cursor=dict(resume), note=note
            )
        yield from self._rows(tracked, since, until, after) if tracked else ()

    def _tracked(self, fields: list[str]) -> tuple[list[str], set[str]]:
        """The fields with history tracking on, and every field the object has."""
        rows = self.client.lookup_in(
            "read which signal fields keep history",
            "SELECT Id, QualifiedApiName, IsFieldHistoryTracked FROM FieldDefinition "
            "WHERE EntityDefinition.QualifiedApiName = {sobject} AND QualifiedApiName IN {fields}",
            fields,
            "fields",
            sobject=self.sobject,
        )
        tracked = sorted(r["QualifiedApiName"] for r in rows if r.get("IsFieldHistoryTracked"))
        return tracked, {r["QualifiedApiName"] for r in rows}

    def _rows(
        self, fields: list[str], since: datetime, until: datetime, after: str | None
    ) -> Iterator[HistoryPage]:
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
                event = event_from_signal(
                    self.mapping, signal, record_id, value, changed_at, "salesforce_field_history"
                )
                if event is not None:
                    kept.append(event)
        if not kept:
            page.skipped[SKIP_NO_EVENT] = page.skipped.get(SKIP_NO_EVENT, 0) + 1
        for n, event in enumerate(kept):
            # One history row is one change: its id names the event on every export.
            event_id = f"salesforce:history:{row['Id']}" + (f":{n}" if n else "")
            page.events.append(replace(event, event_id=event_id))


class OrgHistory:
    """Every source of the org, one after the other. Each page's cursor carries the progress of
    every source so far, so a checkpoint saved at any page resumes each where it stopped."""

    def __init__(
        self,
        client: SalesforceClient,
        mapping: ProgramMapping,
        sobject: str,
        options: SalesforceOptions,
    ) -> None:
        self.sources = (
            FieldHistory(client, mapping, sobject, options.page_size),
            CampaignResponses(client, mapping, sobject, options),
            EmailActivity(client, mapping, sobject, options.page_size),
        )

    def export(
        self, since: datetime, until: datetime, cursor: Mapping[str, str] | None
    ) -> Iterator[HistoryPage]:
        state = dict(cursor or {})
        for source in self.sources:
            for page in source.export(since, until, dict(state)):
                state.update(page.cursor)
                page.cursor = dict(state)
                yield page
        for name, note in NOT_READ.items():
            yield HistoryPage(name, available=False, note=note, cursor=dict(state))


def _midnight(day: str | None) -> datetime | None:
    """A `date` field's day as an instant: its start, UTC (Salesforce keeps no time with it)."""
    try:
        return datetime.combine(datetime.fromisoformat(str(day)[:10]).date(), time(), UTC)
    except (TypeError, ValueError):
        return None


class CampaignResponses:
    """Responses of the program's campaign members: `options.history_campaigns` names each
    campaign and the event its response means."""

    def __init__(
        self,
        client: SalesforceClient,
        mapping: ProgramMapping,
        sobject: str,
        options: SalesforceOptions,
    ) -> None:
        self.client = client
        self.policy = mapping.policy
        self.member = f"{sobject}Id"
        self.page_size = options.page_size
        self.wanted = dict(options.history_campaigns)
        mirror = options.campaign_name or mapping.program
        self.mirror = mirror if options.campaign_mirror else None

    def export(
        self, since: datetime, until: datetime, cursor: Mapping[str, str]
    ) -> Iterator[HistoryPage]:
        after = cursor.get(MEMBERS_AFTER)
        resume = {MEMBERS_AFTER: after} if after else {}
        if not self.wanted:
            yield HistoryPage("CampaignMember", available=False, note=NO_CAMPAIGNS, cursor=resume)
            return
        kinds: dict[str, str] = {}
        for name, kind in sorted(self.wanted.items()):
            note = None
            if name == self.mirror:
                note = "not read: the campaign mirror holds this program's own decisions"
            elif not self.policy.knows_event(kind):
                note = f"not read: {kind!r} is not an event the policy knows"
            if note:
                yield HistoryPage(
                    f"CampaignMember ({name})", available=False, note=note, cursor=dict(resume)
                )
            else:
                kinds[name] = kind
        if not kinds:
            return
        rows = self.client.lookup_in(
            "find the campaigns to read responses of",
            "SELECT Id, Name FROM Campaign WHERE Name IN {names} ORDER BY Id",
            sorted(kinds),
            "names",
        )
        campaigns = {r["Id"]: kinds[r["Name"]] for r in rows if r.get("Name") in kinds}
        found = {r["Name"] for r in rows}
        for name in sorted(set(kinds) - found):
            note = f"not available: the org has no Campaign named {name!r}"
            yield HistoryPage(
                f"CampaignMember ({name})", available=False, note=note, cursor=dict(resume)
            )
        if campaigns:
            source = f"CampaignMember ({', '.join(sorted(found & set(kinds)))})"
            yield from self._members(source, campaigns, since, until, after)

    def _members(
        self,
        source: str,
        campaigns: dict[str, str],
        since: datetime,
        until: datetime,
        after: str | None,
    ) -> Iterator[HistoryPage]:
        where = format_soql(
            "CampaignId IN {ids} AND {member:literal} != null AND HasResponded = true "
            "AND FirstRespondedDate >= {first} AND FirstRespondedDate <= {last}",
            ids=sorted(campaigns),
            member=self.member,
            first=since.astimezone(UTC).date(),
            last=until.astimezone(UTC).date(),
        )

        def soql(last: str | None) -> str:
            return format_soql(
                "SELECT Id, CampaignId, {member:literal}, Status, HasResponded, "
                "FirstRespondedDate FROM CampaignMember WHERE {where:literal}{resume:literal} "
                "ORDER BY Id",
                member=self.member,
                where=where,
                resume=format_soql(" AND Id > {}", last) if last else "",
            )

        page = HistoryPage(source, cursor={MEMBERS_AFTER: after} if after else {})
        for row in self.client.query("read campaign members' responses", soql, after):
            page.read += 1
            at = _midnight(row.get("FirstRespondedDate"))
            kind = campaigns.get(str(row.get("CampaignId")))
            contact = row.get(self.member)
            if at is None or kind is None or not contact or not row.get("HasResponded"):
                page.skipped[SKIP_NO_RESPONSE] = page.skipped.get(SKIP_NO_RESPONSE, 0) + 1
            else:
                # A member responds once (the date of its first response is all it keeps):
                # the member's id names the event on every export.
                page.events.append(
                    Event(
                        event_id=f"salesforce:campaign-response:{row['Id']}",
                        contact_id=contact,
                        type=kind,
                        occurred_at=at,
                        source="salesforce_campaign_member",
                    )
                )
            page.cursor = {MEMBERS_AFTER: row["Id"]}
            if page.read >= self.page_size:
                yield page
                page = HistoryPage(source, cursor=dict(page.cursor))
        yield page


SKIP_NO_RESPONSE = "members without a response date"
OPEN_FIELDS = ("FirstOpenedDate", "LastOpenedDate")
CLICK_FIELDS = ("FirstLinkClickedDate",)
RECIPIENT_TYPES = ("ToAddress", "CcAddress", "BccAddress")
NO_EMAIL_MESSAGE = (
    "not available: the org has no EmailMessage (Enhanced Email is off and there is no "
    "Email-to-Case)"
)


class EmailActivity:
    """Opens (and clicks, where the API version has them) of emails sent from Salesforce."""

    def __init__(
        self, client: SalesforceClient, mapping: ProgramMapping, sobject: str, page_size: int = PAGE
    ) -> None:
        self.client = client
        self.policy = mapping.policy
        self.sobject = sobject
        self.page_size = page_size

    def export(
        self, since: datetime, until: datetime, cursor: Mapping[str, str]
    ) -> Iterator[HistoryPage]:
        after = cursor.get(EMAILS_AFTER)
        resume = {EMAILS_AFTER: after} if after else {}
        try:
            described = self.client.call(
                "describe EmailMessage", lambda sf: sf.restful("sobjects/EmailMessage/describe")
            )
        except ConnectorError as exc:
            if exc.status != 404:
                raise
            yield HistoryPage("EmailMessage", available=False, note=NO_EMAIL_MESSAGE, cursor=resume)
            return
        have = {f.get("name") for f in (described or {}).get("fields") or []}
        kinds = {
            kind: [f for f in fields if f in have]
            for kind, fields in (("open", OPEN_FIELDS), ("click", CLICK_FIELDS))
            if self.policy.knows_event(kind) and any(f in have for f in fields)
        }
        if not kinds:
            yield HistoryPage(
                "EmailMessage",
                available=False,
                cursor=resume,
                note="not available: EmailMessage has no open dates the policy uses",
            )
            return
        source = f"EmailMessage ({', '.join(k + 's' for k in kinds)})"
        yield from self._messages(source, kinds, since, until, after)

    def _messages(
        self,
        source: str,
        kinds: dict[str, list[str]],
        since: datetime,
        until: datetime,
        after: str | None,
    ) -> Iterator[HistoryPage]:
        fields = [f for names in kinds.values() for f in names]
        window = " OR ".join(
            format_soql(
                "({f:literal} >= {a:literal} AND {f:literal} <= {b:literal})",
                f=f,
                a=literal(since),
                b=literal(until, round_up=True),
            )
            for f in fields
        )

        def soql(last: str | None) -> str:
            return format_soql(
                "SELECT Id, {fields:literal} FROM EmailMessage WHERE Incoming = false "
                "AND ({window:literal}){resume:literal} ORDER BY Id",
                fields=", ".join(fields),
                window=window,
                resume=format_soql(" AND Id > {}", last) if last else "",
            )

        batch: list[dict[str, Any]] = []
        for row in self.client.query("read opens of emails sent from Salesforce", soql, after):
            batch.append(row)
            if len(batch) >= self.page_size:
                yield self._page(source, kinds, batch)
                after, batch = row["Id"], []
        yield self._page(source, kinds, batch, after)  # the rest; the source is always reported

    def _page(
        self,
        source: str,
        kinds: dict[str, list[str]],
        rows: list[dict[str, Any]],
        after: str | None = None,
    ) -> HistoryPage:
        last = rows[-1]["Id"] if rows else after
        page = HistoryPage(source, read=len(rows), cursor={EMAILS_AFTER: last} if last else {})
        recipients = self._recipients([r["Id"] for r in rows])
        for row in rows:
            to = recipients.get(row["Id"], {})
            who = next(iter(to.values())) if len(to) == 1 else None
            if len(to) != 1:
                why = (
                    (
                        "opens of emails to several recipients (Salesforce records that one of "
                        "them opened, not which)"
                    )
                    if to
                    else "emails with no recipient on record"
                )
            elif who is None or who[1] != self.sobject or not who[0]:
                why = f"opens of emails to someone who is not a {self.sobject}"
            else:
                why = None
            if why:
                page.skipped[why] = page.skipped.get(why, 0) + 1
                continue
            for kind, names in kinds.items():
                instants = {at for name in names if (at := parse_instant(row.get(name)))}
                for at in sorted(instants):
                    # An open is an instant: the email and the instant name it on every export,
                    # and a later export that finds a newer last open adds only that one.
                    page.events.append(
                        Event(
                            event_id=f"salesforce:email-{kind}:{row['Id']}:"
                            f"{int(at.timestamp() * 1000)}",
                            contact_id=str(who[0]),  # type: ignore[index]
                            type=kind,
                            occurred_at=at,
                            source="salesforce_email_message",
                        )
                    )
        return page

    def _recipients(self, ids: Iterable[str]) -> dict[str, dict[str, tuple[str | None, str]]]:
        """Each email's recipients (To, Cc, Bcc), by relation id (a re-read page repeats none)."""
        wanted = sorted(set(ids))
        found: dict[str, dict[str, tuple[str | None, str]]] = {}
        if not wanted:
            return found
        rows = self.client.lookup_in(
            "read the recipients of emails sent from Salesforce",
            "SELECT Id, EmailMessageId, RelationId, RelationObjectType FROM "
            "EmailMessageRelation WHERE EmailMessageId IN {ids} AND RelationType IN {types} "
            "ORDER BY Id",
            wanted,
            "ids",
            types=list(RECIPIENT_TYPES),
        )
        for row in rows:
            found.setdefault(str(row.get("EmailMessageId")), {})[row["Id"]] = (
                row.get("RelationId"),
                str(row.get("RelationObjectType") or ""),
            )
        return found
