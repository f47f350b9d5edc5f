"""The ``vertebra`` command: serve nodes, call them, list and monitor them, run a hub, the demo."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
import time
from typing import Any

import click

from .dispatch.url import default_url
from .wire.errors import VertebraError
from .wire.info import ServiceInfo

__all__ = ["main"]

URL_HELP = "Transport URL (default: $VERTEBRA_URL or the embedded default)."


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    if not attr:
        raise click.BadParameter(f"expected module:Class, got {spec!r}")
    sys.path.insert(0, ".")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """vertebra: RPC, tasks, events and workflows over ZeroMQ, AMQP, XMPP or in-process."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("nodes", nargs=-1, required=True)
@click.option("--url", default=None, help=URL_HELP)
@click.option("--metrics-port", type=int, default=None,
              help="Serve Prometheus /metrics on 127.0.0.1:PORT (needs vertebra[prometheus]).")
def serve(nodes: tuple[str, ...], url: str | None, metrics_port: int | None) -> None:
    """Serve NODES (each module:Class) until SIGINT/SIGTERM, then drain and stop."""
    from .nodes.serve import serve_async

    instances = [_load(spec)() for spec in nodes]
    url = url or default_url()

    def started(bus: Any) -> None:
        if metrics_port is not None:
            from .nodes.metrics import start_metrics_server
            start_metrics_server(bus, metrics_port)
        click.echo(f"serving {', '.join(nodes)} on {url}", err=True)

    asyncio.run(serve_async(*instances, url=url, on_ready=started))


@main.command()
@click.argument("script", required=False, type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1)
@click.option("--url", default=None,
              help="Sets $VERTEBRA_URL for the script (the default of vertebra.connect()); with "
                   "--resume: the bus to resume on (default: the URLs in the journal when they "
                   "hold no password, else $VERTEBRA_URL).")
@click.option("--resume", "resume_id", metavar="ID", default=None,
              help="Instead of a script: go on with durable workflow ID from its journal.")
@click.option("--list", "list_journal", is_flag=True,
              help="Instead of a script: list the journal's workflows.")
@click.option("--journal", default=None, metavar="PATH",
              help="The workflow journal (SQLite): for --resume and --list, and set as $VERTEBRA_JOURNAL "
                   "for a script (default: $VERTEBRA_JOURNAL, else ./vertebra-workflows.db).")
@click.option("--force", is_flag=True,
              help="With --resume: take the workflow over even if its owner looks alive.")
def run(script: str | None, args: tuple[str, ...], url: str | None, resume_id: str | None,
        list_journal: bool, journal: str | None, force: bool) -> None:
    """Run a workflow SCRIPT (a Python file that builds a workflow and runs it), drawing the
    progress of every workflow it runs on the terminal; or resume (--resume ID) or list
    (--list) the durable workflows of a journal."""
    import runpy

    from .workflow import runner
    from .workflow.journal import default_journal
    from .workflow.progress import terminal_reporter

    if sum((script is not None, resume_id is not None, list_journal)) != 1:
        raise click.UsageError("give exactly one of SCRIPT, --resume ID and --list")
    if script is None and args:
        raise click.UsageError("ARGS go with a SCRIPT")
    if list_journal:
        _list_journal(journal or default_journal())
        return
    if resume_id is not None:
        _resume(resume_id, journal or default_journal(), url, force)
        return
    assert script is not None
    if url:
        os.environ["VERTEBRA_URL"] = url
    if journal:
        os.environ["VERTEBRA_JOURNAL"] = journal
    sys.argv = [script, *args]
    with terminal_reporter() as report:
        runner.default_progress = report
        try:
            runpy.run_path(script, run_name="__main__")
        finally:
            runner.default_progress = None


def _list_journal(path: str) -> None:
    from .workflow.definition import load_workflow
    from .workflow.journal import Journal

    if not os.path.exists(path):
        raise click.ClickException(f"no journal at {path}")
    with Journal(path) as j:
        entries = j.entries()
    rows = [("ID", "STATUS", "STEPS", "UPDATED", "OWNER", "WORKFLOW")]
    for e in entries:
        flow = str(load_workflow(e.definition))
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.updated))
        rows.append((e.id, e.status, str(e.steps_done), updated, e.owner or "-",
                     flow if len(flow) <= 60 else flow[:57] + "..."))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


def _resume(workflow_id: str, path: str, url: str | None, force: bool) -> None:
    from . import connect
    from .workflow import WorkflowBusy, WorkflowError, resume
    from .workflow.journal import Journal
    from .workflow.progress import terminal_reporter

    if not os.path.exists(path):
        raise click.ClickException(f"no journal at {path}")
    with Journal(path) as j:
        entry = j.entry(workflow_id)
    if entry is None:
        raise click.ClickException(f"no workflow {workflow_id!r} in {path}")
    if url:
        urls: tuple[str, ...] = (url,)
    elif entry.urls_complete and entry.urls:
        urls = entry.urls
    elif os.environ.get("VERTEBRA_URL"):
        urls = (os.environ["VERTEBRA_URL"],)
    else:
        raise click.ClickException(f"the journal keeps no passwords ({', '.join(entry.urls)}): give --url")
    try:
        with terminal_reporter() as report, connect(*urls) as bus:
            result = resume(bus, workflow_id, path, progress=report, force=force)
    except (WorkflowError, WorkflowBusy) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    click.echo(json.dumps(result, ensure_ascii=False, default=repr))


@main.command()
@click.argument("url")
@click.argument("target")
@click.argument("args", nargs=-1)
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the reply.")
@click.option("--cast", "as_cast", is_flag=True, help="Fire and forget instead of waiting.")
def call(url: str, target: str, args: tuple[str, ...], timeout: float, as_cast: bool) -> None:
    """Call TARGET (service.method) on URL; each ARG is JSON (a bare word is a string)."""
    from . import connect

    service, _, method = target.rpartition(".")
    if not service:
        raise click.BadParameter("expected service.method", param_hint="TARGET")
    values = [_json_arg(a) for a in args]
    try:
        with connect(url, timeout=timeout) as bus:
            m = bus.proxy(service)[method]
            if as_cast:
                click.echo(m.cast(*values))
                return
            click.echo(json.dumps(m(*values), ensure_ascii=False, default=repr))
    except VertebraError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@main.command()
@click.argument("url", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--methods", "signatures", is_flag=True, help="List methods with signatures and docs instead.")
def nodes(url: str | None, as_json: bool, signatures: bool) -> None:
    """The live services on URL, their methods and figures (what `monitor` shows, once)."""
    from . import connect
    from .monitor import plain_table, take_snapshot

    with connect(url or default_url()) as bus:
        if signatures:
            services = bus.nodes()
            click.echo(json.dumps([s.to_dict() for s in services], indent=2) if as_json
                       else format_services(services))
            return
        snap = take_snapshot(bus)
    click.echo(json.dumps(snap.to_json(), indent=2) if as_json else plain_table(snap))


@main.command()
@click.argument("nodes", nargs=-1)
@click.option("--url", "urls", multiple=True,
              help="A transport whose channels to describe (repeat for several); without NODES the "
                   "services are discovered on the first. Default: $VERTEBRA_URL or the embedded default.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="-", show_default=True,
              help="The file to write.")
@click.option("--title", default="vertebra services", show_default=True, help="info.title")
@click.option("--api-version", default="1.0.0", show_default=True, help="info.version")
def asyncapi(nodes: tuple[str, ...], urls: tuple[str, ...], output: str, title: str,
             api_version: str) -> None:
    """Write an AsyncAPI 3.0 document (JSON) of NODES (each module:Class, read from their
    code) or, without NODES, of the services live on --url (from discovery)."""
    from . import connect
    from .asyncapi import asyncapi_document

    urls = urls or (default_url(),)
    services: list[Any]
    if nodes:
        services = [_load(spec) for spec in nodes]
    else:
        with connect(urls[0]) as bus:
            services = list(bus.nodes())
        if not services:
            raise click.ClickException(f"no services on {urls[0]}")
    doc = asyncapi_document(services, list(urls), title=title, version=api_version)
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if output == "-":
        click.echo(text, nl=False)
    else:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)


@main.command("dead-letters")
@click.argument("url")
@click.argument("service")
@click.option("--replay", "replay_ids", multiple=True, metavar="ID",
              help="Send the dead letter with this id back to the queue (repeatable).")
@click.option("--all", "replay_all", is_flag=True, help="Send every dead letter of SERVICE back.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def dead_letters(url: str, service: str, replay_ids: tuple[str, ...], replay_all: bool,
                 as_json: bool) -> None:
    """List the dead letters of SERVICE on URL (tasks that exhausted their attempts), or
    replay some (--replay ID ...) or all (--all) of them as first attempts."""
    from . import connect

    if replay_ids and replay_all:
        raise click.UsageError("--replay and --all exclude each other")
    try:
        with connect(url) as bus:
            if replay_ids or replay_all:
                n = bus.replay(service, None if replay_all else list(replay_ids))
                click.echo(json.dumps({"replayed": n}) if as_json else f"replayed {n} dead letter(s)")
                return
            dead = bus.dead_letters(service)
    except VertebraError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in dead], indent=2, ensure_ascii=False, default=repr))
        return
    if not dead:
        click.echo(f"no dead letters for {service}")
    for d in dead:
        args = ", ".join([*map(repr, d.args), *(f"{k}={v!r}" for k, v in d.kwargs.items())])
        click.echo(f"{d.id}  {d.service}.{d.method}({args})  attempts={d.attempts}  "
                   f"{d.error.get('type', '')}: {d.error.get('message', '')}")


@main.command()
@click.argument("url", required=False)
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--count", default=0, help="Stop after this many refreshes (0: until Ctrl-C).")
def monitor(url: str | None, interval: float, count: int) -> None:
    """A live view of the services on URL: rates, errors, in flight, latency, outbox."""
    try:
        from rich.live import Live
        from rich.table import Table
    except ImportError:
        raise click.ClickException("the monitor needs rich: pip install 'vertebra[monitor]'") from None
    from . import connect
    from .monitor import COLUMNS, cells, take_snapshot

    url = url or default_url()
    with connect(url) as bus, Live(auto_refresh=False) as live:
        snap = None
        n = 0
        try:
            while True:
                snap = take_snapshot(bus, snap)
                table = Table(title=f"vertebra monitor — {url}", caption=time.strftime("%H:%M:%S"))
                for col in COLUMNS:
                    table.add_column(col, justify="left" if col in ("service", "method", "kind") else "right")
                for r in snap.rows:
                    table.add_row(*cells(r))
                for name in snap.unreachable:
                    table.add_row(name, "", "(no answer)")
                live.update(table, refresh=True)
                n += 1
                if count and n >= count:
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            return


def format_services(services: list[ServiceInfo]) -> str:
    """A plain-text table of services and their methods."""
    if not services:
        return "no services"
    lines = []
    for s in services:
        lines.append(f"{s.name}  ({s.replicas} replica{'s' if s.replicas != 1 else ''}, {s.transport})"
                     + (f"  {s.doc.splitlines()[0]}" if s.doc else ""))
        for m in s.methods:
            what = f"@event({m.pattern!r})" if m.kind == "event" else f"@{m.kind}"
            doc = f"  - {m.doc.splitlines()[0]}" if m.doc else ""
            lines.append(f"    {what:<20} {m.name}{m.signature}{doc}")
    return "\n".join(lines)


@main.command()
@click.option("--url", default=None,
              help="Transport URL (default: $VERTEBRA_URL, else an embedded ZeroMQ hub on loopback).")
def demo(url: str | None) -> None:
    """The main job on the embedded default: nodes and a client doing calls, tasks, events."""
    from .demo import run_demo

    url = url or os.environ.get("VERTEBRA_URL")
    if url:
        run_demo(url, click.echo)
        return
    hub_class = _zmq_attr("Hub")
    with hub_class("tcp://127.0.0.1:0") as hub:
        click.echo(f"embedded ZeroMQ hub on {hub.url}")
        run_demo(hub.url, click.echo)


def _zmq_attr(name: str) -> Any:
    try:
        from .transports import zmq as zmq_transport
    except ImportError as exc:
        raise click.ClickException(f"{exc}; pip install 'vertebra[zmq]'") from None
    return getattr(zmq_transport, name)


@main.command()
@click.option("--bind", default="tcp://127.0.0.1:7000", show_default=True,
              help="ZeroMQ endpoint to bind (the zmq:// URL clients use is printed).")
@click.option("--secret-key", "secret_key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CURVE secret key file (from `vertebra keygen`): encrypt and authenticate.")
@click.option("--allow", multiple=True,
              help="Client public key (Z85 text or key file) allowed in; repeatable.")
def hub(bind: str, secret_key: str | None, allow: tuple[str, ...]) -> None:
    """Run a ZeroMQ hub until SIGINT/SIGTERM."""
    _zmq_attr("run_hub")(bind, curve_secret_key_file=secret_key, allow=list(allow) or None)


@main.command()
@click.argument("prefix")
def keygen(prefix: str) -> None:
    """Write a CURVE key pair: PREFIX.key (public) and PREFIX.key_secret (mode 0600)."""
    public, secret = _zmq_attr("keygen")(prefix)
    click.echo(f"public key: {public}\nsecret key: {secret}")


@main.command()
@click.argument("url")
@click.option("--port", default=8080, show_default=True, help="Port to listen on (0: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (anything but loopback exposes the replay button).")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
def dashboard(url: str, port: int, host: str, interval: float) -> None:
    """A live web page of the services on URL: figures, outboxes, dead letters with a replay
    button, workflows in progress (needs vertebra[dashboard])."""
    try:
        from .dashboard import run_dashboard
    except ImportError as exc:
        raise click.ClickException(f"{exc}; pip install 'vertebra[dashboard]'") from None
    try:
        run_dashboard(url, host=host, port=port, interval=interval, announce=click.echo)
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
