"""Django with vertebra: views that call and cast through a bus opened lazily per process, and a
management command that serves nodes.

    vertebra hub &                                                   # a hub on 127.0.0.1:7000
    python examples/frameworks/manage.py servenodes                  # the nodes in settings.VERTEBRA_NODES
    python examples/frameworks/manage.py runserver --noreload        # the site (or gunicorn, uwsgi)

    curl http://127.0.0.1:8000/reports/ada                # calls reports.render, waits for the answer
    curl -X POST http://127.0.0.1:8000/reports/ada/mail   # casts reports.mail: 202 at once

settings.VERTEBRA_URL is $VERTEBRA_URL, else zmq://127.0.0.1:7000.  servenodes drains on
SIGTERM or Ctrl-C: in-flight tasks finish, no new work is taken, then it exits 0.
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangosite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
