"""Errors people can act on: data with a location, formatted once at the CLI boundary."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Location:
    """A place in a spec file: 1-based line and column."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec: where it is, the dotted location in the document, what is wrong."""

    location: Location
    where: str
    message: str

    def __str__(self) -> str:
        prefix = f"{self.location}: "
        return f"{prefix}{self.where}: {self.message}" if self.where else f"{prefix}{self.message}"


class CloudRetailError(Exception):
    """Root of every error the CLI turns into a message instead of a traceback."""


class SpecError(CloudRetailError):
    """A spec that cannot be used; carries every problem found, not only the first."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = sorted(issues, key=lambda issue: (issue.location, issue.where))
        super().__init__("\n".join(str(issue) for issue in self.issues))


class OutputConflictError(CloudRetailError):
    """The output folder holds files the generator does not own where it wants to write."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = sorted(paths)
        listing = "\n".join(f"  {path}" for path in self.paths)
        super().__init__(
            "refusing to overwrite files that `cloudretail generate` did not write:\n"
            f"{listing}\nmove them away or delete them, then run generate again"
        )
