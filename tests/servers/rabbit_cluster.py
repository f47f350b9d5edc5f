"""A private three-node RabbitMQ cluster on loopback, for the cluster tests and the bench.

Three :class:`~tests.servers.amqp.PrivateNode` s — own node names, AMQP and distribution
ports, data and log directories, one shared Erlang cookie — are started side by side
(they share the machine's epmd on 4369), then the second and third are joined to the
first with ``rabbitmqctl stop_app`` / ``join_cluster`` / ``start_app``.  The broker on
127.0.0.1:5672 is never touched.  A cluster that cannot start raises: the tests that need
it fail, they are not skipped.

``cluster.url`` names all three brokers (``amqp://guest:guest@127.0.0.1:P1,127.0.0.1:P2,
127.0.0.1:P3/%2F``); :meth:`Cluster.reorder` puts one of them first in a URL, so a test
knows which node a bus connects to.  :meth:`Cluster.kill` SIGKILLs a node (a crash);
:meth:`Cluster.restart` brings it back on its data, and it rejoins by itself.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import amqp

from .amqp import PrivateNode, Server


class Cluster:
    """Three private RabbitMQ nodes joined into one cluster."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        cookie = "VTC" + uuid.uuid4().hex.upper()
        self.nodes = [PrivateNode(directory / f"node{i}", f"rabbit_vtc{i}", cookie)
                      for i in range(size)]
        self.startup_seconds = 0.0
        self._server: ClusterServer | None = None

    # -- addresses --------------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        """The AMQP port of each node, in node order."""
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        """One URL naming every node, in node order."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"amqp://guest:guest@{hosts}/%2F"

    def reorder(self, url: str, first: int) -> str:
        """``url`` (one of this cluster's) with node ``first`` named first, the others after
        it in ring order: a bus on that URL connects to that node while it is up."""
        parts = urlsplit(url)
        order = [self.ports[(first + k) % len(self.ports)] for k in range(len(self.ports))]
        netloc = "guest:guest@" + ",".join(f"127.0.0.1:{p}" for p in order)
        return urlunsplit(parts._replace(netloc=netloc))

    def single(self, url: str, index: int) -> str:
        """``url`` naming node ``index`` only."""
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{self.ports[index]}"))

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every node, join them to the first, wait until all run in one cluster."""
        t0 = time.monotonic()
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                node.wait_ready()
            first = self.nodes[0].node
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first)
                node.ctl("start_app")
            self.wait_running(len(self.nodes))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            self.stop()
            raise RuntimeError(f"the private RabbitMQ cluster did not start: {exc} {detail}") from exc
        self.startup_seconds = time.monotonic() - t0

    def running_nodes(self) -> list[str]:
        """The node names the cluster reports running (asked of a live node)."""
        node = self.alive_node()
        status = json.loads(node.ctl("cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def wait_running(self, count: int, timeout: float = 60) -> None:
        """Wait until ``count`` nodes run in the cluster and each answers AMQP."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError, ValueError):
                if len(self.running_nodes()) >= count:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} cluster nodes running after {timeout:g} s")
            time.sleep(0.2)

    def alive_node(self) -> PrivateNode:
        """A node whose process runs; RuntimeError if none."""
        for node in self.nodes:
            if node.alive:
                return node
        raise RuntimeError("no node of the cluster is running")

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (its connections drop, its queue replicas are gone)."""
        self.nodes[index].kill()

    def restart(self, index: int) -> float:
        """Start a killed node again and wait until it is back in the cluster; seconds taken."""
        t0 = time.monotonic()
        node = self.nodes[index]
        node.start()
        node.wait_ready()
        self.wait_running(len(self.nodes))
        return time.monotonic() - t0

    def stop(self) -> None:
        """Stop every node (gracefully where it still runs)."""
        for node in reversed(self.nodes):
            node.stop()

    def server(self) -> ClusterServer:
        """The :class:`Server` (URLs with a prefix per test, cleanup) of this cluster."""
        if self._server is None:
            self._server = ClusterServer(self)
        return self._server

    def queues(self) -> dict[str, tuple[str, str]]:
        """Every queue: name -> (type, leader node name; "" for a classic queue)."""
        out = self.alive_node().ctl("list_queues", "-q", "--no-table-headers", "name", "type",
                                    "leader")
        found: dict[str, tuple[str, str]] = {}
        for line in out.splitlines():
            fields = line.split("\t")
            if len(fields) >= 2:
                found[fields[0]] = (fields[1], fields[2] if len(fields) > 2 else "")
        return found

    def index_of(self, node_name: str) -> int:
        """The index of the node called ``node_name``."""
        return [n.node for n in self.nodes].index(node_name)


class ClusterServer(Server):
    """:class:`Server` whose URLs name every node of a :class:`Cluster`; set-up and
    clean-up connections go to whichever node is up."""

    def __init__(self, cluster: Cluster) -> None:
        node = cluster.nodes[0]
        super().__init__("127.0.0.1", node.port, node.ctl_cmd, dict(node.env))
        self.cluster = cluster

    @property
    def base_url(self) -> str:
        """The cluster's URL, without a prefix."""
        return self.cluster.url

    def connection(self) -> amqp.Connection:
        """A plain py-amqp connection to a live node."""
        last: Exception | None = None
        for node in self.cluster.nodes:
            if not node.alive:
                continue
            try:
                conn = amqp.Connection(f"127.0.0.1:{node.port}", "guest", "guest", connect_timeout=5)
                conn.connect()
                return conn
            except Exception as exc:   # starting or stopping: try the next
                last = exc
        raise ConnectionError(f"no node of the cluster accepts connections: {last}")

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """rabbitmqctl against a live node."""
        return self.cluster.alive_node().ctl(*args, timeout=timeout)


@contextlib.contextmanager
def running(tmp_dir: Path) -> Iterator[Cluster]:
    """Start a cluster under ``tmp_dir``; stopped on exit.  Raises if it cannot start."""
    cluster = Cluster(Path(tmp_dir))
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.server().sweep()
        cluster.stop()
