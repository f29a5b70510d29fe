"""`elasticity report`: what a marketing team reads, from the ledger, as Markdown, HTML or JSON.

Every figure comes from the store's ledger reader (`core.ledger_reader`): its daily roll-up
(`core.rollup`), contacts by state, policy notes and data-quality counts, aggregated by SQL over
an in-memory copy (`core.ledger_view`). A 10M-decision ledger reports in seconds and in constant
memory, from either store (SQLite or DynamoDB). The HTML is one self-contained file: styles
inline, plots embedded as base64 PNG, no scripts.
"""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_elasticity.core.cursors import Cursors
from crm_elasticity.core.experiment_results import (
    counts_by_arm,
    experiment_results,
    holdout_results,
)
from crm_elasticity.core.ledger_reader import LedgerReader
from crm_elasticity.core.ledger_view import LedgerView
from crm_elasticity.core.models import COMPLIANCE_REASONS, STATE_COLOURS, Status, iso_utc
from crm_elasticity.core.policy_versions import change_log, versions_by_transition
from crm_elasticity.core.proportions import wilson

if TYPE_CHECKING:
    from crm_elasticity.core.mapping import Mapping

STATES = [s.value for s in Status]
_COMPLIANCE = {r.value for r in COMPLIANCE_REASONS}


def _sql(store: LedgerView, sql: str, params: tuple = ()) -> list[tuple]:
    return store.execute(sql, params)


# ---- sections ------------------------------------------------------------------------------


def funnel(store: LedgerView) -> tuple[list[str], dict[str, list[int]], dict[str, list[int]]]:
    """Contacts in each state at the end of every day, from all-time transitions (a window
    shows levels, and levels need the history before it). Also the day's sends and the
    compliance-suppressed level, for the static-list comparison."""
    rows = _sql(
        store,
        """
        SELECT day, rule, reason, from_status, to_status, SUM(n) FROM ledger_rollup
        WHERE from_status <> to_status OR rule = 'send'
           OR (rule = 'compliance' AND from_status = 'Suppressed')
        GROUP BY 1, 2, 3, 4, 5 ORDER BY 1""",
    )
    days: list[str] = []
    levels = {s: 0 for s in STATES}
    compliance = 0
    series: dict[str, list[int]] = {s: [] for s in STATES}
    extra: dict[str, list[int]] = {
        "compliance_suppressed": [],
        "stream_sends": [],
        "all_sends": [],
        "stream_at_start": [],
    }
    current: str | None = None
    sends = stream_sends = 0
    stream_start = 0

    def close_day() -> None:
        days.append(current)  # type: ignore[arg-type]
        for s in STATES:
            series[s].append(levels[s])
        extra["compliance_suppressed"].append(compliance)
        extra["stream_sends"].append(stream_sends)
        extra["all_sends"].append(sends)
        extra["stream_at_start"].append(stream_start)

    for day, rule, reason, src, dst, n in rows:
        if day != current:
            if current is not None:
                close_day()
            current, sends, stream_sends = day, 0, 0
            stream_start = levels["Active"] + levels["Reactivated"]
        if rule == "send":
            sends += n
            if src in ("Active", "Reactivated"):
                stream_sends += n
            if src == dst:
                continue
        if src == dst:  # a compliance exit of a no_response contact: still Suppressed
            if reason in _COMPLIANCE:
                compliance += n
            continue
        if src:
            levels[src] -= n
        levels[dst] += n
        if dst == "Suppressed" and reason in _COMPLIANCE:
            compliance += n
        if src == "Suppressed" and reason == "resubscribed":
            compliance -= n
    if current is not None:
        close_day()
    return days, series, extra


def sends_saved(
    days: list[str],
    series: dict[str, list[int]],
    extra: dict[str, list[int]],
    since_day: str | None,
) -> dict[str, Any]:
    """Sends a static list would have made: every stream send went, on a static list, to every
    enrolled contact not suppressed for compliance. Saved = that minus what was sent."""
    static = actual = 0.0
    for i, day in enumerate(days):
        if since_day and day < since_day:
            continue
        stream = extra["stream_at_start"][i]
        enrolled = sum(series[s][i - 1] for s in STATES) if i else 0
        listed = enrolled - (extra["compliance_suppressed"][i - 1] if i else 0)
        if stream > 0 and extra["stream_sends"][i]:
            static += extra["stream_sends"][i] * max(listed, stream) / stream
        actual += extra["all_sends"][i]
    saved = static - actual
    return {
        "static_list_sends": round(static),
        "actual_sends": round(actual),
        "sends_saved": round(saved),
        "saved_share": round(saved / static, 4) if static else 0.0,
    }


COMEBACK_REASONS = ("reactivated_from_dormant", "reactivated_from_alternate_channel")


def reactivation(store: LedgerView) -> dict[str, Any]:
    """The reactivation rate, defined once: of the times contacts went Dormant, the share that
    ended in a comeback (from Dormant, or from the alternate channel after `no_response`)."""
    dormancies, comebacks = _sql(
        store,
        f"""
        SELECT
          SUM(CASE WHEN to_status = 'Dormant' AND from_status <> 'Dormant' THEN n ELSE 0 END),
          SUM(CASE WHEN reason IN {COMEBACK_REASONS} THEN n ELSE 0 END)
        FROM report_rows""",  # noqa: S608 - constants, not input
    )[0]
    dormancies, comebacks = int(dormancies or 0), int(comebacks or 0)
    return {
        "dormancies": dormancies,
        "comebacks": comebacks,
        "rate": round(comebacks / dormancies, 4) if dormancies else 0.0,
    }


def headline(reader: LedgerReader, since: datetime | None = None) -> dict[str, Any]:
    """The figures `simulate` prints and `report` shows, computed in this one place from the
    ledger so the two can never disagree."""
    view = LedgerView(reader, since, contacts=False)
    try:
        return headline_of(view, since)
    finally:
        view.close()


def headline_of(store: LedgerView, since: datetime | None = None) -> dict[str, Any]:
    days, series, extra = funnel(store)
    since_day = iso_utc(since)[:10] if since else None
    return {
        "sends_saved": sends_saved(days, series, extra, since_day),
        "reactivation": reactivation(store),
    }


def transitions_by_reason(store: LedgerView) -> list[dict[str, Any]]:
    rows = _sql(
        store,
        """
        SELECT rule, reason, from_status, to_status, SUM(n) FROM report_rows
        WHERE from_status <> to_status GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC""",
    )
    return [
        {"rule": r, "reason": why, "from": a or "(new)", "to": b, "count": n}
        for r, why, a, b, n in rows
    ]


def reactivation_by_cycle(store: LedgerView) -> list[dict[str, Any]]:
    """Per cycle, per holdout group: cycles started (step 1, sent or withheld) and contacts
    who came back before the sequence ended."""
    rows = _sql(
        store,
        """
        SELECT cycle, CASE WHEN arm = '' THEN '' ELSE json_extract(arm, '$.holdout') END,
          SUM(CASE WHEN reason = 'reactivation_step_1' THEN n ELSE 0 END),
          SUM(CASE WHEN reason = 'reactivated_from_dormant' THEN n ELSE 0 END)
        FROM report_rows WHERE cycle > 0 GROUP BY 1, 2 ORDER BY 1, 2""",
    )
    out = []
    for cycle, grp, started, back in rows:
        ci = wilson(min(back, started), started)
        out.append(
            {
                "cycle": cycle,
                "group": grp or "all",
                "cycles_started": started,
                "reactivated": back,
                "rate": back / started if started else 0.0,
                "low": ci.low,
                "high": ci.high,
            }
        )
    return out


def suppression(store: LedgerView) -> dict[str, Any]:
    current = _sql(
        store,
        """SELECT COALESCE(suppression_reason, 'unknown'), SUM(n)
        FROM contacts WHERE campaign_status = 'Suppressed' GROUP BY 1 ORDER BY 2 DESC""",
    )
    new = _sql(
        store,
        """
        SELECT CASE WHEN reason IN ('unsubscribe', 'hard_bounce', 'spam_complaint')
                    THEN reason ELSE 'no_response' END, SUM(n)
        FROM report_rows WHERE to_status = 'Suppressed' AND from_status <> 'Suppressed'
        GROUP BY 1 ORDER BY 2 DESC""",
    )
    return {"now": dict(current), "in_window": dict(new)}


def data_quality(store: LedgerView) -> dict[str, Any]:
    rows = _sql(
        store,
        """
        SELECT
          SUM(CASE WHEN rule = 'enroll' AND event_type NOT IN ('', 'enroll') THEN n ELSE 0 END),
          SUM(CASE WHEN rule = 'write_back' AND reason = 'write_failed' THEN n ELSE 0 END),
          SUM(CASE WHEN rule = 'write_back' AND reason = 'task_failed' THEN n ELSE 0 END),
          SUM(CASE WHEN rule = 'experiments' THEN n ELSE 0 END),
          SUM(CASE WHEN rule = 'compliance' AND reason = 'already_suppressed' THEN n ELSE 0 END),
          SUM(CASE WHEN reason = 'revised' THEN n ELSE 0 END),
          SUM(CASE WHEN rule = 'order' AND reason = 'decided_late' THEN n ELSE 0 END)
        FROM report_rows""",
    )
    values = [int(v or 0) for v in rows[0]]
    keys = [
        "events_for_unknown_contacts",
        "failed_writes",
        "failed_tasks",
        "late_experiment_assignments",
        "repeated_compliance_exits",
        "late_events_revised",
        "late_events_beyond_history",
    ]
    quality = dict(zip(keys, values, strict=True))
    # The store's own counts (quarantined events, events marked as they were decided such as
    # urls cut): not windowed by --since, what sits in quarantine now needs someone's attention.
    quality.update(store.quality)
    quality.update(replay_intake(store))
    return quality


def replay_intake(store: LedgerView) -> dict[str, Any]:
    """A replay's lines it could not use (the whole run, not windowed), from its notes."""
    rows = _sql(store, "SELECT value FROM cursors WHERE name = ?", (Cursors.replay_intake,))
    if not rows:
        return {}
    intake = json.loads(rows[0][0])
    keys = ", ".join(f"{key} ({n:,})" for key, n in intake.get("unknown_keys", {}).items())
    return {
        "replay_bad_lines_skipped": intake["bad_lines"],
        "replay_duplicate_events": intake["duplicates"],
        "replay_lines_with_unknown_keys": intake["unknown_key_lines"],
        **({"replay_unknown_keys_ignored": keys} if keys else {}),
    }


def overview(store: LedgerView) -> dict[str, Any]:
    decided = _sql(store, "SELECT COALESCE(SUM(n), 0), MIN(day), MAX(day) FROM report_rows")[0]
    contacts = dict(_sql(store, "SELECT campaign_status, SUM(n) FROM contacts GROUP BY 1"))
    return {
        "decisions": decided[0],
        "first_day": decided[1],
        "last_day": decided[2],
        "contacts": sum(contacts.values()),
        "contacts_by_state": {s: contacts.get(s, 0) for s in STATES},
    }


# ---- assembling ----------------------------------------------------------------------------


def build(
    source: Path | str | LedgerReader,
    since: datetime | None,
    mapping: Mapping | None,
    label: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report as a dict: from a store file (SQLite) or any ledger reader. `label` names the
    store in the report (default: the file's path), `now` is its `generated_at`."""
    if isinstance(source, LedgerReader):
        return _build(source, since, mapping, label or "", now)
    from crm_elasticity.core.sqlite_store import SQLiteStore

    store = SQLiteStore(source)
    try:
        return _build(store, since, mapping, label or str(source), now)
    finally:
        store.close()


def _build(
    reader: LedgerReader,
    since: datetime | None,
    mapping: Mapping | None,
    label: str,
    now: datetime | None,
) -> dict[str, Any]:
    store = LedgerView(reader, since)
    try:
        days, series, extra = funnel(store)
        since_day = iso_utc(since)[:10] if since else None
        report: dict[str, Any] = {
            "store": label,
            "generated_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
            "since": iso_utc(since),
            "overview": overview(store),
            "funnel": {"days": days, "levels": series},
            "transitions_by_reason": transitions_by_reason(store),
            "transitions_by_policy_version": versions_by_transition(store),
            "change_log": change_log(store),
            "reactivation": reactivation(store),
            "reactivation_by_cycle": reactivation_by_cycle(store),
            "sends_saved": sends_saved(days, series, extra, since_day),
            "suppression": suppression(store),
            "data_quality": data_quality(store),
            "experiments": [],
            "holdout": None,
        }
        if mapping is not None:
            by_arm = counts_by_arm(store)
            report["experiments"] = [
                experiment_results(store, mapping, spec, by_arm=by_arm).as_dict()
                for spec in mapping.experiments
            ]
            held = holdout_results(store, mapping, by_arm=by_arm)
            report["holdout"] = held.as_dict() if held else None
    finally:
        store.close()
    return report


def render_report(
    source: Path | str | LedgerReader,
    fmt: str,
    since: datetime | None = None,
    mapping: Mapping | None = None,
    label: str | None = None,
    now: datetime | None = None,
) -> str:
    report = build(source, since, mapping, label, now)
    return render(report, fmt)


def render(report: dict[str, Any], fmt: str) -> str:
    """The report in one of the formats: json, html (self-contained) or md."""
    if fmt == "json":
        return json.dumps(report, indent=2, default=str) + "\n"
    if fmt == "html":
        from crm_elasticity.core.report_render import to_html

        return to_html(report, _plots(report))
    from crm_elasticity.core.report_render import to_markdown

    return to_markdown(report)


def _plots(report: dict[str, Any]) -> dict[str, str]:
    """PNG plots as base64, drawn headless (Agg) so no display is needed. Without matplotlib
    (the Lambda package leaves it out) the report has its tables and no plots."""
    try:
        import matplotlib
    except ImportError:
        return {}

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, str] = {}
    days = report["funnel"]["days"]
    if days:
        fig, ax = plt.subplots(figsize=(9, 4), dpi=96)
        x = [datetime.fromisoformat(d) for d in days]
        levels = report["funnel"]["levels"]
        # matplotlib converts datetimes through its units registry; its stubs say floats.
        ax.stackplot(
            x,  # type: ignore[arg-type]
            *[levels[s] for s in STATES],
            labels=STATES,
            step="post",
            colors=[STATE_COLOURS[s] for s in STATES],
        )
        if report["since"]:
            since = datetime.fromisoformat(report["since"][:10])
            ax.axvline(
                since,  # type: ignore[arg-type]
                color="k",
                lw=1,
                ls="--",
                label="report window starts",
            )
        ax.set_title("Contacts by state (end of day, UTC)")
        ax.set_xlabel("date (UTC)")
        ax.set_ylabel("contacts")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
        fig.autofmt_xdate()
        plots["funnel"] = _png(fig, plt)
    rows = [e for e in report["experiments"] if e["arms"]]
    if report["holdout"]:
        rows.append(report["holdout"])
    if rows:
        fig, axes = plt.subplots(
            1, len(rows), figsize=(3.2 * len(rows), 3.2), dpi=96, squeeze=False
        )
        for ax, exp in zip(axes[0], rows, strict=True):
            arms = exp["arms"]
            rates = [a["rate"] for a in arms]
            err = [[a["rate"] - a["low"] for a in arms], [a["high"] - a["rate"] for a in arms]]
            ax.bar([a["name"] for a in arms], rates, yerr=err, capsize=4, color="#4C78A8")
            ax.set_title(f"{exp['name']} ({exp['metric']})", fontsize=9)
            ax.set_ylabel(f"{exp['metric']} rate (95% CI)", fontsize=8)
            ax.tick_params(labelsize=8)
        fig.tight_layout()
        plots["experiments"] = _png(fig, plt)
    return plots


def _png(fig: Any, plt: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
