"""A RabbitMQ node of our own: started as a child process on free ports with its data under a directory we own,
stopped cleanly or crashed with SIGKILL, and started again on the same data.

Why a node of our own: a broker restart or crash is what the chaos run and the restart tests are about, and the
machine's shared RabbitMQ serves other people. This node shares nothing with it but the Erlang port mapper
(epmd), where it registers its own node name: its own AMQP and distribution ports (on 127.0.0.1), its own
configuration file (so /etc/rabbitmq's listeners and node name do not apply), no plugins but the management API
when asked for, its own Erlang cookie (HOME points into its directory), its own data and logs. Durable queues and
persistent messages live in its data directory, so they survive a crash as they would on a production broker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingConnection

from windmill.bench.processes import wait_gone
from windmill.broker.queues import declare_queue
from windmill.db.embedded.system import free_port
from windmill.errors import WindmillError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# The real server script first: Debian's /usr/sbin/rabbitmq-server is a wrapper that, run as root, switches to
# the system broker's user and writes into the system broker's log directory.
SERVER_SCRIPTS = (Path("/usr/lib/rabbitmq/bin/rabbitmq-server"),)
SERVER_OVERRIDE = "WINDMILL_RABBITMQ_SERVER"  # the rabbitmq-server script to run, where it lives elsewhere
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
MISSING_SERVER = ("No RabbitMQ server was found for a private node: install RabbitMQ (Debian: apt-get install "
                  f"rabbitmq-server) or set {SERVER_OVERRIDE} to its rabbitmq-server script.")


def find_server_script() -> Path:
    """The rabbitmq-server script to start a node with: the override, Debian's, else the one on PATH."""
    override = os.environ.get(SERVER_OVERRIDE)
    if override:
        return Path(override)
    for candidate in SERVER_SCRIPTS:
        if os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("rabbitmq-server")
    if on_path is None:
        raise WindmillError(MISSING_SERVER)
    return Path(on_path)


class PrivateRabbitMQ:
    """One RabbitMQ node under `base` (created if missing): `start()`, `crash()`, `stop()`, `restart()`, and
    `discard()` to stop it and delete its directory. Also a context manager (start … discard).

    The ports are chosen once, so a restarted node is where its clients left it."""

    def __init__(self, base: Path, *, prefix: str = "windmill", management: bool = False,
                 admin: tuple[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.base = Path(base).absolute()
        # Where the node writes its logs (default: inside `base`); elsewhere, they outlive a discarded node.
        self.log_dir = Path(log_dir).absolute() if log_dir is not None else self.base
        # Unique on the machine: every node registers its name with the one shared epmd.
        self.node_name = f"{prefix}-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        # The management API (HTTP on 127.0.0.1) and a first user other than guest, as a deployment has them.
        self.management_port = free_port() if management else None
        self.admin = admin
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.crashes = 0

    @property
    def amqp_url(self) -> str:
        user, password = self.admin or ("guest", "guest")
        return f"amqp://{user}:{password}@{HOST}:{self.port}/%2F"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.base / "node.pid"

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Start the node (on its data, if it ran before) and wait until it takes AMQP connections; returns the
        seconds that took."""
        started = time.monotonic()
        self.launch()
        self.wait_ready(timeout_s)
        return time.monotonic() - started

    def launch(self) -> None:
        """Start the node and return at once (wait_ready() waits for it): its boot can overlap other work."""
        if self.running():
            raise WindmillError(f"the private RabbitMQ node {self.node_name} is already running")
        self._write_files()
        self.pid_file.unlink(missing_ok=True)
        with open(self.log_file, "ab") as output:
            # A session of its own: crash() kills the node's whole process group and nothing else.
            self.process = subprocess.Popen([str(find_server_script())], env=self._environment(), cwd=self.base,
                                            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.starts += 1

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until the launched node takes AMQP connections."""
        if self.process is None:
            raise WindmillError(f"the private RabbitMQ node {self.node_name} was not launched")
        deadline = time.monotonic() + timeout_s
        while not self._accepts_connections():
            if self.process.poll() is not None:
                raise WindmillError(f"the private RabbitMQ node {self.node_name} exited at start-up "
                                    f"(status {self.process.returncode}); see {self.log_file}")
            if time.monotonic() > deadline:
                self.crash()
                raise WindmillError(f"the private RabbitMQ node {self.node_name} did not accept connections within "
                                    f"{timeout_s:.0f} s; see {self.log_file}")
            time.sleep(0.2)
        log.info("private RabbitMQ %s up on port %d", self.node_name, self.port, extra={"action": "rabbitmq_started"})

    def crash(self) -> None:
        """SIGKILL the node (its Erlang VM and the script that started it) and wait until it is gone: no shutdown
        of any kind, so RabbitMQ recovers its queues from disk at the next start."""
        if self.process is None:
            return
        beam = self.node_pid()
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if beam is not None:
            wait_gone(beam, STOP_TIMEOUT_S)
        self.process = None
        self.crashes += 1
        log.info("private RabbitMQ %s killed", self.node_name, extra={"action": "rabbitmq_killed"})

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Shut the node down cleanly (SIGTERM: the script asks the VM to stop); SIGKILL if it takes too long."""
        if self.process is None:
            return
        beam = self.node_pid()
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.crash()
            return
        if beam is not None:
            wait_gone(beam, timeout_s)
        self.process = None

    def restart(self, *, crash: bool, outage_s: float = 0.0) -> float:
        """Crash (or stop) the node, stay down `outage_s`, start it again; returns the seconds it was away."""
        started = time.monotonic()
        if crash:
            self.crash()
        else:
            self.stop()
        time.sleep(outage_s)
        self.start()
        return time.monotonic() - started

    def discard(self) -> None:
        """Kill the node and delete its directory (nothing in it is kept, so nothing needs a clean shutdown)."""
        self.crash()
        shutil.rmtree(self.base, ignore_errors=True)

    def ctl(self, *arguments: str, timeout_s: float = 30.0) -> str:
        """Run `rabbitmqctl` against this node (its name and Erlang cookie); its output, or why it failed."""
        command = [str(Path(find_server_script()).with_name("rabbitmqctl")), "-n", self.node_name, *arguments]
        try:
            done = subprocess.run(command, env=self._environment(), capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"rabbitmqctl {arguments[0] if arguments else ''} failed: {error}"
        return (done.stdout + done.stderr).strip()

    def log_lines(self, *fragments: str) -> list[str]:
        """The lines of the node's logs that contain any of `fragments` (e.g. what its recovery dropped)."""
        found = []
        for path in sorted((self.log_dir / "log").glob("*.log")):
            with contextlib.suppress(OSError):
                found += [line.strip() for line in path.read_text(errors="replace").splitlines()
                          if any(fragment in line for fragment in fragments)]
        return found

    def declare_for_good(self, queue_names: list[str]) -> None:
        """Declare Windmill's queues `queue_names` on the node, then stop and start it cleanly: a queue declared
        moments before a SIGKILL was sometimes gone after it with its messages (RabbitMQ 3.10, about one run in ten:
        the declaration was not yet written for good). A run that crashes the node to see what a crash does to
        delivered or recovered messages declares its queues so first, as a deployment's queues were declared long
        before any crash; Windmill itself does not rely on it (the scheduler resends from submit's ledger what a
        queue lost)."""
        with BlockingConnection(pika.URLParameters(self.amqp_url)) as connection:
            channel = connection.channel()
            for name in queue_names:
                channel = declare_queue(channel, name)
        self.restart(crash=False)

    def describe(self) -> str:
        """What the node itself says: each queue's ready and unacknowledged messages and consumers, each channel's
        unacknowledged deliveries, and what its recoveries logged (a queue that dropped messages says how many)."""
        queues = self.ctl("list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers", "-q",
                          "--no-table-headers")
        channels = self.ctl("list_channels", "name", "messages_unacknowledged", "consumer_count", "-q",
                            "--no-table-headers")
        recovery = self.log_lines("dropped", "unclean shutdown", "Restarting crashed queue", "[error]", "[warning]")
        return (f"the node's queues (name ready unacked consumers): {' | '.join(queues.splitlines())}; its channels "
                f"(name unacked consumers): {' | '.join(channels.splitlines())}; its log: {' | '.join(recovery[-40:])}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def node_pid(self) -> int | None:
        """The Erlang VM's pid, from the pid file the node writes as it boots."""
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def __enter__(self) -> PrivateRabbitMQ:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.discard()

    # -- internals --------------------------------------------------------------------------------------------

    def _write_files(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "home").mkdir(exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Our own configuration file, so the system's (listeners on 5672, its node name) does not apply.
        config = "disk_free_limit.absolute = 50MB\nlog.console = false\n"
        if self.management_port is not None:
            config += f"management.tcp.ip = {HOST}\nmanagement.tcp.port = {self.management_port}\n"
        if self.admin is not None:
            config += f"default_user = {self.admin[0]}\ndefault_pass = {self.admin[1]}\n"
        (self.base / "rabbitmq.conf").write_text(config)
        (self.base / "rabbitmq-env.conf").write_text("")
        plugins = "rabbitmq_management" if self.management_port is not None else ""
        (self.base / "enabled_plugins").write_text(f"[{plugins}].\n")

    def _environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("RABBITMQ_", "ERL_")) and key != "NOTIFY_SOCKET"}
        env.update({
            "HOME": str(self.base / "home"),  # the Erlang cookie of this node only
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "data"),
            "RABBITMQ_LOG_BASE": str(self.log_dir / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": HOST,  # should this node have to start epmd, it listens on loopback only
        })
        return env

    def _accepts_connections(self) -> bool:
        # A plain TCP connect first: the AMQP listener opens last in the boot, and pika logs every refusal (with
        # a traceback) at ERROR.
        try:
            socket.create_connection((HOST, self.port), timeout=2).close()
        except OSError:
            return False
        try:
            connection = BlockingConnection(pika.URLParameters(
                self.amqp_url + "?connection_attempts=1&socket_timeout=2&blocked_connection_timeout=2"))
        except (pika.exceptions.AMQPError, OSError):
            return False
        connection.close()
        return True
