"""Found by the chaos run: an answer whose headers arrive but whose body stalls past the read
timeout escaped the HubSpot client as a raw urllib3 `ReadTimeoutError` (the body is read
unpreloaded, after the guarded call). It must be retried like any other timeout, and a
non-idempotent call must fail as a retriable `ConnectorError` the runner keeps owed."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.connectors.hubspot.client import HubSpotClient
from crm_elasticity.connectors.hubspot.config import HubSpotSettings
from tests.hubspot.hubspot_helpers import FakeClock

STALL_SECONDS = 0.3


class StallingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stall_first = 1
    served = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cls = type(self)
        cls.served += 1
        body = b'{"results": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        if cls.served <= cls.stall_first:
            time.sleep(STALL_SECONDS)  # the server's stall is what is under test
        with contextlib.suppress(OSError):  # the client hung up, as it should
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def stalling() -> Iterator[str]:
    StallingHandler.served = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), StallingHandler)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _client(url: str) -> HubSpotClient:
    settings = HubSpotSettings(access_token="pat-test", base_url=url, timeout_seconds=0.05)
    clock = FakeClock()
    return HubSpotClient(settings, sleep=clock.sleep, clock=clock)


def test_a_stalled_body_is_retried_for_an_idempotent_call(stalling: str) -> None:
    client = _client(stalling)
    body = {"inputs": [{"id": "1"}], "properties": []}
    response = client.call("contacts.batch", "read", body, what="read", scope="s")
    assert response.data == {"results": []}
    assert StallingHandler.served == 2
    assert client.calls.retries == 1


def test_a_stalled_body_fails_a_create_as_retriable_connector_error(stalling: str) -> None:
    client = _client(stalling)
    with pytest.raises(ConnectorError) as caught:
        client.call(
            "tasks.batch", "create", {"inputs": []}, idempotent=False, what="task create", scope="s"
        )
    assert caught.value.retriable
    assert StallingHandler.served == 1
