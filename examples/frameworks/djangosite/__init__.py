"""A minimal Django project that is also its own app (for the ``servenodes`` command)."""
