"""The fake HubSpot's endpoints. Each validates its input the way HubSpot's published API
contract does and answers in HubSpot's shapes."""

from __future__ import annotations

import bisect
import hashlib
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tests.fakes.hubspot_search import (
    DEFAULT_PROPERTIES,
    MAX_RESULTS,
    SearchError,
    compile_request,
    matches,
    to_ms,
)

if TYPE_CHECKING:
    from tests.fakes.hubspot_server import FakeHubSpot

from tests.fakes.hubspot_server import BATCH_LIMIT, ApiError

FIELD_TYPES = {
    "bool": {"booleancheckbox"},
    "enumeration": {"select", "radio", "checkbox", "booleancheckbox"},
    "date": {"date"},
    "datetime": {"date"},
    "string": {"text", "textarea", "html", "phonenumber"},
    "number": {"number"},
}
LIST_ENUM_OPERATORS = {"IS_ANY_OF", "IS_NONE_OF", "IS_EXACTLY", "IS_NOT_EXACTLY"}
DAY_MS = 86_400_000
PROCESSING_TYPES = ("MANUAL", "SNAPSHOT", "DYNAMIC")
# ListSearchRequest in HubSpot's Lists v3 spec: field -> JSON type; `offset` and
# `additionalProperties` are required; `count` defaults to 20 and may not exceed 500.
LIST_SEARCH_FIELDS = {
    "listIds": "strings",
    "offset": "integer",
    "query": "string",
    "count": "integer",
    "processingTypes": "strings",
    "additionalProperties": "strings",
    "sort": "string",
}
LIST_SEARCH_REQUIRED = ("additionalProperties", "offset")
LIST_SEARCH_MAX_COUNT, LIST_SEARCH_DEFAULT_COUNT = 500, 20
LIST_DEFAULT_PROPERTIES = (
    "hs_list_size",
    "hs_last_record_added_at",
    "hs_last_record_removed_at",
    "hs_folder_name",
    "hs_list_reference_count",
)
LIST_PROPERTY_VALUES = {"hs_list_size": "0", "hs_list_reference_count": "0"}
"""The fake keeps no memberships; properties it has no value for are left out, as HubSpot
leaves out empty ones."""


def route(fake: FakeHubSpot, method: str, path: str, query: dict, body: Any) -> tuple[int, Any]:
    for pattern, verb, handler in ROUTES:
        match = re.fullmatch(pattern, path)
        if match and verb == method:
            with fake.lock:
                return handler(fake, query, body, *match.groups())
    raise ApiError(404, f"No route for {method} {path}", "OBJECT_NOT_FOUND")


def _q(query: dict, name: str, default: str | None = None) -> str | None:
    values = query.get(name)
    return values[0] if values else default


def _object_type(name: str) -> str:
    if name not in ("contacts", "tasks"):
        raise ApiError(400, f"Unable to infer object type from: {name}")
    return name


# ---- properties ------------------------------------------------------------------------------


def get_groups(fake, query, body, obj):
    return 200, {"results": list(fake.groups[_object_type(obj)].values())}


def create_group(fake, query, body, obj):
    groups = fake.groups[_object_type(obj)]
    if not body or not body.get("name") or not body.get("label"):
        raise ApiError(400, "name and label are required")
    if body["name"] in groups:
        raise ApiError(409, f"A group named {body['name']} already exists", "CONFLICT")
    groups[body["name"]] = {
        "name": body["name"],
        "label": body["label"],
        "displayOrder": -1,
        "archived": False,
    }
    return 201, groups[body["name"]]


def get_properties(fake, query, body, obj):
    return 200, {"results": list(fake.properties[_object_type(obj)].values())}


def get_property(fake, query, body, obj, name):
    prop = fake.properties[_object_type(obj)].get(name)
    if prop is None:
        raise ApiError(404, f"Unable to find property {name}", "OBJECT_NOT_FOUND")
    return 200, prop


def create_property(fake, query, body, obj):
    props = fake.properties[_object_type(obj)]
    for key in ("name", "label", "type", "fieldType", "groupName"):
        if not (body or {}).get(key):
            raise ApiError(400, f"Property {key} is required")
    if body["name"] in props:
        raise ApiError(409, f"Property {body['name']} already exists", "OBJECT_ALREADY_EXISTS")
    if body["fieldType"] not in FIELD_TYPES.get(body["type"], set()):
        raise ApiError(400, f"fieldType {body['fieldType']} is not valid for type {body['type']}")
    if body["groupName"] not in fake.groups[obj]:
        raise ApiError(400, f"property group {body['groupName']} does not exist")
    if body["type"] == "enumeration" and not body.get("options"):
        raise ApiError(400, "options are required for an enumeration property")
    prop = {
        **body,
        "options": body.get("options") or [],
        "hubspotDefined": False,
        "modificationMetadata": {"readOnlyValue": False, "readOnlyDefinition": False},
    }
    props[body["name"]] = prop
    return 201, prop


def update_property(fake, query, body, obj, name):
    props = fake.properties[_object_type(obj)]
    if name not in props:
        raise ApiError(404, f"Unable to find property {name}", "OBJECT_NOT_FOUND")
    if "type" in (body or {}) and body["type"] != props[name]["type"]:
        raise ApiError(400, "changing a property's type is not supported by the fake")
    props[name] = {**props[name], **(body or {})}  # provided fields, options included, replace
    return 200, props[name]


# ---- lists -----------------------------------------------------------------------------------


def _validate_branch(fake, branch: Any) -> None:
    if not isinstance(branch, dict) or branch.get("filterBranchType") != "OR":
        raise ApiError(400, "filterBranch: the root branch must be an OR branch")
    if branch.get("filters"):
        raise ApiError(400, "filterBranch: the root OR branch cannot hold filters")
    kinds = fake.kinds("contacts")
    for sub in branch.get("filterBranches") or []:
        if sub.get("filterBranchType") != "AND" or sub.get("filterBranches"):
            raise ApiError(400, "filterBranch: the OR branch's children must be AND branches")
        for f in sub.get("filters") or []:
            op = f.get("operation") or {}
            if f.get("filterType") != "PROPERTY" or "propertyType" in op:
                raise ApiError(400, "filter: expected filterType PROPERTY with a v3 operation")
            kind = kinds.get(f.get("property"))
            if kind is None:
                raise ApiError(400, f"filter: property {f.get('property')!r} does not exist")
            if kind == "enumeration" and (
                op.get("operationType") != "ENUMERATION"
                or op.get("operator") not in LIST_ENUM_OPERATORS
                or not isinstance(op.get("values"), list)
            ):
                raise ApiError(
                    400,
                    f"filter on {f['property']}: expected an ENUMERATION "
                    "operation with an operator and a values list",
                )
            if "includeObjectsWithNoValueSet" not in op:
                raise ApiError(400, "operation.includeObjectsWithNoValueSet is required")


def _public_list(item: dict, with_filters: bool) -> dict:
    return {k: v for k, v in item.items() if with_filters or k != "filterBranch"}


def create_list(fake, query, body, _slash=None):
    body = body or {}
    for key in ("name", "objectTypeId", "processingType"):
        if not body.get(key):
            raise ApiError(400, f"{key} is required")
    if body["processingType"] not in ("MANUAL", "DYNAMIC", "SNAPSHOT"):
        raise ApiError(400, f"unknown processingType {body['processingType']}")
    if any(i["name"].lower() == body["name"].lower() for i in fake.lists.values()):
        raise ApiError(400, f"A list named {body['name']} already exists")
    if body["processingType"] == "DYNAMIC":
        _validate_branch(fake, body.get("filterBranch"))
    list_id = str(len(fake.lists) + 1)
    fake.lists[list_id] = {
        "listId": list_id,
        "listVersion": 1,
        "name": body["name"],
        "objectTypeId": body["objectTypeId"],
        "processingType": body["processingType"],
        "processingStatus": "COMPLETE",
        "filterBranch": body.get("filterBranch"),
    }
    return 200, {"list": fake.lists[list_id]}


def get_list(fake, query, body, list_id):
    with_filters = (_q(query, "includeFilters") or "").lower() == "true"
    if list_id not in fake.lists:
        raise ApiError(404, f"List {list_id} does not exist", "OBJECT_NOT_FOUND")
    return 200, {"list": _public_list(fake.lists[list_id], with_filters)}


def _check_list_search(body: Any) -> None:
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid input JSON: expected a ListSearchRequest object")
    for name in LIST_SEARCH_REQUIRED:
        if name not in body:
            raise ApiError(400, f"{name} is required")
    for name, value in body.items():
        kind = LIST_SEARCH_FIELDS.get(name)
        if kind is None:
            raise ApiError(400, f"Unrecognized field {name!r}")
        ok = {
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "string": isinstance(value, str),
            "strings": isinstance(value, list) and all(isinstance(v, str) for v in value),
        }[kind]
        if not ok:
            raise ApiError(
                400,
                f"{name} must be {'an' if kind == 'integer' else 'a'} "
                f"{'list of strings' if kind == 'strings' else kind}",
            )
    count = body.get("count", LIST_SEARCH_DEFAULT_COUNT)
    if not 1 <= count <= LIST_SEARCH_MAX_COUNT:
        raise ApiError(400, f"count must be between 1 and {LIST_SEARCH_MAX_COUNT}")
    if body["offset"] < 0:
        raise ApiError(400, "offset must not be negative")
    unknown = set(body.get("processingTypes") or []) - set(PROCESSING_TYPES)
    if unknown:
        raise ApiError(400, f"unknown processingTypes {sorted(unknown)}")


def search_lists(fake, query, body):
    """`POST /crm/v3/lists/search`: by name (case-insensitive substring; an empty query pages
    through every list), offset paging, no filter definitions in the results."""
    _check_list_search(body)
    text = (body.get("query") or "").lower()
    ids = set(body.get("listIds") or [])
    kinds = set(body.get("processingTypes") or [])
    hits = [
        item
        for _, item in sorted(fake.lists.items(), key=lambda kv: int(kv[0]))
        if text in item["name"].lower()
        and (not ids or item["listId"] in ids)
        and (not kinds or item["processingType"] in kinds)
    ]
    offset, count = body["offset"], body.get("count", LIST_SEARCH_DEFAULT_COUNT)
    page = hits[offset : offset + count]
    wanted = [*LIST_DEFAULT_PROPERTIES, *body["additionalProperties"]]
    lists = [
        {
            **_public_list(item, with_filters=False),
            "additionalProperties": {k: v for k, v in LIST_PROPERTY_VALUES.items() if k in wanted},
        }
        for item in page
    ]
    return 200, {
        "lists": lists,
        "offset": offset + len(page),
        "total": len(hits),
        "hasMore": offset + len(page) < len(hits),
    }


def list_by_name(fake, query, body, object_type_id, name):
    with_filters = (_q(query, "includeFilters") or "").lower() == "true"
    for item in fake.lists.values():
        if item["name"].lower() == name.lower() and item["objectTypeId"] == object_type_id:
            return 200, {"list": _public_list(item, with_filters)}
    raise ApiError(404, f"List does not exist with name {name}", "OBJECT_NOT_FOUND")


def update_list_filters(fake, query, body, list_id):
    if list_id not in fake.lists:
        raise ApiError(404, f"List {list_id} does not exist", "OBJECT_NOT_FOUND")
    _validate_branch(fake, (body or {}).get("filterBranch"))
    item = fake.lists[list_id]
    item["filterBranch"], item["listVersion"] = body["filterBranch"], item["listVersion"] + 1
    return 200, {"updatedList": item}


# ---- objects ---------------------------------------------------------------------------------


def _inputs(body: Any) -> list[dict]:
    inputs = (body or {}).get("inputs")
    if not isinstance(inputs, list):
        raise ApiError(400, "inputs is required")
    if len(inputs) > BATCH_LIMIT:
        raise ApiError(400, f"Batch input size {len(inputs)} exceeds the limit of {BATCH_LIMIT}")
    return inputs


def _validate_values(fake, obj: str, props: dict[str, Any]) -> None:
    problems = []
    defs = fake.properties[obj]
    for name, value in props.items():
        prop = defs.get(name)
        if prop is None:
            problems.append((name, f'Property "{name}" does not exist', "PROPERTY_DOESNT_EXIST"))
            continue
        if (prop.get("modificationMetadata") or {}).get("readOnlyValue"):
            problems.append((name, f"{name} is a read only property", "READ_ONLY_VALUE"))
            continue
        text = "" if value is None else str(value)
        if text == "" or name == "hubspot_owner_id":
            continue
        kind, ok = prop["type"], True
        if kind == "number":
            ok = re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", text) is not None
        elif kind == "date" and (ms := to_ms(text)) is not None and ms % DAY_MS:
            problems.append(
                (name, f"{text} is at {_time_of_day(ms)} UTC, not midnight!", "INVALID_DATE")
            )
            continue
        elif kind in ("datetime", "date"):
            ok = to_ms(text) is not None
        elif kind == "bool":
            ok = text in ("true", "false")
        elif kind == "enumeration":
            ok = text in {o["value"] for o in prop.get("options") or []}
        if not ok:
            problems.append((name, f"{text!r} was not a valid {kind} for {name}", "INVALID_OPTION"))
    if problems:
        detail = ", ".join(
            f'{{"isValid":false,"message":"{m}","error":"{e}","name":"{n}"}}'
            for n, m, e in problems
        )
        raise ApiError(400, f"Property values were not valid: [{detail}]")


def _time_of_day(ms: int) -> str:
    rest = ms % DAY_MS
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _stored(fake, obj: str, props: dict[str, Any]) -> dict[str, Any]:
    """Values as HubSpot keeps them: a `date` property reads back as YYYY-MM-DD."""
    defs = fake.properties[obj]
    out = dict(props)
    for name, value in props.items():
        if (defs.get(name) or {}).get("type") == "date" and value not in (None, ""):
            ms = to_ms(str(value))
            out[name] = datetime.fromtimestamp(ms / 1000, tz=UTC).date().isoformat()
    return out


def _public(fake, obj: str, object_id: int, wanted: list[str] | None) -> dict[str, Any]:
    raw = fake.objects[obj].raw[object_id]
    names = list(dict.fromkeys([*DEFAULT_PROPERTIES, *(wanted or [])]))
    props = {n: raw.get(n) for n in names if n in fake.properties[obj] or n in raw}
    return {
        "id": str(object_id),
        "properties": props,
        "createdAt": raw.get("createdate"),
        "updatedAt": raw.get("lastmodifieddate"),
        "archived": False,
    }


def _batch_answer(results: list, errors: list) -> tuple[int, dict]:
    payload: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "startedAt": "2026-01-01T00:00:00Z",
        "completedAt": "2026-01-01T00:00:01Z",
    }
    if errors:
        payload.update(numErrors=len(errors), errors=errors)
        return 207, payload
    return 200, payload


def _not_found(ids: list[str], obj: str) -> dict:
    return {
        "status": "error",
        "category": "OBJECT_NOT_FOUND",
        "context": {"ids": ids},
        "message": f"Could not get some {obj.upper()[:-1]} objects, they may be deleted or "
        "not exist. Check that ids are valid.",
    }


UNIQUE_ID_PROPERTIES = {"contacts": ("email", "hs_object_id"), "tasks": ("hs_object_id",)}
"""Properties a batch read may name records by (`idProperty`): unique-valued ones only."""


def batch_read(fake, query, body, obj):
    inputs = _inputs(body)
    store = fake.objects[_object_type(obj)]
    id_property = body.get("idProperty")
    if id_property is not None and id_property not in UNIQUE_ID_PROPERTIES[obj]:
        raise ApiError(400, f"{id_property} is not a unique identifier property for {obj}")
    if id_property == "email":
        # Emails are unique per contact and matched without regard to case.
        by_email = {str(raw.get("email") or "").lower(): oid for oid, raw in store.raw.items()}
    found, missing = [], []
    for item in inputs:
        oid = str(item.get("id"))
        if id_property == "email":
            oid = str(by_email.get(oid.lower(), oid))
        if oid.isdigit() and int(oid) in store.raw:
            found.append(_public(fake, obj, int(oid), body.get("properties")))
        else:
            missing.append(str(item.get("id")))
    return _batch_answer(found, [_not_found(missing, obj)] if missing else [])


def _stamp(fake) -> str:
    return fake.now().strftime("%Y-%m-%dT%H:%M:%S.") + "000Z"


def batch_update(fake, query, body, obj):
    inputs = _inputs(body)
    store = fake.objects[_object_type(obj)]
    for item in inputs:  # one bad value fails the whole batch, as HubSpot does
        _validate_values(fake, obj, item.get("properties") or {})
    results, errors, missing = [], [], []
    for item in inputs:
        oid = str(item.get("id"))
        trace = item.get("objectWriteTraceId")
        failure = next((f for f in fake.record_failures if oid in f.ids and f.times > 0), None)
        if failure is not None:
            failure.times -= 1
            context = {"objectWriteTraceId": [trace]} if trace else {"ids": [oid]}
            errors.append(
                {
                    "status": "error",
                    "category": failure.category,
                    "message": failure.message,
                    "context": context,
                }
            )
            continue
        if not (oid.isdigit() and int(oid) in store.raw):
            missing.append(oid)
            continue
        props = _stored(fake, obj, item.get("properties") or {})
        store.put(int(oid), {**props, "lastmodifieddate": _stamp(fake)})
        fake.stats["records_updated"] += 1
        results.append(_public(fake, obj, int(oid), list(item.get("properties") or {})))
    if missing:
        errors.append(_not_found(missing, obj))
    return _batch_answer(results, errors)


def batch_create(fake, query, body, obj):
    inputs = _inputs(body)
    store = fake.objects[_object_type(obj)]
    for item in inputs:
        _validate_values(fake, obj, item.get("properties") or {})
    results = []
    for item in inputs:
        contacts = []
        for assoc in item.get("associations") or []:
            target = str((assoc.get("to") or {}).get("id"))
            if not (target.isdigit() and int(target) in fake.objects["contacts"].raw):
                raise ApiError(400, f"association target {target} does not exist")
            contacts.append(target)
        oid = fake.new_id()
        store.put(
            oid,
            {
                **_stored(fake, obj, item.get("properties") or {}),
                "hs_object_id": str(oid),
                "createdate": _stamp(fake),
                "lastmodifieddate": _stamp(fake),
            },
        )
        store.associations[oid] = contacts
        result = _public(fake, obj, oid, list(item.get("properties") or {}))
        if item.get("objectWriteTraceId"):
            result["objectWriteTraceId"] = item["objectWriteTraceId"]
        results.append(result)
    return 201, {"status": "COMPLETE", "results": results}


def search(fake, query, body, obj):
    store = fake.objects[_object_type(obj)]
    body = body or {}
    groups, start = compile_request(body, fake.kinds(obj))
    limit = body.get("limit", 10)
    offset = int(body.get("after") or 0)
    if offset + limit > MAX_RESULTS:
        raise SearchError(f"Paging past {MAX_RESULTS} results is not allowed (after={offset})")
    ids = store.ids
    index = 0 if start is None else _bisect_right(ids, start)
    found: list[int] = []
    scan_complete = True
    while index < len(ids):
        oid = ids[index]
        index += 1
        if matches(groups, store.typed[oid]):
            found.append(oid)
            if len(found) > offset + limit:
                scan_complete = False
                break
    page = found[offset : offset + limit]
    payload: dict[str, Any] = {
        # HubSpot's total is exact; the fake stops counting one past the page it serves.
        "total": len(found),
        "results": [_public(fake, obj, oid, body.get("properties")) for oid in page],
    }
    if not scan_complete:
        payload["paging"] = {"next": {"after": str(offset + limit)}}
    return 200, payload


def _bisect_right(ids: list[int], value: int) -> int:
    return bisect.bisect_right(ids, value)


def list_objects(fake, query, body, obj):
    store = fake.objects[_object_type(obj)]
    limit = int(_q(query, "limit", "10"))
    if limit > 100:
        raise ApiError(400, "limit must be at most 100")
    after = int(_q(query, "after", "0") or 0)
    wanted = [p for v in query.get("properties", []) for p in v.split(",")]
    index = _bisect_right(store.ids, after - 1)
    page = store.ids[index : index + limit]
    payload: dict[str, Any] = {"results": [_public(fake, obj, oid, wanted) for oid in page]}
    if index + limit < len(store.ids):
        payload["paging"] = {"next": {"after": str(page[-1] + 1)}}
    return 200, payload


def get_object(fake, query, body, obj, oid):
    store = fake.objects[_object_type(obj)]
    if not oid.isdigit() or int(oid) not in store.raw:
        raise ApiError(404, f"Object {oid} not found", "OBJECT_NOT_FOUND")
    wanted = [p for v in query.get("properties", []) for p in v.split(",")]
    return 200, _public(fake, obj, int(oid), wanted)


def patch_object(fake, query, body, obj, oid):
    store = fake.objects[_object_type(obj)]
    if not oid.isdigit() or int(oid) not in store.raw:
        raise ApiError(404, f"Object {oid} not found", "OBJECT_NOT_FOUND")
    props = (body or {}).get("properties") or {}
    _validate_values(fake, obj, props)
    store.put(int(oid), {**_stored(fake, obj, props), "lastmodifieddate": _stamp(fake)})
    fake.stats["records_updated"] += 1
    return 200, _public(fake, obj, int(oid), list(props))


# ---- legacy email events ---------------------------------------------------------------------

EMAIL_EVENTS_MAX_LIMIT, EMAIL_EVENTS_DEFAULT_LIMIT = 1000, 10
EMAIL_EVENT_FILTERS = (
    "appId",
    "campaignId",
    "recipient",
    "eventType",
    "startTimestamp",
    "endTimestamp",
    "excludeFilteredEvents",
)


def _integer(query: dict, name: str) -> int | None:
    text = _q(query, name)
    if text is None:
        return None
    if not re.fullmatch(r"-?\d+", text):
        raise ApiError(400, f"Unable to parse value for query parameter: {name}")
    return int(text)


def email_events(fake, query, body):
    """Newest first; `offset` is an opaque token valid only for the same filters (and until
    the fake is told tokens went stale); `limit` 1..1000, 10 when absent."""
    limit = _integer(query, "limit")
    if limit is None:
        limit = EMAIL_EVENTS_DEFAULT_LIMIT
    if not 1 <= limit <= EMAIL_EVENTS_MAX_LIMIT:
        raise ApiError(400, f"limit must be between 1 and {EMAIL_EVENTS_MAX_LIMIT}, got {limit}")
    start, end = _integer(query, "startTimestamp"), _integer(query, "endTimestamp")
    filters = "|".join(f"{n}={_q(query, n)}" for n in EMAIL_EVENT_FILTERS)
    position = 0
    token = _q(query, "offset")
    if token is not None:
        epoch, _, rest = token.partition(":")
        signature, _, number = rest.rpartition(":")
        if (
            epoch != str(fake.email_offset_epoch)
            or signature != _digest(filters)
            or not number.isdigit()
        ):
            raise ApiError(400, "The offset is invalid or has expired")
        position = int(number)
    wanted = [
        e
        for e in fake.email_events
        if (start is None or e["created"] >= start)
        and (end is None or e["created"] <= end)
        and (_q(query, "eventType") in (None, e["type"]))
        and (_q(query, "recipient") in (None, e["recipient"]))
        and not (_q(query, "excludeFilteredEvents") == "true" and e.get("filteredEvent"))
    ]
    wanted.sort(key=lambda e: (-e["created"], e["id"]))
    page = wanted[position : position + limit]
    more = position + limit < len(wanted)
    next_token = f"{fake.email_offset_epoch}:{_digest(filters)}:{position + limit}"
    fake.stats["email_event_pages"] += 1
    return 200, {"events": page, "hasMore": more, "offset": next_token}


PAGE_VIEW_FILTERS = (
    "objectType",
    "objectId",
    "eventType",
    "occurredAfter",
    "occurredBefore",
    "sort",
)
UNIFIED_OBJECT_TYPES = ("contact", "contacts", "0-1")


def _instant(query: dict, name: str) -> datetime | None:
    text = _q(query, name)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"Unable to parse value for query parameter: {name}") from None
    if parsed.tzinfo is None:
        raise ApiError(400, f"Unable to parse value for query parameter: {name}")
    return parsed


def event_occurrences(fake, query, body):
    """`GET /events/v3/events/` (OpenAPI spec: Events, v3): occurrences of standard and custom
    events linked to CRM records. `objectId` needs `objectType`; `occurredAfter`/`Before` are
    date-times (taken as strict bounds); `sort` ASCENDING or DESCENDING by time; paged by an
    opaque `after` token valid for the same filters."""
    object_type, object_id = _q(query, "objectType"), _q(query, "objectId")
    if object_id is not None and object_type is None:
        raise ApiError(400, "objectId requires objectType")
    if object_type is not None and object_type not in UNIFIED_OBJECT_TYPES:
        raise ApiError(400, f"Unknown object type: {object_type}")
    sort = (_q(query, "sort") or "DESCENDING").upper()
    if sort not in ("ASCENDING", "DESCENDING"):
        raise ApiError(400, f"sort must be ASCENDING or DESCENDING, got {sort}")
    after_at, before_at = _instant(query, "occurredAfter"), _instant(query, "occurredBefore")
    limit = _integer(query, "limit") or 10
    filters = "|".join(f"{n}={_q(query, n)}" for n in PAGE_VIEW_FILTERS)
    position = 0
    token = _q(query, "after")
    if token is not None:
        signature, _, number = token.rpartition(":")
        if signature != _digest(filters) or not number.isdigit():
            raise ApiError(400, "The paging cursor is invalid")
        position = int(number)
    wanted = [
        e
        for e in fake.event_occurrences
        if (_q(query, "eventType") in (None, e["eventType"]))
        and (object_id is None or e["objectId"] == object_id)
        and (after_at is None or _parse_iso(e["occurredAt"]) > after_at)
        and (before_at is None or _parse_iso(e["occurredAt"]) < before_at)
    ]
    wanted.sort(key=lambda e: (e["occurredAt"], e["id"]), reverse=sort == "DESCENDING")
    page = wanted[position : position + limit]
    payload: dict[str, Any] = {"results": page}
    if position + limit < len(wanted):
        cursor = f"{_digest(filters)}:{position + limit}"
        payload["paging"] = {"next": {"after": cursor, "link": f"?after={cursor}"}}
    fake.stats["event_occurrence_pages"] += 1
    return 200, payload


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


OBJ = r"/crm/v3/objects/(contacts|tasks)"
ROUTES = [
    (r"/email/public/v1/events", "GET", email_events),
    (r"/events/v3/events/?", "GET", event_occurrences),
    (r"/crm/v3/properties/(\w+)/groups", "GET", get_groups),
    (r"/crm/v3/properties/(\w+)/groups", "POST", create_group),
    (r"/crm/v3/properties/(\w+)", "GET", get_properties),
    (r"/crm/v3/properties/(\w+)", "POST", create_property),
    (r"/crm/v3/properties/(\w+)/(\w+)", "GET", get_property),
    (r"/crm/v3/properties/(\w+)/(\w+)", "PATCH", update_property),
    (r"/crm/v3/lists(/?)", "POST", create_list),
    (r"/crm/v3/lists/search", "POST", search_lists),
    (r"/crm/v3/lists/(\d+)", "GET", get_list),
    (r"/crm/v3/lists/object-type-id/([\w-]+)/name/(.+)", "GET", list_by_name),
    (r"/crm/v3/lists/(\d+)/update-list-filters", "PUT", update_list_filters),
    (OBJ + r"/batch/read", "POST", batch_read),
    (OBJ + r"/batch/update", "POST", batch_update),
    (OBJ + r"/batch/create", "POST", batch_create),
    (OBJ + r"/search", "POST", search),
    (OBJ, "GET", list_objects),
    (OBJ + r"/(\d+)", "GET", get_object),
    (OBJ + r"/(\d+)", "PATCH", patch_object),
]
