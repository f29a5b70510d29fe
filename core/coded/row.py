"""The coded ledger's packed row: 14 int64 and the score as a float64 (`core.coded.ledger`
writes them, `core.coded.contact_ledger` reads one contact's). Kept apart from the writer so
the reader does not load numpy."""

from __future__ import annotations

import struct

ROW = struct.Struct("<14qd")
