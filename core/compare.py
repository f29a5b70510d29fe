"""`elasticity compare`: what a candidate policy would have done to the same audience as the
base policy, replayed on the same events, reported like a plan (what would change, by how much).

Both replays run at once in their own processes (each is one process's CPU), each into its own
store beside the other (`compare-base.sqlite3`, `compare-candidate.sqlite3` in the data dir), so
`explain CONTACT --compare` can show a contact's two histories afterwards.
"""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from crm_elasticity.core.data_dir import COMPARE_SIDES, DataDir
from crm_elasticity.core.experiment_results import counts_by_arm, counts_by_assignment
from crm_elasticity.core.ledger_view import LedgerView
from crm_elasticity.core.mapping import Mapping, load_mapping
from crm_elasticity.core.models import STATE_COLOURS, ContactState
from crm_elasticity.core.report import funnel, headline_of, suppression
from crm_elasticity.core.sqlite_store import SQLiteStore

SIDES = COMPARE_SIDES
SAMPLE_IDS = 5
"""Contact ids shown for each kind of difference: enough to `explain` a few, never a dump."""


def _replay_side(
    mapping_path: str, events_path: str, store_path: str, until: str | None
) -> dict[str, int]:
    """One side's replay, in its own process (the mapping is read there: nothing unpicklable
    crosses the process boundary)."""
    from crm_elasticity.core.replay import replay_file

    mapping = load_mapping(mapping_path)
    horizon = datetime.fromisoformat(until) if until else None
    result = replay_file(mapping, Path(events_path), store_path, until=horizon)
    result.store.close()
    return {
        "events_applied": result.stats.applied,
        "duplicates": result.stats.duplicates,
        "bad_lines": result.bad_lines,
        "decisions": result.stats.decisions,
    }


def _final(state: ContactState) -> str:
    if state.suppression_reason is not None:
        return f"{state.campaign_status.value} ({state.suppression_reason.value})"
    return state.campaign_status.value


@dataclass
class Comparison:
    base: str
    candidate: str
    runs: dict[str, dict[str, int]]
    contacts: int = 0
    changed: int = 0
    moves: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    sides: dict[str, dict[str, Any]] = field(default_factory=dict)
    audience: dict[str, Any] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return (
            self.changed == 0
            and self.sides["base"]["figures"] == self.sides["candidate"]["figures"]
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "candidate": self.candidate,
            "identical": self.identical,
            "runs": self.runs,
            "contacts": self.contacts,
            "contacts_changed": self.changed,
            "final_state_moves": self.moves,
            "samples": self.samples,
            "sides": self.sides,
            "audience": self.audience,
        }


def _figures(store: LedgerView, mapping: Mapping) -> dict[str, Any]:
    top = headline_of(store)
    saved, back = top["sends_saved"], top["reactivation"]
    handoffs = store.execute(
        "SELECT COALESCE(SUM(n), 0) FROM report_rows "
        "WHERE to_status = 'Engaged' AND from_status <> 'Engaged'"
    )[0][0]
    by_arm = counts_by_arm(store)
    exposures = {
        spec.name: {v: c.sends for v, c in sorted(counts_by_assignment(by_arm, spec.name).items())}
        for spec in mapping.experiments
    }
    return {
        "sends": saved["actual_sends"],
        "static_list_sends": saved["static_list_sends"],
        "sends_saved": saved["sends_saved"],
        "handoffs_to_sales": int(handoffs),
        "reactivations": back["comebacks"],
        "dormancies": back["dormancies"],
        "suppressed_by_reason": dict(sorted(suppression(store)["now"].items())),
        "experiment_sends_by_variant": exposures,
    }


def _in_stream(store: LedgerView) -> dict[str, int]:
    days, levels, _ = funnel(store)
    return {day: levels["Active"][i] + levels["Reactivated"][i] for i, day in enumerate(days)}


def compare_policies(
    base_path: Path,
    candidate_path: Path,
    events_path: Path,
    data_dir: Path,
    until: datetime | None = None,
    parallel: bool = True,
) -> Comparison:
    """Replay both mappings on the same events and compare what they did."""
    data_dir.mkdir(parents=True, exist_ok=True)
    stores = {side: DataDir(data_dir).compare(side) for side in SIDES}
    paths = {"base": base_path, "candidate": candidate_path}
    args = {
        side: (
            str(paths[side]),
            str(events_path),
            str(stores[side]),
            until.isoformat() if until else None,
        )
        for side in SIDES
    }
    if parallel:
        with ProcessPoolExecutor(max_workers=2) as pool:
            futures = {side: pool.submit(_replay_side, *args[side]) for side in SIDES}
            runs = {side: futures[side].result() for side in SIDES}
    else:
        runs = {side: _replay_side(*args[side]) for side in SIDES}
    result = Comparison(str(base_path), str(candidate_path), runs)
    opened = {side: SQLiteStore(stores[side]) for side in SIDES}
    try:
        _diff_states(result, opened["base"], opened["candidate"])
        mappings = {side: load_mapping(paths[side]) for side in SIDES}
        streams = {}
        for side in SIDES:
            view = LedgerView(opened[side])
            try:
                figures = _figures(view, mappings[side])
                streams[side] = _in_stream(view)
            finally:
                view.close()
            result.sides[side] = {
                "mapping": str(paths[side]),
                "policy_version": mappings[side].policy.version,
                "figures": figures,
            }
        days = sorted(set(streams["base"]) | set(streams["candidate"]))
        result.audience = {
            "days": days,
            "in_send_stream": {side: [streams[side].get(d, 0) for d in days] for side in SIDES},
        }
    finally:
        for store in opened.values():
            store.close()
    return result


def _diff_states(result: Comparison, base: SQLiteStore, candidate: SQLiteStore) -> None:
    """Walk both stores' contacts in id order at once (each is paged, so memory stays flat)."""
    moves: Counter = Counter()
    samples: dict[str, list[str]] = {}
    left, right = _states(base), _states(candidate)
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.contact_id < b.contact_id):
            assert a is not None
            key, cid, a = f"{_final(a)} -> (absent)", a.contact_id, next(left, None)
        elif a is None or b.contact_id < a.contact_id:
            key, cid, b = f"(absent) -> {_final(b)}", b.contact_id, next(right, None)
        else:
            cid, before, after = a.contact_id, _final(a), _final(b)
            key = f"{before} -> {after}" if before != after else ""
            a, b = next(left, None), next(right, None)
        result.contacts += 1
        if key:
            moves[key] += 1
            shown = samples.setdefault(key, [])
            if len(shown) < SAMPLE_IDS:
                shown.append(cid)
    result.changed = sum(moves.values())
    result.moves = dict(moves.most_common())
    result.samples = {key: samples[key] for key in result.moves}


def _states(store: SQLiteStore):
    for page in store.iter_contacts():
        yield from page


# ---- rendering -----------------------------------------------------------------------------

_FIGURES = (
    ("sends", "sends made"),
    ("sends_saved", "sends saved against a static list"),
    ("handoffs_to_sales", "hand-offs to sales"),
    ("reactivations", "reactivations (comebacks)"),
    ("dormancies", "times contacts went Dormant"),
)


def _figure_rows(c: Comparison) -> list[list[str]]:
    base, cand = c.sides["base"]["figures"], c.sides["candidate"]["figures"]
    rows = [
        [label, f"{base[key]:,}", f"{cand[key]:,}", f"{cand[key] - base[key]:+,}"]
        for key, label in _FIGURES
    ]
    reasons = sorted(set(base["suppressed_by_reason"]) | set(cand["suppressed_by_reason"]))
    for reason in reasons:
        x, y = (
            base["suppressed_by_reason"].get(reason, 0),
            cand["suppressed_by_reason"].get(reason, 0),
        )
        rows.append([f"suppressed now: {reason}", f"{x:,}", f"{y:,}", f"{y - x:+,}"])
    experiments = sorted(
        set(base["experiment_sends_by_variant"]) | set(cand["experiment_sends_by_variant"])
    )
    for name in experiments:
        x_arms = base["experiment_sends_by_variant"].get(name, {})
        y_arms = cand["experiment_sends_by_variant"].get(name, {})
        for variant in sorted(set(x_arms) | set(y_arms)):
            x, y = x_arms.get(variant, 0), y_arms.get(variant, 0)
            rows.append([f"experiment {name}: {variant} sends", f"{x:,}", f"{y:,}", f"{y - x:+,}"])
    return rows


def _verdict(c: Comparison) -> str:
    if c.identical:
        return f"No difference: both policies end every one of {c.contacts:,} contacts alike."
    verb = "ends" if c.changed == 1 else "end"
    return (
        f"{c.changed:,} of {c.contacts:,} contacts {verb} in a different state under the candidate."
    )


def to_markdown(c: Comparison) -> str:
    lines = [
        "# Policy comparison",
        "",
        f"- base: `{c.base}` (policy {c.sides['base']['policy_version']})",
        f"- candidate: `{c.candidate}` (policy {c.sides['candidate']['policy_version']})",
        "",
        _verdict(c),
        "",
        "| figure | base | candidate | change |",
        "|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _figure_rows(c)]
    if c.moves:
        lines += [
            "",
            "## Contacts whose final state differs",
            "",
            "| base -> candidate | contacts | e.g. |",
            "|---|---|---|",
        ]
        lines += [f"| {key} | {n:,} | {', '.join(c.samples[key])} |" for key, n in c.moves.items()]
    lines += ["", "`elasticity explain CONTACT --compare` shows one contact's two histories."]
    return "\n".join(lines) + "\n"


def _plot_png(c: Comparison) -> str | None:
    days = c.audience.get("days") or []
    if not days:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [datetime.fromisoformat(d) for d in days]
    fig, ax = plt.subplots(figsize=(9, 4), dpi=96)
    styles = {
        "base": (STATE_COLOURS["Active"], "-"),
        "candidate": (STATE_COLOURS["Reactivated"], "--"),
    }
    for side in SIDES:
        colour, dash = styles[side]
        ax.step(
            x,  # type: ignore[arg-type]  # matplotlib converts datetimes; its stubs say floats
            c.audience["in_send_stream"][side],
            where="post",
            color=colour,
            linestyle=dash,
            label=f"{side}: {Path(c.sides[side]['mapping']).name}",
        )
    ax.set_title("Contacts in the send stream (end of day, UTC)")
    ax.set_xlabel("date (UTC)")
    ax.set_ylabel("contacts")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def to_html(c: Comparison) -> str:
    from html import escape

    def table(head: list[str], rows: list[list[str]]) -> str:
        cells = "".join(f"<th>{escape(h)}</th>" for h in head)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
        )
        return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"

    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        "<title>Policy comparison</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#1f2933}",
        "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #cbd2d9;",
        "padding:.3rem .6rem;text-align:right}th{background:#f5f7fa}",
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}",
        "</style></head><body><h1>Policy comparison</h1>",
        f"<p>base: <code>{escape(c.base)}</code>; candidate: "
        f"<code>{escape(c.candidate)}</code></p><p><strong>{escape(_verdict(c))}</strong></p>",
        table(["figure", "base", "candidate", "change"], _figure_rows(c)),
    ]
    plot = _plot_png(c)
    if plot:
        parts.append(
            f'<img alt="contacts in the send stream, base and candidate" '
            f'src="data:image/png;base64,{plot}">'
        )
    if c.moves:
        parts.append("<h2>Contacts whose final state differs</h2>")
        parts.append(
            table(
                ["base -> candidate", "contacts", "e.g."],
                [[k, f"{n:,}", ", ".join(c.samples[k])] for k, n in c.moves.items()],
            )
        )
    parts.append("</body></html>\n")
    return "".join(parts)


def render(c: Comparison, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(c.as_dict(), indent=2) + "\n"
    return to_html(c) if fmt == "html" else to_markdown(c)
