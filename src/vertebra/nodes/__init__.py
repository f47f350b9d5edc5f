"""Nodes: the Node base class, the decorators, and the runtime that serves them."""

from .decorators import cron, event, every, rpc, task
from .node import Node
from .serve import serve

__all__ = ["Node", "cron", "event", "every", "rpc", "serve", "task"]
