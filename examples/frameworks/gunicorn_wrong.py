"""The wrong way, kept to show that it fails loudly: a bus opened at import time.

    cd examples/frameworks && VERTEBRA_URL=URL gunicorn --preload -w 2 gunicorn_wrong:app

Under ``--preload`` the import runs in the master, before the fork, so the bus (its loop
thread, its sockets) stays in the master.  In a worker every use of it raises
RuntimeError ("... was opened before os.fork() ... Open a new bus in the child ..."):
each request answers 500 with that message, and its traceback is in gunicorn's error log.
Open the bus in the worker instead (gunicorn_app.py).
"""

from gunicorn_app import make_app

import vertebra

bus = vertebra.connect(linger=1.0)          # DON'T: in the master, before the fork
app = make_app(lambda: bus)
