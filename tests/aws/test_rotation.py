"""Secret rotation in a warm container, on moto's SSM with an injected clock: a rotated secret
is in use within the five-minute cache period on the webhook path as on the others, the
retiring one is accepted while `<NAME>_PREVIOUS` holds it, and refused once that is removed."""

from __future__ import annotations

import json

import boto3
import pytest

from crm_elasticity.connectors.aws import handlers
from crm_elasticity.connectors.aws.container import Container
from crm_elasticity.connectors.aws.secrets import MAX_AGE_SECONDS
from tests.aws.harness import PREFIX, REGION, SECRET, FakeContext, Stack, api_event

NEW = "n3w-webhook-value"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def post(secret: str, eid: str) -> int:
    body = json.dumps(
        [
            {
                "event_id": eid,
                "contact_id": "c1",
                "type": "open",
                "occurred_at": "2026-03-01T00:00:00Z",
            }
        ]
    )
    event = api_event("/webhooks/memory", body, {"x-memory-secret": secret})
    return handlers.webhook(event, FakeContext())["statusCode"]


@pytest.fixture
def clock(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Clock:
    monkeypatch.setenv("SECRET_NAMES", "MEMORY_SECRET,MEMORY_SECRET_PREVIOUS")
    clock = Clock()
    handlers.reset_container(Container(clock=clock))
    return clock


def put(name: str, value: str) -> None:
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=f"{PREFIX}/{name}", Value=value, Type="SecureString", Overwrite=True
    )


def test_a_rotated_webhook_secret_is_used_within_the_cache_period(clock: Clock) -> None:
    assert post(SECRET, "e1") == 202  # warm: secrets read, connector built
    # Rotation, step 1: the new value is current, the old one retiring.
    put("MEMORY_SECRET", NEW)
    put("MEMORY_SECRET_PREVIOUS", SECRET)
    clock.now += MAX_AGE_SECONDS - 1
    assert post(NEW, "e2") == 401  # inside the documented period the cached value still rules
    clock.now += 2
    assert post(NEW, "e3") == 202
    assert post(SECRET, "e4") == 202  # the sender may not have switched yet
    assert post("neither", "e5") == 401
    # Step 2: the window closes.
    boto3.client("ssm", region_name=REGION).delete_parameter(
        Name=f"{PREFIX}/MEMORY_SECRET_PREVIOUS"
    )
    clock.now += MAX_AGE_SECONDS
    assert post(SECRET, "e6") == 401
    assert post(NEW, "e7") == 202


def test_the_worker_and_sync_paths_get_the_rebuilt_connector(clock: Clock) -> None:
    box = handlers.container()
    first = box.runner("memory")
    assert box.runner("memory") is first  # nothing is rebuilt while the secrets stand
    clock.now += MAX_AGE_SECONDS
    assert box.runner("memory") is first  # read again, unchanged: nothing rebuilt
    put("MEMORY_SECRET", NEW)
    clock.now += MAX_AGE_SECONDS
    rebuilt = box.runner("memory")
    assert rebuilt is not first
    assert rebuilt.connector.secret == NEW  # type: ignore[attr-defined]


def test_without_a_previous_secret_only_the_current_one_is_accepted(stack: Stack) -> None:
    handlers.reset_container(Container(clock=Clock()))
    assert post(SECRET, "e1") == 202
    assert handlers.container().previous_connector("memory") is None
    assert post("old-or-guessed", "e2") == 401


def test_a_hubspot_webhook_signed_with_the_retiring_client_secret_is_accepted(
    stack: Stack,
) -> None:
    from tests.hubspot.webhook_helpers import notification, signed

    for name, value in {
        "HUBSPOT_ACCESS_TOKEN": "pat-test",
        "HUBSPOT_CLIENT_SECRET": "old-secret",
    }.items():
        put(name, value)
    env = {
        "ELASTICITY_MAPPINGS": "mappings/hubspot.yaml",
        "SECRETS_PREFIX": PREFIX,
        "SECRET_NAMES": "HUBSPOT_ACCESS_TOKEN,HUBSPOT_CLIENT_SECRET,HUBSPOT_CLIENT_SECRET_PREVIOUS",
        "HUBSPOT_BASE_URL": "http://127.0.0.1:9",
    }
    clock = Clock()
    box = Container(env=env, clock=clock)
    recorded: list = []

    def record(events) -> int:
        recorded.extend(events)
        return len(events)

    def answer(secret: str) -> int:
        request = signed([notification("contact.creation")], secret=secret)
        return box.answer_webhook(box.connector("hubspot"), request, record).status

    assert answer("old-secret") == 200
    put("HUBSPOT_CLIENT_SECRET", "new-secret")
    put("HUBSPOT_CLIENT_SECRET_PREVIOUS", "old-secret")
    clock.now += MAX_AGE_SECONDS
    assert answer("new-secret") == 200
    assert answer("old-secret") == 200
    assert answer("forged") == 401
    assert len(recorded) == 3  # each accepted delivery recorded once, the refused one never
