"""Webhook intake shared by the local server and the Lambda handlers: verify, parse, record,
answer. The answer is given only after the events are durably recorded (store inbox or queue),
and never depends on the CRM being reachable."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from crm_elasticity.connectors.base import Connector, WebhookRejected, WebhookRequest
from crm_elasticity.core.models import Event
from crm_elasticity.core.store import StoreError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_048_576
"""HubSpot batches at most 100 events and Salesforce 100 notifications: far below this."""
PREVIOUS_SUFFIX = "_PREVIOUS"
"""`<NAME>_PREVIOUS` holds a secret being retired: while it is set, a webhook NAME's value
refuses is verified once more with it (both are accepted during a rotation)."""
REFUSED_CREDENTIALS = 401


@dataclass
class HttpAnswer:
    status: int
    body: bytes
    content_type: str = "application/json"
    recorded: int = 0
    ignored: int = 0


def json_answer(status: int, **payload: object) -> HttpAnswer:
    return HttpAnswer(status, json.dumps(payload).encode())


def handle_webhook(
    connector: Connector,
    request: WebhookRequest,
    record: Callable[[Sequence[Event]], int],
) -> HttpAnswer:
    """One webhook request, start to finish. Never raises: every failure is an HTTP answer."""
    if request.method != "POST":
        return json_answer(405, error="method not allowed; webhooks are POSTed")
    if len(request.body) > MAX_BODY_BYTES:
        return json_answer(413, error=f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        intake = connector.parse_webhook(request)
    except WebhookRejected as exc:
        if exc.body is not None:
            return HttpAnswer(exc.status, exc.body, exc.content_type)
        return json_answer(exc.status, error=exc.reason)
    except Exception:  # noqa: BLE001 - a parser bug must answer 500 (vendor retries), not crash
        log.exception("webhook parser failed on %s", request.path)
        return json_answer(500, error="internal error while parsing; the delivery will be retried")
    try:
        new = record(intake.events)
    except StoreError as exc:
        # A store that cannot take writes is a condition the message names (disk full, the
        # file removed): the traceback would only bury it, once per delivery.
        log.error("could not record %d events: %s", len(intake.events), exc)
        return json_answer(503, error="could not record the events; retry later")
    response = intake.response
    answer = HttpAnswer(response.status, response.body, response.content_type)
    answer.recorded, answer.ignored = new, intake.ignored
    if not answer.body and answer.content_type == "application/json":
        answer.body = json.dumps(
            {"received": len(intake.events), "new": new, "ignored": intake.ignored}
        ).encode()
    return answer


def retiring_env(env: Mapping[str, str]) -> dict[str, str] | None:
    """`env` with every `<NAME>_PREVIOUS` value in NAME's place (for a NAME that is set), or
    None when no secret is being rotated."""
    retiring = {
        name.removesuffix(PREVIOUS_SUFFIX): value
        for name, value in env.items()
        if name.endswith(PREVIOUS_SUFFIX) and value and name.removesuffix(PREVIOUS_SUFFIX) in env
    }
    return {**env, **retiring} if retiring else None


def handle_rotating(
    connector: Connector,
    request: WebhookRequest,
    record: Callable[[Sequence[Event]], int],
    previous: Callable[[], Connector | None],
) -> HttpAnswer:
    """`handle_webhook`, and while a secret is being rotated (`previous` gives the connector
    built with the retiring values, or None), once more with the previous secret if the
    current one refused the request's credentials."""
    answer = handle_webhook(connector, request, record)
    if answer.status == REFUSED_CREDENTIALS:
        retiring = previous()
        if retiring is not None:
            again = handle_webhook(retiring, request, record)
            if again.status != REFUSED_CREDENTIALS:
                log.info("webhook for %s verified with the retiring secret", connector.vendor)
                return again
    return answer
