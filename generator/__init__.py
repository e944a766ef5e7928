"""CloudRetail's generator: spec -> model -> targets -> files.

The CLI is a thin layer over these functions; so can any other caller be.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cloudretail.generator.capacity import capacity_model
from cloudretail.generator.checks import check_spec
from cloudretail.generator.errors import (
    CloudRetailError,
    GeneratedFileError,
    OutputConflictError,
    SpecError,
    SpecIssue,
)
from cloudretail.generator.formatting import format_python
from cloudretail.generator.handlers import (
    HandlerChange,
    missing_handlers,
    plan_stubs,
    project_handlers,
    write_stubs,
)
from cloudretail.generator.loader import Document, dotted, load_file
from cloudretail.generator.model import Platform, build_platform
from cloudretail.generator.openapi import api_documents
from cloudretail.generator.render import render_files
from cloudretail.generator.schema import stale_schema, write_schema
from cloudretail.generator.targets.migrations import MigrationRefusedError, versions_folder
from cloudretail.generator.targets.migrations import files as migration_files
from cloudretail.generator.validation import parse_spec
from cloudretail.generator.writer import Plan, apply, plan, read_manifest, read_owned

__all__ = [
    "CloudRetailError",
    "GenerateResult",
    "GeneratedFileError",
    "MigrationRefusedError",
    "OutputConflictError",
    "Platform",
    "SpecError",
    "SpecIssue",
    "Validated",
    "capacity_warnings",
    "check_platform",
    "generate",
    "load_document",
    "load_platform",
    "render",
    "source_name",
    "validate_spec",
]


def source_name(spec_path: Path) -> str:
    """How output names its spec: relative to the working folder when inside it (no absolute
    paths in generated files, so output does not depend on where the checkout lives)."""
    resolved = spec_path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return os.path.basename(resolved)


def _load(spec_path: Path) -> tuple[Document, Platform]:
    """Load, validate and resolve a spec; raise SpecError with every problem found."""
    source = source_name(spec_path)
    document = load_file(spec_path, source)
    spec = parse_spec(document)
    issues = check_spec(spec, document)
    if issues:
        raise SpecError(issues)
    return document, build_platform(spec, source)


def _readable_handlers(platform: Platform, handlers_dir: Path) -> None:
    """The handler modules `generate` reads and extends are there to read and extend (checked
    before anything is written, so that adding stubs cannot fail halfway)."""
    problems: list[tuple[str, str]] = []
    if handlers_dir.exists() and not handlers_dir.is_dir():
        problems.append((str(handlers_dir), "not a folder"))
    else:
        for service in platform.services:
            path = handlers_dir / f"{service.name}.py"
            if path.is_dir():
                problems.append((str(path), "a folder where the handler module goes"))
            elif path.exists():
                try:
                    path.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    problems.append((str(path), "cannot read (not UTF-8 text)"))
                except OSError as error:
                    problems.append((str(path), f"cannot read: {error.strerror}"))
    if problems:
        raise GeneratedFileError(problems)


def _handler_issues(document: Document, platform: Platform, handlers_dir: Path) -> list[SpecIssue]:
    _readable_handlers(platform, handlers_dir)
    return [
        SpecIssue(
            document.locate(item.spec_path),
            dotted(item.spec_path),
            f"handler '{item.name}' is not defined in {handlers_dir / name}.py; "
            "`cloudretail generate` writes a stub for it",
        )
        for name, absent in missing_handlers(platform, handlers_dir).items()
        for item in absent
    ]


def load_document(spec_path: Path) -> tuple[Document, Platform]:
    """A valid spec's document (its values and where each stands) and its platform; raise
    SpecError with every problem found."""
    return _load(spec_path)


def load_platform(spec_path: Path, *, handlers_dir: Path | None = None) -> Platform:
    """Load, validate and resolve a spec; raise SpecError with every problem found.

    With `handlers_dir`, a handler the spec names that `handlers_dir/<service>.py` does not
    define is a problem too (`generate` writes stubs for those instead).
    """
    document, platform = _load(spec_path)
    if handlers_dir is not None:
        issues = _handler_issues(document, platform, handlers_dir)
        if issues:
            raise SpecError(issues)
    return platform


def _existing(out_dir: Path, platform: Platform) -> dict[str, str]:
    """The generated files in `out_dir` that targets build on (from `read_owned`).

    Alembic runs every revision file in a versions folder, so one that the generator cannot
    read or did not write would be history the next revision does not build on: refused.
    """
    existing = read_owned(out_dir)
    owned = read_manifest(out_dir)
    problems: list[tuple[str, str]] = []
    for schema in platform.schemas:
        folder = versions_folder(schema)
        for path in sorted((out_dir / folder).glob("*.py")):
            name = f"{folder}/{path.name}"
            if path.name == "__init__.py" or not path.is_file():
                continue  # Alembic does not load these either
            if name not in owned:
                problems.append(
                    (
                        name,
                        "a revision `cloudretail generate` did not write; Alembic would run it "
                        "as part of the history: move it out of the folder",
                    )
                )
            elif name not in existing:
                problems.append((name, "cannot read the revision (not UTF-8 text)"))
    if problems:
        raise GeneratedFileError(problems).within(out_dir)
    return existing


def _render(
    document: Document, platform: Platform, out_dir: Path, *, only_migrations: bool = False
) -> dict[str, str]:
    """Render against the revisions already in `out_dir`; a refusal is located in the spec,
    a revision that cannot be built on is named by its path."""
    existing = _existing(out_dir, platform)
    try:
        if only_migrations:
            migration_files(platform, existing)
            return {}
        return render(platform, existing)
    except MigrationRefusedError as error:
        raise error.located(document) from None
    except GeneratedFileError as error:
        raise error.within(out_dir) from None


def capacity_warnings(document: Document, platform: Platform) -> list[SpecIssue]:
    """What does not hold at every deployable's HPA maximum (generator/capacity.py), each
    located at the spec key to change. Warnings: a spec may run with them, `--strict`
    refuses it."""
    issues = [finding.located(document) for finding in capacity_model(platform).findings]
    return sorted(issues, key=lambda issue: (issue.location, issue.where))


@dataclass(frozen=True)
class Validated:
    platform: Platform
    warnings: list[SpecIssue]


def validate_spec(
    spec_path: Path,
    out_dir: Path,
    *,
    handlers_dir: Path | None = None,
    strict: bool = False,
) -> Validated:
    """What `validate` runs: `load_platform`, the migration check `generate` makes against
    the revisions already in `out_dir` (a change that loses data, a broken history), and the
    capacity warnings; with `strict`, a warning is an error (SpecError)."""
    document, platform = _load(spec_path)
    issues = _handler_issues(document, platform, handlers_dir) if handlers_dir else []
    try:
        _render(document, platform, out_dir, only_migrations=True)
    except SpecError as error:
        issues += error.issues
    warnings = capacity_warnings(document, platform)
    if strict:
        issues += warnings
    if issues:
        raise SpecError(issues)
    return Validated(platform, warnings)


def check_platform(spec_path: Path, out_dir: Path, *, handlers_dir: Path | None = None) -> Platform:
    """`validate_spec`'s platform (warnings are not errors here)."""
    return validate_spec(spec_path, out_dir, handlers_dir=handlers_dir).platform


def render(platform: Platform, existing: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every generated file's text, keyed by its path inside the output folder. `existing`:
    the generated files already there (from `read_owned`), which migrations build on."""
    from cloudretail.generator.targets.every import all_files  # only rendering loads every target

    return format_python(render_files(all_files(platform, existing or {}), platform.source))


@dataclass(frozen=True)
class GenerateResult:
    plan: Plan
    stubs: list[HandlerChange]
    written: bool
    # The JSON Schema file the spec's modeline names (see generator/schema.py) when it was
    # missing or out of date: written, or with `check`, to be written.
    schema: Path | None = None
    # What does not hold at the HPA maximum (`capacity_warnings`).
    warnings: tuple[SpecIssue, ...] = ()

    @property
    def stale(self) -> bool:
        return self.plan.stale or bool(self.stubs) or self.schema is not None


def generate(
    spec_path: Path,
    out_dir: Path,
    *,
    check: bool = False,
    handlers_dir: Path | None = None,
    strict: bool = False,
) -> GenerateResult:
    """Render the spec into `out_dir` and add stubs for missing handlers (by default in the
    project's `handlers/`, wherever `out_dir` is: see `project_handlers`); with `check`, only
    compare: nothing is written. With `strict`, a capacity warning stops it (SpecError)
    before anything is written."""
    document, platform = _load(spec_path)
    warnings = capacity_warnings(document, platform)
    if strict and warnings:
        raise SpecError(warnings)
    files = _render(document, platform, out_dir)
    handlers = handlers_dir or project_handlers(spec_path)
    _readable_handlers(platform, handlers)
    stubs = plan_stubs(platform, handlers)
    # Each app's OpenAPI document, read from the code just rendered and the handlers as this
    # run leaves them (generator/openapi.py).
    try:
        files.update(api_documents(platform, files, handlers, stubs))
    except GeneratedFileError as error:
        raise error.within(out_dir) from None
    result = plan(out_dir, files)
    schema = stale_schema(spec_path)
    if not check:
        apply(result)
        write_stubs(stubs)
        if schema is not None:
            write_schema(schema)
    return GenerateResult(
        plan=result,
        stubs=stubs,
        written=not check and result.stale,
        schema=schema,
        warnings=tuple(warnings),
    )
