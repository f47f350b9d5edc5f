"""Workflows: chains, fan-out/fan-in and routing slips (issue 7; not yet built)."""

__all__: list[str] = []
