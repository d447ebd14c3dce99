"""One hash for "everything a result depends on": resumable work is reused only on a match."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def fingerprint(settings: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``settings`` (sorted keys; other types as ``str``)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
