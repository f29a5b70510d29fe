"""The Lambda package leaves out what only the command line uses (.ci/lambda-requirements):
the functions' modules must import without any of it."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LEFT_OUT = runpy.run_path(str(ROOT / ".ci" / "lambda-requirements"))["CLI_ONLY"]
MODULES = {"ruamel.yaml": "ruamel", "python-dotenv": "dotenv"}


def test_the_functions_import_nothing_the_package_leaves_out() -> None:
    code = (
        "import json, sys\n"
        "import crm_elasticity.connectors.aws.handlers, crm_elasticity.connectors.aws.worker\n"
        "import crm_elasticity.core.report, crm_elasticity.core.explain\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    imported = set(json.loads(done.stdout))
    left_out = {MODULES.get(name, name) for name in LEFT_OUT}
    assert "crm_elasticity" in imported
    assert imported & left_out == set()
