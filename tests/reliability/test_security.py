"""Security properties of the intake and the pipeline: constant-time signature checks, the
replay window, the body size limit, secrets kept out of logs, no email addresses in the
ledger."""

from __future__ import annotations

import ast
import hmac
import http.client
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crm_elasticity.connectors.base import ConnectorError, WebhookRequest
from crm_elasticity.connectors.hubspot import HubSpotConnector
from crm_elasticity.connectors.hubspot.config import HubSpotSettings, load_options
from crm_elasticity.connectors.intake import MAX_BODY_BYTES, handle_webhook
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.connectors.salesforce.signature import sign
from crm_elasticity.connectors.server import build_server
from crm_elasticity.core.mapping import load_mapping
from crm_elasticity.core.models import Event
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.fakes.hubspot_server import FakeHubSpot, Fault
from tests.fakes.memory_crm import MemoryConnector, MemoryCrm, memory_mapping
from tests.reliability import fuzz_cases as f

ROOT = Path(__file__).resolve().parents[2]
SIGNATURE_MODULES = [
    ROOT / "connectors/hubspot/signature.py",
    ROOT / "connectors/salesforce/signature.py",
    ROOT / "connectors/salesforce/outbound.py",
]
EMAIL = "jane.doe+vip@example.com"


@pytest.fixture(scope="module")
def targets() -> f.Targets:
    return f.build_targets()


def _v3(body: bytes, skew_s: float) -> WebhookRequest:
    return f.hs_request(body, f.hs_v3(body, round(skew_s * 1000)))


# ---- constant-time comparison and the replay window ------------------------------------------


class CompareSpy:
    def __init__(self) -> None:
        self.calls = 0
        self.real = hmac.compare_digest

    def __call__(self, a, b) -> bool:
        self.calls += 1
        return self.real(a, b)


@pytest.fixture
def compare_spy(monkeypatch: pytest.MonkeyPatch) -> CompareSpy:
    spy = CompareSpy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    return spy


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_hubspot_signatures_are_compared_in_constant_time(
    targets: f.Targets, compare_spy: CompareSpy, version: str
) -> None:
    body = b"[]"
    if version == "v3":
        request = _v3(body, 0)
    else:
        uri = f"https://{f.HOST}{f.HS_PATH}"
        sig = (
            f.v1_signature(f.HS_SECRET, body)
            if version == "v1"
            else f.v2_signature(f.HS_SECRET, "POST", uri, body)
        )
        request = f.hs_request(
            body, {"x-hubspot-signature": sig, "x-hubspot-signature-version": version}
        )
    answer = handle_webhook(targets.hubspot_legacy, request, targets.record)
    assert answer.status == 200
    assert compare_spy.calls == 1


def test_salesforce_signature_outbound_token_and_org_id_are_compared_in_constant_time(
    targets: f.Targets, compare_spy: CompareSpy
) -> None:
    body = b'{"events": []}'
    header = sign(f.SF_SECRET, body, int(f.NOW.timestamp()))
    request = WebhookRequest(
        "POST", f.SF_EVENTS, "", {"x-elasticity-signature": header}, body, f.NOW
    )
    assert handle_webhook(targets.salesforce, request, targets.record).status == 200
    assert compare_spy.calls == 1
    outbound = WebhookRequest(
        "POST", f.SF_PATH, f.SF_QUERY, {"content-type": "text/xml"}, f.envelope(f.ORG_ID, []), f.NOW
    )
    assert handle_webhook(targets.salesforce, outbound, targets.record).status == 200
    assert compare_spy.calls == 3  # the endpoint URL's token, then the org id


def _is_length_check(node: ast.Compare) -> bool:
    operands = [node.left, *node.comparators]
    return any(isinstance(o, ast.Call) and getattr(o.func, "id", "") == "len" for o in operands)


def test_no_signature_module_compares_secrets_with_equality() -> None:
    """`==` on a digest leaks its prefix through timing; only compare_digest may decide."""
    suspects = ("sig", "digest", "expected", "secret", "candidate", "org")
    for path in SIGNATURE_MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Compare)
                and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops)
                and not _is_length_check(node)
            ):
                names = {n.id.lower() for n in ast.walk(node) if isinstance(n, ast.Name)}
                assert not any(s in n for n in names for s in suspects), (
                    f"{path.name}:{node.lineno} compares {names} with =="
                )


@pytest.mark.parametrize(
    ("skew_s", "status"),
    [
        (0, 200),
        (299, 200),
        (-299, 200),
        (301, 401),
        (-301, 401),
        (86_400, 401),
    ],
)
def test_hubspot_v3_replay_window_is_five_minutes_either_way(
    targets: f.Targets, skew_s: float, status: int
) -> None:
    assert handle_webhook(targets.hubspot, _v3(b"[]", skew_s), targets.record).status == status


@pytest.mark.parametrize(("skew_s", "status"), [(0, 200), (299, 200), (301, 401), (-301, 401)])
def test_salesforce_json_replay_window_is_five_minutes_either_way(
    targets: f.Targets, skew_s: int, status: int
) -> None:
    body = b'{"events": []}'
    header = sign(f.SF_SECRET, body, int(f.NOW.timestamp()) - skew_s)
    request = WebhookRequest(
        "POST", f.SF_EVENTS, "", {"x-elasticity-signature": header}, body, f.NOW
    )
    assert handle_webhook(targets.salesforce, request, targets.record).status == status


# ---- body size limit ------------------------------------------------------------------------


def test_an_oversized_body_is_refused_with_413_before_parsing(targets: f.Targets) -> None:
    body = b"[" + b" " * MAX_BODY_BYTES + b"]"
    answer = handle_webhook(targets.hubspot, _v3(body, 0), targets.record)
    assert answer.status == 413


@pytest.fixture
def server() -> Iterator[int]:
    runner = Runner(
        MemoryConnector(memory_mapping(), MemoryCrm(), secret="s"), SQLiteStore(":memory:")
    )
    httpd, _ = build_server([runner], port=0, worker=False)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_the_server_refuses_a_declared_oversized_body_without_reading_it(server: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
    conn.putrequest("POST", "/webhooks/memory")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.putheader("x-memory-secret", "s")
    conn.endheaders()  # no body is sent: the answer must not wait for one
    response = conn.getresponse()
    assert response.status == 413
    conn.close()


# ---- secrets never reach logs -----------------------------------------------------------------

CANARY_TOKEN = "pat-na1-CANARY-TOKEN-7c1f3a"
CANARY_SECRET = "CANARY-CLIENT-SECRET-94be"


@pytest.fixture
def hubspot_fake() -> Iterator[FakeHubSpot]:
    fake = FakeHubSpot(token=CANARY_TOKEN)
    fake.url = fake.start()
    yield fake
    fake.stop()


def _hubspot(fake: FakeHubSpot, token: str) -> HubSpotConnector:
    mapping = load_mapping(ROOT / "mappings" / "hubspot.yaml")
    settings = HubSpotSettings(
        access_token=token, client_secret=CANARY_SECRET, base_url=fake.url, max_attempts=2
    )
    return HubSpotConnector(mapping, settings, load_options(mapping), sleep=lambda s: None)


def test_secrets_never_reach_logs_or_answers(
    hubspot_fake: FakeHubSpot,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 and the SDK log requests at DEBUG
    texts: list[str] = []
    store = SQLiteStore(":memory:")
    good = _hubspot(hubspot_fake, CANARY_TOKEN)
    # 1. auth failure: a revoked token (also a canary) is refused by the CRM
    revoked = _hubspot(hubspot_fake, "pat-na1-CANARY-REVOKED-0d2e")
    with pytest.raises(ConnectorError) as refused:
        revoked.read_records(["101"])
    texts.append(str(refused.value))
    # 2. CRM errors whose body echoes the credentials back (a proxy or vendor bug)
    echo = {
        "status": "error",
        "category": "VALIDATION_ERROR",
        "message": f"bad request with Bearer {CANARY_TOKEN} signed {CANARY_SECRET}",
    }
    hubspot_fake.inject(Fault(path="/batch/read", status=400, body=echo))
    with pytest.raises(ConnectorError) as echoed:
        good.read_records(["101"])
    texts.append(str(echoed.value))
    hubspot_fake.inject(Fault(path="/batch/update", status=503, times=10, body=echo))
    runner = Runner(good, store, clock=lambda: datetime(2026, 3, 1, tzinfo=UTC))
    hubspot_fake.add_contact({}, contact_id=101)
    runner.process(
        [
            Event(
                event_id="e1",
                contact_id="101",
                type="open",
                occurred_at=datetime(2026, 3, 1, tzinfo=UTC),
            )
        ]
    )
    # 3. bad signatures: forged, stale and signed with the wrong secret
    body = b"[]"
    for request in (
        f.hs_request(body, {"x-hubspot-signature-v3": "AAAA", "x-hubspot-request-timestamp": "1"}),
        f.hs_request(body, f.hs_v3(body, skew_ms=10**7, secret=CANARY_SECRET)),
        f.hs_request(body, f.hs_v3(body, secret="wrong")),
    ):
        request = WebhookRequest(
            request.method, request.path, "", request.headers, body, request.received_at
        )
        answer = handle_webhook(good, request, store.inbox_put)
        assert answer.status == 401
        texts.append(answer.body.decode())
    texts += [repr(good.settings), str(good.settings.model_dump()), caplog.text]
    captured = capsys.readouterr()
    texts += [captured.out, captured.err]
    everything = "\n".join(texts)
    assert "CANARY" not in everything.replace("[redacted]", "")
    assert caplog.records, "the failures above were expected to log something"


# ---- PII in the ledger --------------------------------------------------------------------------


def test_the_store_holds_no_email_addresses_even_from_vendor_error_messages(
    tmp_path: Path,
) -> None:
    crm = MemoryCrm()
    crm.write_failures["c1"] = f"INVALID_EMAIL: {EMAIL} is not a valid email address"
    store = SQLiteStore(tmp_path / "s.sqlite3")
    runner = Runner(
        MemoryConnector(memory_mapping(), crm),
        store,
        clock=lambda: datetime(2026, 3, 1, tzinfo=UTC),
    )
    at = datetime(2026, 2, 1, tzinfo=UTC)
    runner.process(
        [
            Event(
                event_id=f"e{i}", contact_id=cid, type="open", occurred_at=at + timedelta(hours=i)
            )
            for i, cid in enumerate(["c1", "c2"])
        ]
    )
    assert [d.reason for d in store.ledger_for("c1")][-1] == "write_failed"
    store.close()
    db = sqlite3.connect(tmp_path / "s.sqlite3")
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    dump = json.dumps([db.execute(f"SELECT * FROM {t}").fetchall() for t in tables])  # noqa: S608
    db.close()
    assert "@" not in dump
