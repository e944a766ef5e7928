"""What the CLI's `--json` prints: plain data for scripts and editors, one shape per answer.

Errors: `{"ok": false, "errors": [{"file", "line", "column", "path", "message"}]}`, where
`path` is the dotted location in the spec (empty when the problem is the whole file) and
`line`/`column` are null for a problem that is not in the spec (a generated file's).
"""

from __future__ import annotations

from typing import Any

from cloudretail.generator.errors import (
    CloudRetailError,
    GeneratedFileError,
    OutputConflictError,
    SpecError,
    SpecIssue,
)
from cloudretail.generator.model import Platform


def issue_record(issue: SpecIssue) -> dict[str, Any]:
    """A located problem (or warning) of the spec as a record."""
    return {
        "file": issue.location.path,
        "line": issue.location.line,
        "column": issue.location.column,
        "path": issue.where,
        "message": issue.message,
    }


def error_records(error: CloudRetailError) -> list[dict[str, Any]]:
    """Each problem of `error` as a record: where (file, line, column, spec path) and what."""
    if isinstance(error, SpecError):
        return [issue_record(issue) for issue in error.issues]
    if isinstance(error, GeneratedFileError):
        return [
            {"file": path, "line": None, "column": None, "path": "", "message": message}
            for path, message in error.problems
        ]
    if isinstance(error, OutputConflictError):
        return [
            {
                "file": path,
                "line": None,
                "column": None,
                "path": "",
                "message": "a file `cloudretail generate` did not write stands where it writes",
            }
            for path in error.paths
        ]
    return [{"file": None, "line": None, "column": None, "path": "", "message": str(error)}]


def summary_record(platform: Platform) -> dict[str, Any]:
    """`validate --json` of a valid spec: what `validate` summarises, as data."""
    return {
        "ok": True,
        "spec": platform.source,
        "platform": platform.name,
        "services": [
            {
                "name": service.name,
                "port": service.port,
                "tables": [table.name for table in service.tables if not table.system],
            }
            for service in platform.services
        ],
        "gateway": {
            "port": platform.gateway.deployable.port,
            "routes": len(platform.gateway.routes),
            "rate_limit": str(platform.gateway.rate_limit),
        },
        "event_bus": {"port": platform.event_bus.deployable.port},
        "topics": [{"name": topic.name, "events": list(topic.events)} for topic in platform.topics],
        "calls": [{"from": caller, "to": callee} for caller, callee in platform.call_edges],
        "sagas": [
            {"service": service.name, "name": saga.name}
            for service in platform.services
            for saga in service.sagas
        ],
    }
