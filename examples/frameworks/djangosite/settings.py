"""Minimal settings: no database, no middleware, one app (this package)."""

import os

SECRET_KEY = "an-example-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["djangosite"]
ROOT_URLCONF = "djangosite.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

VERTEBRA_URL = os.environ.get("VERTEBRA_URL", "zmq://127.0.0.1:7000")
VERTEBRA_NODES = ["djangosite.nodes.Reports"]        # what `manage.py servenodes` serves

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "vertebra": {"handlers": ["console"], "level": "INFO"},
        "djangosite": {"handlers": ["console"], "level": "INFO"},
    },
}
