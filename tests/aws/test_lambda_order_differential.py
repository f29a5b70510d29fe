"""The Lambda worker on DynamoDB (moto) ends every contact where `replay` of the sorted events
puts it, when the webhooks arrive shuffled within six hours and 5% of them twice."""

from __future__ import annotations

from pathlib import Path

from crm_elasticity.connectors.aws import handlers
from crm_elasticity.core.pipeline import Pipeline
from tests.aws.harness import SECRET, FakeContext, Stack, api_event
from tests.fakes.memory_crm import memory_mapping
from tests.order_stream import body, deliveries, differences, generate, replayed, requests

CONTACTS = 30
"""Fewer than through `serve`: moto copies the whole table on every transaction, so a run costs
the square of its size; `bench/order.py` runs a larger population."""
DRAIN_EVERY = 2


def test_the_lambda_worker_with_shuffled_and_redelivered_webhooks_ends_where_replay_ends(
    stack: Stack, tmp_path: Path
) -> None:
    mapping = memory_mapping()
    events = generate(CONTACTS, seed=19)
    reference, horizon = replayed(mapping, events, tmp_path)

    for n, request in enumerate(requests(deliveries(events, seed=7), seed=5)):
        event = api_event("/webhooks/memory", body(request).decode(), {"x-memory-secret": SECRET})
        assert handlers.webhook(event, FakeContext())["statusCode"] == 202
        if n % DRAIN_EVERY == DRAIN_EVERY - 1:
            stack.poller.drain(rounds=100)  # decided before the next requests arrive
    stack.poller.drain(rounds=100)

    assert stack.queued() == stack.queued(stack.dlq_url) == 0
    # The scheduled sync's share: time rules up to the horizon replay ran them to.
    Pipeline(stack.store, mapping.policy).tick(horizon)
    got = stack.store.get_contacts(reference)
    revised = sum(d.reason == "revised" for cid in reference for d in stack.store.ledger_for(cid))
    found = differences(reference, got)
    print(
        f"Lambda worker vs replay: {len(reference)} contacts compared, {len(found)} "
        f"differences, {revised} revisions"
    )
    assert len(got) == len(reference) == CONTACTS
    assert found == []
    assert revised > 0
