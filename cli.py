"""`cloudretail`: the command line. Parses arguments, calls the core, prints, sets exit codes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from generator import CloudRetailError, SpecError, generate, load_platform
from generator.model import Platform
from generator.validation import suggest

app = typer.Typer(
    name="cloudretail",
    help="Describe a microservice platform in one YAML file; generate and run it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_SPEC = Path("spec/cloudretail.yaml")
SpecArgument = Annotated[Path, typer.Argument(help="The platform spec.", show_default=True)]
SpecOption = Annotated[Path, typer.Option("--spec", help="The platform spec.")]

EXIT_STALE = 1
EXIT_BAD_INPUT = 2


def _fail(error: CloudRetailError) -> typer.Exit:
    if isinstance(error, SpecError):
        for issue in error.issues:
            typer.echo(str(issue), err=True)
        count = len(error.issues)
        typer.echo(
            f"{count} problem{'s' if count != 1 else ''} found; nothing was written.", err=True
        )
    else:
        typer.echo(f"error: {error}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


def _summary(platform: Platform) -> str:
    tables = sum(len(service.tables) for service in platform.services)
    routes = len(platform.gateway.routes)
    internal = sum(not route.via_gateway for route in platform.routes)
    lines = [
        f"{platform.source}: valid",
        f"  services  {len(platform.services)}: "
        + ", ".join(f"{s.name}:{s.port}" for s in platform.services),
        f"  gateway   :{platform.gateway.deployable.port}, {routes} routes "
        f"({internal} service-to-service), rate limit {platform.gateway.rate_limit}",
        f"  event bus :{platform.event_bus.deployable.port}",
        f"  tables    {tables}: " + ", ".join(t.name for s in platform.services for t in s.tables),
        f"  events    {len(platform.events)} on {len(platform.topics)} topics: "
        + ", ".join(f"{t.name}({len(t.events)})" for t in platform.topics),
        "  calls     " + (", ".join(f"{a}->{b}" for a, b in platform.call_edges) or "none"),
        "  sagas     "
        + (", ".join(f"{s.name}.{g.name}" for s in platform.services for g in s.sagas) or "none"),
    ]
    return "\n".join(lines)


HandlersOption = Annotated[
    Path | None,
    typer.Option("--handlers", help="Folder of hand-written handlers [default: beside --out]."),
]


@app.command()
def validate(
    spec: SpecArgument = DEFAULT_SPEC,
    handlers: Annotated[
        Path, typer.Option("--handlers", help="Folder of hand-written handlers.")
    ] = Path("handlers"),
) -> None:
    """Check a spec; print a summary when it is valid, every problem when it is not."""
    try:
        platform = load_platform(spec, handlers_dir=handlers)
    except CloudRetailError as error:
        raise _fail(error) from None
    typer.echo(_summary(platform))


@app.command(name="generate")
def generate_command(
    spec: SpecOption = DEFAULT_SPEC,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("generated"),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; show the diff, exit 1 when stale.")
    ] = False,
    handlers: HandlersOption = None,
) -> None:
    """Render the spec into the output folder (only changed files are written) and add
    stubs for handlers the spec names but nobody has written yet."""
    try:
        result = generate(spec, out, check=check, handlers_dir=handlers)
    except CloudRetailError as error:
        raise _fail(error) from None
    plan = result.plan
    if check:
        if result.stale:
            sys.stdout.write(plan.diff())
            for stub in result.stubs:
                typer.echo(f"{stub.path} lacks handlers: {', '.join(stub.handlers)}", err=True)
            typer.echo(
                f"{out}/ is stale: {len(plan.added)} to add, {len(plan.changed)} to change, "
                f"{len(plan.removed)} to remove, {len(result.stubs)} handler files to extend; "
                "run `cloudretail generate`",
                err=True,
            )
            raise typer.Exit(EXIT_STALE)
        typer.echo(f"{out}/ is up to date ({len(plan.unchanged)} files)")
        return
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


@app.command()
def migrate(
    services: Annotated[
        list[str] | None, typer.Argument(help="Services to migrate [default: all].")
    ] = None,
    spec: SpecOption = DEFAULT_SPEC,
    out: Annotated[Path, typer.Option("--out", help="Generated folder.")] = Path("generated"),
    database_url_template: Annotated[
        str | None,
        typer.Option(
            help="URL with {database}, e.g. postgresql://localhost/{database}; "
            "default: DATABASE_URL if set, else a SQLite file per service under .cloudretail/."
        ),
    ] = None,
) -> None:
    """Upgrade each service's database to the newest revision (creating it when missing)."""
    from runtime.config import default_database_url
    from runtime.migrate import MigrationError
    from runtime.migrate import migrate as upgrade_database

    try:
        platform = load_platform(spec)
    except CloudRetailError as error:
        raise _fail(error) from None
    known = [service.name for service in platform.services if service.tables]
    chosen = services or known
    unknown = [name for name in chosen if name not in known]
    if unknown:
        hints = "".join(suggest(name, known) for name in unknown)
        typer.echo(
            f"error: unknown service {', '.join(unknown)}{hints}; services with tables: "
            + ", ".join(known),
            err=True,
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    env_url = os.environ.get("DATABASE_URL")
    for name in chosen:
        service = platform.service(name)
        if database_url_template:
            url = database_url_template.format(database=service.database)
        else:
            url = env_url or default_database_url(service.database)
        ini = out / "services" / name / "alembic.ini"
        if not ini.exists():
            typer.echo(f"error: {ini} is missing; run `cloudretail generate` first", err=True)
            raise typer.Exit(EXIT_BAD_INPUT)
        try:
            head = upgrade_database(ini, url)
        except MigrationError as error:
            typer.echo(f"error: {name}: {error}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        typer.echo(f"  {name:<10} {service.database:<24} at {head}")


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema (point your editor's YAML support at it)."""
    from generator.spec import Spec

    typer.echo(json.dumps(Spec.model_json_schema(), indent=2, sort_keys=True))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
