"""CloudRetail's generator: spec -> model -> targets -> files.

The CLI is a thin layer over these functions; so can any other caller be.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from generator.checks import check_spec
from generator.errors import CloudRetailError, OutputConflictError, SpecError, SpecIssue
from generator.handlers import HandlerChange, missing_handlers, plan_stubs, write_stubs
from generator.loader import dotted, load_file
from generator.model import Platform, build_platform
from generator.render import render_files
from generator.targets import all_files
from generator.validation import parse_spec
from generator.writer import Plan, apply, plan, read_owned

__all__ = [
    "CloudRetailError",
    "GenerateResult",
    "OutputConflictError",
    "Platform",
    "SpecError",
    "SpecIssue",
    "generate",
    "load_platform",
    "render",
    "source_name",
]


def source_name(spec_path: Path) -> str:
    """How output names its spec: relative to the working folder when inside it (no absolute
    paths in generated files, so output does not depend on where the checkout lives)."""
    resolved = spec_path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return os.path.basename(resolved)


def load_platform(spec_path: Path, *, handlers_dir: Path | None = None) -> Platform:
    """Load, validate and resolve a spec; raise SpecError with every problem found.

    With `handlers_dir`, a handler the spec names that `handlers_dir/<service>.py` does not
    define is a problem too (`generate` writes stubs for those instead).
    """
    source = source_name(spec_path)
    document = load_file(spec_path, source)
    spec = parse_spec(document)
    issues = check_spec(spec, document)
    if issues:
        raise SpecError(issues)
    platform = build_platform(spec, source)
    if handlers_dir is not None:
        issues = [
            SpecIssue(
                document.locate(item.spec_path),
                dotted(item.spec_path),
                f"handler '{item.name}' is not defined in {handlers_dir / name}.py; "
                "`cloudretail generate` writes a stub for it",
            )
            for name, absent in missing_handlers(platform, handlers_dir).items()
            for item in absent
        ]
        if issues:
            raise SpecError(issues)
    return platform


def render(platform: Platform, existing: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every generated file's text, keyed by its path inside the output folder. `existing`:
    the generated files already there (from `read_owned`), which migrations build on."""
    return render_files(all_files(platform, existing or {}), platform.source)


@dataclass(frozen=True)
class GenerateResult:
    plan: Plan
    stubs: list[HandlerChange]
    written: bool

    @property
    def stale(self) -> bool:
        return self.plan.stale or bool(self.stubs)


def generate(
    spec_path: Path,
    out_dir: Path,
    *,
    check: bool = False,
    handlers_dir: Path | None = None,
) -> GenerateResult:
    """Render the spec into `out_dir` and add stubs for missing handlers (by default in
    `handlers/` beside `out_dir`); with `check`, only compare: nothing is written."""
    platform = load_platform(spec_path)
    result = plan(out_dir, render(platform, read_owned(out_dir)))
    stubs = plan_stubs(platform, handlers_dir or out_dir.parent / "handlers")
    if not check:
        apply(result)
        write_stubs(stubs)
    return GenerateResult(plan=result, stubs=stubs, written=not check and result.stale)
