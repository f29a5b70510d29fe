"""`elasticity sandbox hubspot`: the stand-in, serve, signed webhooks and a sync, as real
processes; the hand-signed curl recipe it prints; and what it says outside a source checkout."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crm_elasticity.connectors import sandbox
from crm_elasticity.connectors.cli import app
from crm_elasticity.connectors.hubspot.provision import list_filter_branch
from crm_elasticity.core.mapping import load_mapping
from crm_elasticity.core.models import Status

ROOT = Path(__file__).resolve().parents[1]
MAPPING = ROOT / "mappings" / "hubspot.yaml"
DEADLINE = 120.0


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    for name in (
        "HUBSPOT_BASE_URL",
        "HUBSPOT_ACCESS_TOKEN",
        "HUBSPOT_CLIENT_SECRET",
        "ELASTICITY_DATA_DIR",
        "ELASTICITY_PUBLIC_URL",
    ):
        env.pop(name, None)
    return env


def _sandbox(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "crm_elasticity.connectors.cli", "sandbox", "hubspot", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_sandbox_writes_back_to_contacts_and_exits_0(tmp_path: Path) -> None:
    box = tmp_path / "box"
    proc = _sandbox("--data-dir", str(box), cwd=tmp_path)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, out + err
    # The webhooks: an open, a click and a /pricing visit make ada Engaged (score 30); an
    # unsubscribe suppresses cleo. The sync, 100 days on, finds ada and ben silent: Dormant.
    assert re.search(r"1001 ada\s+│ - -> engaged\s+│ - -> 30 ", out), out
    assert re.search(r"1003 cleo\s+│ - -> suppressed .*│ - -> unsubscribe", out), out
    assert re.search(r"1002 ben\s+│ active -> dormant ", out), out
    assert re.search(r"Elastic – Dormant\s+│ 1001 ada, 1002 ben\s+│ -", out), out
    assert "hand-off task" in out and "for contact 1001" in out
    assert "sandbox stopped" in out
    # What serve's worker and the sync decided is in the kept store.
    db = sqlite3.connect(box / "elasticity.sqlite3")
    try:
        row = db.execute("SELECT campaign_status FROM contacts WHERE contact_id = '1001'")
        assert row.fetchone() == ("Dormant",)
    finally:
        db.close()
    assert (box / "serve.log").read_text().count("POST /webhooks/hubspot") == 1


def test_keep_leaves_it_running_and_the_printed_curl_recipe_is_accepted(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if not (bash and shutil.which("curl") and shutil.which("openssl")):
        pytest.skip("needs bash, curl and openssl")
    proc = _sandbox("--keep", cwd=tmp_path)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)  # the end of its output

    def next_line() -> str | None:
        try:
            return lines.get(timeout=DEADLINE)
        except queue.Empty:
            raise AssertionError("no output for a while: " + "".join(seen)) from None

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        # The report, then the --keep block between two separator lines.
        while sum(x.startswith("-" * 20) for x in seen) < 2:
            line = next_line()
            assert line is not None, "".join(seen)
            seen.append(line)
        text = "".join(seen)
        recipe = text[text.index("SECRET=") : text.index("Then see")]
        sent = subprocess.run(  # noqa: S603
            [bash, "-c", recipe], capture_output=True, text=True, timeout=60, check=False
        )
        assert sent.returncode == 0, sent.stderr
        assert re.search(r"HTTP/1\.1 200", sent.stdout), sent.stdout
        assert '"new": 1' in sent.stdout, sent.stdout
        # Signed over the http:// URL curl uses rather than the https:// one HubSpot calls: 401.
        wrong = recipe.replace("SIGNED_URL=https://", "SIGNED_URL=http://")
        refused = subprocess.run(  # noqa: S603
            [bash, "-c", wrong], capture_output=True, text=True, timeout=60, check=False
        )
        assert re.search(r"HTTP/1\.1 401", refused.stdout), refused.stdout
        assert "signature" in refused.stdout
        # The click comes from the contact the sync made Dormant: it brings it back.
        data_dir = Path(re.search(r"data dir (\S+)", text).group(1))  # type: ignore[union-attr]
        assert _status_becomes(data_dir, "1002", "Reactivated")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=DEADLINE)
        while (line := next_line()) is not None:
            seen.append(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        err = proc.stderr.read()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert code == 0, err
    assert "sandbox stopped" in seen[-1]
    assert not data_dir.exists()


def _processes_naming(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(f"{cmdline.parent.name}: {args}")
    return found


def test_ctrl_c_while_it_runs_stops_serve_and_exits_130(tmp_path: Path) -> None:
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("needs /proc to look for a left-over serve")
    box = tmp_path / "interrupted-box"
    proc = _sandbox("--data-dir", str(box), cwd=tmp_path)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("serve on "):
                break
        proc.send_signal(signal.SIGINT)  # webhooks, write-back or sync under way
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert "interrupted" in out
    assert "Traceback" not in out + err
    assert not _processes_naming(str(box))


def _status_becomes(data_dir: Path, contact: str, status: str) -> bool:
    give_up = time.monotonic() + DEADLINE
    while time.monotonic() < give_up:
        db = sqlite3.connect(data_dir / "elasticity.sqlite3", timeout=30)
        try:
            row = db.execute(
                "SELECT campaign_status FROM contacts WHERE contact_id = ?", (contact,)
            ).fetchone()
        finally:
            db.close()
        if row == (status,):
            return True
        time.sleep(0.05)
    return False


def test_outside_a_source_checkout_it_says_what_it_needs(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sandbox, "source_root", lambda: tmp_path)
    result = CliRunner().invoke(app, ["sandbox", "hubspot"])
    assert result.exit_code == 2
    assert "the sandbox needs a source checkout" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_vendor_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["sandbox", "salesforc"])
    assert result.exit_code == 2
    assert "expected hubspot" in result.output


def test_the_commands_import_no_test_code() -> None:
    probe = (
        "import sys, crm_elasticity.connectors.cli, crm_elasticity.connectors.sandbox; "
        "print(sorted(m for m in sys.modules if m == 'tests' or m.startswith('tests.')))"
    )
    shown = subprocess.run(  # noqa: S603
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert shown.stdout.strip() == "[]"


def test_list_membership_is_the_provisioned_filter() -> None:
    mapping = load_mapping(MAPPING)
    status = mapping.property_of("campaign_status")
    reason = mapping.property_of("suppression_reason")
    for spec in mapping.lists:
        branch = list_filter_branch(mapping, spec)
        for state in Status:
            for why in ("no_response", "unsubscribe", None):
                values = {status: state.value.lower(), reason: why}
                expected = state in spec.statuses and (
                    not spec.suppression_reasons or why in spec.suppression_reasons
                )
                assert sandbox.matches(branch, values) is expected, (spec.name, state, why)
    assert not sandbox.matches(list_filter_branch(mapping, mapping.lists[0]), {})


def test_the_readme_shows_the_recipe_the_sandbox_prints() -> None:
    readme = (ROOT / "README.md").read_text()
    recipe = sandbox.curl_recipe("<the HUBSPOT_CLIENT_SECRET serve runs with>", 8080, "1002")
    assert recipe in readme
