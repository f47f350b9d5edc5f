"""The default URL: ``$VERTEBRA_URL``, else the embedded default."""

from __future__ import annotations

import os

__all__ = ["EMBEDDED_DEFAULT", "default_url"]

EMBEDDED_DEFAULT = "memory://"


def default_url() -> str:
    """``$VERTEBRA_URL`` if set, else :data:`EMBEDDED_DEFAULT`."""
    return os.environ.get("VERTEBRA_URL") or EMBEDDED_DEFAULT
