"""The SOQL the connector sends. Every query orders by Id and resumes after an id, so a sync
interrupted anywhere continues where it stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import quote_plus

from simple_salesforce.format import quote_soql_value

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.connectors.salesforce.api_facts import QUERY_LINE_BUDGET
from crm_elasticity.connectors.salesforce.records import Codec
from crm_elasticity.core.eligibility import earliest_due
from crm_elasticity.core.mapping import Mapping, Signal
from crm_elasticity.core.models import Status

SoqlAfter = Callable[[str | None], str]


def literal(at: datetime, round_up: bool = False) -> str:
    """A SOQL datetime literal (whole seconds; rounding widens the window, never narrows it)."""
    at = at.astimezone(UTC)
    if round_up and at.microsecond:
        at = at.replace(microsecond=0) + timedelta(seconds=1)
    return at.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def request_line_bytes(soql: str, api_version: str) -> int:
    """The bytes of the request line a GET query sends: `requests` encodes `q` with
    `quote_plus`, so each character's encoding is independent of its neighbours."""
    return len(f"GET /services/data/v{api_version}/query/?q={quote_plus(soql)} HTTP/1.1")


def in_chunks(
    values: Sequence[str],
    render: Callable[[list[str]], str],
    api_version: str,
    budget: int = QUERY_LINE_BUDGET,
) -> Iterator[list[str]]:
    """`values` in consecutive chunks whose query, `render(chunk)`, fits `budget` bytes of
    request line. Sized by the encoded bytes each value adds (its quoted literal and a comma),
    then measured on the rendered query and shrunk if need be, so long keys, multi-byte
    characters or a long select list all shorten the chunk instead of overflowing the URI."""
    base = request_line_bytes(render([]), api_version)
    comma = len(quote_plus(","))
    start = 0
    while start < len(values):
        end, size = start, base
        while end < len(values):
            cost = len(quote_plus(quote_soql_value(values[end]))) + (comma if end > start else 0)
            if end > start and size + cost > budget:
                break
            size += cost
            end += 1
        while request_line_bytes(render(list(values[start:end])), api_version) > budget:
            if end - start == 1:
                raise ConnectorError(
                    f"a SOQL query needs more than the {budget} bytes of URI this connector "
                    "sends (Salesforce refuses a URI plus headers over 16,384 bytes); the "
                    "mapping selects too many or too long fields, or a value is too long"
                )
            end -= max(1, (end - start) // 16)
        yield list(values[start:end])
        start = end


def _statuses(*statuses: Status) -> str:
    return quote_soql_value([s.value for s in statuses])


class Queries:
    def __init__(self, mapping: Mapping, codec: Codec, sobject: str) -> None:
        self.mapping = mapping
        self.sobject = sobject
        # Identifiers come from the validated mapping; values are always quoted.
        self.select = f"SELECT {', '.join(codec.select_list())} FROM {sobject}"  # noqa: S608
        self.f = {name: spec.property for name, spec in mapping.fields.items()}

    def _paged(self, where: str | None) -> SoqlAfter:
        def soql(after: str | None) -> str:
            clauses = [f"({where})"] if where else []
            if after:
                clauses.append(f"Id > {quote_soql_value(after)}")
            condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
            return f"{self.select}{condition} ORDER BY Id"

        return soql

    def by_ids(self, ids: Sequence[str]) -> SoqlAfter:
        return self._paged(f"Id IN {quote_soql_value(list(ids))}")

    def everyone(self) -> SoqlAfter:
        return self._paged(None)

    def due(self, now: datetime) -> SoqlAfter:
        """A superset of the records whose time rules can be due by `now`; the engine decides
        exactly, and a tick that finds nothing due writes nothing."""
        p, f = earliest_due(self.mapping), self.f  # segments may fall due sooner
        dormant_cut = literal(now - timedelta(days=p.dormant_after_days), round_up=True)
        cooling_cut = literal(now - timedelta(days=p.cooling_days), round_up=True)
        decay_cut = literal(now - timedelta(days=p.decay.after_days), round_up=True)
        status, led = f["campaign_status"], f["last_engagement_date"]
        changed, score = f["status_changed_at"], f["engagement_score"]
        in_stream = _statuses(Status.ACTIVE, Status.REACTIVATED)
        silent = (
            f"{status} IN {in_stream} AND ({led} <= {dormant_cut} OR "
            f"({led} = null AND CreatedDate <= {dormant_cut}))"
        )
        cooled = f"{status} = 'Dormant' AND ({changed} <= {cooling_cut} OR {changed} = null)"
        decaying = f"{score} > 0 AND {led} <= {decay_cut}"
        return self._paged(f"({silent}) OR ({cooled}) OR ({decaying})")

    def engaged_since(self, since: datetime | None) -> SoqlAfter:
        """Records holding a signal value, changed since `since` (SystemModstamp also moves
        on system updates, so nothing an automation stamped is missed)."""
        held = " OR ".join(self._holds(s) for s in _unique(self.mapping.signals))
        where = f"({held})" if held else None
        if since is not None:
            stamp = f"SystemModstamp >= {literal(since)}"
            where = f"{stamp} AND {where}" if where else stamp
        return self._paged(where)

    @staticmethod
    def _holds(signal: Signal) -> str:
        values = [v.lower() for v in signal.values]
        if values and set(values) <= {"true", "false"}:
            return " OR ".join(f"{signal.property} = {v}" for v in sorted(set(values)))
        if signal.values:
            return f"{signal.property} IN {quote_soql_value(list(signal.values))}"
        return f"{signal.property} != null"


def _unique(signals: Sequence[Signal]) -> list[Signal]:
    seen: dict[str, Signal] = {}
    for signal in signals:
        if signal.property in seen and seen[signal.property].values != signal.values:
            # Two signals on one field with different filters: select on presence.
            seen[signal.property] = Signal(property=signal.property, event=signal.event)
        else:
            seen.setdefault(signal.property, signal)
    return list(seen.values())
