"""One `Vendor` per CRM connector: the connector wired to its fake, and the few things only a
vendor-specific helper can do (seed contacts, count tasks, inject a failure). The contract
tests speak only to this interface, so a third vendor is checked by the same tests by adding
one class here and its name to `VENDORS` in conftest.py."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
import responses

from crm_elasticity.connectors.base import Connector
from crm_elasticity.connectors.hubspot.values import encode as hubspot_encode
from crm_elasticity.core.mapping import Mapping, load_mapping
from tests.fakes.hubspot_server import DROP, FakeHubSpot, Fault, RecordFailure
from tests.hubspot.hubspot_helpers import FakeClock, make_connector

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
AFTER_COMMIT = ("timeout", "5xx")
"""How a request that the CRM carried out can still look failed to the connector: no answer
in time (the connection drops), or a server error after the work was done."""


class Vendor(ABC):
    name: str
    connector: Connector
    mapping: Mapping
    page_size: int
    """Records per page the connector yields, so a test can seed more than two pages."""
    write_many: int
    """A write size that takes the connector's large-write path, if it has one."""

    @abstractmethod
    def add_contacts(
        self, n: int, values: dict[str, Any], engaged_at: datetime | None = None
    ) -> list[str]:
        """Create `n` contacts holding these canonical values (and, with `engaged_at`, an
        email open at that instant on the first date signal); ids in creation order."""

    @abstractmethod
    def all_contact_ids(self) -> list[str]: ...

    @abstractmethod
    def missing_id(self) -> str:
        """An id shaped like the vendor's that names no contact."""

    @abstractmethod
    def id_key(self, contact_id: str) -> Any:
        """The vendor's id order (numeric for HubSpot, the 18-character string for Salesforce)."""

    @abstractmethod
    def tasks_per_contact(self) -> Counter[str]: ...

    @abstractmethod
    def fail_task_create_after_commit(self, how: str) -> None:
        """The next task-creating request takes effect, then fails as `how` (AFTER_COMMIT)."""

    @abstractmethod
    def fail_reads(self) -> None:
        """From now on every contact read or scan request fails with a server error."""

    @abstractmethod
    def heal_reads(self) -> None: ...

    @abstractmethod
    def faults_pending(self) -> int:
        """Injected failures not triggered yet (a test checks its failure really happened)."""

    @abstractmethod
    def reject_writes(self, contact_ids: list[str]) -> None:
        """Writes of these contacts fail permanently (a validation rule, say)."""

    history_page: int
    """Events per page of `export_history`, so a test can seed more than two pages."""

    @abstractmethod
    def record_opens(self, contact_id: str, times: list[datetime]) -> None:
        """The CRM's history holds an email open by this contact at each of these instants."""

    def close(self) -> None:
        return None


# ---- HubSpot ------------------------------------------------------------------------------------


class HubSpot(Vendor):
    name = "hubspot"
    page_size = 200
    write_many = 150  # two batch requests

    def __init__(self) -> None:
        self.fake = FakeHubSpot(now=lambda: datetime.fromisoformat("2025-01-01T00:00:00+00:00"))
        self.fake.url = self.fake.start()
        self.mapping = load_mapping(MAPPINGS / "hubspot.yaml")
        self.connector = make_connector(self.fake, self.mapping, FakeClock())
        self.connector.provision()

    def add_contacts(
        self, n: int, values: dict[str, Any], engaged_at: datetime | None = None
    ) -> list[str]:
        props = {
            self.mapping.fields[k].property: hubspot_encode(self.mapping.fields[k], v)
            for k, v in values.items()
        }
        if engaged_at is not None:
            props["hs_email_last_open_date"] = engaged_at.isoformat().replace("+00:00", "Z")
        return [self.fake.add_contact(props) for _ in range(n)]

    def all_contact_ids(self) -> list[str]:
        return [str(i) for i in self.fake.objects["contacts"].ids]

    def missing_id(self) -> str:
        return "987654321"

    def id_key(self, contact_id: str) -> Any:
        return int(contact_id)

    def tasks_per_contact(self) -> Counter[str]:
        return Counter(c for task in self.fake.tasks() for c in task["contacts"])

    def fail_task_create_after_commit(self, how: str) -> None:
        status = DROP if how == "timeout" else 502
        self.fake.inject(Fault("/tasks/batch/create", status, method="POST", after_commit=True))

    def fail_reads(self) -> None:
        self._broken = self.fake.inject(Fault("/crm/v3/objects/contacts", 503, times=10**6))

    def heal_reads(self) -> None:
        self._broken.times = 0

    def faults_pending(self) -> int:
        return sum(f.times for f in self.fake.faults)

    def reject_writes(self, contact_ids: list[str]) -> None:
        self.fake.fail_records(
            RecordFailure(
                set(contact_ids),
                category="VALIDATION_ERROR",
                message="Email programs need a valid address",
                times=1000,
            )
        )

    history_page = 1000

    def record_opens(self, contact_id: str, times: list[datetime]) -> None:
        email = f"c{contact_id}@example.com"
        self.fake.set_contact(contact_id, {"email": email})
        for at in times:
            self.fake.add_email_event("OPEN", email, at)

    def close(self) -> None:
        self.fake.stop()


# ---- Salesforce ---------------------------------------------------------------------------------


class Salesforce(Vendor):
    name = "salesforce"
    page_size = 200
    write_many = 150  # over the bulk threshold set below: one Bulk 2.0 job

    def __init__(self, rsps: responses.RequestsMock) -> None:
        from crm_elasticity.connectors.salesforce import SalesforceConnector
        from crm_elasticity.connectors.salesforce.config import credentials_from_env
        from tests.fakes.salesforce import FakeSalesforce

        mapping = load_mapping(MAPPINGS / "salesforce.yaml")
        self.mapping = mapping.model_copy(
            update={
                "options": {**mapping.options, "page_size": self.page_size, "bulk_threshold": 100}
            }
        )
        self.fake = FakeSalesforce()
        self.fake.provision_mapping(self.mapping)
        self._after_commit: list[str] = []
        any_host = re.compile(r"https://[^/]+/services/.*")
        for method in ("GET", "POST", "PATCH", "PUT", "DELETE"):
            rsps.add_callback(method, any_host, callback=self._handle)
        env = {
            "SALESFORCE_ACCESS_TOKEN": "TOKEN-0",
            "SALESFORCE_INSTANCE_URL": "https://acme.my.salesforce.com",
        }
        self.connector = SalesforceConnector(
            self.mapping, credentials_from_env(env), sleep=self.fake.sleep, jitter=lambda: 0.5
        )

    def _handle(self, request: Any) -> tuple:
        body = request.body or b""
        body = body.encode() if isinstance(body, str) else body
        creates_tasks = (
            request.method == "POST" and "/composite/sobjects" in request.url and b'"Task"' in body
        )
        if not (creates_tasks and self._after_commit):
            return self.fake.handle(request)
        how = self._after_commit.pop(0)
        self.fake.handle(request)  # carried out; the answer is lost
        if how == "timeout":
            raise requests.exceptions.ReadTimeout("injected: no answer after the work was done")
        return (
            503,
            {},
            json.dumps([{"message": "Server unavailable", "errorCode": "SERVER_UNAVAILABLE"}]),
        )

    def add_contacts(
        self, n: int, values: dict[str, Any], engaged_at: datetime | None = None
    ) -> list[str]:
        fields = {self.mapping.fields[k].property: _sf_value(v) for k, v in values.items()}
        if engaged_at is not None:
            fields["Last_Email_Open_Date__c"] = _sf_value(engaged_at)
            fields["SystemModstamp"] = _sf_value(engaged_at)
        return [self.fake.add(self.mapping.object, LastName=f"c{i}", **fields) for i in range(n)]

    def all_contact_ids(self) -> list[str]:
        return sorted(self.fake.records[self.mapping.object])

    def missing_id(self) -> str:
        return "003999999999999AAA"

    def id_key(self, contact_id: str) -> Any:
        return contact_id

    def tasks_per_contact(self) -> Counter[str]:
        return Counter(task["WhoId"] for task in self.fake.records["Task"].values())

    def fail_task_create_after_commit(self, how: str) -> None:
        self._after_commit.append(how)

    def fail_reads(self) -> None:
        from tests.fakes.salesforce import error

        def broken(method: str, path: str) -> bool:
            return "/query" in path

        self._broken = broken
        self.fake.fail(10**4, error(503, "SERVER_UNAVAILABLE", "Server unavailable"), broken)

    def heal_reads(self) -> None:
        self.fake.faults = [f for f in self.fake.faults if f[0] is not self._broken]

    def faults_pending(self) -> int:
        return len(self._after_commit)

    def reject_writes(self, contact_ids: list[str]) -> None:
        self.fake.reject(contact_ids)

    history_page = 200  # the mapping's `page_size` above

    def record_opens(self, contact_id: str, times: list[datetime]) -> None:
        self.fake.track_history(self.mapping.object, "Last_Email_Open_Date__c")
        for at in times:
            value = _sf_value(at)
            self.fake.change(
                self.mapping.object, contact_id, "Last_Email_Open_Date__c", value, value
            )


def _sf_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return getattr(value, "value", value)


@contextmanager
def hubspot() -> Iterator[Vendor]:
    vendor = HubSpot()
    try:
        yield vendor
    finally:
        vendor.close()


@contextmanager
def salesforce() -> Iterator[Vendor]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield Salesforce(rsps)


VENDORS: dict[str, Callable[[], Any]] = {"hubspot": hubspot, "salesforce": salesforce}
"""Every vendor connector and its fake. A new vendor: one class above and one entry here."""
