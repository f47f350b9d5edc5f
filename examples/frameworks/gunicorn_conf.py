"""gunicorn settings for gunicorn_app: preload in the master, 3 workers, a bus per worker.

    cd examples/frameworks && VERTEBRA_URL=URL gunicorn -c gunicorn_conf.py gunicorn_app:app
"""

bind = "127.0.0.1:8000"
workers = 3
preload_app = True                 # the master imports the app (and vertebra) once, then forks
control_socket_disable = True      # gunicorn >= 25.1 would open ~/.gunicorn/gunicorn.ctl


# post_worker_init rather than post_fork: until the worker has set its signal handlers (after
# post_fork) a SIGTERM from the master is lost, and the time a bus takes to connect would widen
# that window; a worker that missed it is killed only after graceful_timeout (30 s).
def post_worker_init(worker):      # in the worker, after the fork, before its first request
    import gunicorn_app

    gunicorn_app.worker_bus()       # opened here: the worker's own loop thread and sockets
    worker.log.info("worker %s: vertebra bus opened after the fork", worker.pid)


def worker_exit(server, worker):   # in the worker, as it stops
    import gunicorn_app

    gunicorn_app.close_bus()        # flush its outbox now (vertebra would at exit anyway)
