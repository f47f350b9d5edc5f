"""Nodes: the Node base class, the decorators, and the runtime that serves them."""

from .decorators import event, rpc, task
from .node import Node
from .serve import serve

__all__ = ["Node", "event", "rpc", "serve", "task"]
