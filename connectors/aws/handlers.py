"""Lambda entry points named in serverless.yml: `webhook`, `worker`, `sync`,
`replay_dead_letters` and `report`.

Thin on purpose: each turns the AWS event into the shared call (`handle_webhook` with an SQS
recorder, `Runner.process` through the worker, `Runner.sync`) and reports logs and metrics.
The connector, store and clients are built once per container (`container()`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from crm_elasticity.connectors.aws.container import Container, mapping_paths
from crm_elasticity.connectors.base import AuthError, CallStats, WebhookRequest
from crm_elasticity.core.dynamodb_store import DynamoDBStore
from crm_elasticity.core.models import Transition
from crm_elasticity.core.pipeline import RunStats

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "crm-elasticity"))
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "CrmElasticity"))
app = APIGatewayHttpResolver()
if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    # The shared modules log through `logging`: their parent gets the JSON handler (and its
    # correlation id), so every `crm_elasticity.*` logger, even one imported later, uses it.
    # Only in Lambda: it stops propagation, which a test's log capture relies on.
    logging.getLogger("crm_elasticity")
    copy_config_to_registered_loggers(source_logger=logger, include={"crm_elasticity"})

_container: Container | None = None


def container() -> Container:
    global _container
    if _container is None:
        _container = Container()
    return _container


def reset_container(replacement: Container | None = None) -> None:
    """Forget everything built (tests; a new deployment's settings), or use `replacement`."""
    global _container
    _container = replacement


# ---- webhooks ------------------------------------------------------------------------------


def webhook_request(event: APIGatewayProxyEventV2) -> WebhookRequest:
    """The raw request as the connector must verify it: exact body bytes, lower-case headers."""
    body = event.body or ""
    raw = base64.b64decode(body) if event.is_base64_encoded else body.encode()
    epoch = event.request_context.time_epoch
    return WebhookRequest(
        method=event.request_context.http.method,
        path=event.raw_path,
        query=event.raw_query_string or "",
        headers={k.lower(): v for k, v in (event.headers or {}).items()},
        body=raw,
        received_at=datetime.fromtimestamp(epoch / 1000, UTC) if epoch else datetime.now(UTC),
    )


@app.post("/webhooks/<vendor>")
def _webhook(vendor: str) -> Response:
    return _intake()


@app.post("/webhooks/<vendor>/<kind>")
def _webhook_kind(vendor: str, kind: str) -> Response:
    return _intake()


@app.not_found
def _no_route(_: Exception) -> Response:
    metrics.add_metric("WebhooksRejected", MetricUnit.Count, 1)
    body = json.dumps({"error": f"no webhook at {app.current_event.raw_path}"})
    return Response(404, "application/json", body)


def _intake() -> Response:
    event = app.current_event
    connector = container().connector_for_path(event.raw_path)
    if connector is None:
        return _no_route(LookupError(event.raw_path))
    metrics.add_dimension("vendor", connector.vendor)
    answer = container().answer_webhook(
        connector, webhook_request(event), container().queue.recorder(connector.vendor)
    )
    metrics.add_metric("EventsReceived", MetricUnit.Count, answer.recorded)
    metrics.add_metric("SignalsIgnored", MetricUnit.Count, answer.ignored)
    if answer.status >= 400:
        metrics.add_metric("WebhooksRejected", MetricUnit.Count, 1)
    logger.info(
        "webhook answered",
        extra={
            "vendor": connector.vendor,
            "status": answer.status,
            "recorded": answer.recorded,
            "ignored": answer.ignored,
        },
    )
    return Response(answer.status, answer.content_type, answer.body.decode("utf-8", "replace"))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics(capture_cold_start_metric=True)
def webhook(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)


# ---- the queue worker ----------------------------------------------------------------------


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
def worker(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    # Imported here: the webhook and sync functions never need the batch utilities.
    from crm_elasticity.connectors.aws.worker import process_batch

    box = container()
    before = box_calls(box)
    records = event.get("Records", [])
    # One correlation id per batch: the first message id; every record's id is in the logs.
    logger.set_correlation_id(records[0]["messageId"] if records else None)
    response, outcome = process_batch(
        event, context, box, max_receives=int(os.environ.get("MAX_RECEIVE_COUNT", "5"))
    )
    _count_run(outcome.stats)
    _count_calls(box_calls(box), before)
    metrics.add_metric("RecordsFailed", MetricUnit.Count, len(outcome.failed))
    metrics.add_metric("DlqSends", MetricUnit.Count, outcome.dead_lettered)
    logger.info(
        "batch processed",
        extra={
            "records": len(records),
            "mode": outcome.mode,
            "failed": outcome.failed,
            "applied": outcome.stats.applied,
            "duplicates": outcome.stats.duplicates,
        },
    )
    return response


@logger.inject_lambda_context
@metrics.log_metrics
def replay_dead_letters(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Invoked by hand once the cause is fixed: `npx osls invoke -f replayDeadLetters`. Moves
    dead letters back to the work queue; events already applied are skipped as duplicates."""
    box = container()
    moved = box.dead_letters.move_to(box.queue, limit=int(event.get("limit", 1000)))
    metrics.add_metric("DeadLettersReplayed", MetricUnit.Count, moved)
    logger.info("dead letters replayed", extra={"moved": moved})
    return {"moved": moved}


# ---- scheduled sync ------------------------------------------------------------------------


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
@metrics.log_metrics(capture_cold_start_metric=True)
def sync(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled with `input: {vendor: ...}`; also invocable with `full` / `dry_run` flags."""
    box = container()
    vendor = event.get("vendor") or box.vendors[0]
    metrics.add_dimension("vendor", vendor)
    runner = box.runner(vendor)
    before = box_calls(box)
    try:
        summary = runner.sync(full=bool(event.get("full")), dry_run=bool(event.get("dry_run")))
    except AuthError:
        box.forget_credentials()  # a rotated token is picked up by the next run
        raise
    finally:
        _count_calls(box_calls(box), before)
    metrics.add_metric("ContactsExamined", MetricUnit.Count, summary.examined)
    metrics.add_metric("EventsPolled", MetricUnit.Count, summary.events_polled)
    metrics.add_metric("WriteFailures", MetricUnit.Count, summary.write_failures)
    for transition, count in summary.transitions.items():
        metrics.add_metric(_transition_metric(transition), MetricUnit.Count, count)
    result = summary.as_dict()
    logger.info("sync finished", extra={"vendor": vendor, **result})
    return result


# ---- scheduled report ----------------------------------------------------------------------


def _report_store() -> DynamoDBStore:
    return DynamoDBStore.from_env()


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
@metrics.log_metrics
def report(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled (daily by default): folds closed days' roll-up counters into packed months
    (`DynamoDBStore.compact_rollup`), then writes the HTML report, from the roll-up only,
    to `REPORT_BUCKET` as `<REPORT_PREFIX><day>.html` and `<REPORT_PREFIX>latest.html`. The
    experiment tables come from the first mapping of `ELASTICITY_MAPPINGS`, if set."""
    import boto3

    from crm_elasticity.core.mapping import load_mapping
    from crm_elasticity.core.report import render_report

    bucket = os.environ.get("REPORT_BUCKET")
    if not bucket:
        raise RuntimeError("REPORT_BUCKET is not set: name the bucket the report goes to")
    prefix = os.environ.get("REPORT_PREFIX", "reports/")
    paths = mapping_paths(os.environ) if os.environ.get("ELASTICITY_MAPPINGS") else []
    mapping = load_mapping(paths[0]) if paths else None
    store = _report_store()
    now = datetime.now(UTC)
    # Closed days' counters folded into packed months first: the report reads a dozen packed
    # items a year instead of every day's counters.
    folded = store.compact_rollup(now)
    html = render_report(
        store, "html", mapping=mapping, label=f"dynamodb://{store.table}", now=now
    ).encode()
    s3 = boto3.client("s3")
    keys = [f"{prefix}{now.date().isoformat()}.html", f"{prefix}latest.html"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=html, ContentType="text/html; charset=utf-8")
    metrics.add_metric("ReportBytes", MetricUnit.Bytes, len(html))
    logger.info(
        "report written",
        extra={"bucket": bucket, "keys": keys, "bytes": len(html), "counters_folded": folded},
    )
    return {"bucket": bucket, "keys": keys, "bytes": len(html), "counters_folded": folded}


# ---- metrics helpers -----------------------------------------------------------------------


def box_calls(box: Container) -> CallStats:
    total = CallStats()
    for connector in box.built_connectors():
        total = total + connector.calls.snapshot()
    return total


def _count_calls(after: CallStats, before: CallStats) -> None:
    spent = after - before
    # Never negative: connectors rebuilt mid-invocation (a rotated secret) start from zero.
    metrics.add_metric("ApiCalls", MetricUnit.Count, max(0, spent.api_calls))
    metrics.add_metric("Retries", MetricUnit.Count, max(0, spent.retries))
    metrics.add_metric("Throttled", MetricUnit.Count, max(0, spent.throttled))


def _count_run(stats: RunStats) -> None:
    metrics.add_metric("EventsProcessed", MetricUnit.Count, stats.applied)
    metrics.add_metric("Duplicates", MetricUnit.Count, stats.duplicates)
    metrics.add_metric("Rejected", MetricUnit.Count, stats.rejected)
    for transition, count in stats.transitions.items():
        metrics.add_metric(_transition_metric(transition), MetricUnit.Count, count)


def _transition_metric(transition: str) -> str:
    """`Active->Engaged` is counted as `Transition_Active_Engaged` (CloudWatch-friendly)."""
    return Transition(transition).metric_name


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") and not os.environ.get("IS_LOCAL"):
    # Build during the init phase (full CPU, not billed against the first request).
    try:
        container()
    except Exception:  # noqa: BLE001 - the first invocation reports it with its context
        logging.getLogger(__name__).exception("could not prepare the container at init")
