"""``python -m vertebra.dashboard URL [--host H] [--port P] [--interval S]``: the same as
``vertebra dashboard``, without the rest of the CLI."""

from __future__ import annotations

import logging

import click

from .server import run_dashboard

__all__ = ["main"]


@click.command()
@click.argument("url")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (anything but loopback exposes the replay button).")
@click.option("--port", default=8080, show_default=True, help="Port to listen on (0: a free one).")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
def main(url: str | None, host: str, port: int, interval: float) -> None:
    """Serve a live web dashboard of the services on URL."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_dashboard(url, host=host, port=port, interval=interval)
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
