"""Rotating secrets under a running `elasticity serve` (a real process) with `--secrets-file`:
the new client secret is accepted and the old one still is while `_PREVIOUS` holds it, a new
access token reaches the worker, and closing the window (SIGHUP) refuses the old secret. Every
wait is bounded."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from crm_elasticity.core.mapping import load_mapping
from tests.hubspot.hubspot_helpers import MAPPING, make_connector
from tests.hubspot.webhook_helpers import HOST, ms, notification, signed

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 30.0
OLD_SECRET, NEW_SECRET = "old-client-secret-1111", "new-client-secret-2222"
NEW_TOKEN = "pat-na1-rotated-token-9999"


def until(condition: Callable[[], object], what: str) -> object:
    give_up = time.monotonic() + DEADLINE
    while time.monotonic() < give_up:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def write_secrets(path: Path, **values: str) -> None:
    """As an operator should: a new file moved into place, never one half written."""
    staging = path.with_suffix(".tmp")
    staging.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    os.replace(staging, path)


class Served:
    def __init__(self, fake, tmp_path: Path, secrets: Path) -> None:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "ELASTICITY_DATA_DIR": str(tmp_path),
            "HUBSPOT_BASE_URL": fake.url,
            "ELASTICITY_PUBLIC_URL": f"https://{HOST}",
        }
        for name in ("HUBSPOT_ACCESS_TOKEN", "HUBSPOT_CLIENT_SECRET"):
            env.pop(name, None)  # only the file holds them
        self.proc = subprocess.Popen(  # noqa: S603
            [
                sys.executable,
                "-c",
                "from crm_elasticity.connectors.cli import app; app()",
                "serve",
                str(MAPPING),
                "--port",
                "0",
                "--secrets-file",
                str(secrets),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r":(\d+) for", line)
        if found is None:
            self.proc.kill()
            raise AssertionError(line + self.proc.stderr.read())  # type: ignore[union-attr]
        self.port = int(found.group(1))
        self.sent = 0

    def post(self, secret: str, contact: str) -> int:
        self.sent += 1
        at = datetime.now(UTC) - timedelta(minutes=1)
        note = notification(
            objectId=int(contact),
            propertyName="hs_email_last_open_date",
            propertyValue=str(ms(at)),
            occurredAt=ms(at),
            eventId=self.sent,
        )
        now = datetime.now(UTC)
        request = signed([note], secret=secret, timestamp=now, received_at=now)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=DEADLINE)
        try:
            conn.request("POST", request.path, request.body, request.headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=DEADLINE)
        finally:
            self.proc.kill()
        self.proc.stdout.close()  # type: ignore[union-attr]
        return self.proc.stderr.read()  # type: ignore[union-attr]


def test_secrets_rotate_under_a_running_serve_without_a_restart(fake, clock, tmp_path):
    make_connector(fake, load_mapping(MAPPING), clock).provision()
    first, second = fake.add_contact({}), fake.add_contact({})
    secrets = tmp_path / "secrets.env"
    write_secrets(secrets, HUBSPOT_ACCESS_TOKEN=fake.token, HUBSPOT_CLIENT_SECRET=OLD_SECRET)
    served = Served(fake, tmp_path, secrets)
    try:
        assert served.post(OLD_SECRET, first) == 200
        assert served.post(NEW_SECRET, first) == 401
        until(lambda: fake.contact(first).get("elastic_campaign_status"), "the first write")
        # Rotate: HubSpot now takes only the new token; the old client secret is retiring.
        fake.token = NEW_TOKEN
        write_secrets(
            secrets,
            HUBSPOT_ACCESS_TOKEN=NEW_TOKEN,
            HUBSPOT_CLIENT_SECRET=NEW_SECRET,
            HUBSPOT_CLIENT_SECRET_PREVIOUS=OLD_SECRET,
        )
        until(lambda: served.post(NEW_SECRET, second) == 200, "the new secret accepted")
        assert served.post(OLD_SECRET, second) == 200  # still, during the window
        # The worker restarted with the new token: the second contact is written.
        until(lambda: fake.contact(second).get("elastic_campaign_status"), "a write, new token")
        # Close the window: the file without the previous secret, and SIGHUP for good measure.
        write_secrets(secrets, HUBSPOT_ACCESS_TOKEN=NEW_TOKEN, HUBSPOT_CLIENT_SECRET=NEW_SECRET)
        served.proc.send_signal(signal.SIGHUP)
        until(lambda: served.post(OLD_SECRET, second) == 401, "the old secret refused")
        assert served.post(NEW_SECRET, second) == 200
        assert served.proc.poll() is None  # SIGHUP re-reads; it does not stop serve
    finally:
        log = served.stop()
    assert served.proc.returncode == 0, log
    assert "secrets changed (HUBSPOT_ACCESS_TOKEN, HUBSPOT_CLIENT_SECRET" in log
    for value in (OLD_SECRET, NEW_SECRET, NEW_TOKEN, fake.token):
        assert value not in log


def test_an_unreadable_secrets_file_stops_serve_before_it_starts(tmp_path):
    result = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-c",
            "from crm_elasticity.connectors.cli import app; app()",
            "serve",
            str(MAPPING),
            "--port",
            "0",
            "--secrets-file",
            str(tmp_path / "missing.env"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env={**os.environ, "ELASTICITY_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "--secrets-file" in result.stderr and "missing.env" in result.stderr
