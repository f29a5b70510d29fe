from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.contract.vendors import VENDORS, Vendor

KNOWN_GAPS: dict[tuple[str, str], str] = {
    ("salesforce", "test_one_task_per_key_when_the_create_took_effect_but_the_answer_was_lost"):
        "Salesforce creates Tasks again when the create request's answer is lost: the retry "
        "does not look the hand-off keys up first",
}  # fmt: skip
"""(vendor, test) pairs that fail today for a known reason: strict, so the fix must remove them."""


@pytest.fixture(params=sorted(VENDORS))
def vendor(request: pytest.FixtureRequest) -> Iterator[Vendor]:
    with VENDORS[request.param]() as built:
        yield built


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        reason = KNOWN_GAPS.get((params.get("vendor"), item.originalname))
        if reason:
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
