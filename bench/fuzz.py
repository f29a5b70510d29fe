"""Fuzz the webhook intake: >= 100K cases over HubSpot (v3, and v1/v2 where a mapping allows
them) and Salesforce (outbound-message SOAP, signed JSON events): a fast seeded mutation
fuzzer for the bulk (`--cases`) plus hypothesis's structured search (`--hypothesis`).

Prints inputs tried, outcomes by case and status class, forged/stale requests accepted (must be
0), unhandled exceptions and 5xx answers (must be 0), and peak RSS (entity bombs must not
expand). Exits 1 on any violation.

    python bench/fuzz.py [--cases 100000] [--hypothesis 3000] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.reliability import fuzz_random  # noqa: E402
from tests.reliability.fuzz_cases import CASES, Outcomes, Violation, build_targets  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def property_for(case, targets, outcomes: Outcomes, examples: int, at_seed: int):
    @seed(at_seed)
    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.data())
    def run(data: st.DataObject) -> None:
        case(targets, outcomes, data)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--hypothesis", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # rejected requests log by design; keep the output short
    targets = build_targets()
    outcomes = Outcomes()
    per_case = -(-args.hypothesis // len(CASES))
    violations: list[str] = []
    started, rss_start = time.perf_counter(), rss_mb()
    rng = random.Random(args.seed)
    names = list(fuzz_random.CASES)
    for i in range(args.cases):
        try:
            fuzz_random.CASES[names[i % len(names)]](rng, targets, outcomes)
        except Violation as exc:
            violations.append(str(exc)[:1000])
        if i and i % 20_000 == 0:
            print(f"  mutation fuzzer: {i} inputs", file=sys.stderr)
    for name, case in CASES.items():
        try:
            property_for(case, targets, outcomes, per_case, args.seed)()
        except Violation as exc:
            violations.append(str(exc)[:500])
        print(f"  {name}: done, {outcomes.tried} inputs so far", file=sys.stderr)
    seconds = time.perf_counter() - started
    by_case: dict[str, dict[str, int]] = {}
    for (case, status), n in sorted(outcomes.counts.items(), key=str):
        by_case.setdefault(case, {})[str(status)] = n
    summary = {
        "inputs_tried": outcomes.tried,
        "seconds": round(seconds, 1),
        "violations": len(violations),
        "forged_or_stale_accepted": sum("forged/stale" in v for v in violations),
        "outcomes": by_case,
        "rss_mb_start": round(rss_start, 1),
        "rss_mb_peak": round(rss_mb(), 1),
        "events_recorded": targets.recorded,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"inputs tried: {summary['inputs_tried']} in {summary['seconds']} s")
        for case, statuses in by_case.items():
            print(f"  {case:36} " + "  ".join(f"{s}: {n}" for s, n in statuses.items()))
        print(f"violations (5xx, exceptions, forged accepted): {len(violations)}")
        print(f"forged or stale requests accepted: {summary['forged_or_stale_accepted']}")
        print(f"peak RSS: {summary['rss_mb_peak']} MB (start {summary['rss_mb_start']} MB)")
    for v in violations:
        print("VIOLATION:", v, file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
