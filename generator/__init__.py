"""CloudRetail's generator: spec -> model -> targets -> files.

The CLI is a thin layer over these functions; so can any other caller be.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from generator.checks import check_spec
from generator.errors import CloudRetailError, OutputConflictError, SpecError, SpecIssue
from generator.loader import load_file
from generator.model import Platform, build_platform
from generator.render import render_files
from generator.targets import all_files
from generator.validation import parse_spec
from generator.writer import Plan, apply, plan

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


def load_platform(spec_path: Path) -> Platform:
    """Load, validate and resolve a spec; raise SpecError with every problem found."""
    source = source_name(spec_path)
    document = load_file(spec_path, source)
    spec = parse_spec(document)
    issues = check_spec(spec, document)
    if issues:
        raise SpecError(issues)
    return build_platform(spec, source)


def render(platform: Platform) -> dict[str, str]:
    """Every generated file's text, keyed by its path inside the output folder."""
    return render_files(all_files(platform), platform.source)


@dataclass(frozen=True)
class GenerateResult:
    plan: Plan
    written: bool


def generate(spec_path: Path, out_dir: Path, *, check: bool = False) -> GenerateResult:
    """Render the spec into `out_dir`; with `check`, only compare (nothing is written)."""
    platform = load_platform(spec_path)
    result = plan(out_dir, render(platform))
    if not check:
        apply(result)
    return GenerateResult(plan=result, written=not check and result.stale)
