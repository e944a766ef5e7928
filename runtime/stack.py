"""`cloudretail up`: the whole platform on one machine, as a supervisor of child processes.

The plan (which processes, their environment, databases, topics) comes from the generator
as plain JSON. The supervisor starts the embedded broker (unless an external Kafka is
given), creates the topics, migrates every database, starts a receiver for the processes'
spans (`cloudretail.runtime.localtraces`), starts each process, waits for their readiness, streams
their logs with a name prefix, restarts a process that crashes (with backoff), and on
Ctrl-C / SIGTERM stops everything within 10 seconds. Detached, the same
supervisor runs in its own session and records itself in `<data dir>/state.json`, which
`status` and `down` read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cloudretail.runtime.events.broker import EmbeddedBroker, EmbeddedBrokerError, port_holder
from cloudretail.runtime.events.topics import TopicSpec, apply_topics
from cloudretail.runtime.httpclient import UpstreamError, exchange, pool_for
from cloudretail.runtime.localtraces import TRACES_DIR, SpanFile, TraceReceiver
from cloudretail.runtime.mailsink import MailSink, ReceivedMail
from cloudretail.runtime.pids import alive
from cloudretail.runtime.stackplan import PlannedProcess, StackPlan
from cloudretail.runtime.tracing import exporting

STOP_TIMEOUT = 8.0
# Who stops first: the edge, so no new work arrives; then the services, whose consumers and
# relays still reach the broker while they leave their groups; then the event bus; the
# broker last.
STOP_ORDER = ("gateway", "service", "event-bus")
READY_TIMEOUT = 60.0
COLORS = (36, 32, 33, 35, 34, 96, 92, 93, 95)
STATE_FILE = "state.json"
PLAN_FILE = "stack.json"


class StackError(Exception):
    """Something the user can fix: a port in use, a database that cannot be reached ..."""

    exit_code = 2  # the CLI's exit code for it (cloudretail.cli)


class PortInUseError(StackError):
    """A port the stack listens on is taken: the machine's state, not the input."""

    exit_code = 3


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _print(text: str, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    if os.environ.get("NO_COLOR"):  # https://no-color.org: no colour codes at all
        text = _ANSI.sub("", text)
    out.write(text + "\n")
    out.flush()


# -- secrets the stack keeps between runs ---------------------------------------------------


def stack_secrets(data_dir: Path, platform: str) -> dict[str, str]:
    """The service token, the key ring of encrypted columns and the admin's credentials (from
    the environment, else made once and kept in the data dir with owner-only permissions);
    the admin's default address is named for the platform."""
    path = data_dir / "secrets.json"
    kept: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    for name, size in (("service_token", 32), ("admin_password", 12)):
        if name not in kept:
            kept[name] = secrets.token_urlsafe(size)
            changed = True
    if "encryption_keys" not in kept:
        from cloudretail.runtime.crypto import KeyRing  # cryptography: only the first run needs it

        kept["encryption_keys"] = KeyRing.new_entry("local")
        changed = True
    if changed:
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(kept, indent=2))
        path.chmod(0o600)
    email = os.environ.get("CLOUDRETAIL_ADMIN_EMAIL") or f"admin@{platform}.example"
    password = os.environ.get("CLOUDRETAIL_ADMIN_PASSWORD") or kept["admin_password"]
    return {
        "service_token": kept["service_token"],
        "encryption_keys": os.environ.get("ENCRYPTION_KEYS") or kept["encryption_keys"],
        "admin_email": email,
        "admin_password": password,
        "admin_password_generated": "" if os.environ.get("CLOUDRETAIL_ADMIN_PASSWORD") else "1",
    }


# -- preparing: ports, broker, topics, databases -----------------------------------------------


def check_ports(plan: StackPlan) -> None:
    taken = []
    ports = [(p.name, p.port) for p in plan.processes]
    if plan.broker:
        ports.append(("embedded Kafka broker", plan.broker.port))
    if plan.mail_sink:
        ports.append(("local SMTP sink", plan.mail_sink.port))
    for name, port in ports:
        holder = port_holder("127.0.0.1", int(port))
        if holder is not None:
            taken.append(f"port {port} ({name}) is in use by {holder}")
    if taken:
        raise PortInUseError(
            "cannot start: " + "; ".join(taken) + ". Stop what holds it, or run "
            "`cloudretail down` if an earlier stack is still up."
        )


def reset_data(plan: StackPlan) -> None:
    """Start empty: SQLite files are removed, PostgreSQL databases dropped."""
    data = Path(plan.data_dir) / "data"
    shutil.rmtree(data, ignore_errors=True)
    if plan.mail_sink:
        shutil.rmtree(plan.mail_sink.directory, ignore_errors=True)
    for database in plan.databases:
        url = database.url
        if url.startswith(("postgresql", "postgres")):
            asyncio.run(_drop_postgres(url))


async def _drop_postgres(url: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres")
    connection = await asyncpg.connect(admin.render_as_string(hide_password=False), timeout=5)
    try:
        name = str(parsed.database).replace('"', '""')
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def migrate_all(plan: StackPlan, say: Callable[[str], None]) -> None:
    """Upgrade every planned database, in a child process: Alembic, SQLAlchemy and the
    generated models would otherwise stay loaded in the supervisor for the stack's life."""
    if not plan.databases:
        return
    say(f"migrating {', '.join(database.name for database in plan.databases)} ...")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cloudretail.runtime.migrate",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(
        "".join(
            json.dumps({"name": database.name, "ini": database.ini, "url": database.url}) + "\n"
            for database in plan.databases
        ).encode()
    )
    await process.stdin.drain()
    process.stdin.close()
    async for raw in process.stdout:
        name, _, head = raw.decode().strip().partition(" ")
        say(f"migrated {name} to {head}")
    assert process.stderr is not None
    error = (await process.stderr.read()).decode().strip()
    if await process.wait() != 0:
        # A refusal is one line; anything else ends in the exception's line.
        raise StackError(error.splitlines()[-1] if error else "migrations failed")


def topic_specs(plan: StackPlan) -> list[TopicSpec]:
    """The plan's topics as one local broker takes them (replication 1)."""
    return [topic.spec(replication=1) for topic in plan.topics]


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    color: int
    log_path: Path
    kind: str = "service"
    deployable: str = ""  # what this is an instance of (`up --scale`); empty: `name`
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0  # the backoff's count: back to 0 after a minute without a crash
    restarted: int = 0  # every restart since the stack started (status, the dev console)
    started_at: float = 0.0
    # Left alone by the crash restarts: `rerun` is stopping and starting it on purpose, or it
    # did not start after a rerun and waits for the next one.
    paused: bool = False
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _pretty(line: str) -> str:
    """A JSON log line as `level message key=value ...`; anything else as it is."""
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict) or "message" not in record:
        return line
    extras = {
        k: v
        for k, v in record.items()
        if k not in {"timestamp", "level", "service", "logger", "message"} and v is not None
    }
    tail = " ".join(f"{k}={v}" for k, v in extras.items())
    return f"{str(record.get('level', '')).upper():<7} {record['message']}" + (
        f"  {tail}" if tail else ""
    )


class Supervisor:
    def __init__(
        self,
        plan: StackPlan,
        *,
        console: bool,
        extra_env: dict[str, str],
    ) -> None:
        self.plan = plan
        self.console = console
        self.data_dir = Path(plan.data_dir)
        self.logs = self.data_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        width = max(len(p.name) for p in plan.processes)
        self.width = max(width, len("supervisor"))
        self.extra_env = extra_env
        self.trace_env: dict[str, str] = {}
        self.children = [self._child(p, index) for index, p in enumerate(plan.processes)]
        self.broker: EmbeddedBroker | None = None
        self.mail_sink: MailSink | None = None
        self.traces: TraceReceiver | None = None
        self.stopping = asyncio.Event()
        self._pumps: list[asyncio.Task[None]] = []

    def _child(self, p: PlannedProcess, index: int) -> Child:
        return Child(
            name=p.name,
            command=[sys.executable, *p.command],
            env={**os.environ, **p.env, **self.extra_env, **self.trace_env},
            port=p.port,
            color=COLORS[index % len(COLORS)],
            log_path=self.logs / f"{p.name}.log",
            kind=p.kind,
            deployable=p.of,
        )

    def say(self, text: str) -> None:
        prefix = "supervisor".ljust(self.width)
        line = f"{prefix} | {text}"
        with open(self.logs / "supervisor.log", "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        if self.console:
            _print(f"\x1b[1m{prefix}\x1b[0m | {text}")

    async def start_broker(self) -> None:
        broker = self.plan.broker
        if not broker:
            return
        self.broker = EmbeddedBroker(broker.host, broker.port, log_path=self.logs / "broker.log")
        self.say(f"starting the embedded Kafka broker on {broker.host}:{broker.port}")
        try:
            await self.broker.start()
        except EmbeddedBrokerError as error:
            raise StackError(str(error)) from None

    def start_trace_receiver(self) -> None:
        """Keep the stack's spans in the data dir (`cloudretail traces` shows them): a local
        OTLP receiver, every process's exporter pointed at it. Not when the environment
        already exports them (OTEL_EXPORTER_OTLP_ENDPOINT): the processes inherit that."""
        if exporting():
            self.say("traces go where OTEL_EXPORTER_OTLP_ENDPOINT says")
            return
        store = SpanFile(self.data_dir / TRACES_DIR)
        self.traces = TraceReceiver(store)
        try:
            endpoint = self.traces.start()
        except OSError as error:
            raise StackError(f"the local trace receiver cannot listen: {error}") from None
        self.trace_env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            # Spans reach the receiver within half a second of their request (SDK: 5 s).
            "OTEL_BSP_SCHEDULE_DELAY": os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "500"),
        }
        for child in self.children:
            child.env.update(self.trace_env)
        self.say(f"keeping traces in {store.directory} (see `cloudretail traces`)")

    async def start_mail_sink(self) -> None:
        sink = self.plan.mail_sink
        if not sink:
            return
        self.mail_sink = MailSink(
            sink.host, sink.port, Path(sink.directory), notify=self._mail_received
        )
        self.say(
            f"starting the local SMTP sink on {sink.host}:{sink.port} (mails: {sink.directory})"
        )
        try:
            await self.mail_sink.start()
        except OSError as error:
            raise StackError(f"the local SMTP sink cannot listen on {sink.port}: {error}") from None

    def _mail_received(self, mail: ReceivedMail) -> None:
        self.say(f"mail to {mail.recipients}: {mail.subject} ({mail.path.name})")

    async def create_topics(self, plan: StackPlan | None = None) -> None:
        """The topics of `plan` (by default the running one)."""
        plan = plan or self.plan
        report = await apply_topics(plan.bootstrap, topic_specs(plan))
        if report.created:
            self.say(f"created topics: {', '.join(report.created)}")
        for note in report.not_applied + report.drift:
            self.say(f"topics: {note}")

    async def _pump(self, child: Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        prefix = child.name.ljust(self.width)
        with open(child.log_path, "a") as log:
            async for raw in child.process.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                child.tail.append(line)
                if self.console:
                    _print(f"\x1b[{child.color}m{prefix}\x1b[0m | {_pretty(line)}")

    async def spawn(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.command,
            env=child.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Own session: a Ctrl-C in the terminal reaches the supervisor only, which then
            # stops the children in order.
            start_new_session=True,
        )
        child.started_at = time.monotonic()
        self._pumps.append(asyncio.create_task(self._pump(child)))

    async def wait_ready(
        self, children: list[Child] | None = None, timeout: float = READY_TIMEOUT
    ) -> list[Child]:
        """Children (all by default) not ready when `timeout` runs out, or that exited before
        they were (empty: all ready)."""
        waiting = list(self.children if children is None else children)
        exited = []
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline and not self.stopping.is_set():
            for child in list(waiting):
                if child.process is None or child.process.returncode is not None:
                    waiting.remove(child)
                    exited.append(child)
            states = await asyncio.gather(*(readiness(c.url) for c in waiting))
            for child, status in zip(list(waiting), states, strict=True):
                if status == 200:
                    waiting.remove(child)
                    self.say(f"{child.name} is ready at {child.url}")
            if waiting:
                await asyncio.sleep(0.3)
        return exited + waiting

    async def watch(self) -> None:
        """Restart a child that exits while the stack runs, with backoff."""
        while not self.stopping.is_set():
            for child in self.children:
                process = child.process
                if child.paused or process is None or process.returncode is None:
                    continue
                if self.stopping.is_set():
                    return
                lived = time.monotonic() - child.started_at
                if lived > 60:
                    child.restarts = 0
                delay = min(30.0, 2.0**child.restarts)
                child.restarts += 1
                child.restarted += 1
                self.say(
                    f"{child.name} exited with code {process.returncode}; restarting in "
                    f"{delay:.0f}s (restart {child.restarts})"
                )
                child.process = None
                await asyncio.sleep(delay)
                if not self.stopping.is_set() and not child.paused:
                    await self.spawn(child)
                    self.write_state("ready")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=0.5)

    async def rerun(self, plan: StackPlan, names: set[str]) -> list[Child]:
        """Run `plan` from now on: stop the processes it no longer has, restart those in
        `names` and start the ones it adds (each stopped as `stop` does, then started), wait
        for their readiness and return the ones not ready. The others run on untouched."""
        self.plan = plan
        if plan.mail_sink is not None and self.mail_sink is None:
            await self.start_mail_sink()
        current = {child.name: child for child in self.children}
        wanted = {p.name for p in plan.processes}
        leaving = [c for c in self.children if c.name not in wanted or c.name in names]
        for child in leaving:
            child.paused = True
        await self._stop_in_order(leaving)
        self.width = max([self.width, *(len(name) for name in wanted)])
        self.children = [
            current[p.name] if p.name in current and p.name not in names else self._child(p, i)
            for i, p in enumerate(plan.processes)
        ]
        starting = [c for c in self.children if c.name in names or c.name not in current]
        for child in starting:
            child.paused = True
            if child.name in current:
                child.restarted = current[child.name].restarted + 1
            if not self.stopping.is_set():
                await self.spawn(child)
        not_ready = await self.wait_ready(starting)
        for child in starting:
            child.paused = child in not_ready
        self.write_state("ready", [c.name for c in not_ready])
        return not_ready

    async def _stop_in_order(self, children: list[Child]) -> None:
        for phase in STOP_ORDER:
            await self._stop_group([c for c in children if c.kind == phase])
        await self._stop_group([c for c in children if c.kind not in STOP_ORDER])

    async def stop(self) -> None:
        """Stop in order (gateway, services, event bus, broker): SIGTERM to each group, and
        SIGKILL to what is still there after STOP_TIMEOUT."""
        self.stopping.set()
        await self._stop_in_order(self.children)
        for pump in self._pumps:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pump, 1.0)  # the last log lines, then the pipe closes
        if self.broker is not None:
            self.say("stopping the embedded broker")
            await self.broker.stop()
        if self.mail_sink is not None:
            await self.mail_sink.stop()
        if self.traces is not None:
            # Last: the processes send their final spans as they exit.
            self.traces.stop()
        self.say("stopped")

    async def _stop_group(self, group: list[Child]) -> None:
        running = [c for c in group if c.process and c.process.returncode is None]
        if not running:
            return
        self.say("stopping " + ", ".join(c.name for c in running))
        for child in running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in running:
            assert child.process is not None
            remaining = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.wait_for(child.process.wait(), remaining)
            except TimeoutError:
                self.say(f"{child.name} did not stop in time; killing it")
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()

    def write_state(self, status: str, failed: list[str] | None = None) -> None:
        state = {
            "status": status,
            "supervisor": os.getpid(),
            "gateway": self.plan.gateway,
            "broker": self.broker.pid if self.broker else None,
            "failed": failed or [],
            "processes": {
                c.name: {
                    "pid": c.process.pid if c.process else None,
                    "url": c.url,
                    "port": c.port,
                    "log": str(c.log_path),
                    "kind": c.kind,
                    "deployable": c.deployable or c.name,
                    "restarts": c.restarted,
                }
                for c in self.children
            },
        }
        path = self.data_dir / STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(path)


async def run_stack(
    plan: StackPlan,
    *,
    console: bool,
    extra_env: dict[str, str],
    on_ready: Callable[[Supervisor], Any] | None = None,
    watch_changes: Callable[[Supervisor], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """Run the stack until SIGINT/SIGTERM. Returns the process exit status. Once it is ready,
    `watch_changes` runs beside it (`up --watch`) until the stack stops."""
    supervisor = Supervisor(plan, console=console, extra_env=extra_env)
    watching: asyncio.Task[None] | None = None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, supervisor.stopping.set)
    supervisor.write_state("starting")
    try:
        check_ports(plan)
        await supervisor.start_broker()
        await supervisor.start_mail_sink()
        supervisor.start_trace_receiver()
        await supervisor.create_topics()
        await migrate_all(plan, supervisor.say)
        for child in supervisor.children:
            await supervisor.spawn(child)
        supervisor.write_state("starting")
        not_ready = await supervisor.wait_ready()
        if supervisor.stopping.is_set():
            await supervisor.stop()
            return 130
        if not_ready:
            for child in not_ready:
                supervisor.say(f"{child.name} did not get ready; its last log lines:")
                for line in list(child.tail)[-10:]:
                    supervisor.say(f"    {line}")
            supervisor.write_state("failed", [c.name for c in not_ready])
            await supervisor.stop()
            return 1
        supervisor.write_state("ready")
        if on_ready is not None:
            result = on_ready(supervisor)
            if asyncio.iscoroutine(result):
                await result
        if watch_changes is not None:
            watching = asyncio.create_task(watch_changes(supervisor))
        await supervisor.watch()
        if watching is not None:
            # It ends soon after the stack is stopping; nothing may start after `stop`.
            await watching
        await supervisor.stop()
        supervisor.write_state("stopped")
        return 0
    except StackError as error:
        supervisor.say(f"error: {error}")
        supervisor.write_state("failed", [str(error)])
        await supervisor.stop()
        raise
    except BaseException:
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(BaseException):
                await watching
        await supervisor.stop()
        supervisor.write_state("stopped")
        raise


# -- detached: state file, status, down ---------------------------------------------------------


def read_state(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        return None
    return state


def spawn_detached(data_dir: Path, plan: StackPlan, extra_env: dict[str, str]) -> int:
    """Start the supervisor in its own session; return its pid."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(exist_ok=True)
    saved = {"plan": plan.model_dump(mode="json"), "env": extra_env}
    (data_dir / PLAN_FILE).write_text(json.dumps(saved))
    with contextlib.suppress(FileNotFoundError):
        (data_dir / STATE_FILE).unlink()
    log = open(data_dir / "logs" / "supervisor.out", "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [sys.executable, "-m", "cloudretail.runtime.stack", str(data_dir / PLAN_FILE)],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    return int(process.pid)


def wait_detached(data_dir: Path, pid: int, timeout: float = READY_TIMEOUT + 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(data_dir)
        if state and state.get("supervisor") == pid and state["status"] in ("ready", "failed"):
            return state
        if not alive(pid):
            break
        time.sleep(0.3)
    return read_state(data_dir) or {"status": "failed", "failed": ["the supervisor exited"]}


def stop_detached(data_dir: Path, timeout: float = 15.0) -> list[str]:
    """Stop a detached stack; returns what was stopped."""
    state = read_state(data_dir)
    if state is None:
        return []
    stopped = []
    pid: int | None = state.get("supervisor")
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        stopped.append(f"supervisor (pid {pid})")
    leftovers = [
        info.get("pid") for info in state.get("processes", {}).values() if alive(info.get("pid"))
    ]
    if state.get("broker") and alive(state["broker"]):
        leftovers.append(state["broker"])
    for child in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        stopped.append(f"leftover pid {child}")
    if pid and alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped


async def readiness(url: str, timeout: float = 2.0) -> int | None:
    """The status `<url>/health/ready` answers, None when nothing answers. Over the
    platform's own HTTP client: the supervisor lives as long as the stack, and httpx would
    load its command-line tool (rich, click) into it."""
    pool, _ = pool_for(url, connect_timeout=timeout)
    try:
        reply = await exchange(pool, "GET", "/health/ready", (), b"", timeout)
    except UpstreamError:
        return None
    finally:
        pool.close()
    return reply.status


async def health(state: dict[str, Any]) -> dict[str, str]:
    """Each process's state: ready, not ready (answers but 503), down."""
    result = {}
    for name, info in state.get("processes", {}).items():
        if not alive(info.get("pid")):
            result[name] = "down"
            continue
        status = await readiness(info["url"])
        if status is None:
            result[name] = "not answering"
        else:
            result[name] = "ready" if status == 200 else "not ready"
    return result


def _main(plan_file: str) -> int:
    saved = json.loads(Path(plan_file).read_text())
    try:
        plan = StackPlan.model_validate(saved["plan"])
        return asyncio.run(run_stack(plan, console=False, extra_env=saved["env"]))
    except StackError as error:
        return error.exit_code


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1]))
