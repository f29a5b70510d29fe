"""The installed names: core/ and connectors/ install as crm_elasticity.core and
crm_elasticity.connectors (pyproject.toml), so no top-level `core` or `connectors` can collide
with another distribution's, and nothing in the project still imports them by the old names."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("core", "connectors")


def test_every_package_folder_is_installed_under_the_namespace() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {f"crm_elasticity.{f}": f for f in FOLDERS}
    folders = {
        ".".join(("crm_elasticity", *init.parent.relative_to(ROOT).parts))
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == folders


def test_importing_every_module_loads_no_top_level_core_or_connectors() -> None:
    # Run from the checkout's root, where a stray `import core` would succeed: the check is
    # that nothing asks for it, not that it cannot be found.
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import crm_elasticity.core, crm_elasticity.connectors\n"
        "names = []\n"
        "for package in (crm_elasticity.core, crm_elasticity.connectors):\n"
        "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "        names.append(info.name)\n"
        "files = {n: getattr(m, '__file__', None) for n, m in sys.modules.items()\n"
        "         if n.split('.')[0] in ('crm_elasticity', 'core', 'connectors')}\n"
        "print(json.dumps({'imported': names, 'files': files}))\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    found = json.loads(done.stdout)
    modules = sum(len(list((ROOT / f).rglob("*.py"))) for f in FOLDERS)
    assert len(found["imported"]) == modules - len(FOLDERS)  # all but the two roots
    stray = sorted(n for n in found["files"] if n.split(".")[0] in FOLDERS)
    assert stray == []
    elsewhere = {
        n: f
        for n, f in found["files"].items()
        if f is not None and not Path(f).resolve().is_relative_to(ROOT)
    }
    assert elsewhere == {}  # the checkout's own code, not another install's
