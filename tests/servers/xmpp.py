"""A real Prosody for the tests: a private server on free loopback ports in the session's
temporary directory (installed with apt-get when missing).  Nothing is skipped: if Prosody
cannot start, :func:`running` raises and the run fails.

Configuration (as the shared recipes found necessary): ``run_as_root = true``, no
``mod_limits`` (it throttles clients to 10 KiB/s), Nagle off, PLAIN on the unencrypted
loopback stream, a MUC component (``muc.localhost``, rooms unlocked at once), ``mod_pep``
with ``pep_max_items = 10000`` (dead letters live in PEP nodes of the service accounts,
see src/vertebra/transports/xmpp/deadletters.py), a PubSub component and an
external-component port for ``nodes.localhost`` (secret ``secret``): the gateway that gives
every service the stable address ``SERVICE@nodes.localhost``
(src/vertebra/transports/xmpp/gateway.py; ``Server.gateway_params()``).  ``running_tls``
starts a variant that also offers STARTTLS with a self-signed certificate for ``localhost``.

Isolation: every test gets a directory room of its own (``?room=vt-<test id>``); accounts
are per role (``<role>@localhost``, registered once per session with ``prosodyctl
register``), and every bus logs in with a fresh random resource.  Rooms are temporary
(Prosody destroys an empty non-persistent room); dead-letter nodes are named after the
room (``vertebra.dead/<room>/<service>``), so no test sees another's, and they go with the
session's temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

DOMAIN = "localhost"
PASSWORD = "pw"
GATEWAY = f"nodes.{DOMAIN}"
GATEWAY_SECRET = "secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_installed() -> None:
    """Install Prosody with apt-get when it is missing (raises if that fails)."""
    if shutil.which("prosody") and shutil.which("prosodyctl"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "prosody"], env=env, check=True,
                   capture_output=True, timeout=900)
    if not shutil.which("prosody"):
        raise RuntimeError("prosody is not installed and apt-get could not install it")


def _config(d: Path, port: int, cport: int, tls: bool, stanza_limit: int) -> str:
    mods = '"roster"; "saslauth"; "disco"; "ping"; "smacks"; "time"; "version"; "pep";'
    if tls:
        mods += ' "tls";'
    text = f"""-- written by tests/servers/xmpp.py
run_as_root = true
pidfile = [[{d}/prosody.pid]]
data_path = [[{d}/data]]
log = {{ {{ levels = {{ min = "warn" }}; to = "file"; filename = [[{d}/prosody.log]] }} }}
modules_enabled = {{ {mods} }}
modules_disabled = {{ "s2s"; "s2s_auth_certs" }}
network_settings = {{ nagle = false }}
interfaces = {{ "127.0.0.1" }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
component_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {cport} }}
authentication = "internal_plain"
storage = "internal"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
c2s_stanza_size_limit = {stanza_limit}
pep_max_items = 10000 -- dead letters kept per service node (Prosody's default: 256)
-- no mod_limits: it would throttle every client to 10 KiB/s
"""
    if tls:
        text += f'ssl = {{ certificate = [[{d}/certs/{DOMAIN}.crt]]; key = [[{d}/certs/{DOMAIN}.key]] }}\n'
    text += f"""
VirtualHost "{DOMAIN}"

Component "muc.{DOMAIN}" "muc"
    muc_room_locking = false
    muc_room_default_history_length = 0

Component "pubsub.{DOMAIN}" "pubsub"
    autocreate_on_publish = true

Component "{GATEWAY}"
    component_secret = "{GATEWAY_SECRET}"
"""
    return text


class Server:
    """A running private Prosody: per-test URLs, accounts, start/stop for fault tests."""

    def __init__(self, directory: Path, tls: bool = False) -> None:
        self.dir = directory
        self.tls = tls
        self.port = _free_port()
        self.cport = _free_port()
        self.cfg = directory / "prosody.cfg.lua"
        self.ca_file = str(directory / "certs" / f"{DOMAIN}.crt") if tls else ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._accounts: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Write the configuration and start Prosody; raise if it does not come up."""
        d = self.dir
        (d / "data").mkdir(parents=True, exist_ok=True)
        if self.tls and not Path(self.ca_file).exists():
            (d / "certs").mkdir(exist_ok=True)
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30", "-subj",
                            f"/CN={DOMAIN}", "-addext", f"subjectAltName=DNS:{DOMAIN},IP:127.0.0.1",
                            "-keyout", str(d / "certs" / f"{DOMAIN}.key"),
                            "-out", self.ca_file], check=True, capture_output=True)
        self.cfg.write_text(_config(d, self.port, self.cport, self.tls, 4 * 1024 * 1024))
        out = open(d / "prosody.stdout", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(["prosody", "--config", str(self.cfg), "-F"],
                                     stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        deadline = time.monotonic() + 20
        while not (_port_open(self.port) and _port_open(self.cport)):
            if self.proc.poll() is not None:
                raise RuntimeError("prosody exited: " + (d / "prosody.stdout").read_text()[-2000:])
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("prosody did not open its ports within 20 s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop Prosody (TERM, then KILL)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        """SIGKILL Prosody (a crash, for fault tests)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    # -- accounts and URLs -------------------------------------------------------------

    def register(self, user: str, password: str = PASSWORD) -> None:
        """Create (or reset) the account ``user@localhost``."""
        if user in self._accounts:
            return
        out = subprocess.run(["prosodyctl", "--config", str(self.cfg), "register", user, DOMAIN,
                              password], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"prosodyctl register {user} failed: {out.stdout}{out.stderr}")
        self._accounts.add(user)

    def url(self, user: str, room: str, **params: str) -> str:
        """A URL for ``user`` (registered on first use) in directory room ``room``."""
        self.register(user)
        query = {"domain": DOMAIN, "tls": "0", "muc": f"muc.{DOMAIN}", "room": room, **params}
        return (f"xmpp://{user}:{PASSWORD}@127.0.0.1:{self.port}?"
                + "&".join(f"{k}={v}" for k, v in query.items()))

    def gateway_params(self) -> dict[str, str]:
        """URL parameters that make a bus take part in holding the gateway ``GATEWAY``."""
        return {"gateway": GATEWAY, "gateway_secret": GATEWAY_SECRET,
                "gateway_port": str(self.cport)}

    @contextlib.contextmanager
    def namespace(self, test_id: str) -> Iterator[Callable[[str], str]]:
        """Per test: ``url_for(role)``; the test's room vanishes when its last bus leaves."""
        room = "vt-" + re.sub(r"[^a-z0-9-]", "", test_id.lower())

        def url_for(role: str, **params: str) -> str:
            user = re.sub(r"[^a-z0-9-]", "-", role.lower()) or "client"
            return self.url(user, room, **params)

        yield url_for


@contextlib.contextmanager
def running(tmp_dir: Path, tls: bool = False) -> Iterator[Server]:
    """A private Prosody for the session; raise if it cannot start."""
    ensure_installed()
    server = Server(Path(tmp_dir).resolve() / ("prosody-tls" if tls else "prosody"), tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_tls(tmp_dir: Path) -> Iterator[Server]:
    """The STARTTLS variant (self-signed certificate in ``server.ca_file``)."""
    with running(tmp_dir, tls=True) as server:
        yield server
