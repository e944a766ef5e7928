"""A local cache of the generator's slow work whose inputs did not change: compiled templates
and migration plans that found nothing to add.

It lives in `$CLOUDRETAIL_CACHE_DIR`, else `$XDG_CACHE_HOME/cloudretail`, else
`~/.cache/cloudretail`; `CLOUDRETAIL_NO_CACHE=1` turns it off. An entry is named by a hash of
everything that decides its result, the generator's own source and the versions of the
libraries it uses included, so a changed input is a miss, never a stale hit. A cache that
cannot be read or written is skipped: it saves time, it never decides an outcome.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2

# The libraries whose behaviour a cached result depends on.
LIBRARIES = ("alembic", "jinja2", "sqlalchemy")


def directory() -> Path | None:
    """The cache folder, created on first use; None when turned off or not creatable."""
    if os.environ.get("CLOUDRETAIL_NO_CACHE"):
        return None
    configured = os.environ.get("CLOUDRETAIL_CACHE_DIR")
    if configured:
        folder = Path(configured)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        folder = Path(base) / "cloudretail"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder


@cache
def _generator_digest() -> str:
    """The generator's source and its libraries' versions: what every entry depends on."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    for library in LIBRARIES:  # the package's __init__ holds its __version__; not imported
        spec = importlib.util.find_spec(library)
        if spec is not None and spec.origin is not None:
            digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()


def key(*parts: str) -> str:
    """An entry's name: the hash of `parts` and of the generator itself."""
    digest = hashlib.sha256(_generator_digest().encode())
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part.encode())
    return digest.hexdigest()


def has(kind: str, name: str) -> bool:
    """Whether the entry `name` of `kind` was recorded."""
    folder = directory()
    return folder is not None and (folder / kind / name).is_file()


def record(kind: str, name: str) -> None:
    """Record the entry `name` of `kind` (an empty file; written whole or not at all)."""
    folder = directory()
    if folder is None:
        return
    try:
        (folder / kind).mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder / kind, delete=False) as scratch:
            pass
        os.replace(scratch.name, folder / kind / name)
    except OSError:
        return


def read_text(kind: str, name: str) -> str | None:
    """The text kept as entry `name` of `kind`; None when there is none (or it is unreadable)."""
    folder = directory()
    if folder is None:
        return None
    try:
        return (folder / kind / name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def write_text(kind: str, name: str, text: str) -> None:
    """Keep `text` as entry `name` of `kind` (written whole or not at all)."""
    folder = directory()
    if folder is None:
        return
    try:
        (folder / kind).mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=folder / kind, delete=False
        ) as scratch:
            scratch.write(text)
        os.replace(scratch.name, folder / kind / name)
    except OSError:
        return


def templates() -> jinja2.BytecodeCache | None:
    """Jinja's own cache of compiled templates (it checks each template's source itself)."""
    import jinja2

    folder = directory()
    if folder is None:
        return None
    try:
        (folder / "templates").mkdir(exist_ok=True)
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(folder / "templates"))
