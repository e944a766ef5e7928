"""Errors people can act on: data with a location, formatted once at the CLI boundary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def printable(text: str) -> str:
    """`text` with every character that is not printable escaped (`\\r`, `\\x1b`): names from
    a spec or a folder must not split a message into lines or reach the terminal raw."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


@dataclass(frozen=True, order=True)
class Location:
    """A place in a spec file: 1-based line and column."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{printable(self.path)}:{self.line}:{self.column}"


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec: where it is, the dotted location in the document, what is wrong."""

    location: Location
    where: str
    message: str

    def __str__(self) -> str:
        prefix = f"{self.location}: "
        where, message = printable(self.where), printable(self.message)
        return f"{prefix}{where}: {message}" if where else f"{prefix}{message}"


class CloudRetailError(Exception):
    """Root of every error the CLI turns into a message instead of a traceback."""


class SpecError(CloudRetailError):
    """A spec that cannot be used; carries every problem found, not only the first."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = sorted(issues, key=lambda issue: (issue.location, issue.where))
        super().__init__("\n".join(str(issue) for issue in self.issues))


class UnreadableSpecError(SpecError):
    """The spec file could not be read at all (missing, a folder, no permission): a problem
    of the machine more than of the spec, which the CLI tells apart by its exit code."""


class EnvironmentProblem(CloudRetailError):
    """The machine, not the input: a tool that is not installed, a file that cannot be
    written. The message says what is missing and how to get it."""


class GeneratedFileError(CloudRetailError):
    """Files already in the output folder that `generate` builds on (migration revisions) and
    cannot: each problem names its file, relative to the output folder until `within`."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(self.lines))

    @property
    def lines(self) -> list[str]:
        return [f"{printable(path)}: {printable(message)}" for path, message in self.problems]

    def within(self, folder: Path) -> GeneratedFileError:
        """The same problems with their paths inside `folder`."""
        return GeneratedFileError(
            [(str(folder / path), message) for path, message in self.problems]
        )


class OutputConflictError(CloudRetailError):
    """The output folder holds files the generator does not own where it wants to write."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = sorted(paths)
        listing = "\n".join(f"  {path}" for path in self.paths)
        super().__init__(
            "refusing to overwrite files that `cloudretail generate` did not write:\n"
            f"{listing}\nmove them away or delete them, then run generate again"
        )
