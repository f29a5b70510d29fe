"""Final contact states straight from coded state to the store's `contacts` rows, and those
rows straight to `replay --out` lines: the same text `core.sqlite_rows.contact_row` and
`core.replay.state_json` make, without a `ContactState` or a `datetime` per contact (building
them was a third of a coded replay)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import IO

import numpy as np

from crm_elasticity.core.coded import engine
from crm_elasticity.core.coded.codes import NO_TIME, REASONS, STATUSES, from_us
from crm_elasticity.core.models import iso_utc
from crm_elasticity.core.sqlite_rows import experiments_json

INSERT_CONTACT = (
    "INSERT OR REPLACE INTO contacts (contact_id, campaign_status, enrolled_at, as_of, "
    "status_changed_at, stream_entered_at, engagement_score, base_score, last_engagement_date, "
    "decay_steps, reactivation_cycle, reactivation_step, reactivation_step_at, "
    "unanswered_sends, suppression_reason, experiments, segment, send_times, next_due) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
"""A contact row as `SQLiteStore` writes one at the end of a bulk run (its version 0)."""
_PAGE = 5_000
_DAY_US = 86_400_000_000
_LAST_US = 253_402_300_799_999_999
"""9999-12-31T23:59:59.999999 in epoch microseconds: the last time `datetime` has."""
_STATUS_TEXT = [s.value for s in STATUSES]
_REASON_TEXT = [r.value if r else None for r in REASONS]


class _DayText(dict):
    """Days since the epoch -> the date's ISO text and the `T`."""

    def __missing__(self, day: int) -> str:
        text = self[day] = iso_utc(from_us(day * _DAY_US))[:11]
        return text


class _IsoText(dict):
    """Epoch microseconds -> `iso_utc` text (`isoformat` of the UTC time): the date's text
    looked up, the time of day formatted from integers."""

    def __init__(self) -> None:
        super().__init__()
        self.days = _DayText()

    def __missing__(self, us: int) -> str:
        day, rest = divmod(us, _DAY_US)
        seconds, micro = divmod(rest, 1_000_000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        if micro:
            text = f"{self.days[day]}{hour:02d}:{minute:02d}:{second:02d}.{micro:06d}+00:00"
        else:
            text = f"{self.days[day]}{hour:02d}:{minute:02d}:{second:02d}+00:00"
        self[us] = text
        return text


def iso_texts(times: list[int]) -> list[str]:
    """`iso_utc` texts of epoch-microsecond times, formatted by numpy at once (a third of
    the cost of formatting them one by one; most of a run's final times are distinct)."""
    us = np.array(times, dtype=np.int64)
    if us.size and (int(us.min()) < 0 or int(us.max()) > _LAST_US):
        iso = _IsoText()  # beyond the years numpy and `datetime` write alike
        return [iso[t] for t in times]
    texts = np.datetime_as_string(us.astype("M8[us]"), unit="us").tolist()
    whole = (us % 1_000_000 == 0).tolist()  # isoformat() leaves out a zero fraction
    return [t[:19] + "+00:00" if w else t + "+00:00" for t, w in zip(texts, whole, strict=True)]


def contact_rows(ids: list[str], states: list) -> Iterator[tuple]:
    """The `contacts` rows of contacts `ids[i]` in `states[i]`, in contact id order (the
    B-tree fills page by page)."""
    iso = _IsoText()
    due = engine.due
    order = sorted(range(len(ids)), key=ids.__getitem__)
    for first in range(0, len(order), _PAGE):
        page = order[first : first + _PAGE]
        chosen = [states[i] for i in page]
        dues = [due(s) for s in chosen]
        # Seven times a contact, formatted in one call; an absent one formats a 0 unused.
        times = [s.enrolled_at for s in chosen]
        times += [s.as_of for s in chosen]
        times += [s.status_changed_at for s in chosen]
        times += [s.stream_entered_at for s in chosen]
        times += [0 if s.last_engagement == NO_TIME else s.last_engagement for s in chosen]
        times += [s.step_at or 0 for s in chosen]
        times += [0 if d is None else d[0] for d in dues]
        n = len(chosen)
        texts = iso_texts(times)
        enrolled, as_of, changed, entered, last, step_at, next_due = (
            texts[k * n : (k + 1) * n] for k in range(7)
        )
        for k, (i, s, d) in enumerate(zip(page, chosen, dues, strict=True)):
            send_times = s.send_times
            yield (
                ids[i],
                _STATUS_TEXT[s.status],
                enrolled[k],
                as_of[k],
                changed[k],
                entered[k],
                s.score,
                s.base_score,
                None if s.last_engagement == NO_TIME else last[k],
                s.decay_steps,
                s.cycle,
                s.step,
                None if s.step_at is None else step_at[k],
                s.unanswered,
                _REASON_TEXT[s.reason],
                experiments_json(s.experiments) if s.experiments else None,
                s.policy.segment,
                json.dumps([iso[t] for t in send_times]) if send_times else None,
                None if d is None else next_due[k],
            )
        if len(iso) > 20_000:
            iso.clear()  # (the days stay: a few hundred)


def write_contacts(db: sqlite3.Connection, ids: list[str], states: list) -> None:
    """The final states into the `contacts` table, on the run's own connection."""
    db.executemany(INSERT_CONTACT, contact_rows(ids, states))


_STATE_COLUMNS = (
    "SELECT contact_id, campaign_status, engagement_score, last_engagement_date, "
    "reactivation_cycle, reactivation_step, suppression_reason, unanswered_sends, "
    "status_changed_at, experiments FROM contacts WHERE contact_id > ? "
    "ORDER BY contact_id LIMIT ?"
)
_ENCODE = json.encoder.encode_basestring_ascii  # what json.dumps uses for str (ensure_ascii)


def _text(value: str | None) -> str:
    return "null" if value is None else _ENCODE(value)


def write_state_lines(path: str, sink: IO[str]) -> int:
    """The `contacts` table of the store at `path` as `replay --out` lines, in contact id
    order: byte for byte `json.dumps(state_json(state))` of each row's state."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    experiments: dict[str, str] = {}
    count = 0
    after = ""
    try:
        while True:
            page = db.execute(_STATE_COLUMNS, (after, _PAGE)).fetchall()
            if not page:
                return count
            lines = []
            for cid, status, score, last, cycle, step, reason, unanswered, changed, arms in page:
                arm = "{}" if arms is None else experiments.get(arms)
                if arm is None:
                    arm = experiments[arms] = json.dumps(json.loads(arms))
                lines.append(
                    f'{{"contact_id": {_ENCODE(cid)}, "campaign_status": {_ENCODE(status)}, '
                    f'"engagement_score": {score!r}, "last_engagement_date": {_text(last)}, '
                    f'"reactivation_cycle": {cycle}, "reactivation_step": {step}, '
                    f'"suppression_reason": {_text(reason)}, "unanswered_sends": {unanswered}, '
                    f'"status_changed_at": {_text(changed)}, "experiments": {arm}}}\n'
                )
            sink.write("".join(lines))
            count += len(page)
            after = page[-1][0]
    finally:
        db.close()
