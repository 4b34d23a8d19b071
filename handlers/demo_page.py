"""The demo web app (``demo/web/``), served at ``/`` in demo mode only: production serves no pages."""

from __future__ import annotations

from typing import Any

__all__ = ["demo_routes"]


def demo_routes(args: dict[str, Any]) -> list[Any]:
    """The demo app's routes (none yet: issue 14 fills this in)."""
    return []
