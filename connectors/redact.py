"""Keep personal data out of what we store: vendor messages can quote a record's values."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")


def redact_emails(text: str) -> str:
    """The text with every email address replaced: the ledger holds ids, not addresses."""
    return _EMAIL.sub("[email]", text)
