"""A real RabbitMQ for the tests: the broker on 127.0.0.1:5672 if one answers, else a private
node started in the session's temporary directory (its own node name, ports, cookie and
data; loopback only; no plugins).  ``VERTEBRA_AMQP_PRIVATE=1`` forces the private node.

Isolation: every test gets a unique ``?prefix=vt-<session>-<n>.`` in its URLs, so its
exchanges and queues are its own.  What a test created is deleted when it ends (the
names that follow from its roles and the prefix's exchanges), and once more at the end of
the session every queue and exchange whose name starts with the session's prefix (listed
with ``rabbitmqctl``).  Queues also carry ``x-expires`` as a last resort.

:class:`PrivateNode` is one private node (also the building block of
tests/servers/rabbit_cluster.py).
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
        exchanges = [f"{prefix}vertebra.{k}" for k in ("events", "discovery", "dlx", "delay")]
        # delay queues (vertebra.delay.<ms>) are the prefix's, not a service's: the session's
        # sweep removes them, and their x-expires does if the sweep cannot
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


class PrivateNode:
    """One private RabbitMQ node under ``directory``: its own node name, AMQP and
    distribution ports, cookie (``HOME`` = its directory), config, data and logs; loopback
    only; no plugins.  ``start`` returns at once, ``wait_ready`` waits for AMQP; ``kill``
    is a SIGKILL of the whole process group (the node dies as in a crash), and ``start``
    again brings the same node back on the same data (and into its cluster)."""

    def __init__(self, directory: Path, name: str, cookie: str | None = None,
                 tls: bool = False) -> None:
        if not os.path.exists(SERVER_BIN):
            raise RuntimeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        d = self.dir = directory.resolve()
        (d / "mnesia").mkdir(parents=True, exist_ok=True)
        (d / "log").mkdir(exist_ok=True)
        self.port, dist = _free_port(), _free_port()
        self.node = f"{name}_{self.port}@localhost"
        if cookie is not None:
            cookie_file = d / ".erlang.cookie"
            cookie_file.write_text(cookie)
            cookie_file.chmod(0o400)
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text("[].\n")
        conf = "log.console = false\nlog.file.level = info\n"
        self.tls_port: int | None = None
        self.ca_file: str | None = None
        if tls:
            self.tls_port, self.ca_file = _free_port(), str(d / "cert.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30", "-subj",
                            "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                            "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                           check=True, capture_output=True)
            conf += (f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                     f"ssl_options.cacertfile = {d / 'cert.pem'}\n"
                     f"ssl_options.certfile = {d / 'cert.pem'}\n"
                     f"ssl_options.keyfile = {d / 'key.pem'}\n"
                     "ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n")
        (d / "rabbitmq.conf").write_text(conf)
        self.env = dict(
            os.environ, HOME=str(d), ERL_EPMD_ADDRESS="127.0.0.1", RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(dist),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"), RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbit.pid"))
        self.ctl_cmd = [CTL_BIN, "-n", self.node]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        """Whether the node's process runs."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Launch the node (returns at once; see :meth:`wait_ready`)."""
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen([SERVER_BIN], env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        """Return once the node answers AMQP; RuntimeError if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while not probe("127.0.0.1", self.port):
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq node {self.node} exited: "
                                   f"{(self.dir / 'stdout.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"rabbitmq node {self.node} did not accept AMQP within "
                                   f"{timeout:g} s (see {self.dir / 'log'})")
            time.sleep(0.05)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run rabbitmqctl against this node; its stdout (CalledProcessError on failure)."""
        out = subprocess.run([*self.ctl_cmd, *args], env=self.env, capture_output=True,
                             text=True, timeout=timeout, check=True)
        return out.stdout

    def kill(self) -> None:
        """SIGKILL the node's process group and reap it: a crash, no clean shutdown."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), SIGKILL after 30 s."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def server(self) -> Server:
        """A :class:`Server` for this node (URLs, namespaces, cleanup)."""
        return Server("127.0.0.1", self.port, self.ctl_cmd, dict(self.env), self.tls_port,
                      self.ca_file)


def _start_private(tmp_dir: Path, tls: bool = False) -> tuple[Server, Callable[[], None]]:
    """Start a private RabbitMQ node under ``tmp_dir`` (the recipe's approach); with
    ``tls`` also an amqps listener with a self-signed certificate for localhost."""
    node = PrivateNode(tmp_dir / "rabbitmq", "rabbit_vt", tls=tls)
    node.start()
    node.wait_ready()
    return node.server(), node.stop


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
    """The broker on 5672 when one answers, else a private one; raise if neither works.
    ``VERTEBRA_AMQP_CLUSTER=1``: a private three-node cluster instead (its URLs name the
    three nodes, so queues are quorum queues) — e.g. to run the conformance suite on it."""
    if os.environ.get("VERTEBRA_AMQP_CLUSTER"):
        from . import rabbit_cluster

        with rabbit_cluster.running(Path(tmp_dir)) as cluster:
            yield cluster.server()
        return
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
