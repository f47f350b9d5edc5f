"""A real RabbitMQ for the tests: the broker on 127.0.0.1:5672 if one answers, else a private
node started in the session's temporary directory (its own node name, ports, cookie and
data; loopback only; no plugins).  ``VERTEBRA_AMQP_PRIVATE=1`` forces the private node.

Isolation: every test gets a unique ``?prefix=vt-<session>-<n>.`` in its URLs, so its
exchanges and queues are its own.  What a test created is deleted when it ends (the
names that follow from its roles and the prefix's exchanges), and once more at the end of
the session every queue and exchange whose name starts with the session's prefix (listed
with ``rabbitmqctl``).  Queues also carry ``x-expires`` as a last resort.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import amqp

SERVER_BIN = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL_BIN = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def probe(host: str = "127.0.0.1", port: int = 5672) -> bool:
    """Whether an AMQP 0-9-1 broker answers on host:port (it sends connection.start)."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            buf = b""
            while len(buf) < 11:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                buf += chunk
    except OSError:
        return False
    return buf[:1] == b"\x01" and buf[7:11] == struct.pack(">HH", 10, 10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A running broker: URLs per test, cleanup afterwards."""

    def __init__(self, host: str, port: int, ctl: list[str], env: dict[str, str],
                 tls_port: int | None = None, ca_file: str | None = None) -> None:
        self.host, self.port = host, port
        self.tls_port, self.ca_file = tls_port, ca_file
        self._ctl, self._env = ctl, env
        self.session = uuid.uuid4().hex[:8]
        self._counter = itertools.count(1)

    @property
    def base_url(self) -> str:
        """The broker's URL, without a prefix."""
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    def connection(self) -> amqp.Connection:
        """A plain py-amqp connection for test set-up and inspection."""
        conn = amqp.Connection(f"{self.host}:{self.port}", "guest", "guest", connect_timeout=5)
        conn.connect()
        return conn

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run rabbitmqctl against this broker; its stdout."""
        out = subprocess.run([*self._ctl, *args], env=self._env, capture_output=True,
                             text=True, timeout=timeout, check=True)
        return out.stdout

    @contextlib.contextmanager
    def namespace(self, test_id: str) -> Iterator[Callable[[str], str]]:
        """Per test: ``url_for(role)`` -> a URL in a namespace of its own; cleaned up after."""
        prefix = f"vt-{self.session}-{next(self._counter)}."
        roles: set[str] = set()

        def url_for(role: str, **params: str) -> str:
            roles.add(role)
            query = {"prefix": prefix, "expires": "120000", "discover_window": "0.2", **params}
            return self.base_url + "?" + "&".join(f"{k}={v}" for k, v in query.items())

        try:
            yield url_for
        finally:
            self.delete(prefix, roles)

    def delete(self, prefix: str, services: set[str]) -> None:
        """Delete the queues of ``services`` and the exchanges under ``prefix``."""
        names = [f"{prefix}vertebra.{k}.{s}" for s in services for k in ("call", "task", "dead")]
        exchanges = [f"{prefix}vertebra.{k}" for k in ("events", "discovery", "dlx")]
        self._delete(names, exchanges)

    def _delete(self, queues: list[str], exchanges: list[str]) -> None:
        try:
            conn = self.connection()
        except Exception:
            return
        try:
            for name in queues:
                ch = conn.channel()
                with contextlib.suppress(Exception):
                    ch.queue_delete(name)
                with contextlib.suppress(Exception):
                    ch.close()
            for name in exchanges:
                ch = conn.channel()
                with contextlib.suppress(Exception):
                    ch.exchange_delete(name)
                with contextlib.suppress(Exception):
                    ch.close()
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def sweep(self) -> None:
        """Delete every queue and exchange this session created (listed by rabbitmqctl)."""
        mine = f"vt-{self.session}-"
        try:
            queues = self.ctl("list_queues", "-q", "--no-table-headers", "name").split()
            exchanges = self.ctl("list_exchanges", "-q", "--no-table-headers", "name").split()
        except (OSError, subprocess.SubprocessError):
            return
        self._delete([q for q in queues if q.startswith(mine)],
                     [e for e in exchanges if e.startswith(mine)])


def _start_private(tmp_dir: Path, tls: bool = False) -> tuple[Server, Callable[[], None]]:
    """Start a private RabbitMQ node under ``tmp_dir`` (the recipe's approach); with
    ``tls`` also an amqps listener with a self-signed certificate for localhost."""
    if not os.path.exists(SERVER_BIN):
        raise RuntimeError("no broker on 127.0.0.1:5672 and rabbitmq-server is not installed "
                           "(apt-get install rabbitmq-server)")
    d = (tmp_dir / "rabbitmq").resolve()
    (d / "mnesia").mkdir(parents=True, exist_ok=True)
    (d / "log").mkdir(exist_ok=True)
    port, dist = _free_port(), _free_port()
    node = f"rabbit_vt_{port}@localhost"
    (d / "rabbitmq-env.conf").write_text("")
    (d / "enabled_plugins").write_text("[].\n")
    conf = "log.console = false\nlog.file.level = info\n"
    tls_port = None
    if tls:
        tls_port = _free_port()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30", "-subj",
                        "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                       check=True, capture_output=True)
        conf += (f"listeners.ssl.default = 127.0.0.1:{tls_port}\n"
                 f"ssl_options.cacertfile = {d / 'cert.pem'}\n"
                 f"ssl_options.certfile = {d / 'cert.pem'}\n"
                 f"ssl_options.keyfile = {d / 'key.pem'}\n"
                 "ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n")
    (d / "rabbitmq.conf").write_text(conf)
    env = dict(os.environ, HOME=str(d), ERL_EPMD_ADDRESS="127.0.0.1", RABBITMQ_NODENAME=node,
               RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(port),
               RABBITMQ_DIST_PORT=str(dist),
               RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
               RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
               RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
               RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
               RABBITMQ_MNESIA_BASE=str(d / "mnesia"), RABBITMQ_LOG_BASE=str(d / "log"),
               RABBITMQ_PID_FILE=str(d / "rabbit.pid"))
    with open(d / "stdout.log", "wb") as out:
        proc = subprocess.Popen([SERVER_BIN], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not probe("127.0.0.1", port):
        if proc.poll() is not None:
            raise RuntimeError(f"private rabbitmq exited: {(d / 'stdout.log').read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("private rabbitmq did not accept AMQP within 60 s")
        time.sleep(0.1)

    def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    ctl = [CTL_BIN, "-n", node]
    ca = str(d / "cert.pem") if tls else None
    return Server("127.0.0.1", port, ctl, {**env}, tls_port, ca), stop


@contextlib.contextmanager
def running_private_tls(tmp_dir: Path) -> Iterator[Server]:
    """A private node with an amqps listener (``server.tls_port``, CA in ``server.ca_file``)."""
    server, stop = _start_private(Path(tmp_dir), tls=True)
    try:
        yield server
    finally:
        stop()


@contextlib.contextmanager
def running(tmp_dir: Path) -> Iterator[Server]:
    """The broker on 5672 when one answers, else a private one; raise if neither works."""
    stop: Callable[[], None] | None = None
    if not os.environ.get("VERTEBRA_AMQP_PRIVATE") and probe("127.0.0.1", 5672):
        ctl = [shutil.which("rabbitmqctl") or "rabbitmqctl"]
        server = Server("127.0.0.1", 5672, ctl, dict(os.environ))
    else:
        server, stop = _start_private(Path(tmp_dir))
    try:
        yield server
    finally:
        server.sweep()
        if stop is not None:
            stop()
