"""``manage.py servenodes``: serve settings.VERTEBRA_NODES until SIGTERM or Ctrl-C, then drain."""

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils.module_loading import import_string

import vertebra


class Command(BaseCommand):
    help = ("Serve the vertebra nodes named in settings.VERTEBRA_NODES; SIGTERM or Ctrl-C drains "
            "in-flight work (up to --drain-timeout seconds), then stops.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", help="transport URL (default: settings.VERTEBRA_URL)")
        parser.add_argument("--drain-timeout", type=float, default=30.0)

    def handle(self, *args: Any, url: str | None, drain_timeout: float, **options: Any) -> None:
        url = url or settings.VERTEBRA_URL
        nodes = [import_string(dotted)() for dotted in settings.VERTEBRA_NODES]
        names = ", ".join(node.name for node in nodes)

        def ready() -> None:
            self.stdout.write(f"servenodes: serving {names} on {url} (pid {os.getpid()})")
            self.stdout.flush()

        vertebra.serve(*nodes, url=url, ready=ready, linger=drain_timeout)    # blocks; drains on SIGTERM
        self.stdout.write(f"servenodes: {names} drained, stopped")
