"""Webhook intake shared by the local server and the Lambda handlers: verify, parse, record,
answer. The answer is given only after the events are durably recorded (store inbox or queue),
and never depends on the CRM being reachable."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from connectors.base import Connector, WebhookRejected, WebhookRequest
from core.models import Event
from core.store import StoreError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_048_576
"""HubSpot batches at most 100 events and Salesforce 100 notifications: far below this."""


@dataclass
class HttpAnswer:
    status: int
    body: bytes
    content_type: str = "application/json"
    recorded: int = 0
    ignored: int = 0


def _json(status: int, **payload: object) -> HttpAnswer:
    return HttpAnswer(status, json.dumps(payload).encode())


def handle_webhook(
    connector: Connector,
    request: WebhookRequest,
    record: Callable[[Sequence[Event]], int],
) -> HttpAnswer:
    """One webhook request, start to finish. Never raises: every failure is an HTTP answer."""
    if request.method != "POST":
        return _json(405, error="method not allowed; webhooks are POSTed")
    if len(request.body) > MAX_BODY_BYTES:
        return _json(413, error=f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        intake = connector.parse_webhook(request)
    except WebhookRejected as exc:
        if exc.body is not None:
            return HttpAnswer(exc.status, exc.body, exc.content_type)
        return _json(exc.status, error=exc.reason)
    except Exception:  # noqa: BLE001 - a parser bug must answer 500 (vendor retries), not crash
        log.exception("webhook parser failed on %s", request.path)
        return _json(500, error="internal error while parsing; the delivery will be retried")
    try:
        new = record(intake.events)
    except StoreError as exc:
        # A store that cannot take writes is a condition the message names (disk full, the
        # file removed): the traceback would only bury it, once per delivery.
        log.error("could not record %d events: %s", len(intake.events), exc)
        return _json(503, error="could not record the events; retry later")
    response = intake.response
    answer = HttpAnswer(response.status, response.body, response.content_type)
    answer.recorded, answer.ignored = new, intake.ignored
    if not answer.body and answer.content_type == "application/json":
        answer.body = json.dumps(
            {"received": len(intake.events), "new": new, "ignored": intake.ignored}
        ).encode()
    return answer
