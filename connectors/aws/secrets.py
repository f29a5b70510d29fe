"""Secrets read at run time from SSM Parameter Store, by name, so packaging needs no AWS access.

`SECRETS_PREFIX` (e.g. `/crm-elasticity/prod`) and `SECRET_NAMES` (e.g.
`HUBSPOT_ACCESS_TOKEN,HUBSPOT_CLIENT_SECRET`) name the parameters; each is read as
`<prefix>/<NAME>` and handed to the connector as the environment variable `NAME`, exactly as the
command line gets it from the shell. A name ending in `_FILE` (a private key file) is written
to a private temporary file and the variable points at that file.

Rotation: a name ending in `_PREVIOUS` (e.g. `HUBSPOT_CLIENT_SECRET_PREVIOUS`) is optional and
holds the value being retired; while it exists, webhooks signed with it are still accepted (see
`connectors.aws.container`). The README gives the procedure.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aws_lambda_powertools.utilities import parameters

from crm_elasticity.connectors.intake import PREVIOUS_SUFFIX

log = logging.getLogger(__name__)

MAX_AGE_SECONDS = 300
"""A container reads its secrets again once they are this old, on whatever path needs them
next: a rotated secret is in use within five minutes."""


def secret_names(env: Mapping[str, str]) -> list[str]:
    return [n.strip() for n in env.get("SECRET_NAMES", "").split(",") if n.strip()]


def load_secrets(env: Mapping[str, str], force: bool = False) -> dict[str, str]:
    """The named secrets as environment variables. Missing ones are left out (the connector
    says which it needs); values are never logged."""
    names = secret_names(env)
    if not names:
        return {}
    prefix = env.get("SECRETS_PREFIX", "").rstrip("/")
    wanted: dict[str, dict[str, Any]] = {f"{prefix}/{name}": {} for name in names}
    if force:
        parameters.clear_caches()
    values = parameters.get_parameters_by_name(
        wanted, decrypt=True, max_age=MAX_AGE_SECONDS, raise_on_error=False
    )
    missing = [
        n for n in names if f"{prefix}/{n}" not in values and not n.endswith(PREVIOUS_SUFFIX)
    ]
    if missing:
        log.warning("SSM parameters not found under %s: %s", prefix or "/", ", ".join(missing))
    found: dict[str, str] = {}
    for name in names:
        value = values.get(f"{prefix}/{name}")
        if isinstance(value, str):
            found[name] = _to_file(name, value) if name.endswith("_FILE") else value
    return found


def _to_file(name: str, content: str) -> str:
    """Lambda's /tmp is private to the container; mode 0600 keeps it from other users too.
    The path is named by the content's digest: reading the same key again gives the same path
    (nothing to rebuild, no file left behind), a rotated key a new one."""
    digest = hashlib.sha256(content.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"{name.lower()}-{digest}.pem"
    if not path.exists():
        fd, staging = tempfile.mkstemp(prefix=f"{name.lower()}-", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        os.replace(staging, path)  # whole or absent, never half-written
    return str(path)
