"""The nodes ``manage.py servenodes`` serves (settings.VERTEBRA_NODES)."""

import logging
import os

from vertebra import Node, rpc, task

from .bus import get_bus

log = logging.getLogger("djangosite.nodes")


class Reports(Node):
    name = "reports"

    @rpc
    def render(self, customer: str) -> str:
        return f"monthly report for {customer} (rendered by pid {os.getpid()})"

    @task
    def mail(self, customer: str) -> None:
        log.info("mailing the report of %s", customer)
        mailer = get_bus().proxy("mailer", timeout=60.0)      # another service; a call waits
        mailer.send(customer, self.render(customer))
        log.info("mailed the report of %s", customer)
