"""`elasticity compare` on a large history, measured in one run.

    python bench/compare.py                  # 1M events / 100K contacts
    python bench/compare.py --quick          # 100K events / 10K contacts

Writes a synthetic events file (every contact enrolls, then sends, opens, clicks, visits and a
few unsubscribes over 180 days), then compares the shipped HubSpot mapping with a candidate
that goes Dormant after 60 days instead of 90, as `elasticity compare` does (both replays at
once, one process each). Prints the wall time, the peak RSS of the comparing processes, the
contacts that end differently, and the wall time of one replay alone for the ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import START, event_dicts  # noqa: E402 - the stream bench/engine.py replays


def write_events(path: Path, events: int, contacts: int, seed: int = 7) -> None:
    with path.open("w") as out:
        for row in event_dicts(events, contacts, seed):
            out.write(json.dumps(row) + "\n")


def run(args: list[str], data_dir: Path) -> tuple[float, int, str]:
    """Wall seconds, exit code and stdout of one `elasticity` command in its own process."""
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - our own CLI with arguments built here
        [sys.executable, "-m", "crm_elasticity.connectors.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "ELASTICITY_DATA_DIR": str(data_dir),
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
        },
        check=False,
    )
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(args[:1])} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - started, done.returncode, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100K events / 10K contacts")
    options = parser.parse_args()
    events, contacts = (100_000, 10_000) if options.quick else (1_000_000, 100_000)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        stream = work / "events.jsonl"
        write_events(stream, events, contacts)
        base = ROOT / "mappings" / "hubspot.yaml"
        candidate = work / "candidate.yaml"
        candidate.write_text(
            base.read_text().replace("dormant_after_days: 90", "dormant_after_days: 60")
        )
        until = (START + timedelta(days=181)).isoformat()
        one, _, _ = run(
            [
                "replay",
                str(base),
                str(stream),
                "--until",
                until,
                "--out",
                str(work / "states.jsonl"),
            ],
            work,
        )
        wall, code, text = run(
            [
                "compare",
                str(base),
                str(candidate),
                str(stream),
                "--until",
                until,
                "--format",
                "json",
            ],
            work,
        )
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        report = json.loads(text)
    print(f"compare, {events:,} events / {contacts:,} contacts, dormancy 90 vs 60 days")
    print(
        f"  wall time              {wall:8.1f} s  (one replay alone {one:.1f} s: "
        f"{wall / one:.2f}x one replay for two)"
    )
    print(f"  peak RSS (one process) {peak_mb:8.0f} MB")
    print(
        f"  contacts ending apart  {report['contacts_changed']:8,} of {report['contacts']:,} "
        f"(exit {code})"
    )
    for move, count in list(report["final_state_moves"].items())[:5]:
        print(f"    {move:<40} {count:,}")


if __name__ == "__main__":
    main()
