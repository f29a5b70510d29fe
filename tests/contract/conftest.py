from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.contract.vendors import VENDORS, Vendor


@pytest.fixture(params=sorted(VENDORS))
def vendor(request: pytest.FixtureRequest) -> Iterator[Vendor]:
    with VENDORS[request.param]() as built:
        yield built
