"""Ctrl-C in the middle of `replay` or `simulate`, sent to a real process: it says so, exits
130, and the previous run's store, states file and report are exactly as they were.

The signal is sent once the run reports progress part-way (plain progress lines, one per
report: the run is then mid-way through a file or a simulation far longer than the rest)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPING = str(ROOT / "mappings" / "hubspot.yaml")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def events_file(path: Path, n: int, contacts: int) -> Path:
    with path.open("w") as handle:
        for i in range(n):
            handle.write(
                json.dumps(
                    {
                        "event_id": f"e{i}",
                        "contact_id": f"c{i % contacts}",
                        "type": ("send", "open", "send", "click")[i % 4],
                        "occurred_at": (T0 + timedelta(minutes=i)).isoformat(),
                    }
                )
                + "\n"
            )
    return path


def start(args: list[str], data_dir: Path, group: bool = False) -> subprocess.Popen:
    env = {
        **os.environ,
        "ELASTICITY_DATA_DIR": str(data_dir),
        "ELASTICITY_PROGRESS_SECONDS": "0",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(  # noqa: S603 - our own interpreter and command line
        [sys.executable, "-m", "crm_elasticity.connectors.cli", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=group,
    )


def run(args: list[str], data_dir: Path) -> None:
    proc = start(args, data_dir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def interrupt_when(proc: subprocess.Popen, marker: str, group: bool = False) -> tuple[int, str]:
    """Ctrl-C once stderr shows `marker` (to the process group with `group`, as a terminal
    sends it), then the exit code and all of stderr."""
    seen = []
    for line in proc.stderr:  # type: ignore[union-attr]
        seen.append(line)
        if marker in line:
            if group:
                os.killpg(proc.pid, signal.SIGINT)
            else:
                proc.send_signal(signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=300)
    return proc.returncode, "".join(seen) + rest


def fingerprint(*paths: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.mark.parametrize(("engine", "workers"), [("coded", 1), ("object", 1), ("coded", 2)])
def test_ctrl_c_during_replay_keeps_the_previous_results(tmp_path, engine, workers):
    data = tmp_path / "data"
    states = tmp_path / "states.jsonl"
    small = events_file(tmp_path / "small.jsonl", 40, 10)
    run(["replay", MAPPING, str(small), "--out", str(states)], data)
    before = fingerprint(data / "replay.sqlite3", states)
    big = events_file(tmp_path / "big.jsonl", 80_000, 5_000)
    proc = start(
        [
            "replay",
            MAPPING,
            str(big),
            "--out",
            str(states),
            "--engine",
            engine,
            "--workers",
            str(workers),
        ],
        data,
        group=workers > 1,
    )
    code, err = interrupt_when(proc, "lines/s", group=workers > 1)
    assert code == 130, err
    assert "interrupted; nothing written; previous results kept" in err
    assert "Traceback" not in err
    assert fingerprint(data / "replay.sqlite3", states) == before
    assert sorted(p.name for p in data.iterdir()) == ["replay.sqlite3"]
    assert not list(tmp_path.glob("*.partial"))


def test_ctrl_c_during_simulate_keeps_the_previous_store_and_report(tmp_path):
    data = tmp_path / "data"
    report = tmp_path / "report"
    run(["simulate", "--contacts", "200", "--days", "8", "--report", str(report)], data)
    files = [
        data / "simulate.sqlite3",
        *(report / n for n in ("summary.json", "audience.png", "summary.md")),
    ]
    before = fingerprint(*files)
    proc = start(["simulate", "--contacts", "3000", "--days", "400", "--report", str(report)], data)
    code, err = interrupt_when(proc, "days/s")
    assert code == 130, err
    assert "interrupted; nothing written; previous results kept" in err
    assert "Traceback" not in err
    assert fingerprint(*files) == before
    assert sorted(p.name for p in data.iterdir()) == ["simulate.sqlite3"]
    assert sorted(p.name for p in report.iterdir()) == [
        "audience.png",
        "summary.json",
        "summary.md",
    ]


def test_ctrl_c_while_publishing_lets_the_renames_finish_then_says_so(tmp_path):
    from crm_elasticity.core.publish import InterruptedAfterPublish, publish

    partial, final = tmp_path / "s.sqlite3.partial", tmp_path / "s.sqlite3"
    written, name = tmp_path / "out.partial", tmp_path / "out"
    for path, text in ((partial, "new"), (final, "old"), (written, "states")):
        path.write_text(text)

    def renames():
        os.kill(os.getpid(), signal.SIGINT)  # arrives as the renames start
        yield written, name

    with pytest.raises(InterruptedAfterPublish):
        publish(partial, final, renames())
    assert (final.read_text(), name.read_text()) == ("new", "states")
    assert not partial.exists() and not written.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
