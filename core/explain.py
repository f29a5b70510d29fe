"""`elasticity explain`: why a contact is where it is, from the ledger."""

from __future__ import annotations

from pathlib import Path

from crm_elasticity.core.ledger_reader import LedgerReader
from crm_elasticity.core.models import ContactState, Decision
from crm_elasticity.core.order import REVISED


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text[:19].replace("T", " ") if len(text) >= 19 and text[4:5] == "-" else text


def describe(decision: Decision) -> str:
    when = decision.at.strftime("%Y-%m-%d %H:%M")
    before = decision.from_status.value if decision.from_status else "(new)"
    moved = before if before == decision.to_status.value else f"{before} -> {decision.to_status}"
    changes = ", ".join(
        f"{name} {_value(old)} -> {_value(new)}"
        for name, (old, new) in decision.changes.items()
        if name not in ("campaign_status", "decisions")
    )
    actions = "; ".join(a.kind + (f" {a.detail}" if a.detail else "") for a in decision.actions)
    line = f"{when}  {moved:<24} {decision.rule}/{decision.reason}"
    line += f"\n    cause {decision.cause}  policy {decision.policy_version}"
    if changes:
        line += f"\n    {changes}"
    if actions:
        line += f"\n    actions: {actions}"
    if decision.reason == REVISED and "decisions" in decision.changes:
        old, new = decision.changes["decisions"]
        line += (
            f"\n    revised: a late {decision.event_type} ({decision.cause}) was decided in "
            "its place; what was already done in the CRM stays done"
        )
        line += "".join(f"\n      was: {d}" for d in old)
        line += "".join(f"\n      now: {d}" for d in new)
    return line


def _read(
    source: Path | LedgerReader, contact_id: str
) -> tuple[list[Decision], ContactState | None]:
    """The contact's decisions and current state, from a reader or the SQLite store at a path
    (its text ledger, or the coded ledger of a replay or simulation on the coded path)."""
    if isinstance(source, LedgerReader):
        return source.contact_decisions(contact_id), source.contact_now(contact_id)
    from crm_elasticity.core.sqlite_store import SQLiteStore

    # One connection for both: a store's decisions are in its text or its coded ledger, and
    # finding out which on a second connection would cost more than reading them.
    store = SQLiteStore(source)
    try:
        return store.contact_decisions(contact_id), store.contact_now(contact_id)
    finally:
        store.close()


def decisions_for(source: Path | LedgerReader, contact_id: str) -> list[Decision]:
    return _read(source, contact_id)[0]


def explain_contact(source: Path | LedgerReader, contact_id: str) -> str | None:
    decisions, state = _read(source, contact_id)
    if not decisions:
        return None
    lines = [describe(d) for d in decisions]
    if state is not None:
        now = (
            f"now {state.campaign_status.value}, score {state.engagement_score:g}, "
            f"cycle {state.reactivation_cycle}, step {state.reactivation_step}"
        )
        if state.suppression_reason:
            now += f", suppressed for {state.suppression_reason.value}"
        if state.experiments:
            now += ", experiments " + ", ".join(f"{k}={v}" for k, v in state.experiments.items())
        lines.append(now)
    return "\n".join(lines)


def side_by_side_history(base: Path, candidate: Path, contact_id: str) -> str | None:
    """One contact's two histories in two columns, aligned by time, so the first decision
    where the policies part shows at a glance."""
    sides = [decisions_for(path, contact_id) for path in (base, candidate)]
    if not any(sides):
        return None
    left, right = sides
    width = max((len(_line(d)) for d in left), default=4)
    times = sorted({d.at for d in left} | {d.at for d in right})
    rows = [f"{'base':<{width}} | candidate", f"{'-' * width}-+-{'-' * width}"]
    for at in times:
        a = [_line(d) for d in left if d.at == at]
        b = [_line(d) for d in right if d.at == at]
        for i in range(max(len(a), len(b))):
            x = a[i] if i < len(a) else ""
            y = b[i] if i < len(b) else ""
            mark = " " if x == y else "*"
            rows.append(f"{x[:width]:<{width}} {mark}| {y[:width]}")
    return "\n".join(rows)


def _line(decision: Decision) -> str:
    """`describe`'s first line: when, the move, rule/reason."""
    return describe(decision).splitlines()[0]
