"""`elasticity sandbox hubspot`: the connected loop on loopback, without a HubSpot portal.

It starts the HubSpot stand-in the tests use (tests/fakes/, so it needs a source checkout),
provisions it from the mapping, runs `elasticity serve` against it as a child process, sends
webhooks signed as HubSpot signs them (v3, over the https:// URL HubSpot calls), lets the
worker write back, runs one scheduled sync as of a later day, and reports what was written to
which contacts and which lists changed. Nothing here is imported by the other commands, and the
test fakes are imported only when the sandbox runs.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from crm_elasticity import connectors
from crm_elasticity.connectors.hubspot.signature import v3_signature
from crm_elasticity.core.data_dir import ENV as DATA_DIR_ENV
from crm_elasticity.core.data_dir import DataDir
from crm_elasticity.core.mapping import Mapping

WEBHOOK_PATH = "/webhooks/hubspot"
DEADLINE_SECONDS = 60.0
DAYS_AGO = 100
"""The webhooks report changes made this many days ago (signed now: the signature window is
5 minutes), so the sync, run now, is past the 30-day score decay and the 90 days of silence
that make a contact Dormant: the time rules have something to do, and a click sent by hand
afterwards (`--keep`) brings a Dormant contact back."""
FIELD_PREFIX = "elastic_"
SEPARATOR = "-" * 78


class SandboxError(Exception):
    """The sandbox cannot run; `code` is the exit code (2: usage, 1: a step failed)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Stopped(Exception):  # noqa: N818 - a signal, not a failure
    """SIGTERM arrived: shut down as on Ctrl-C."""


def source_root() -> Path:
    """The repository the installed `connectors` package was loaded from."""
    return Path(connectors.__file__).resolve().parents[1]


def checkout_root() -> Path:
    """The source checkout holding the stand-in, or a SandboxError (exit 2) saying so."""
    root = source_root()
    if not (root / "tests" / "fakes" / "hubspot_server.py").is_file():
        raise SandboxError(
            f"the sandbox needs a source checkout: it runs the HubSpot stand-in from tests/fakes/, "
            f"which is not beside the installed package ({root}). Clone the repository and "
            "`pip install -e .` from it, then run the sandbox again.",
            2,
        )
    return root


def load_fake() -> tuple[type, str]:
    """The HubSpot stand-in class and its token, from tests/fakes of the source checkout."""
    root = checkout_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tests.fakes.hubspot_server import TOKEN, FakeHubSpot

    return FakeHubSpot, TOKEN


# ---- the story the webhooks tell ---------------------------------------------------------------


@dataclass
class Person:
    email: str
    story: str
    changes: list[tuple[str, str]]
    """(property, value) changes HubSpot reports; a value "{ms}" is the change's own time."""
    contact_id: str = ""


PEOPLE = [
    Person(
        "ada@example.com",
        "opens, clicks and visits /pricing",
        [
            ("hs_email_last_open_date", "{ms}"),
            ("hs_email_last_click_date", "{ms}"),
            ("hs_analytics_last_url", "https://www.example.com/pricing"),
        ],
    ),
    Person("ben@example.com", "opens one newsletter", [("hs_email_last_open_date", "{ms}")]),
    Person("cleo@example.com", "unsubscribes", [("hs_email_optout", "true")]),
]


def notifications(people: list[Person], changed: datetime) -> list[dict[str, Any]]:
    """One `contact.propertyChange` notification per change made at about `changed`, as
    HubSpot's Webhooks API sends them."""
    items: list[dict[str, Any]] = []
    start = int(changed.timestamp() * 1000)
    for person in people:
        for prop, value in person.changes:
            at = start + 1000 * len(items)
            items.append(
                {
                    "eventId": 100 + len(items),
                    "subscriptionId": 25,
                    "portalId": 62515,
                    "appId": 54321,
                    "occurredAt": at,
                    "subscriptionType": "contact.propertyChange",
                    "attemptNumber": 0,
                    "objectId": int(person.contact_id),
                    "changeSource": "CRM",
                    "propertyName": prop,
                    "propertyValue": value.format(ms=at),
                }
            )
    return items


def signed_headers(secret: str, url: str, body: bytes, now: datetime) -> dict[str, str]:
    """The headers HubSpot sends with a v3-signed request to `url` (the https:// URL it calls)."""
    timestamp = str(int(now.timestamp() * 1000))
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Request-Timestamp": timestamp,
        "X-HubSpot-Signature-v3": v3_signature(secret, "POST", url, body, timestamp),
    }


def curl_recipe(secret: str, port: int, contact: str) -> str:
    """A click by `contact`, v3-signed by hand in bash (openssl) and sent with curl to a `serve`
    on this machine: the recipe the README shows and `--keep` prints."""
    return f"""SECRET='{secret}'
URL=http://127.0.0.1:{port}{WEBHOOK_PATH}
SIGNED_URL=https://127.0.0.1:{port}{WEBHOOK_PATH}
TS=$(python3 -c 'import time; print(time.time_ns() // 1_000_000)')
BODY='[{{"eventId":900,"subscriptionId":25,"portalId":62515,"appId":54321,"occurredAt":'$TS',\
"subscriptionType":"contact.propertyChange","attemptNumber":0,"objectId":{contact},\
"changeSource":"CRM","propertyName":"hs_email_last_click_date","propertyValue":"'$TS'"}}]'
SIG=$(printf '%s' "POST$SIGNED_URL$BODY$TS" | openssl dgst -sha256 -hmac "$SECRET" -binary | base64)
curl -i "$URL" -H 'Content-Type: application/json' -H "X-HubSpot-Request-Timestamp: $TS" \\
  -H "X-HubSpot-Signature-v3: $SIG" --data-binary "$BODY"
"""


# ---- what changed ------------------------------------------------------------------------------


def matches(branch: dict[str, Any] | None, values: dict[str, Any]) -> bool:
    """A Lists v3 filter branch (OR of AND branches of enumeration filters, the shape
    `provision` creates) applied to a contact's values, as HubSpot keeps a dynamic list."""
    if not branch:
        return False
    for sub in branch.get("filterBranches") or []:
        filters = sub.get("filters") or []
        if filters and all(_passes(f, values) for f in filters):
            return True
    return False


def _passes(condition: dict[str, Any], values: dict[str, Any]) -> bool:
    operation = condition.get("operation") or {}
    if operation.get("operator") != "IS_ANY_OF":
        return False
    value = values.get(condition.get("property", ""))
    return value is not None and str(value).lower() in {
        str(v).lower() for v in operation.get("values") or []
    }


@dataclass
class Step:
    name: str
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    """(contact, status, score, suppression reason (before -> after), other properties written)."""
    lists: list[tuple[str, str, str]] = field(default_factory=list)
    """(list, joined, left) with contact labels."""


def _move(old: Any, new: Any) -> str:
    old_text = "-" if old in (None, "") else str(old)
    new_text = "-" if new in (None, "") else str(new)
    return new_text if old_text == new_text else f"{old_text} -> {new_text}"


def diff(
    name: str,
    before: dict[str, dict],
    after: dict[str, dict],
    labels: dict[str, str],
    mapping: Mapping,
    lists: dict[str, dict | None],
) -> Step:
    """What one step wrote to each contact, and which lists it moved contacts in or out of."""
    step = Step(name)
    status, score, reason = (
        mapping.property_of(name)
        for name in ("campaign_status", "engagement_score", "suppression_reason")
    )
    for cid, values in after.items():
        old = before.get(cid, {})
        written = sorted(
            p for p in values if p.startswith(FIELD_PREFIX) and old.get(p) != values[p]
        )
        if not written:
            continue
        others = len([p for p in written if p not in (status, score, reason)])
        step.rows.append(
            (
                labels[cid],
                _move(old.get(status), values.get(status)),
                _move(old.get(score), values.get(score)),
                _move(old.get(reason), values.get(reason)),
                str(others),
            )
        )
    for list_name, branch in lists.items():
        joined = [
            labels[c]
            for c in after
            if matches(branch, after[c]) and not matches(branch, before.get(c, {}))
        ]
        left = [
            labels[c]
            for c in after
            if matches(branch, before.get(c, {})) and not matches(branch, after[c])
        ]
        if joined or left:
            step.lists.append((list_name, ", ".join(joined) or "-", ", ".join(left) or "-"))
    return step


# ---- the processes -----------------------------------------------------------------------------


class Serve:
    """`elasticity serve` as a child process, on loopback, against the stand-in."""

    def __init__(self, mapping: Path, data_dir: Path, env: dict[str, str]) -> None:
        self.log_path = data_dir / "serve.log"
        self._log = self.log_path.open("w")
        command = [
            sys.executable,
            "-m",
            "crm_elasticity.connectors.cli",
            "serve",
            str(mapping),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
        ]
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        try:
            self.port = self._port()
        except BaseException:  # Ctrl-C or no start: never leave the child behind
            self.stop()
            raise

    def _port(self) -> int:
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        give_up = time.monotonic() + DEADLINE_SECONDS
        try:
            while time.monotonic() < give_up:
                if not selector.select(timeout=0.5):
                    if self.proc.poll() is not None:
                        break
                    continue
                line = self.proc.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    break
                if line.startswith("listening on http://"):
                    return int(line.split()[2].rsplit(":", 1)[1])
        finally:
            selector.close()
        raise SandboxError(f"serve did not start; its log: {self.log_path}\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body, headers or {})
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw) if raw else {}
        except ValueError:
            return response.status, {"body": raw.decode(errors="replace")}

    def stop(self) -> int | None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._log.close()


@contextmanager
def _sigterm_as_stop() -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise Stopped

    try:
        previous = signal.signal(signal.SIGTERM, stop)
        # Ctrl-C stops the sandbox even where the shell started it with SIGINT ignored.
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _wait(condition: Callable[[], bool], what: str, serve: Serve) -> None:
    give_up = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < give_up:
        try:
            if condition():
                return
        except OSError:  # serve not answering: it may have died, checked below
            pass
        if serve.proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SandboxError(
        f"{what} did not happen within {DEADLINE_SECONDS:.0f} s; serve's log "
        f"({serve.log_path}):\n{serve.log_tail()}"
    )


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class Sandbox:
    mapping_path: Path
    data_dir: Path | None = None
    keep: bool = False
    say: Callable[[str], None] = print
    table: Callable[[str, list[str], list[tuple]], None] | None = None
    steps: list[Step] = field(default_factory=list)

    def run(self) -> int:
        from crm_elasticity.core.mapping import load_mapping

        fake_class, token = load_fake()
        mapping = load_mapping(self.mapping_path)
        if mapping.vendor != "hubspot":
            raise SandboxError(
                f"{self.mapping_path}: the HubSpot sandbox needs a HubSpot "
                f"mapping, this one is for {mapping.vendor!r}",
                2,
            )
        own_dir = self.data_dir is None
        given = self.data_dir
        where = DataDir(given) if given is not None else DataDir.temporary("elasticity-sandbox-")
        data_dir = where.root
        if not own_dir:
            if where.main.exists():
                raise SandboxError(
                    f"--data-dir {data_dir}: already holds a store; the "
                    "sandbox starts from an empty one (give a new directory)",
                    2,
                )
            data_dir.mkdir(parents=True, exist_ok=True)
        fake = fake_class()
        serve: Serve | None = None
        try:
            with _sigterm_as_stop():
                base_url = fake.start()
                secret = "sandbox-" + secrets.token_hex(12)
                env = {
                    **os.environ,
                    "HUBSPOT_BASE_URL": base_url,
                    "HUBSPOT_ACCESS_TOKEN": token,
                    "HUBSPOT_CLIENT_SECRET": secret,
                }
                for name in ("ELASTICITY_PUBLIC_URL", DATA_DIR_ENV):
                    env.pop(name, None)
                self.say(f"HubSpot stand-in (tests/fakes) on {base_url}; data dir {data_dir}")
                self._provision(mapping, env)
                labels = self._seed(fake)
                serve = Serve(self.mapping_path, data_dir, env)
                url = f"http://127.0.0.1:{serve.port}{WEBHOOK_PATH}"
                self.say(f"serve on {url} (client secret {secret})")
                before = self._snapshot(fake, labels)
                self._send_webhooks(serve, secret)
                _wait(
                    lambda: (
                        all(
                            fake.contact(p.contact_id).get(
                                mapping.fields["campaign_status"].property
                            )
                            for p in PEOPLE
                        )
                        and serve.request("GET", "/healthz")[1].get("inbox_backlog") == 0
                    ),
                    "the worker's write-back",
                    serve,
                )
                after_hooks = self._snapshot(fake, labels)
                lists = {item["name"]: item.get("filterBranch") for item in fake.lists.values()}
                self.steps.append(
                    diff("webhooks -> serve's worker", before, after_hooks, labels, mapping, lists)
                )
                summary = self._sync(mapping, env, data_dir)
                after_sync = self._snapshot(fake, labels)
                self.steps.append(
                    diff(
                        f"sync, {DAYS_AGO} days after the changes",
                        after_hooks,
                        after_sync,
                        labels,
                        mapping,
                        lists,
                    )
                )
                self._report(fake, summary)
                if self.keep:
                    self._print_keep(serve, base_url, token, secret, data_dir, labels)
                    while serve.proc.poll() is None:
                        time.sleep(0.5)
                    self.say(f"serve exited ({serve.proc.returncode}); its log: {serve.log_path}")
        except (KeyboardInterrupt, Stopped):
            if not self.keep:
                self.say("interrupted; shutting the sandbox down")
                return 130
        finally:
            code = serve.stop() if serve is not None else None
            fake.stop()
            if own_dir:
                shutil.rmtree(data_dir, ignore_errors=True)
            if code not in (None, 0):
                self.say(f"note: serve exited {code}")
        self.say(
            "sandbox stopped: serve and the stand-in are shut down"
            + ("; temporary data dir removed" if own_dir else f"; data kept in {data_dir}")
        )
        return 0

    def _provision(self, mapping: Mapping, env: dict[str, str]) -> None:
        from crm_elasticity.connectors.registry import load_connector

        report = load_connector(mapping, env).provision()
        kinds: dict[str, int] = {}
        for item in report.changes:
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
        made = ", ".join(f"{n} {kind}(s)" for kind, n in sorted(kinds.items()))
        self.say(f"provisioned from {self.mapping_path}: {made or 'nothing to create'}")

    def _seed(self, fake: Any) -> dict[str, str]:
        labels = {}
        for person in PEOPLE:
            person.contact_id = fake.add_contact({"email": person.email})
            labels[person.contact_id] = f"{person.contact_id} {person.email.split('@')[0]}"
        return labels

    def _send_webhooks(self, serve: Serve, secret: str) -> None:
        now = datetime.now(UTC)
        items = notifications(PEOPLE, now - timedelta(days=DAYS_AGO))
        body = json.dumps(items).encode()
        url = f"https://127.0.0.1:{serve.port}{WEBHOOK_PATH}"
        status, answer = serve.request(
            "POST", WEBHOOK_PATH, body, signed_headers(secret, url, body, now)
        )
        if status != 200:
            raise SandboxError(f"serve answered {status} to the signed webhooks: {answer}")
        self.say(
            f"sent {len(items)} signed notifications (v3) of changes {DAYS_AGO} days ago "
            f"-> {status}; " + "; ".join(f"{p.email} {p.story}" for p in PEOPLE)
        )

    def _sync(self, mapping: Mapping, env: dict[str, str], data_dir: Path) -> Any:
        from crm_elasticity.connectors.registry import load_connector
        from crm_elasticity.connectors.runner import Runner
        from crm_elasticity.core.sqlite_store import SQLiteStore

        store = SQLiteStore.in_data_dir(data_dir)
        try:
            summary = Runner(load_connector(mapping, env), store).sync()
        finally:
            store.close()
        self.say(
            f"sync (what `elasticity sync` runs): {summary.examined} contacts examined, "
            f"{summary.decisions} decisions, {summary.written} written, "
            f"{summary.api_calls} API calls"
        )
        return summary

    @staticmethod
    def _snapshot(fake: Any, labels: dict[str, str]) -> dict[str, dict]:
        return {cid: fake.contact(cid) for cid in labels}

    def _report(self, fake: Any, summary: Any) -> None:
        for step in self.steps:
            self._table(
                f"written back ({step.name})",
                ["contact", "status", "score", "suppression", "others"],
                step.rows or [("-", "nothing written", "", "", "")],
            )
            self._table(
                f"lists changed ({step.name})",
                ["list", "joined", "left"],
                step.lists or [("no list changed", "", "")],
            )
        for task in fake.tasks():
            self.say(
                f"hand-off task {task['id']} for contact {', '.join(task['contacts'])}: "
                f"{task.get('hs_task_subject')}"
            )
        self.say(
            "(HubSpot keeps the dynamic lists' membership itself; shown here is each "
            "list's provisioned filter applied to the contacts before and after)"
        )

    def _table(self, title: str, columns: list[str], rows: list[tuple]) -> None:
        if self.table is not None:
            self.table(title, columns, rows)
            return
        self.say(title)
        for row in rows:
            self.say("  " + " | ".join(str(v) for v in row))

    def _print_keep(
        self,
        serve: Serve,
        base_url: str,
        token: str,
        secret: str,
        data_dir: Path,
        labels: dict[str, str],
    ) -> None:
        contact = PEOPLE[1].contact_id  # Dormant after the sync: a click brings it back
        url = f"http://127.0.0.1:{serve.port}{WEBHOOK_PATH}"
        self.say(SEPARATOR)
        self.say("still running (--keep); Ctrl-C stops everything.")
        self.say(f"  webhooks:  POST {url}    health: GET http://127.0.0.1:{serve.port}/healthz")
        self.say(f"  stand-in:  {base_url} (bearer token {token})")
        self.say(f"  contacts:  {', '.join(labels.values())}")
        self.say(f"  serve log: {serve.log_path}")
        self.say(
            f"A click now by contact {contact} (Dormant), signed as HubSpot signs it (v3: "
            "HMAC-SHA256 of method + the https:// URL + body + timestamp, base64):"
        )
        self.say("\n" + curl_recipe(secret, serve.port, contact))
        self.say("Then see the decision and the write-back:")
        self.say(f"  elasticity explain {contact} --store main --data-dir {data_dir}")
        self.say(
            f"  curl -s -H 'Authorization: Bearer {token}' "
            f"'{base_url}/crm/v3/objects/contacts/{contact}?properties="
            "elastic_campaign_status,elastic_engagement_score'"
        )
        self.say("Another sync against the stand-in:")
        self.say(
            f"  HUBSPOT_BASE_URL={base_url} HUBSPOT_ACCESS_TOKEN={token} "
            f"elasticity sync {self.mapping_path} --data-dir {data_dir}"
        )
        self.say(SEPARATOR)
