"""Workflows: chain nodes into pipelines — sequences, fan-out/fan-in, routing slips.

See :mod:`vertebra.workflow.canvas` for the vocabulary and docs/workflows.md for a guide::

    from vertebra.workflow import step, group, fan_out
    flow = step("media.resize", width=128) | group(step("store.put"), step("cdn.push"))
    flow.validate(bus)                      # every service and method is live
    flow.run(bus, image)                    # orchestrated: this process drives each step
    flow.run(bus, image, mode="choreographed")   # routing slip (chains of steps only)
    flow.run(bus, image, workflow_id="img-42", journal="wf.db")   # durable: survives this process
    resume(bus, "img-42", journal="wf.db")       # in another process: go on from the journal
"""

from .canvas import NOTHING, Chain, FanOut, Group, Step, Workflow, chain, fan_out, group, step
from .durable import resume, resume_async
from .journal import DEFAULT_JOURNAL, Journal, JournalEntry, WorkflowBusy
from .runner import Progress, WorkflowError

__all__ = ["DEFAULT_JOURNAL", "NOTHING", "Chain", "FanOut", "Group", "Journal", "JournalEntry", "Progress",
           "Step", "Workflow", "WorkflowBusy", "WorkflowError", "chain", "fan_out", "group", "resume",
           "resume_async", "step"]
