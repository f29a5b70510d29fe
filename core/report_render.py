"""The report's words and tables: one section list, written out as Markdown or HTML."""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

Table = tuple[list[str], list[list[Any]]]


SENDS_SAVED_MEANS = (
    "A static list sends every stream email to every enrolled contact not suppressed for "
    "compliance; the elastic program's actual sends are its stream emails and its reactivation "
    "steps."
)
REACTIVATION_RATE_MEANS = (
    "Of the times contacts went Dormant, the share that came back (from Dormant, or through the "
    "alternate channel after no response)."
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ci(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{100 * low:.1f}%, {100 * high:.1f}%]"


def _ci_points(low: float | None, high: float | None) -> str:
    """An interval of a difference of two rates, in percentage points like the difference."""
    return "-" if low is None or high is None else f"[{100 * low:+.2f}, {100 * high:+.2f}] pts"


def _vs_baseline(arm: dict[str, Any], baseline: str) -> str:
    if arm["diff"] is not None:
        return f"{100 * arm['diff']:+.2f} pts"
    return "baseline" if arm["name"] == baseline else "- (no baseline exposures)"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _funnel_table(report: dict[str, Any]) -> Table:
    days, levels = report["funnel"]["days"], report["funnel"]["levels"]
    states = list(levels)
    since = (report["since"] or "")[:10]
    picked = [i for i, d in enumerate(days) if d >= since]
    step = max(1, len(picked) // 12)
    shown = picked[::step]
    if picked and shown[-1] != picked[-1]:
        shown.append(picked[-1])
    return ["day", *states], [[days[i], *(levels[s][i] for s in states)] for i in shown]


def experiment_table(exp: dict[str, Any]) -> Table:
    head = [
        "variant",
        "exposures",
        "sends",
        "opens",
        "clicks",
        "cycles",
        "reactivated",
        f"{exp['metric']} rate",
        "95% CI",
        f"vs {exp['baseline']}",
        "diff 95% CI",
        "relative lift",
        "lift 95% CI",
        "p",
    ]
    rows = [
        [
            a["name"],
            a["exposures"],
            a["sends"],
            a["opens"],
            a["clicks"],
            a["cycles"],
            a["reactivations"],
            _pct(a["rate"]),
            _ci(a["low"], a["high"]),
            _vs_baseline(a, exp["baseline"]),
            _ci_points(a["diff_low"], a["diff_high"]),
            _pct(a["lift"]),
            _ci(a["lift_low"], a["lift_high"]),
            _p(a["p_value"]),
        ]
        for a in exp["arms"]
    ]
    return head, rows


def sections(report: dict[str, Any]) -> Iterator[tuple[str, str, Table | None, str | None]]:
    """(title, text, table, plot key) in reading order."""
    o = report["overview"]
    window = f"since {report['since']}" if report["since"] else "all time"
    span = (
        f"{window}, {o['first_day']} to {o['last_day']}"
        if o["first_day"]
        else f"{window}; nothing decided yet"
    )
    contacts = "1 contact" if o["contacts"] == 1 else f"{o['contacts']:,} contacts"
    decisions = "1 decision" if o["decisions"] == 1 else f"{o['decisions']:,} decisions"
    yield (
        "Overview",
        f"{decisions} ({span}); {contacts} in the store.",
        (["state", "contacts now"], [[s, n] for s, n in o["contacts_by_state"].items()]),
        None,
    )
    yield (
        "Funnel by state over time",
        "Contacts in each state at the end of the day (UTC).",
        _funnel_table(report),
        "funnel",
    )
    t = report["transitions_by_reason"]
    rows = [[r["rule"], r["reason"], r["from"], r["to"], r["count"]] for r in t]
    yield (
        "Transitions by reason",
        "Status changes in the window and the rule that made them.",
        (["rule", "reason", "from", "to", "count"], rows),
        None,
    )
    back = report["reactivation"]
    yield (
        "Reactivation rate",
        REACTIVATION_RATE_MEANS,
        (
            ["went dormant", "came back", "reactivation rate"],
            [[f"{back['dormancies']:,}", f"{back['comebacks']:,}", _pct(back["rate"])]],
        ),
        None,
    )
    r = report["reactivation_by_cycle"]
    yield (
        "Reactivation rate by cycle",
        "A cycle starts at reactivation step 1 (sent, or withheld for the holdout); it "
        "counts as reactivated when the contact engages before the sequence ends.",
        (
            ["cycle", "group", "cycles started", "reactivated", "rate", "95% CI"],
            [
                [
                    x["cycle"],
                    x["group"],
                    x["cycles_started"],
                    x["reactivated"],
                    _pct(x["rate"]),
                    _ci(x["low"], x["high"]),
                ]
                for x in r
            ],
        ),
        None,
    )
    s = report["sends_saved"]
    yield (
        "Sends saved against a static list",
        SENDS_SAVED_MEANS,
        (
            ["static-list sends", "actual sends", "sends saved", "saved share"],
            [
                [
                    f"{s['static_list_sends']:,}",
                    f"{s['actual_sends']:,}",
                    f"{s['sends_saved']:,}",
                    _pct(s["saved_share"]),
                ]
            ],
        ),
        None,
    )
    sup = report["suppression"]
    reasons = sorted(set(sup["now"]) | set(sup["in_window"]))
    yield (
        "Suppression by reason",
        "",
        (
            ["reason", "suppressed now", "suppressed in window"],
            [[k, sup["now"].get(k, 0), sup["in_window"].get(k, 0)] for k in reasons],
        ),
        None,
    )
    for exp in report["experiments"]:
        text = (
            f"Element {exp['element']}, stage {exp['stage']}, metric {exp['metric']}. "
            f"Verdict: {exp['verdict']}."
        )
        yield (f"Experiment: {exp['name']}", text, experiment_table(exp), None)
    if report["holdout"]:
        h = report["holdout"]
        yield (
            "Holdout: reactivation sends against none",
            f"Held-out contacts' reactivation steps are withheld. Verdict: {h['verdict']}.",
            experiment_table(h),
            "experiments",
        )
    elif report["experiments"]:
        yield ("Experiment plot", "", None, "experiments")
    v = report["transitions_by_policy_version"]
    yield (
        "Transitions by policy version",
        "",
        (
            ["policy version", "from", "to", "count", "first day", "last day"],
            [
                [x["version"], x["from"], x["to"], x["count"], x["first_day"], x["last_day"]]
                for x in v
            ],
        ),
        None,
    )
    log = report["change_log"]
    yield (
        "Policy change log",
        "",
        (
            ["when", "kind", "version", "what changed"],
            [[e["at"], e["kind"], e["version"], "; ".join(e["changes"])] for e in log],
        ),
        None,
    )
    dq = report["data_quality"]
    yield (
        "Data quality",
        "Events for contacts the store did not know (they enrolled on "
        "that event), failed CRM writes recorded by the connectors, late "
        "events decided in their place (revised) or, older than the contact's kept history, "
        "at its current time, events the worker set aside because they could not be "
        "decided (now in quarantine; see `elasticity inbox`), and events whose CRM value was "
        "longer than a url may be (2,048 characters; the url keeps its start). For a replay, "
        "also the lines it skipped as bad, the events whose id it had already counted "
        "(duplicates) and the lines whose keys beyond the event format it ignored (over the "
        "whole run).",
        (["measure", "count"], [[k.replace("_", " "), n] for k, n in dq.items()]),
        None,
    )


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Elasticity report: {report['store']}",
        "",
        f"Generated {report['generated_at']}. Plots: `--format html`.",
        "",
    ]
    for title, text, table, _plot in sections(report):
        lines += [f"## {title}", ""]
        if text:
            lines += [text, ""]
        if table is not None:
            head, rows = table
            if rows:
                lines.append("| " + " | ".join(head) + " |")
                lines.append("|" + "---|" * len(head))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            else:
                lines.append("(nothing in this window)")
            lines.append("")
    return "\n".join(lines)


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:72rem;
color:#1d2430;padding:0 1rem}h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;
border-bottom:1px solid #dde3ea;padding-bottom:.25rem}table{border-collapse:collapse;
font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #dde3ea;padding:.25rem .5rem;
text-align:right}th{background:#f3f6f9}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto}p.note{color:#52606d}
"""


def to_html(report: dict[str, Any], plots: dict[str, str]) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Elasticity report</title><style>{_STYLE}</style></head><body>",
        f'<h1>Elasticity report</h1><p class="note">{esc(report["store"])}, generated '
        f"{esc(report['generated_at'])}</p>",
    ]
    for title, text, table, plot in sections(report):
        out.append(f"<section><h2>{esc(title)}</h2>")
        if text:
            out.append(f'<p class="note">{esc(text)}</p>')
        if plot and plot in plots:
            out.append(f'<img alt="{esc(title)}" src="data:image/png;base64,{plots[plot]}">')
        if table is not None:
            head, rows = table
            out.append(
                "<table><thead><tr>"
                + "".join(f"<th>{esc(h)}</th>" for h in head)
                + "</tr></thead><tbody>"
            )
            for row in rows:
                out.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
