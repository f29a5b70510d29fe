"""A stateful Salesforce org behind `responses`: REST query paging, sObject Collections,
single-record PATCH, Bulk API 2.0 ingest, `/limits`, OAuth token and userinfo, SOAP login and
the Metadata API (SOAP, as zeep sends it).

It answers the way Salesforce answers: error bodies are `[{"message","errorCode","fields"}]`,
per-record results carry `statusCode` (and a failed one no `id`), collections over 200 records
and unknown fields are refused, a URI plus headers over 16,384 bytes gets 414 (431 when the
headers push it over), custom fields exist only once created through the Metadata API and are
readable only once a permission set granting them, per sObject (`Task.X`, `Event.X`; an
activity field's `Activity.X` is not an sObject and is refused), is assigned. Faults can be
injected: locked rows, permanent record errors, request-limit and 5xx answers, expired
sessions, and a request applied in full whose answer never reaches the client (a timeout
after the commit).

Time is simulated: `fake.sleep` (given to the connector) advances `fake.clock`, and Bulk 2.0
jobs finish after 2 s plus 1,500 rows a second of simulated time (slower than the connector's
first-poll guess on purpose, so the poll back-off is exercised).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.etree import ElementTree as ET  # noqa: S405 - parses our own client's requests

import jwt
import requests
import responses

from tests.fakes.salesforce_soql import SoqlError, parse, parse_instant

INSTANCE = "acme.my.salesforce.com"
VERSION = "62.0"
ORG_ID = "00D5g000004ABCDEAA"
USER_ID = "0055g00000INTEGAAA"
DATA = f"https://{INSTANCE}/services/data/v{VERSION}/"
MD_NS = "http://soap.sforce.com/2006/04/metadata"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

PREFIX = {
    "Contact": "003",
    "Lead": "00Q",
    "Task": "00T",
    "Event": "00U",
    "Campaign": "701",
    "CampaignMember": "00v",
    "CampaignMemberStatus": "01Y",
    "PermissionSet": "0PS",
    "PermissionSetAssignment": "0Pa",
    "User": "005",
    "ContactHistory": "017",
    "LeadHistory": "017",
    "FieldDefinition": "000",
    "EmailMessage": "02s",
    "EmailMessageRelation": "0Rm",
}
STANDARD = {
    "Contact": [
        "Id",
        "OwnerId",
        "CreatedDate",
        "SystemModstamp",
        "FirstName",
        "LastName",
        "Email",
        "HasOptedOutOfEmail",
        "EmailBouncedReason",
        "AccountId",
    ],
    "Lead": [
        "Id",
        "OwnerId",
        "CreatedDate",
        "SystemModstamp",
        "FirstName",
        "LastName",
        "Email",
        "Company",
        "HasOptedOutOfEmail",
        "EmailBouncedReason",
    ],
    "Task": [
        "Id",
        "OwnerId",
        "CreatedDate",
        "SystemModstamp",
        "WhoId",
        "Subject",
        "Description",
        "Priority",
        "Status",
        "ActivityDate",
    ],
    "Event": ["Id", "OwnerId", "CreatedDate", "SystemModstamp", "WhoId", "Subject"],
    "Campaign": ["Id", "OwnerId", "CreatedDate", "SystemModstamp", "Name", "IsActive", "Type"],
    "CampaignMember": [
        "Id",
        "CreatedDate",
        "SystemModstamp",
        "CampaignId",
        "ContactId",
        "LeadId",
        "Status",
        "HasResponded",
        "FirstRespondedDate",
        "IsDeleted",
    ],
    "CampaignMemberStatus": [
        "Id",
        "CreatedDate",
        "SystemModstamp",
        "CampaignId",
        "Label",
        "HasResponded",
        "SortOrder",
        "IsDefault",
    ],
    "PermissionSet": ["Id", "CreatedDate", "SystemModstamp", "Name", "Label"],
    "PermissionSetAssignment": [
        "Id",
        "CreatedDate",
        "SystemModstamp",
        "PermissionSetId",
        "AssigneeId",
    ],
    "User": ["Id", "CreatedDate", "SystemModstamp", "Username"],
    "ContactHistory": [
        "Id",
        "ContactId",
        "Field",
        "OldValue",
        "NewValue",
        "CreatedDate",
        "CreatedById",
        "IsDeleted",
    ],
    "LeadHistory": [
        "Id",
        "LeadId",
        "Field",
        "OldValue",
        "NewValue",
        "CreatedDate",
        "CreatedById",
        "IsDeleted",
    ],
    "FieldDefinition": [
        "Id",
        "DurableId",
        "EntityDefinitionId",
        "EntityDefinition.QualifiedApiName",
        "QualifiedApiName",
        "IsFieldHistoryTracked",
    ],
    # Enhanced Email (Object Reference: EmailMessage, EmailMessageRelation).
    "EmailMessage": [
        "Id",
        "CreatedDate",
        "SystemModstamp",
        "ActivityId",
        "RelatedToId",
        "Subject",
        "FromAddress",
        "ToAddress",
        "Incoming",
        "Status",
        "MessageDate",
        "IsTracked",
        "IsOpened",
        "IsBounced",
        "FirstOpenedDate",
        "LastOpenedDate",
        "FirstLinkClickedDate",
        "IsDeleted",
    ],
    "EmailMessageRelation": [
        "Id",
        "CreatedDate",
        "SystemModstamp",
        "EmailMessageId",
        "RelationId",
        "RelationObjectType",
        "RelationType",
        "RelationAddress",
        "DeliveryResponse",
        "IsDeleted",
    ],
}
DATE_FIELDS = {"CampaignMember": ("FirstRespondedDate",), "Task": ("ActivityDate",)}
"""Standard fields of type `date` (no time): SOQL compares them with date literals only."""
READ_ONLY = {"CampaignMember": ("HasResponded", "FirstRespondedDate")}
"""Fields Salesforce sets itself: a member's response follows from its status."""
HISTORY_VALUES = ("OldValue", "NewValue")
"""History values are `anyType`: selectable, never filterable."""
ORG_FIELDS = [
    "Last_Email_Open_Date__c",
    "Last_Email_Click_Date__c",
    "Last_Email_Send_Date__c",
    "pi__url__c",
    "Last_Form_Submission_Date__c",
]
"""Fields the org has before we provision anything (its own automation and packages)."""
ACTIVITY_OBJECTS = ("Task", "Event")
"""Custom fields defined on Activity appear on both; field-level security is kept per object."""
URI_AND_HEADERS_MAX = 16_384


def sf_time(value: Any) -> Any:
    """Datetimes as the REST API returns them: `2026-01-01T10:00:00.000+0000`."""
    if isinstance(value, str) and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d", value):
        at = parse_instant(value).astimezone(UTC)
        return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000"
    return value


def error(status: int, code: str, message: str, fields: list[str] | None = None) -> tuple:
    body = [{"message": message, "errorCode": code, "fields": fields or []}]
    return status, {"Content-Type": "application/json"}, json.dumps(body)


@dataclass
class Job:
    id: str
    sobject: str
    operation: str
    state: str = "Open"
    csv: str = ""
    closed_at: float = 0.0
    failed: list[dict[str, str]] = field(default_factory=list)
    processed: int = 0
    error_message: str = ""


class FakeSalesforce:
    def __init__(
        self,
        provisioned: bool = True,
        daily_total: int = 100_000,
        bulk_rows_per_second: float = 1500.0,
    ) -> None:
        self.records: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in PREFIX}
        self.fields: dict[str, dict[str, dict[str, Any]]] = {
            obj: {name: {"type": "standard"} for name in names} for obj, names in STANDARD.items()
        }
        for obj, names in DATE_FIELDS.items():
            for name in names:
                self.fields[obj].setdefault(name, {})["type"] = "date"
        for obj in ("Contact", "Lead"):
            for name in ORG_FIELDS:
                self.fields[obj][name] = {"type": "org"}
        self.metadata: dict[str, dict[str, ET.Element]] = {}
        self.metadata_calls: list[str] = []
        self.granted: set[str] = set()
        self.provisioned_all = provisioned
        self.counter = itertools.count(1)
        self.tokens: set[str] = {"TOKEN-0"}
        self.token_counter = itertools.count(1)
        self.daily_used, self.daily_total = 0, daily_total
        self.clock = 0.0
        self.bulk_rate = bulk_rows_per_second
        self.jobs: dict[str, Job] = {}
        self.cursors: dict[str, tuple[list[dict[str, Any]], int]] = {}
        self.faults: list[tuple[Callable[[str, str], bool], Any, bool]] = []
        self.lost_answers: list[Callable[[str, str], bool]] = []
        self.longest_uri = 0
        """Bytes of the longest request target (path and query) the client sent."""
        self.locked: dict[str, int] = {}
        self.rejected: dict[str, tuple[str, str]] = {}
        self.jwt_public_key: bytes | None = None
        self.consumer_key = "CK-fake"
        self.username = "integration@acme.example"
        self.password = "pw"
        self.api_calls: list[tuple[str, str]] = []
        self.grants = 0
        self.user_id = USER_ID
        self.records["User"][USER_ID] = {"Id": USER_ID, "Username": self.username}
        self.history_tracked: dict[str, set[str]] = {"Contact": set(), "Lead": set()}
        """Fields with history tracking on, per object (Setup > Set History Tracking)."""

    # ---- set-up helpers --------------------------------------------------------------------

    def sleep(self, seconds: float) -> None:
        self.clock += seconds

    def define(self, sobject: str, name: str, kind: str, values: list[str] | None = None) -> None:
        self.fields[sobject][name] = {"type": kind, "values": values}
        if self.provisioned_all:
            self.granted.add(f"{sobject}.{name}")

    def provision_mapping(
        self, mapping: Any, handoff_field: str = "Elastic_Handoff_Key__c"
    ) -> None:
        """Seed the org as if `elasticity provision` had run (fields exist and are granted)."""
        from crm_elasticity.connectors.salesforce.config import SalesforceOptions
        from crm_elasticity.connectors.salesforce.metadata_specs import wanted_fields

        options = SalesforceOptions(handoff_key_field=handoff_field)
        for want in wanted_fields(mapping, options, mapping.object):
            for sobject in _sobjects_of(want.sobject):
                self.define(sobject, want.name, want.kind, list(want.values) or None)
                self.granted.add(f"{sobject}.{want.name}")

    def new_id(self, sobject: str) -> str:
        return f"{PREFIX[sobject]}{next(self.counter):012d}AAA"

    def add(self, sobject: str, **values: Any) -> str:
        record_id = values.pop("Id", None) or self.new_id(sobject)
        stamp = sf_time(values.pop("SystemModstamp", "2026-01-01T00:00:00Z"))
        record = {
            "Id": record_id,
            "CreatedDate": sf_time(values.pop("CreatedDate", stamp)),
            "SystemModstamp": stamp,
            "OwnerId": USER_ID,
        }
        record.update({k: sf_time(v) for k, v in values.items()})
        self.records[sobject][record_id] = record
        return record_id

    def without(self, *sobjects: str) -> None:
        """An org without these objects (EmailMessage without Enhanced Email or Email-to-Case):
        queries name an unsupported sObject type and describe answers 404, as Salesforce does."""
        for sobject in sobjects:
            self.fields.pop(sobject, None)

    def set_member_status(self, member_id: str, status: str, on: str) -> None:
        """A member's status changes on day `on` (`YYYY-MM-DD`); Salesforce sets `HasResponded`
        from the status and `FirstRespondedDate` the first time it is a responded one."""
        member = self.records["CampaignMember"][member_id]
        member["Status"] = status
        self._derive_response(member, on)

    def _derive_response(self, member: dict[str, Any], today: str) -> None:
        responded = any(
            s["HasResponded"]
            for s in self.records["CampaignMemberStatus"].values()
            if s["CampaignId"] == member.get("CampaignId") and s["Label"] == member.get("Status")
        )
        member["HasResponded"] = responded
        member.setdefault("IsDeleted", False)
        if responded and not member.get("FirstRespondedDate"):
            member["FirstRespondedDate"] = today

    def add_email(
        self,
        to: list[tuple[str, str]],
        sent: str,
        *,
        first_open: str | None = None,
        last_open: str | None = None,
        first_click: str | None = None,
        incoming: bool = False,
    ) -> str:
        """An email sent from Salesforce (Enhanced Email) and its recipients, `(RelationId or
        address, RelationType)`; opens as Salesforce tracks them, for any recipient."""
        message = self.add(
            "EmailMessage",
            Subject="Hello",
            Incoming=incoming,
            Status="3",
            MessageDate=sent,
            IsTracked=True,
            IsOpened=first_open is not None,
            IsBounced=False,
            FirstOpenedDate=first_open,
            IsDeleted=False,
            LastOpenedDate=last_open or first_open,
            FirstLinkClickedDate=first_click,
            CreatedDate=sent,
        )
        for who, kind in to:
            linked = who[:3] in (PREFIX["Contact"], PREFIX["Lead"], PREFIX["User"])
            sobject = next((o for o in ("Contact", "Lead", "User") if who[:3] == PREFIX[o]), None)
            self.add(
                "EmailMessageRelation",
                EmailMessageId=message,
                RelationType=kind,
                RelationId=who if linked else None,
                RelationObjectType=sobject,
                RelationAddress=None if linked else who,
                IsDeleted=False,
                CreatedDate=sent,
            )
        return message

    def track_history(self, sobject: str, *names: str) -> None:
        self.history_tracked[sobject].update(names)

    def change(self, sobject: str, record_id: str, name: str, value: Any, at: str) -> None:
        """A user or an automation sets a field at `at`; a tracked field's change is kept in
        `<Object>History` (booleans as booleans, datetimes as the API prints them)."""
        record = self.records[sobject][record_id]
        old = record.get(name)
        record[name] = sf_time(value)
        record["SystemModstamp"] = sf_time(at)
        if name in self.history_tracked.get(sobject, set()):
            history = f"{sobject}History"
            row_id = self.new_id(history)
            self.records[history][row_id] = {
                "Id": row_id,
                f"{sobject}Id": record_id,
                "Field": name,
                "OldValue": old,
                "NewValue": sf_time(value),
                "CreatedDate": sf_time(at),
                "CreatedById": USER_ID,
                "IsDeleted": False,
            }

    def _field_definitions(self) -> None:
        """`FieldDefinition` rows for the fields of Contact and Lead, as the org has them now."""
        self.records["FieldDefinition"] = {
            f"{obj}.{name}": {
                "Id": f"{obj}.{name}",
                "DurableId": f"{obj}.{name}",
                "EntityDefinitionId": obj,
                "EntityDefinition.QualifiedApiName": obj,
                "QualifiedApiName": name,
                "IsFieldHistoryTracked": name in self.history_tracked[obj],
            }
            for obj in ("Contact", "Lead")
            for name in self.fields[obj]
            if self.visible(obj, name)
        }

    def fail(
        self,
        times: int,
        response: tuple | Exception,
        when: Callable[[str, str], bool] | None = None,
        usage_header: bool = True,
    ) -> None:
        for _ in range(times):
            self.faults.append((when or (lambda m, p: True), response, usage_header))

    def time_out_after_commit(
        self, times: int = 1, when: Callable[[str, str], bool] | None = None
    ) -> None:
        """The next `times` matching requests are applied in full, then the client times out
        waiting for the answer (as when a network path drops after Salesforce committed)."""
        for _ in range(times):
            self.lost_answers.append(when or (lambda m, p: True))

    def limit_exceeded(self, times: int = 1, daily: bool = False) -> None:
        if daily:
            self.daily_used = self.daily_total
        body = error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        self.fail(times, body, lambda m, p: "/services/data/" in p)

    def expire_sessions(self) -> None:
        self.tokens.clear()

    def lock(self, ids: list[str], times: int = 1) -> None:
        for record_id in ids:
            self.locked[record_id] = times

    def reject(
        self,
        ids: list[str],
        code: str = "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        message: str = "Email programs need a valid address",
    ) -> None:
        for record_id in ids:
            self.rejected[record_id] = (code, message)

    def count(self, method: str, path_part: str) -> int:
        return sum(1 for m, p in self.api_calls if m == method and path_part in p)

    # ---- wiring ----------------------------------------------------------------------------

    def install(self, rsps: responses.RequestsMock) -> FakeSalesforce:
        any_host = re.compile(r"https://[^/]+/services/.*")
        for method in ("GET", "POST", "PATCH", "PUT", "DELETE"):
            rsps.add_callback(method, any_host, callback=self.handle)
        return self

    def handle(self, request: Any) -> tuple:
        response = self._handle(request)
        url = urlsplit(request.url)
        for i, when in enumerate(self.lost_answers):
            if when(request.method, unquote(url.path)):
                del self.lost_answers[i]
                raise requests.exceptions.ReadTimeout("the answer never arrived (fake)")
        return response

    def _too_large(self, request: Any) -> tuple | None:
        """Salesforce's limit on a request's URI plus headers, as its front end applies it
        (before authentication or API accounting)."""
        url = urlsplit(request.url)
        target = url.path + (f"?{url.query}" if url.query else "")
        self.longest_uri = max(self.longest_uri, len(target.encode()))
        line = len(f"{request.method} {target} HTTP/1.1\r\n".encode())
        headers = {"Host": url.netloc, **dict(request.headers)}
        header_bytes = sum(len(f"{k}: {v}\r\n".encode()) for k, v in headers.items())
        if len(target.encode()) > URI_AND_HEADERS_MAX:
            return 414, {"Content-Type": "text/html"}, "<h1>414 URI Too Long</h1>"
        if line + header_bytes > URI_AND_HEADERS_MAX:
            body = "<h1>431 Request Header Fields Too Large</h1>"
            return 431, {"Content-Type": "text/html"}, body
        return None

    def _handle(self, request: Any) -> tuple:
        url = urlsplit(request.url)
        path = unquote(url.path)
        method = request.method
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        refused = self._too_large(request)
        if refused is not None:
            self.api_calls.append((method, path))
            return refused
        if path.endswith("/services/oauth2/token"):
            return self.token(body)
        if "/services/Soap/u/" in path:
            return self.soap_login(body)
        if path.endswith("/services/oauth2/userinfo"):
            return self.userinfo(request)
        self.api_calls.append((method, path))
        for i, (when, response, usage_header) in enumerate(self.faults):
            if when(method, path):
                del self.faults[i]
                if isinstance(response, Exception):
                    raise response
                return self._with_usage(response) if usage_header else response
        if "/services/Soap/m/" in path:
            return self.metadata_api(body)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if token not in self.tokens:
            return error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        self.daily_used += 1
        rel = path.split(f"/services/data/v{VERSION}/", 1)[-1]
        try:
            return self._with_usage(self.route(method, rel, url.query, body, request.headers))
        except SoqlError as exc:
            return self._with_usage(error(400, exc.code, exc.message))

    def _with_usage(self, response: tuple) -> tuple:
        status, headers, body = response
        headers = {
            **headers,
            "Sforce-Limit-Info": f"api-usage={self.daily_used}/{self.daily_total}",
        }
        return status, headers, body

    def route(self, method: str, rel: str, query: str, body: bytes, headers: Any) -> tuple:
        if rel.startswith("query"):
            if rel.rstrip("/") == "query":
                batch = int(
                    re.search(
                        r"batchSize=(\d+)",
                        headers.get("Sforce-Query-Options", "") or "batchSize=2000",
                    ).group(1)
                )
                return self.query(parse_qs(query)["q"][0], batch)
            return self.query_more(rel.split("/", 1)[1])
        if rel == "composite/sobjects":
            return self.collections(method, json.loads(body))
        if rel == "limits/":  # simple-salesforce's `limits()` asks with the trailing slash
            return self._json(
                {
                    "DailyApiRequests": {
                        "Max": self.daily_total,
                        "Remaining": self.daily_total - self.daily_used,
                    }
                }
            )
        if rel.startswith("jobs/ingest"):
            return self.bulk(method, rel, body)
        parts = rel.split("/")
        if parts[0] == "sobjects" and len(parts) == 3 and parts[2] == "describe":
            if parts[1] not in self.fields:
                return error(404, "NOT_FOUND", "The requested resource does not exist")
            fields = [
                {"name": n, "type": f["type"]}
                for n, f in self.fields[parts[1]].items()
                if self.visible(parts[1], n)
            ]
            return self._json({"name": parts[1], "fields": fields})
        if parts[0] == "sobjects" and method == "POST" and len(parts) == 2:
            result = self.save_one(parts[1], json.loads(body), create=True)
            if not result["success"]:
                return 400, {"Content-Type": "application/json"}, _rest_errors(result)
            return 201, {"Content-Type": "application/json"}, json.dumps(result)
        if parts[0] == "sobjects" and method == "PATCH" and len(parts) == 3:
            result = self.save_one(parts[1], {"id": parts[2], **json.loads(body)}, create=False)
            if not result["success"]:
                return 400, {"Content-Type": "application/json"}, _rest_errors(result)
            return 204, {}, ""
        return error(404, "NOT_FOUND", f"The requested resource does not exist: {rel}")

    @staticmethod
    def _json(payload: Any, status: int = 200) -> tuple:
        return status, {"Content-Type": "application/json"}, json.dumps(payload)

    def visible(self, sobject: str, name: str) -> bool:
        kind = self.fields[sobject].get(name, {}).get("type")
        if kind is None:
            return False
        if not name.endswith("__c") or kind == "org":
            return True
        return f"{sobject}.{name}" in self.granted

    def schema(self) -> dict[str, dict[str, Any]]:
        return {
            obj: {n: f for n, f in fields.items() if self.visible(obj, n)}
            for obj, fields in self.fields.items()
        }

    # ---- auth ------------------------------------------------------------------------------

    def _issue(self) -> str:
        token = f"TOKEN-{next(self.token_counter)}"
        self.tokens.add(token)
        self.grants += 1
        return token

    def token(self, body: bytes) -> tuple:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._json(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
                400,
            )
        try:
            if self.jwt_public_key is None:
                raise jwt.InvalidTokenError("no key registered")
            claims = jwt.decode(
                form.get("assertion", ""),
                self.jwt_public_key,
                algorithms=["RS256"],
                audience=["https://login.salesforce.com", "https://test.salesforce.com"],
                options={"verify_exp": False},
            )
        except jwt.InvalidTokenError:
            return self._json(
                {"error": "invalid_grant", "error_description": "invalid assertion"}, 400
            )
        if claims.get("iss") != self.consumer_key or claims.get("sub") != self.username:
            return self._json(
                {"error": "invalid_client_id", "error_description": "client identifier invalid"},
                400,
            )
        return self._json(
            {
                "access_token": self._issue(),
                "instance_url": f"https://{INSTANCE}",
                "id": f"https://login.salesforce.com/id/{ORG_ID}/{USER_ID}",
                "token_type": "Bearer",
                "scope": "api",
            }
        )

    def soap_login(self, body: bytes) -> tuple:
        text = body.decode()
        ok = f"username>{self.username}</" in text and f"password>{self.password}" in text
        if not ok:
            fault = (
                '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
                "<soapenv:Body><soapenv:Fault><faultcode>INVALID_LOGIN</faultcode><faultstring>"
                "INVALID_LOGIN: Invalid username, password, security token; or user locked out."
                "</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
            )
            return 500, {"Content-Type": "text/xml"}, fault
        token = self._issue()
        xml = (
            f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}"><soapenv:Body><loginResponse><result>'
            f"<serverUrl>https://{INSTANCE}/services/Soap/u/{VERSION}/{ORG_ID}</serverUrl>"
            f"<sessionId>{token}</sessionId></result></loginResponse></soapenv:Body></soapenv:Envelope>"
        )
        return 200, {"Content-Type": "text/xml"}, xml

    def userinfo(self, request: Any) -> tuple:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if token not in self.tokens:
            return 403, {}, "Bad_OAuth_Token"
        return self._json({"user_id": self.user_id, "organization_id": ORG_ID})

    # ---- queries ---------------------------------------------------------------------------

    def query(self, soql: str, batch: int) -> tuple:
        where = re.split(r"\bWHERE\b", soql, maxsplit=1, flags=re.IGNORECASE)
        if re.search(r"\bFROM\s+\w+History\b", soql) and len(where) == 2:
            for name in HISTORY_VALUES:
                if re.search(rf"\b{name}\b", where[1]):
                    problem = f"field '{name}' can not be filtered in query call"
                    raise SoqlError("INVALID_FIELD", problem)
        q = parse(soql, self.schema())
        if q.sobject == "FieldDefinition":
            self._field_definitions()
        rows = [r for r in self.records[q.sobject].values() if q.where(r)]
        if q.order_by:
            rows.sort(key=lambda r: (r.get(q.order_by) is None, r.get(q.order_by)))
        if q.limit is not None:
            rows = rows[: q.limit]
        selected = [
            {"attributes": {"type": q.sobject}, **{f: r.get(f) for f in q.fields}} for r in rows
        ]
        cursor = f"01gFAKE{next(self.counter)}"
        self.cursors[cursor] = (selected, max(200, min(batch, 2000)))
        return self._page(cursor, 0)

    def query_more(self, locator: str) -> tuple:
        cursor, _, offset = locator.rpartition("-")
        if cursor not in self.cursors:
            return error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(cursor, int(offset))

    def _page(self, cursor: str, offset: int) -> tuple:
        rows, batch = self.cursors[cursor]
        end = offset + batch
        page: dict[str, Any] = {
            "totalSize": len(rows),
            "done": end >= len(rows),
            "records": rows[offset:end],
        }
        if end < len(rows):
            page["nextRecordsUrl"] = f"/services/data/v{VERSION}/query/{cursor}-{end}"
        return self._json(page)

    # ---- writes ----------------------------------------------------------------------------

    def collections(self, method: str, body: dict[str, Any]) -> tuple:
        records = body.get("records") or []
        if len(records) > 200:
            return error(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        for record in records:
            sobject = (record.get("attributes") or {}).get("type")
            if sobject not in self.fields:
                return error(400, "INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
            for name in record:
                if name not in ("attributes", "id") and not self.visible(sobject, name):
                    return error(
                        400,
                        "INVALID_FIELD",
                        f"No such column '{name}' on sobject of type {sobject}",
                        [name],
                    )
        results = [
            self.save_one(r["attributes"]["type"], r, create=method == "POST") for r in records
        ]
        return self._json(results)

    def save_one(self, sobject: str, record: dict[str, Any], create: bool) -> dict[str, Any]:
        values = {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}
        record_id = record.get("id") or record.get("Id")
        if not create and (record_id not in self.records[sobject]):
            return _failure("ENTITY_IS_DELETED", "entity is deleted", record_id)
        if record_id in self.locked and self.locked[record_id] > 0:
            self.locked[record_id] -= 1
            return _failure(
                "UNABLE_TO_LOCK_ROW",
                "unable to obtain exclusive access to this record or 1 records: " + str(record_id),
                record_id,
            )
        if record_id in self.rejected:
            code, message = self.rejected[record_id]
            return _failure(code, message, record_id)
        for name, value in values.items():
            if not self.visible(sobject, name):
                return _failure("INVALID_FIELD", f"No such column '{name}'", record_id, [name])
            if name in READ_ONLY.get(sobject, ()):
                return _failure(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {name}. Please check the "
                    "security settings of this field and verify that it is "
                    "read/write for your profile or permission set.",
                    record_id,
                    [name],
                )
            allowed = self.fields[sobject][name].get("values")
            if allowed and value is not None and value not in allowed:
                return _failure(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"{name}: bad value for restricted picklist field: {value}",
                    record_id,
                    [name],
                )
        if create:
            record_id = self.add(sobject, **values)
            if sobject == "PermissionSetAssignment":
                self._refresh_grants()
        else:
            self.records[sobject][record_id].update({k: sf_time(v) for k, v in values.items()})
            self.records[sobject][record_id]["SystemModstamp"] = sf_time(_now_iso(self.clock))
        if sobject == "CampaignMember":
            self._derive_response(self.records[sobject][record_id], _now_iso(self.clock)[:10])
        return {"id": record_id, "success": True, "errors": []}

    # ---- Bulk API 2.0 ----------------------------------------------------------------------

    def bulk(self, method: str, rel: str, body: bytes) -> tuple:
        parts = rel.split("/")
        if method == "POST" and len(parts) == 2:
            spec = json.loads(body)
            job = Job(
                id=f"750FAKE{next(self.counter):08d}AAA",
                sobject=spec["object"],
                operation=spec["operation"],
            )
            self.jobs[job.id] = job
            return self._json(self._job_info(job))
        job = self.jobs.get(parts[2])
        if job is None:
            return error(404, "NOT_FOUND", "job not found")
        if method == "PUT" and parts[-1] == "batches":
            if job.state != "Open":
                return error(409, "INVALIDJOBSTATE", "job is not open")
            job.csv += body.decode()
            return 201, {}, ""
        if method == "PATCH":
            state = json.loads(body)["state"]
            if job.state != "Open" and state == "UploadComplete":
                return error(409, "INVALIDJOBSTATE", f"the job is {job.state}, not Open")
            job.state = state
            job.closed_at = self.clock
            return self._json(self._job_info(job))
        if method == "GET" and len(parts) == 3:
            self._progress(job)
            return self._json(self._job_info(job))
        if method == "GET" and parts[-1] == "failedResults":
            return 200, {"Content-Type": "text/csv"}, self._failed_csv(job)
        return error(404, "NOT_FOUND", rel)

    def _job_info(self, job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "object": job.sobject,
            "operation": job.operation,
            "state": job.state,
            "numberRecordsProcessed": job.processed,
            "numberRecordsFailed": len(job.failed),
            "errorMessage": job.error_message or None,
        }

    def _progress(self, job: Job) -> None:
        if job.state not in ("UploadComplete", "InProgress"):
            return
        try:
            rows = list(csv.DictReader(io.StringIO(job.csv)))
        except csv.Error as exc:  # e.g. a bare carriage return in an unquoted value
            job.state, job.error_message = "Failed", f"InvalidBatch : {exc}"
            return
        if self.clock < job.closed_at + 2 + len(rows) / self.bulk_rate:
            job.state = "InProgress"
            return
        self._apply(job, rows)

    def _apply(self, job: Job, rows: list[dict[str, str]]) -> None:
        header = list(rows[0]) if rows else []
        unknown = [h for h in header if h != "Id" and not self.visible(job.sobject, h)]
        if unknown:
            job.state = "Failed"
            job.error_message = f"InvalidBatch : Field name not found : {unknown[0]}"
            return
        for row in rows:
            values: dict[str, Any] = {"id": row["Id"]}
            for name, cell in row.items():
                if name == "Id" or cell == "":
                    continue  # Bulk 2.0 ignores empty cells on update
                values[name] = (
                    None if cell == "#N/A" else _typed(self.fields[job.sobject][name], cell)
                )
            result = self.save_one(job.sobject, values, create=False)
            job.processed += 1
            if not result["success"]:
                e = result["errors"][0]
                job.failed.append(
                    {
                        "sf__Id": row["Id"],
                        "sf__Error": f"{e['statusCode']}:{e['message']}:--",
                        **row,
                    }
                )
        job.state = "JobComplete"

    def _failed_csv(self, job: Job) -> str:
        if not job.failed:
            return '"sf__Id","sf__Error"\n'
        out = io.StringIO()
        writer = csv.DictWriter(
            out, fieldnames=list(job.failed[0]), lineterminator="\n", quoting=csv.QUOTE_ALL
        )
        writer.writeheader()
        for row in reversed(job.failed):  # Salesforce promises no order; neither do we
            writer.writerow(row)
        return out.getvalue()

    # ---- Metadata API (SOAP) ---------------------------------------------------------------

    def metadata_api(self, body: bytes) -> tuple:
        root = ET.fromstring(body)  # noqa: S314 - our own client's request
        session = root.findtext(f".//{{{MD_NS}}}sessionId")
        if session not in self.tokens:
            return self._soap_fault(
                "sf:INVALID_SESSION_ID", "INVALID_SESSION_ID: Invalid Session ID"
            )
        self.daily_used += 1
        call = next(iter(root.find(f"{{{SOAP_NS}}}Body")))
        name = call.tag.split("}")[-1]
        self.metadata_calls.append(name)
        if name == "readMetadata":
            kind = call.findtext(f"{{{MD_NS}}}type")
            names = [e.text for e in call.findall(f"{{{MD_NS}}}fullNames")]
            return self._soap(name, self._read(kind, names))
        if name in ("createMetadata", "updateMetadata"):
            results = [
                self._save(item, create=name == "createMetadata")
                for item in call.findall(f"{{{MD_NS}}}metadata")
            ]
            return self._soap(name, "".join(results))
        return self._soap_fault("sf:UNSUPPORTED", f"the fake does not implement {name}")

    def _read(self, kind: str, names: list[str]) -> str:
        out = ["<result>"]
        for full_name in names:
            element = self.metadata.get(kind, {}).get(full_name)
            children = (
                ""
                if element is None
                else "".join(ET.tostring(child, encoding="unicode") for child in element)
            )
            out.append(f'<records xmlns:tns="{MD_NS}" xsi:type="tns:{kind}">{children}</records>')
        return "".join(out) + "</result>"

    def _save(self, item: ET.Element, create: bool) -> str:
        kind = (item.get(f"{{{XSI}}}type") or "").split(":")[-1]
        full_name = item.findtext(f"{{{MD_NS}}}fullName") or ""
        store = self.metadata.setdefault(kind, {})
        if create and full_name in store:
            return _save_result(
                full_name, "DUPLICATE_DEVELOPER_NAME", "There is already a field with that name"
            )
        if not create and full_name not in store:
            return _save_result(full_name, "INVALID_CROSS_REFERENCE_KEY", "no such component")
        if kind == "CustomField" and not create:
            old_type = store[full_name].findtext(f"{{{MD_NS}}}type")
            if old_type != item.findtext(f"{{{MD_NS}}}type"):
                return _save_result(full_name, "FIELD_INTEGRITY_EXCEPTION", "type change refused")
        if kind == "PermissionSet":
            for perm in item.findall(f"{{{MD_NS}}}fieldPermissions"):
                field_name = perm.findtext(f"{{{MD_NS}}}field") or ""
                sobject, _, name = field_name.partition(".")
                if sobject not in self.fields or name not in self.fields[sobject]:
                    return _save_result(
                        full_name,
                        "INVALID_CROSS_REFERENCE_KEY",
                        f"In field: field - no CustomField named {field_name} found",
                    )
        store[full_name] = item
        self._apply_metadata(kind, full_name, item)
        return _save_result(full_name)

    def _apply_metadata(self, kind: str, full_name: str, item: ET.Element) -> None:
        if kind == "CustomField":
            obj, name = full_name.split(".", 1)
            values = [v.text for v in item.iter(f"{{{MD_NS}}}fullName")][1:]
            for sobject in _sobjects_of(obj):
                self.fields[sobject][name] = {
                    "type": item.findtext(f"{{{MD_NS}}}type"),
                    "values": values or None,
                }
        elif kind == "PermissionSet":
            if full_name not in {r["Name"] for r in self.records["PermissionSet"].values()}:
                self.add("PermissionSet", Name=full_name, Label=full_name)
            self._refresh_grants()

    def _refresh_grants(self) -> None:
        assigned = {
            r["PermissionSetId"]
            for r in self.records["PermissionSetAssignment"].values()
            if r["AssigneeId"] == self.user_id
        }
        names = {r["Name"] for pid, r in self.records["PermissionSet"].items() if pid in assigned}
        for name in names:
            element = self.metadata.get("PermissionSet", {}).get(name)
            for perm in (
                element.findall(f"{{{MD_NS}}}fieldPermissions") if element is not None else []
            ):
                if perm.findtext(f"{{{MD_NS}}}readable") == "true":
                    self.granted.add(perm.findtext(f"{{{MD_NS}}}field") or "")

    def _soap(self, name: str, inner: str) -> tuple:
        xml = (
            f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns:xsi="{XSI}"><soapenv:Body>'
            f'<{name}Response xmlns="{MD_NS}">{inner}</{name}Response>'
            "</soapenv:Body></soapenv:Envelope>"
        )
        return 200, {"Content-Type": "text/xml; charset=utf-8"}, xml

    @staticmethod
    def _soap_fault(code: str, message: str) -> tuple:
        xml = (
            f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns:sf="{MD_NS}"><soapenv:Body>'
            f"<soapenv:Fault><faultcode>{code}</faultcode><faultstring>{message}</faultstring>"
            "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
        )
        return 500, {"Content-Type": "text/xml; charset=utf-8"}, xml


def _failure(
    code: str, message: str, record_id: str | None, fields: list[str] | None = None
) -> dict[str, Any]:
    """A failed SaveResult: Salesforce sends no `id` with it, whatever the request carried."""
    return {
        "success": False,
        "errors": [{"statusCode": code, "message": message, "fields": fields or []}],
    }


def _rest_errors(result: dict[str, Any]) -> str:
    """A single-record REST failure: the documented `[{"message","errorCode","fields"}]`."""
    return json.dumps(
        [
            {"message": e["message"], "errorCode": e["statusCode"], "fields": e["fields"]}
            for e in result["errors"]
        ]
    )


def _sobjects_of(meta_object: str) -> tuple[str, ...]:
    """The sObjects a metadata object's fields live on: Activity's on Task and Event."""
    return ACTIVITY_OBJECTS if meta_object == "Activity" else (meta_object,)


def _save_result(full_name: str, code: str | None = None, message: str = "") -> str:
    if code is None:
        return f"<result><fullName>{full_name}</fullName><success>true</success></result>"
    return (
        f"<result><errors><message>{message}</message><statusCode>{code}</statusCode>"
        f"</errors><fullName>{full_name}</fullName><success>false</success></result>"
    )


def _typed(spec: dict[str, Any], cell: str) -> Any:
    if spec.get("type") == "Number":
        return float(cell)
    if spec.get("type") == "Checkbox":
        return cell.lower() == "true"
    return cell


def _now_iso(clock: float) -> str:
    base = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    return datetime.fromtimestamp(base + clock, tz=UTC).isoformat()
