"""A stateful fake HubSpot on loopback, for the SDK's urllib3 (which `responses` cannot reach).

It behaves like HubSpot where the connector depends on it: bearer auth and scopes, HubSpot's
error JSON, unknown properties and invalid values rejected (a whole batch fails with 400
VALIDATION_ERROR), batches over 100, search limits (page <= 200, never past 10,000, 5 groups x
6 filters, 18 in all), `after` paging, PATCH replacing an enumeration's options, Lists v3
filter shapes, rolling 10-second and per-second search rate limits with 429 `policyName`.
Faults are injected on demand: a status for the next N matching requests (before or after the
request takes effect, or a connection dropped with no answer), 207 per-record failures, slow
answers. Like a common front server, a path with an encoded slash (`%2F`) inside a segment is
refused (404) before routing: HubSpot does not document how it treats one, so nothing may
depend on it.
"""

from __future__ import annotations

import bisect
import json
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.hubspot_search import DEFAULT_PROPERTIES, MAX_RESULTS, SearchError, typed

TOKEN = "pat-na1-test-token-0000"
_ID_IN_PATH = re.compile(r"/\d+")
_ENCODED_SLASH = re.compile(r"%2f", re.IGNORECASE)
BATCH_LIMIT = 100
DROP = -1
"""A status meaning: close the connection without answering (the client sees no response)."""


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, category: str = "VALIDATION_ERROR", **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.category, self.extra = status, category, extra
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {
            "status": "error",
            "message": str(self),
            "correlationId": str(uuid.uuid4()),
            "category": self.category,
            **self.extra,
        }


@dataclass
class Fault:
    """Answer the next `times` requests matching `method` and `path` (regex) with `status`."""

    path: str
    status: int = 500
    method: str | None = None
    times: int = 1
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    skip: int = 0
    """Let this many matching requests through first."""
    after_commit: bool = False
    """Carry the request out first, then answer `status` (or, with `DROP`, drop the
    connection): the client cannot tell that its request took effect."""


@dataclass
class Gate:
    """Hold the next request matching `path` (regex), after `skip` pass, until `release` is set;
    `arrived` tells the test it is being held (to kill a client at a known point)."""

    path: str
    skip: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    timeout: float = 60.0


@dataclass
class RecordFailure:
    """Batch updates of these ids fail (207) with `category` the next `times` times."""

    ids: set[str]
    category: str = "INTERNAL_ERROR"
    message: str = "Internal error while updating the record"
    times: int = 1


def prop(name: str, kind: str, field_type: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": kind,
        "fieldType": field_type,
        "groupName": "contactinformation",
        "options": extra.pop("options", []),
        "hubspotDefined": True,
        **extra,
    }


def _enum_options(*values: str) -> list[dict[str, Any]]:
    return [
        {"label": v, "value": v, "hidden": False, "displayOrder": i} for i, v in enumerate(values)
    ]


def default_properties() -> dict[str, dict[str, dict[str, Any]]]:
    calculated = {"modificationMetadata": {"readOnlyValue": True, "readOnlyDefinition": True}}
    contacts = [
        prop("email", "string", "text"),
        prop("firstname", "string", "text"),
        prop("lastname", "string", "text"),
        prop("hs_object_id", "number", "number", **calculated),
        prop("createdate", "datetime", "date", **calculated),
        prop("lastmodifieddate", "datetime", "date", **calculated),
        prop("hubspot_owner_id", "enumeration", "select"),
        prop("hs_email_last_open_date", "datetime", "date", **calculated),
        prop("hs_email_last_click_date", "datetime", "date", **calculated),
        prop("hs_email_last_send_date", "datetime", "date", **calculated),
        prop("hs_analytics_last_url", "string", "text", **calculated),
        prop("hs_analytics_last_timestamp", "datetime", "date", **calculated),
        prop("recent_conversion_date", "datetime", "date", **calculated),
        prop("hs_email_optout", "bool", "booleancheckbox", **calculated),
        prop(
            "hs_email_hard_bounce_reason_enum",
            "enumeration",
            "select",
            **calculated,
            options=_enum_options("MAILBOX_FULL", "UNKNOWN_USER", "OTHER"),
        ),
        prop("hs_email_sends_since_last_engagement", "number", "number", **calculated),
    ]
    tasks = [
        prop("hs_task_subject", "string", "text"),
        prop("hs_task_body", "string", "html"),
        prop(
            "hs_task_priority",
            "enumeration",
            "select",
            options=_enum_options("LOW", "MEDIUM", "HIGH"),
        ),
        prop(
            "hs_task_status",
            "enumeration",
            "select",
            options=_enum_options("NOT_STARTED", "COMPLETED"),
        ),
        prop(
            "hs_task_type", "enumeration", "select", options=_enum_options("TODO", "CALL", "EMAIL")
        ),
        prop("hs_timestamp", "datetime", "date"),
        prop("hubspot_owner_id", "enumeration", "select"),
        prop("hs_object_id", "number", "number", **calculated),
        prop("createdate", "datetime", "date", **calculated),
        prop("lastmodifieddate", "datetime", "date", **calculated),
    ]
    return {"contacts": {p["name"]: p for p in contacts}, "tasks": {p["name"]: p for p in tasks}}


class ObjectStore:
    """One object type's records: raw strings as HubSpot returns them, typed values for search,
    ids kept sorted."""

    def __init__(self, kinds: Callable[[], dict[str, str]]) -> None:
        self.raw: dict[int, dict[str, str | None]] = {}
        self.typed: dict[int, dict[str, Any]] = {}
        self.ids: list[int] = []
        self.associations: dict[int, list[str]] = {}
        self._kinds = kinds

    def put(self, object_id: int, props: dict[str, str | None]) -> None:
        if object_id not in self.raw:
            bisect.insort(self.ids, object_id)
            self.raw[object_id], self.typed[object_id] = {}, {}
        kinds = self._kinds()
        self.raw[object_id].update(props)
        for name, value in props.items():
            self.typed[object_id][name] = typed(kinds.get(name, "string"), value)


class FakeHubSpot:
    def __init__(
        self,
        token: str = TOKEN,
        requests_per_10s: int | None = None,
        search_per_second: int | None = None,
        latency: float = 0.0,
        daily_remaining: int | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.token = token
        self.requests_per_10s = requests_per_10s
        self.search_per_second = search_per_second
        self.latency = latency
        self.daily_remaining = daily_remaining
        self.now = now
        self.lock = threading.RLock()
        self.properties = default_properties()
        self.groups: dict[str, dict[str, dict[str, Any]]] = {
            "contacts": {"contactinformation": {"name": "contactinformation", "label": "Contact"}},
            "tasks": {"taskinformation": {"name": "taskinformation", "label": "Task"}},
        }
        self.objects = {t: ObjectStore(lambda t=t: self.kinds(t)) for t in ("contacts", "tasks")}
        self.lists: dict[str, dict[str, Any]] = {}
        self.email_events: list[dict[str, Any]] = []
        """The legacy email events log, as `GET /email/public/v1/events` returns events."""
        self.event_occurrences: list[dict[str, Any]] = []
        """Occurrences `GET /events/v3/events/` serves (page views, as `e_visited_page`)."""
        self.email_offset_epoch = 0
        """Bumped to make every `offset` token given so far stale (HubSpot: short-lived)."""
        self.faults: list[Fault] = []
        self.gates: list[Gate] = []
        self.record_failures: list[RecordFailure] = []
        self.denied_scopes: dict[str, str] = {}
        """Path regex -> the scope a 403 names."""
        self.stats: Counter = Counter()
        self.log: list[tuple[str, str, int]] = []
        self._general: deque[float] = deque()
        self._search: deque[float] = deque()
        self._next_id = 1000
        self.server: ThreadingHTTPServer | None = None
        self.seeder: Callable[..., Any] | None = None
        """Set by a benchmark: builds its population inside the fake's own process."""

    # ---- test-side helpers -----------------------------------------------------------------

    def kinds(self, object_type: str) -> dict[str, str]:
        return {n: p["type"] for n, p in self.properties[object_type].items()}

    def new_id(self) -> int:
        with self.lock:
            self._next_id += 1
            return self._next_id

    def add_contact(
        self, props: dict[str, Any] | None = None, contact_id: int | None = None
    ) -> str:
        """Create a contact as HubSpot would hold it (calculated properties included)."""
        with self.lock:
            cid = contact_id if contact_id is not None else self.new_id()
            self._next_id = max(self._next_id, cid)
            stamp = self.now().strftime("%Y-%m-%dT%H:%M:%S.000Z")
            base = {"hs_object_id": str(cid), "createdate": stamp, "lastmodifieddate": stamp}
            clean = {k: None if v is None else str(v) for k, v in (props or {}).items()}
            self.objects["contacts"].put(cid, {**base, **clean})
            return str(cid)

    def set_contact(self, contact_id: str, props: dict[str, Any]) -> None:
        """Change properties behind the API's back (HubSpot calculating, or a user editing)."""
        with self.lock:
            stamp = self.now().strftime("%Y-%m-%dT%H:%M:%S.000Z")
            clean = {k: None if v is None else str(v) for k, v in props.items()}
            self.objects["contacts"].put(int(contact_id), {**clean, "lastmodifieddate": stamp})

    def contact(self, contact_id: str) -> dict[str, str | None]:
        return dict(self.objects["contacts"].raw[int(contact_id)])

    def tasks(self) -> list[dict[str, Any]]:
        store = self.objects["tasks"]
        return [
            {"id": str(i), **store.raw[i], "contacts": store.associations.get(i, [])}
            for i in store.ids
        ]

    def add_email_event(
        self, kind: str, recipient: str, created: datetime, **extra: Any
    ) -> dict[str, Any]:
        """Log a marketing email event as HubSpot records one (`created` in epoch ms)."""
        with self.lock:
            event = {
                "id": str(uuid.uuid4()),
                "created": int(created.timestamp() * 1000),
                "type": kind,
                "recipient": recipient,
                "portalId": 62515,
                "appId": 113,
                "emailCampaignId": 1001,
                "filteredEvent": False,
                **extra,
            }
            self.email_events.append(event)
            return event

    def add_page_view(self, contact_id: str, url: str, at: datetime) -> dict[str, Any]:
        """A contact's page view, as the events API returns an `e_visited_page` occurrence."""
        with self.lock:
            view = {
                "eventType": "e_visited_page",
                "id": str(uuid.uuid4()),
                "objectId": str(contact_id),
                "objectType": "CONTACT",
                "occurredAt": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.")
                + f"{at.microsecond // 1000:03d}Z",
                "properties": {"hs_url": url, "hs_page_title": "A page"},
            }
            self.event_occurrences.append(view)
            return view

    def inject(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def fail_records(self, failure: RecordFailure) -> None:
        with self.lock:
            self.record_failures.append(failure)

    def calls(self, pattern: str = "") -> int:
        return sum(1 for _, path, _ in self.log if re.search(pattern, path))

    # ---- serving ---------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.server = ThreadingHTTPServer((host, port), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return f"http://{host}:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        """One request: (status, JSON body, headers)."""
        if path.startswith("/_fake/"):
            return self._admin(method, path, body)
        search = path.endswith("/search") and "/lists/" not in path
        with self.lock:
            gate = self._take_gate(path)
        if gate is not None:
            gate.arrived.set()
            gate.release.wait(gate.timeout)
        with self.lock:
            self.log.append((method, path, 0))
            fault = self._take_fault(method, path)
        if fault is not None and not fault.after_commit:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status == DROP:
                self.stats["dropped"] += 1
                return DROP, None, {}
            if fault.status:
                self.stats[f"fault_{fault.status}"] += 1
                body = fault.body or ApiError(fault.status, "injected fault", "ERROR").body()
                return fault.status, body, dict(fault.headers)
        if headers.get("authorization") != f"Bearer {self.token}":
            self.stats["401"] += 1
            return (
                401,
                ApiError(
                    401,
                    "Authentication credentials not found. This API supports "
                    "OAuth 2.0 authentication ...",
                    "INVALID_AUTHENTICATION",
                ).body(),
                {},
            )
        for pattern, scope in self.denied_scopes.items():
            if re.search(pattern, path):
                return (
                    403,
                    ApiError(
                        403,
                        "This app hasn't been granted all required scopes to make this call.",
                        "MISSING_SCOPES",
                        errors=[
                            {
                                "message": "One or more of the following scopes are required.",
                                "context": {"requiredGranularScopes": [scope]},
                            }
                        ],
                    ).body(),
                    {},
                )
        limited = self._rate_limit(search)
        if limited is not None:
            return limited
        if self.latency:
            time.sleep(self.latency)
        rate_headers = {} if search else self._rate_headers()
        try:
            status, payload = self._route(method, path, query, body)
        except ApiError as exc:
            self.stats[f"error_{exc.status}"] += 1
            return exc.status, exc.body(), {**rate_headers, **exc.headers}
        except SearchError as exc:
            self.stats["error_400"] += 1
            return 400, ApiError(400, str(exc), exc.category).body(), rate_headers
        if fault is not None and fault.after_commit:
            self.stats[f"fault_after_commit_{fault.status}"] += 1
            if fault.status == DROP:
                return DROP, None, {}
            body = fault.body or ApiError(fault.status, "injected fault", "ERROR").body()
            return fault.status, body, dict(fault.headers)
        return status, payload, rate_headers

    def _admin(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        """Out-of-band control for a fake running in another process (the benchmark)."""
        with self.lock:
            if path == "/_fake/stats":
                calls = Counter(m + " " + _ID_IN_PATH.sub("/{id}", p) for m, p, _ in self.log)
                return 200, {"stats": dict(self.stats), "calls": calls}, {}
            if path == "/_fake/reset" and method == "POST":
                self.stats.clear()
                self.log.clear()
                self._general.clear()
                self._search.clear()
                return 200, {}, {}
            if path == "/_fake/seed" and method == "POST" and self.seeder is not None:
                return 200, self.seeder(self, **(body or {})), {}
        return 404, {"message": f"no admin route {path}"}, {}

    def _take_gate(self, path: str) -> Gate | None:
        for gate in self.gates:
            if gate.arrived.is_set() or not re.search(gate.path, path):
                continue
            if gate.skip > 0:
                gate.skip -= 1
                return None
            return gate
        return None

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times <= 0 or not re.search(fault.path, path):
                continue
            if fault.method and fault.method != method:
                continue
            if fault.skip > 0:
                fault.skip -= 1
                return None
            fault.times -= 1
            return fault
        return None

    def _rate_limit(self, search: bool) -> tuple[int, Any, dict[str, str]] | None:
        now = time.monotonic()
        with self.lock:
            if search and self.search_per_second:
                window, limit = self._search, self.search_per_second
                while window and window[0] <= now - 1.0:
                    window.popleft()
                if len(window) >= limit:
                    self.stats["429"] += 1
                    self.stats["429_search"] += 1
                    return (
                        429,
                        ApiError(
                            429, "You have reached your secondly limit.", "RATE_LIMITS"
                        ).body(),
                        {},
                    )
                window.append(now)
            elif not search and self.requests_per_10s:
                window, limit = self._general, self.requests_per_10s
                while window and window[0] <= now - 10.0:
                    window.popleft()
                if len(window) >= limit:
                    self.stats["429"] += 1
                    self.stats["429_ten_secondly"] += 1
                    body = ApiError(
                        429,
                        "You have reached your ten_secondly_rolling limit.",
                        "RATE_LIMITS",
                        policyName="TEN_SECONDLY_ROLLING",
                    ).body()
                    return 429, body, {**self._rate_headers(), "x-hubspot-ratelimit-remaining": "0"}
                window.append(now)
            if self.daily_remaining is not None and not search:
                if self.daily_remaining <= 0:
                    self.stats["429"] += 1
                    return (
                        429,
                        ApiError(
                            429,
                            "You have reached your daily limit.",
                            "RATE_LIMITS",
                            policyName="DAILY",
                        ).body(),
                        {},
                    )
                self.daily_remaining -= 1
        return None

    def _rate_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.requests_per_10s:
            used = len(self._general)
            headers = {
                "x-hubspot-ratelimit-max": str(self.requests_per_10s),
                "x-hubspot-ratelimit-remaining": str(max(0, self.requests_per_10s - used)),
                "x-hubspot-ratelimit-interval-milliseconds": "10000",
            }
        if self.daily_remaining is not None:
            headers["x-hubspot-ratelimit-daily-remaining"] = str(self.daily_remaining)
        return headers

    # ---- routes ----------------------------------------------------------------------------

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        from tests.fakes import hubspot_routes

        return hubspot_routes.route(self, method, path, query, body)


def _handler(fake: FakeHubSpot) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: without this, Nagle's algorithm and the
            # client's delayed ACK add ~40 ms to every keep-alive request.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if _ENCODED_SLASH.search(url.path):
                with fake.lock:
                    fake.log.append((self.command, url.path, 404))
                    fake.stats["encoded_slash_404"] += 1
                self._send_raw(
                    404, b"<html><body><h1>404 Not Found</h1></body></html>", "text/html"
                )
                return
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                self._send(400, ApiError(400, "Invalid input JSON", "VALIDATION_ERROR").body(), {})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload, extra = fake.handle(
                self.command, unquote(url.path), parse_qs(url.query), headers, body
            )
            if status == DROP:
                self.close_connection = True
                return
            self._send(status, payload, extra)

        def _send_raw(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


__all__ = [
    "DROP",
    "MAX_RESULTS",
    "TOKEN",
    "ApiError",
    "FakeHubSpot",
    "Fault",
    "Gate",
    "RecordFailure",
    "DEFAULT_PROPERTIES",
]
