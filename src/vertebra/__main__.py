"""``python -m vertebra``: the same as the ``vertebra`` command."""

from .cli import main

main()
