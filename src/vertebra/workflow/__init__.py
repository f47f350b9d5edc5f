"""Workflows: chain nodes into pipelines — sequences, fan-out/fan-in, routing slips.

See :mod:`vertebra.workflow.canvas` for the vocabulary and docs/workflows.md for a guide::

    from vertebra.workflow import step, group, fan_out
    flow = step("media.resize", width=128) | group(step("store.put"), step("cdn.push"))
    flow.validate(bus)                      # every service and method is live
    flow.run(bus, image)                    # orchestrated: this process drives each step
    flow.run(bus, image, mode="choreographed")   # routing slip (chains of steps only)
"""

from .canvas import NOTHING, Chain, FanOut, Group, Step, Workflow, chain, fan_out, group, step
from .runner import Progress, WorkflowError

__all__ = ["NOTHING", "Chain", "FanOut", "Group", "Progress", "Step", "Workflow", "WorkflowError",
           "chain", "fan_out", "group", "step"]
