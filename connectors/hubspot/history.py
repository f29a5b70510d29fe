"""Past engagement from HubSpot's email events API, as canonical events.

`GET /email/public/v1/events` (scope `content`) returns a portal's marketing email events newest
first, at most 1,000 a page, paged by an opaque `offset` token HubSpot calls short-lived. So the
export never resumes from a token: after each page its cursor is the oldest `created` written,
and a resumed export asks again for `endTimestamp` = that instant (inclusive; the events of that
one millisecond already written are found in the output file and not appended twice).

Events HubSpot filters out of its own reporting (`filteredEvent`, by the portal's settings: its
own office's opens, say) are not asked for (`excludeFilteredEvents`), so the history counts
what HubSpot's reports count.

Events name a recipient email, not a contact: each page's new recipients are looked up with a
batch read by email (100 a call), remembered for the rest of the export, and events of addresses
that are not contacts are skipped and counted.

Page views come from the events API, `GET /events/v3/events/` (an Enterprise account), with
`objectType=contact` and `eventType=e_visited_page`, oldest first, paged by `paging.next.after`.
A view sets the contact's last page seen (`hs_analytics_last_url`) to its `hs_url`, so the
mapping's signals on that property decide what a view means (a high-intent visit when the URL
matches). The checkpoint keeps the time of the latest view written, and a resumed export asks
again from just before it (the events of that instant are found in the output file).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_elasticity.connectors.base import AuthError, ConnectorError, HistoryPage
from crm_elasticity.connectors.hubspot.batches import BATCH_SIZE, chunks
from crm_elasticity.connectors.hubspot.client import HubSpotClient
from crm_elasticity.connectors.hubspot.records import READ_SCOPE
from crm_elasticity.connectors.instants import parse_instant
from crm_elasticity.connectors.signals import event_from_signal
from crm_elasticity.core.mapping import Mapping as ProgramMapping
from crm_elasticity.core.models import Event

SOURCE = "HubSpot email events"
EVENTS_SCOPE = "content"
EVENTS_PAGE_MAX = 1000
"""The endpoint's largest `limit` (it answers 10 events a page without one)."""
BEFORE = "email_events_until_ms"

HARD_BOUNCE_CATEGORIES = frozenset({"UNKNOWN_USER", "HARD_BOUNCE"})
"""Bounce categories that mean the address cannot receive mail (HubSpot's `UNKNOWN_USER`: the
mailbox does not exist; `HARD_BOUNCE` should a portal report one by that name). The others
(mailbox full, content, policy, spam, throttling, timeouts) are soft or the sender's problem,
and suppressing a contact for them would be wrong."""

SKIP_SENT = "SENT (DELIVERED counts as the send)"
SKIP_SOFT_BOUNCE = "soft bounces"
SKIP_NOT_CONTACT = "events of recipients who are not contacts"
SKIP_UNKNOWN_TYPE = "events the policy has no use for"
SKIP_MALFORMED = "events without an id, a time or a recipient"
PAGE_VIEWS = "HubSpot page views"
PAGE_VIEW_EVENT = "e_visited_page"
LAST_URL = "hs_analytics_last_url"
"""The contact property a page view sets: the signals on it say what a view means."""
VIEWS_AFTER = "page_views_after"
VIEWS_PAGE = 100
"""Views asked for a page (the spec gives the endpoint no maximum: a conservative size)."""
NO_URL_SIGNAL = (
    f"not read: the mapping has no signal on {LAST_URL} (the page a view sets) for an event the "
    "policy knows"
)
SKIP_NO_MATCH = "views of pages the signals do not match"
SKIP_BAD_VIEW = "views without an id, a time, a contact or a URL"


LAST_MS = 253_402_300_799_999
"""The last millisecond of year 9999: a `created` past it is no instant."""


def _well_formed(item: Mapping[str, Any]) -> bool:
    created = item.get("created")
    return (
        bool(item.get("id"))
        and bool(item.get("recipient"))
        and isinstance(created, int)
        and not isinstance(created, bool)
        and 0 <= created <= LAST_MS
    )


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def canonical_type(event: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(canonical type, None), or (None, why it is skipped).

    DELIVERED, not SENT, is the send: the rules count sends a contact did not answer, and a
    message HubSpot handed to the mail system but the receiving server refused (a bounce) was
    never in front of anyone. SENT would count those as unanswered."""
    kind = str(event.get("type") or "")
    if kind == "DELIVERED":
        return "send", None
    if kind == "SENT":
        return None, SKIP_SENT
    if kind in ("OPEN", "CLICK"):
        return kind.lower(), None
    if kind == "SPAMREPORT":
        return "spam_complaint", None
    if kind == "BOUNCE":
        if str(event.get("category") or "") in HARD_BOUNCE_CATEGORIES:
            return "hard_bounce", None
        return None, SKIP_SOFT_BOUNCE
    if kind == "STATUSCHANGE":
        return _status_change(event)
    return None, f"{kind or 'untyped'} events"


def _status_change(event: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Unsubscribed from everything, or from any subscription type, is an unsubscribe (the
    program cannot tell which type its emails go out under, and compliance errs on the side of
    not sending); subscribed to everything again is a resubscribe."""
    portal = str(event.get("portalSubscriptionStatus") or "").upper()
    statuses = {
        str(item.get("status") or "").upper()
        for item in event.get("subscriptions") or []
        if isinstance(item, dict)
    }
    if portal == "UNSUBSCRIBED" or "UNSUBSCRIBED" in statuses:
        return "unsubscribe", None
    if portal == "SUBSCRIBED" or statuses == {"SUBSCRIBED"}:
        return "resubscribe", None
    return None, "subscription changes that neither unsubscribe nor resubscribe"


class EmailHistory:
    def __init__(
        self, client: HubSpotClient, mapping: ProgramMapping, page_size: int = EVENTS_PAGE_MAX
    ) -> None:
        self.client = client
        self.mapping = mapping
        self.policy = mapping.policy
        self.page_size = min(page_size, EVENTS_PAGE_MAX)
        self.contacts: dict[str, str | None] = {}
        """Recipient email (lower case) -> contact id, or None: not a contact."""

    def export(
        self, since: datetime, until: datetime, cursor: Mapping[str, str] | None
    ) -> Iterator[HistoryPage]:
        start = _ms(since)
        end = int(cursor[BEFORE]) if cursor and BEFORE in cursor else _ms(until)
        oldest = end
        offset: str | None = None
        # The page views' progress rides along, so a checkpoint saved here keeps it.
        views = {VIEWS_AFTER: cursor[VIEWS_AFTER]} if cursor and VIEWS_AFTER in cursor else {}
        while True:
            try:
                response = self.client.call(
                    "email.events",
                    "get_page",
                    startTimestamp=start,
                    endTimestamp=end,
                    limit=self.page_size,
                    offset=offset,
                    excludeFilteredEvents="true",
                    what="email events page",
                    scope=EVENTS_SCOPE,
                )
            except AuthError as exc:
                if exc.status != 403:
                    raise
                note = f"not available: the private app lacks the scope {EVENTS_SCOPE!r} ({exc})"
                yield HistoryPage(
                    SOURCE, available=False, cursor={**views, BEFORE: str(end)}, note=note
                )
                break
            data = response.data or {}
            raw = [e for e in data.get("events") or [] if isinstance(e, dict)]
            page = self._page(raw)
            # The query stays as it was (the offset belongs to it); only a resume narrows it.
            oldest = min([oldest, *(e["created"] for e in raw if _well_formed(e))])
            page.cursor = {**views, BEFORE: str(oldest)}
            yield page
            if not data.get("hasMore"):
                break
            following = data.get("offset")
            if not following or following == offset:
                # Ending here would report a partial export as complete; stopping keeps the
                # checkpoint, so the next run asks again from the oldest event written.
                raise ConnectorError(
                    "email events: HubSpot said there are more events but "
                    "gave no new offset to read them; run again to resume",
                    retriable=True,
                )
            offset = str(following)
        state = {BEFORE: str(oldest)}
        for page in PageViews(self.client, self.mapping).export(since, until, cursor or {}):
            page.cursor = {**state, **page.cursor}
            yield page

    def _page(self, raw: list[dict[str, Any]]) -> HistoryPage:
        page = HistoryPage(SOURCE, read=len(raw))
        kept: list[tuple[dict[str, Any], str]] = []
        for item in raw:
            if not _well_formed(item):
                page.skipped[SKIP_MALFORMED] = page.skipped.get(SKIP_MALFORMED, 0) + 1
                continue
            kind, why = canonical_type(item)
            if kind is not None and not self.policy.knows_event(kind):
                kind, why = None, SKIP_UNKNOWN_TYPE
            if kind is None:
                page.skipped[why or ""] = page.skipped.get(why or "", 0) + 1
                continue
            kept.append((item, kind))
        self._resolve({str(item.get("recipient") or "").lower() for item, _ in kept})
        for item, kind in kept:
            contact = self.contacts.get(str(item.get("recipient") or "").lower())
            if contact is None:
                page.skipped[SKIP_NOT_CONTACT] = page.skipped.get(SKIP_NOT_CONTACT, 0) + 1
                continue
            page.events.append(self._event(item, kind, contact))
        return page

    @staticmethod
    def _event(item: dict[str, Any], kind: str, contact_id: str) -> Event:
        created = int(item["created"])
        campaign = item.get("emailCampaignId")
        return Event(
            # HubSpot names an event by its `created` and `id` together.
            event_id=f"hubspot:email:{created}:{item['id']}",
            contact_id=contact_id,
            type=kind,
            occurred_at=datetime.fromtimestamp(created / 1000, tz=UTC),
            campaign=str(campaign) if campaign is not None else None,
            url=str(item["url"]) if kind == "click" and item.get("url") else None,
            source="hubspot_email_events",
        )

    def _resolve(self, emails: set[str]) -> None:
        wanted = sorted(e for e in emails if e and e not in self.contacts)
        for chunk in chunks(wanted, BATCH_SIZE):
            body = {
                "inputs": [{"id": email} for email in chunk],
                "idProperty": "email",
                "properties": ["email"],
                "propertiesWithHistory": [],
            }
            response = self.client.call(
                "contacts.batch",
                "read",
                body,
                archived=False,
                what=f"batch read of {len(chunk)} contacts by email",
                scope=READ_SCOPE,
            )
            for email in chunk:
                self.contacts[email] = None
            # A 207 names the addresses that are no contact's: they stay None.
            for result in (response.data or {}).get("results") or []:
                email = str((result.get("properties") or {}).get("email") or "").lower()
                if email:
                    self.contacts[email] = str(result["id"])


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


class PageViews:
    def __init__(
        self, client: HubSpotClient, mapping: ProgramMapping, page_size: int = VIEWS_PAGE
    ) -> None:
        self.client = client
        self.mapping = mapping
        self.page_size = page_size
        knows = mapping.policy.knows_event
        self.signals = [s for s in mapping.signals if s.property == LAST_URL and knows(s.event)]

    def export(
        self, since: datetime, until: datetime, cursor: Mapping[str, str]
    ) -> Iterator[HistoryPage]:
        resumed = parse_instant(cursor.get(VIEWS_AFTER))
        state = {VIEWS_AFTER: cursor[VIEWS_AFTER]} if resumed else {}
        if not self.signals:
            yield HistoryPage(PAGE_VIEWS, available=False, note=NO_URL_SIGNAL, cursor=state)
            return
        # The window is inclusive, `occurredAfter`/`Before` may be strict: a millisecond wider
        # each side. A resume starts at the latest view written (its instant may hold views not
        # yet written; those that were are found in the output file).
        start = (resumed or since) - timedelta(milliseconds=1)
        end = until + timedelta(milliseconds=1)
        latest = resumed
        after: str | None = None
        while True:
            try:
                response = self.client.call(
                    "events",
                    "get_page",
                    object_type="contact",
                    event_type=PAGE_VIEW_EVENT,
                    occurred_after=_iso(start),
                    occurred_before=_iso(end),
                    sort=["ASCENDING"],
                    limit=self.page_size,
                    after=after,
                    what="page views page",
                    scope="the events API",
                )
            except AuthError as exc:
                if exc.status != 403:
                    raise
                note = (
                    "not available: HubSpot refused the events API, which needs a "
                    "Marketing, Sales, Service, Content or Data Hub Enterprise account "
                    f"({exc})"
                )
                yield HistoryPage(PAGE_VIEWS, available=False, note=note, cursor=dict(state))
                return
            data = response.data or {}
            raw = [v for v in data.get("results") or [] if isinstance(v, dict)]
            page = HistoryPage(PAGE_VIEWS, read=len(raw))
            for view in raw:
                at = self._add(page, view)
                latest = max(latest, at) if latest and at else (at or latest)
            if latest:
                state = {VIEWS_AFTER: _iso(latest)}
            page.cursor = dict(state)
            yield page
            following = ((data.get("paging") or {}).get("next") or {}).get("after")
            if not following:
                return
            if following == after:
                raise ConnectorError(
                    "page views: HubSpot gave the same page cursor twice; run again to resume",
                    retriable=True,
                )
            after = str(following)

    def _add(self, page: HistoryPage, view: dict[str, Any]) -> datetime | None:
        at = parse_instant(view.get("occurredAt"))
        url = (view.get("properties") or {}).get("hs_url")
        contact = view.get("objectId")
        if at is None or not view.get("id") or not url or not contact:
            page.skipped[SKIP_BAD_VIEW] = page.skipped.get(SKIP_BAD_VIEW, 0) + 1
            return at
        kept = [
            e
            for signal in self.signals
            if (
                e := event_from_signal(
                    self.mapping,
                    signal,
                    str(contact),
                    str(url),
                    at,
                    "hubspot_page_views",
                    changed_at=at,
                )
            )
        ]
        if not kept:
            page.skipped[SKIP_NO_MATCH] = page.skipped.get(SKIP_NO_MATCH, 0) + 1
        for n, event in enumerate(kept):
            # HubSpot's id names one view on every export.
            suffix = f":{n}" if n else ""
            page.events.append(replace(event, event_id=f"hubspot:pageview:{view['id']}{suffix}"))
        return at
