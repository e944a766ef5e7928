"""Write rendered files into the output folder, owning exactly what it wrote.

A manifest lists the files the generator owns. Only those are ever replaced or removed;
a file it does not own is never touched. Each file is replaced atomically (temp file +
rename), and the manifest is widened before writing and narrowed after, so an interrupted
run never leaves a file that no manifest claims.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cloudretail.generator.errors import GeneratedFileError, OutputConflictError

MANIFEST = ".cloudretail-manifest"
_MANIFEST_HEADER = "# files owned by `cloudretail generate`; it replaces and removes only these\n"


@dataclass
class Plan:
    """What a generate run would do to the output folder."""

    out: Path
    wanted: dict[str, str]
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    current: dict[str, str] = field(default_factory=dict)

    @property
    def stale(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def diff(self) -> str:
        chunks: list[str] = []
        for path in sorted([*self.added, *self.changed, *self.removed]):
            before = self.current.get(path, "").splitlines(keepends=True)
            after = self.wanted.get(path, "").splitlines(keepends=True)
            old = f"a/{path}" if path in self.current else "/dev/null"
            new = f"b/{path}" if path in self.wanted else "/dev/null"
            chunks.extend(difflib.unified_diff(before, after, old, new))
        return "".join(chunk if chunk.endswith("\n") else chunk + "\n" for chunk in chunks)


def read_manifest(out: Path) -> set[str]:
    """The files the generator owns in `out`; none when `out` or its manifest does not exist."""
    if out.exists() and not out.is_dir():
        raise GeneratedFileError([(str(out), "not a folder")])
    path = out / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    except (OSError, UnicodeDecodeError) as error:
        raise GeneratedFileError([(str(path), f"cannot read the manifest: {error}")]) from None
    return {line for line in text.splitlines() if line and not line.startswith("#")}


def read_owned(out: Path) -> dict[str, str]:
    """The text of every file the manifest says the generator owns (and that still exists)."""
    texts = {}
    for path in sorted(read_manifest(out)):
        text = _read(out / path)
        if text is not None:
            texts[path] = text
    return texts


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, UnicodeDecodeError):
        return None


def _blocked(out: Path, path: str) -> bool:
    """Something that is not a file stands where `path` goes, or a file where one of its
    folders goes: writing it would fail halfway."""
    if (out / path).is_dir():
        return True
    parents = list(PurePosixPath(path).parents)[:-1]  # without "."
    return any((out / parent).exists() and not (out / parent).is_dir() for parent in parents)


def plan(out: Path, wanted: dict[str, str]) -> Plan:
    """Compare the wanted files with the folder; refuse to take over files it does not own."""
    owned = read_manifest(out)
    result = Plan(out=out, wanted=wanted)
    conflicts = []
    for path, text in sorted(wanted.items()):
        if _blocked(out, path):
            conflicts.append(_blocker(out, path))
            continue
        existing = _read(out / path)
        if existing is None and not (out / path).exists():
            result.added.append(path)
            continue
        if path not in owned and existing != text:
            conflicts.append(path)
            continue
        result.current[path] = existing or ""
        (result.unchanged if existing == text else result.changed).append(path)
    if conflicts:
        raise OutputConflictError(sorted({str(out / path) for path in conflicts}))
    for path in sorted(owned - wanted.keys()):
        existing = _read(out / path)
        if existing is not None:
            result.current[path] = existing
            result.removed.append(path)
    return result


def _blocker(out: Path, path: str) -> str:
    """The part of `path` that is in the way (a file where a folder goes, or a folder)."""
    for parent in reversed(list(PurePosixPath(path).parents)[:-1]):
        if (out / parent).exists() and not (out / parent).is_dir():
            return parent.as_posix()
    return path


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:  # named by the file it was for, not the temporary one
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _write_manifest(out: Path, paths: set[str]) -> None:
    _write_atomic(out / MANIFEST, _MANIFEST_HEADER + "".join(f"{p}\n" for p in sorted(paths)))


def apply(result: Plan) -> None:
    """Carry out a plan: write added and changed files, remove stale owned ones."""
    out = result.out
    if not result.stale and (out / MANIFEST).exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    owned = read_manifest(out)
    _write_manifest(out, owned | result.wanted.keys())
    for path in [*result.added, *result.changed]:
        _write_atomic(out / path, result.wanted[path])
    for path in result.removed:
        (out / path).unlink(missing_ok=True)
        _prune_empty_dirs(out, (out / path).parent)
    _write_manifest(out, set(result.wanted))


def _prune_empty_dirs(out: Path, folder: Path) -> None:
    while folder != out and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
