"""Each deployable's OpenAPI document as a generated file: `services/<name>/openapi.json` and
`eventbus/openapi.json`, for review in diffs and for generating clients.

The document is the app's own `app.openapi()`, the one it serves at /openapi.json, not a
second derivation from the model: a handler route's request body is a pydantic model in
`handlers/`, which only the app knows. The code it comes from is what this very run
renders, so there is no circle: after rendering, the rendered Python files and the
handlers as they will be (with the stubs this run adds) are laid out in a scratch folder,
and a child process imports each app from there and prints the documents. `generated/`
on disk is never imported (it may be stale, and `--check` writes nothing), nor is project
code loaded into the generator's process. The JSON is written with sorted keys, so the
same code gives the same bytes.

An app that cannot be built (a handler that does not import) stops `generate` with the
error, naming the file. Results are cached by a hash of everything they depend on: the
rendered code, the handlers, CloudRetail's runtime and the web libraries' versions.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from functools import cache as once
from pathlib import Path
from typing import Any

from cloudretail.generator import cache
from cloudretail.generator.errors import GeneratedFileError
from cloudretail.generator.handlers import HandlerChange
from cloudretail.generator.model import Platform

# What the documents depend on besides the code: FastAPI writes them with pydantic's schemas.
LIBRARIES = ("fastapi", "starlette", "pydantic", "pydantic-core")
_KIND = "openapi"
_TIMEOUT = 120.0
# The child builds each app as a developer's machine would, with nothing of this machine's
# environment: a throwaway database URL and key ring (an app is built, never started).
_CHILD_ENV = {
    "ENVIRONMENT": "development",
    "DATABASE_URL": "sqlite+aiosqlite://",
    "ENCRYPTION_KEYS": "openapi:" + base64.b64encode(bytes(32)).decode(),
    # The docs pages are not in the document; off, building an app needs no Swagger UI files.
    "DOCS_ENABLED": "false",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
}


def document_files(platform: Platform) -> dict[str, str]:
    """Where each app's document goes (inside generated/) -> the module that builds the app."""
    found = {
        f"services/{service.name}/openapi.json": f"generated.services.{service.name}.app"
        for service in platform.services
    }
    found["eventbus/openapi.json"] = "generated.eventbus.app"
    return found


def api_documents(
    platform: Platform,
    rendered: Mapping[str, str],
    handlers_dir: Path,
    stubs: Sequence[HandlerChange],
) -> dict[str, str]:
    """Each app's OpenAPI document, as the text of its generated file."""
    targets = document_files(platform)
    handlers = _handler_files(handlers_dir, stubs)
    code = {path: text for path, text in sorted(rendered.items()) if path.endswith(".py")}
    name = cache.key(
        _KIND,
        json.dumps(sorted(targets.items())),
        json.dumps(code),
        json.dumps(handlers),
        _runtime_digest(),
    )
    kept = cache.read_text(_KIND, name)
    if kept is not None:
        documents: dict[str, Any] = json.loads(kept)
    else:
        documents = _build(targets, code, handlers)
        cache.write_text(_KIND, name, json.dumps(documents))
    return {
        path: json.dumps(documents[module], indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for path, module in targets.items()
    }


def _handler_files(folder: Path, stubs: Sequence[HandlerChange]) -> dict[str, str]:
    """The handlers package as it will be after this run: its files (by path inside it) with
    the planned stubs applied."""
    found: dict[str, str] = {}
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                try:
                    found[path.relative_to(folder).as_posix()] = path.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue  # not source (a binary asset): no app's document depends on it
    for change in stubs:
        found[change.path.name] = change.text
    found.setdefault("__init__.py", "")
    return found


@once
def _runtime_digest() -> str:
    """CloudRetail's runtime (which builds every app) and the web libraries' versions."""
    digest = hashlib.sha256()
    runtime = Path(importlib.import_module("cloudretail.runtime").__file__ or "").parent
    for path in sorted(runtime.rglob("*.py")):
        digest.update(path.relative_to(runtime).as_posix().encode())
        digest.update(path.read_bytes())
    for library in LIBRARIES:
        try:
            digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{library} absent".encode())
    return digest.hexdigest()


def _build(
    targets: Mapping[str, str], code: Mapping[str, str], handlers: Mapping[str, str]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cloudretail-openapi-") as scratch:
        root = Path(scratch)
        for path, text in code.items():
            _write(root / "generated" / path, text)
        for path, text in handlers.items():
            _write(root / "handlers" / path, text)
        env = {**_CHILD_ENV, "PATH": os.environ.get("PATH", "")}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "cloudretail.generator.openapi", *targets.values()],
                cwd=root,  # first on the child's sys.path: these `generated` and `handlers`
                env=env,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise GeneratedFileError(
                [(path, f"building the app took over {_TIMEOUT:.0f} s") for path in targets]
            ) from None
    if done.returncode != 0:
        failed, _, reason = (done.stderr.strip().splitlines() or ["?"])[-1].partition(" ")
        path = next((path for path, module in targets.items() if module == failed), failed)
        raise GeneratedFileError(
            [(path, f"cannot read the app's OpenAPI document: {reason or done.stderr.strip()}")]
        )
    documents: dict[str, Any] = json.loads(done.stdout)
    return documents


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main(modules: Sequence[str]) -> int:
    """In the child: build each module's app (`create_app()`) and print {module: document}.
    A failure is one last line on stderr: the module, a space, what went wrong."""
    documents = {}
    for module in modules:
        try:
            app = importlib.import_module(module).create_app()
            documents[module] = app.openapi()
        except Exception as error:
            print(f"{module} {type(error).__name__}: {error}{_place(error)}", file=sys.stderr)
            return 1
    json.dump(documents, sys.stdout)
    return 0


def _place(error: BaseException) -> str:
    """Where in the project's code `error` arose (the handlers' or the generated code's
    deepest line; a syntax error's own file), relative to the scratch folder."""
    if isinstance(error, SyntaxError) and error.filename:
        spots = [(error.filename, error.lineno)]
    else:
        spots = [
            (frame.filename, frame.lineno) for frame in traceback.extract_tb(error.__traceback__)
        ]
    here = Path.cwd().resolve()
    for filename, line in reversed(spots):
        try:
            relative = Path(filename).resolve().relative_to(here)
        except ValueError:
            continue
        return f" (at {relative.as_posix()}:{line})"
    return ""


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
