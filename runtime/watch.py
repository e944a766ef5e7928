"""`cloudretail up --watch`: the running stack follows its project's files.

Followed: the spec (through its folder, as editors save by replacing the file) and the
handlers folder. Bursts of events are debounced, and a change is applied only once the
one before it is done; a file saved without a change in its content changes nothing.

- The spec: `cloudretail generate` runs as from the command line, so an invalid spec gets
  the located errors it prints, nothing is written and the running stack is kept. Else the
  stack is planned again and the differences decide: new topics are created, databases
  whose migrations changed are upgraded, and only the processes whose generated code,
  command, environment or port changed are restarted (a new one started, a removed one
  stopped).
- `handlers/<name>.py` (or a `handlers/<name>/` package): the process of that name. Any
  other file there (shared code, templates) may be used by every service: all restart.

A restart stops the process gracefully, starts it and waits for its readiness (the
supervisor's `rerun`). One that does not get ready is shown with its last log lines and
stays stopped until the next change: crash restarts would only repeat the same failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudretail.runtime.httpclient import UpstreamError, exchange, pool_for
from cloudretail.runtime.stack import StackError, Supervisor, migrate_all
from cloudretail.runtime.stackplan import PlannedDatabase, PlannedProcess, StackPlan

# watchfiles yields a burst once no event came for STEP_MS (at most DEBOUNCE_MS after its
# first); SETTLE_SECONDS more gather what the other folder's watcher saw of the same save.
DEBOUNCE_MS = 1600
STEP_MS = 200
SETTLE_SECONDS = 0.3
# The watchers answer this often when nothing happens: the first answer says they listen.
IDLE_MS = 1000
LISTEN_TIMEOUT = 10.0
# The gateway probes its upstreams every second; a restarted service is back in its
# rotation after the first probe that finds it ready.
ROUTED_TIMEOUT = 10.0

Digests = dict[Path, str]


@dataclass(frozen=True)
class Project:
    """What `up --watch` follows: the spec, the hand-written handlers and the generated
    code (as the command line names them, relative to the working folder), and how the
    stack is planned from them."""

    spec: Path
    handlers: Path
    generated: Path
    replan: Callable[[], StackPlan]


def _digest(path: Path) -> str | None:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:  # gone, or a folder: nothing to compare
        return None


def _digests(folder: Path, keep: Callable[[Path], bool]) -> Digests:
    found: Digests = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*")):
        if path.is_file() and keep(path) and (digest := _digest(path)) is not None:
            found[path] = digest
    return found


def _differing(before: Digests, after: Digests) -> set[Path]:
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


@functools.cache
def _default_filter() -> Callable[[Any, str], bool]:
    from watchfiles import DefaultFilter

    return DefaultFilter()


def _kept(path: Path) -> bool:
    """Not editor swap files, bytecode, caches, VCS folders: what watchfiles ignores."""
    from watchfiles import Change

    return _default_filter()(Change.modified, str(path))


@dataclass(frozen=True)
class _Code:
    """The generated files a process runs: the package (or module) its command runs with
    `-m`, the packages above it and the generated folder's top-level modules it builds on,
    and the generated files its command names (the gateway's routes)."""

    generated: Path
    folders: tuple[Path, ...]
    files: frozenset[Path]
    top_level: bool

    @classmethod
    def of(cls, process: PlannedProcess, generated: Path) -> _Code:
        folders: list[Path] = []
        files: set[Path] = set()
        top_level = False
        arguments = list(process.command)
        for index, argument in enumerate(arguments):
            if argument == "-m" and index + 1 < len(arguments):
                parts = arguments[index + 1].split(".")
                if parts[0] == generated.name:
                    top_level = True
                    module = generated.parent.joinpath(*parts)
                    folders.append(module)
                    files.add(module.with_suffix(".py"))
                    files.update(
                        generated.parent.joinpath(*parts[:end], "__init__.py")
                        for end in range(1, len(parts))
                    )
            elif (path := Path(argument)).is_absolute() and path.is_relative_to(generated):
                files.add(path)
        return cls(generated, tuple(folders), frozenset(files), top_level)

    def changed(self, paths: set[Path]) -> bool:
        for path in paths:
            if path in self.files:
                return True
            # Python modules only: the Dockerfile beside them is not what runs here.
            if path.suffix != ".py":
                continue
            if any(path.is_relative_to(folder) for folder in self.folders):
                return True
            if self.top_level and path.parent == self.generated:
                return True
        return False


def _migrations_changed(database: PlannedDatabase, paths: set[Path]) -> bool:
    """Its alembic.ini or a file of the migrations beside it (where the upgrade reads)."""
    ini = Path(database.ini)
    return any(path == ini or path.is_relative_to(ini.parent / "migrations") for path in paths)


class Watch:
    def __init__(self, supervisor: Supervisor, project: Project) -> None:
        self.supervisor = supervisor
        self.project = project
        self.say = supervisor.say
        self.spec = project.spec.resolve()
        self.handlers = project.handlers.resolve()
        self.generated = project.generated.resolve()
        # What the running processes were started from: a change is a difference to these.
        self.spec_digest = _digest(self.spec)
        self.handler_files = _digests(self.handlers, _kept)
        self.generated_files = _digests(self.generated, _kept)
        self.woken = asyncio.Event()
        self.done = asyncio.Event()  # set to stop the watchers

    # -- following the files -------------------------------------------------------------

    async def run(self) -> None:
        """Follow the files until the stack stops."""
        listening: list[asyncio.Event] = []
        watchers = []
        folders: list[tuple[Path, bool, Callable[[Path], bool] | None]] = [
            (self.spec.parent, False, self._is_spec)
        ]
        if self.handlers.is_dir():
            folders.append((self.handlers, True, None))
        for folder, recursive, keep in folders:
            ready = asyncio.Event()
            listening.append(ready)
            watchers.append(asyncio.create_task(self._follow(folder, recursive, keep, ready)))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(ready.wait() for ready in listening)), LISTEN_TIMEOUT
                )
            followed = [str(self.project.spec)]
            if self.handlers.is_dir():
                followed.append(f"{self.project.handlers}/")
            self.say(f"watch: following {' and '.join(followed)} (Ctrl-C stops the stack)")
            while not self.supervisor.stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.woken.wait(), 0.5)
                if not self.woken.is_set() or self.supervisor.stopping.is_set():
                    continue
                await asyncio.sleep(SETTLE_SECONDS)
                self.woken.clear()
                try:
                    await self.apply()
                except Exception as error:  # a change must never take the running stack down
                    self.say(f"watch: could not apply the change: {type(error).__name__}: {error}")
        finally:
            self.done.set()
            await asyncio.gather(*watchers, return_exceptions=True)

    def _is_spec(self, path: Path) -> bool:
        return path == self.spec

    async def _follow(
        self,
        folder: Path,
        recursive: bool,
        keep: Callable[[Path], bool] | None,
        listening: asyncio.Event,
    ) -> None:
        from watchfiles import Change, awatch

        def wanted(change: Change, path: str) -> bool:
            return keep(Path(path)) if keep else _default_filter()(change, path)

        try:
            async for changes in awatch(
                folder,
                watch_filter=wanted,
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                stop_event=self.done,
                recursive=recursive,
                rust_timeout=IDLE_MS,
                yield_on_timeout=True,
            ):
                listening.set()
                if changes:
                    self.woken.set()
        except Exception as error:  # the folder went away, no more inotify watches ...
            self.say(f"watch: stopped following {folder}: {error}")
        finally:
            listening.set()

    # -- applying a change ---------------------------------------------------------------

    async def apply(self) -> None:
        """Compare the files with what the running processes started from; act on the
        differences."""
        plan = self.supervisor.plan
        restart: set[str] = set()
        spec_digest = _digest(self.spec)
        spec_changed = spec_digest != self.spec_digest
        edited = self._handlers_edited()
        if not spec_changed and not edited:
            return  # saved without a change, or the events of what was already applied
        if edited:
            owners = self._owners(edited, plan)
            names = ", ".join(self._shown(path) for path in sorted(edited))
            self.say(f"watch: {names} changed")
            restart |= owners
        generated = self.generated_files
        if spec_changed:
            outcome = await self._regenerate(plan)
            if outcome is None:
                # The spec still differs from what runs: the next change tries it again.
                if not restart:
                    self.say("watch: the running stack is kept; fix the spec and save")
                    return
                self.say("watch: the spec is not applied; restarting for the handlers only")
            else:
                self.spec_digest = spec_digest
                plan, generated, changed = outcome
                restart |= changed
                restart |= self._owners(self._handlers_edited(), plan)  # stubs it added
        # A process a previous change left stopped gets another chance with each change.
        restart |= {c.name for c in self.supervisor.children if c.paused}
        running = {c.name for c in self.supervisor.children}
        wanted = {p.name for p in plan.processes}
        restart = (restart & wanted) | (wanted - running)
        if not restart and wanted == running:
            self.supervisor.plan = plan  # what changed, if anything, needs no restart
            self.generated_files = generated
            self.say("watch: nothing to restart")
            return
        if running - wanted:
            self.say(f"watch: stopping {', '.join(sorted(running - wanted))} (not in the spec)")
        if restart:
            self.say(f"watch: restarting {', '.join(sorted(restart))}")
        not_ready = await self.supervisor.rerun(plan, restart)
        self.generated_files = generated
        if self.supervisor.stopping.is_set():
            return
        for child in not_ready:
            self.say(f"watch: {child.name} did not get ready; its last log lines:")
            for line in list(child.tail)[-10:]:
                self.say(f"    {line}")
        ready = sorted(restart - {c.name for c in not_ready})
        await self._routed(
            {c.deployable or c.name for c in self.supervisor.children if c.name in ready}
        )
        summary = f"restarted {', '.join(ready)}" if ready else "restarted nothing"
        if not_ready:
            failed = ", ".join(c.name for c in not_ready)
            summary += f"; {failed} did not start: fix it and save to try again"
        self.say(f"watch: {summary}")

    async def _routed(self, names: set[str]) -> None:
        """Wait until the gateway routes to the restarted services (deployables) again (it
        ejected them while they drained): the change is applied once requests reach the new
        processes."""
        gateway = next((c for c in self.supervisor.children if c.kind == "gateway"), None)
        if gateway is None or gateway.paused or gateway.name in names:
            return  # a gateway started anew was ready only with all its upstreams
        deadline = time.monotonic() + ROUTED_TIMEOUT
        while time.monotonic() < deadline and not self.supervisor.stopping.is_set():
            upstreams = await _gateway_upstreams(gateway.url)
            if upstreams is not None and all(upstreams.get(name, True) for name in names):
                return
            await asyncio.sleep(0.3)
        self.say(f"watch: the gateway does not route to {', '.join(sorted(names))} yet")

    def _handlers_edited(self) -> set[Path]:
        now = _digests(self.handlers, _kept)
        edited = _differing(self.handler_files, now)
        self.handler_files = now
        return edited

    def _owners(self, paths: set[Path], plan: StackPlan) -> set[str]:
        """`handlers/<name>.py` and `handlers/<name>/...`: the processes of the deployable
        named so (every instance of it under `up --scale`); anything else there: every
        service."""
        deployables = {p.of for p in plan.processes}
        owners = set()
        for path in paths:
            parts = path.relative_to(self.handlers).parts
            name = parts[0].removesuffix(".py") if len(parts) == 1 else parts[0]
            if name in deployables and (len(parts) > 1 or parts[0].endswith(".py")):
                owners |= {p.name for p in plan.processes if p.of == name}
            else:
                owners |= {p.name for p in plan.processes if p.kind == "service"}
        return owners

    def _shown(self, path: Path) -> str:
        return str(self.project.handlers / path.relative_to(self.handlers))

    async def _regenerate(self, old: StackPlan) -> tuple[StackPlan, Digests, set[str]] | None:
        """Run `generate`, plan again, create topics and migrate: the new plan, the generated
        files and the processes to restart; None when the running stack must be kept."""
        self.say(f"watch: {self.project.spec} changed: regenerating")
        generate = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cloudretail.cli",
            "generate",
            "--spec",
            str(self.project.spec),
            "--out",
            str(self.project.generated),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await generate.communicate()
        for line in output.decode(errors="replace").splitlines():
            self.say(line)
        if generate.returncode != 0:
            return None
        try:
            plan = self.project.replan()
        except Exception as error:  # the caller's planning: whatever it refuses, it says why
            self.say(f"watch: cannot plan the stack: {error}")
            return None
        generated = _digests(self.generated, _kept)
        changed_files = _differing(self.generated_files, generated)
        before = {p.name: p for p in old.processes}
        restart = {
            p.name
            for p in plan.processes
            if before.get(p.name) != p or _Code.of(p, self.generated).changed(changed_files)
        }
        try:
            if plan.topics != old.topics:
                await self.supervisor.create_topics(plan)
            databases = {d.name: d for d in old.databases}
            migrating = tuple(
                d
                for d in plan.databases
                if databases.get(d.name) != d or _migrations_changed(d, changed_files)
            )
            if migrating:
                await migrate_all(plan.model_copy(update={"databases": migrating}), self.say)
        except StackError as error:
            self.say(f"watch: {error}")
            return None
        except Exception as error:  # the broker's client raises many kinds; all mean "unreachable"
            self.say(f"watch: cannot create the topics: {error}")
            return None
        return plan, generated, restart


async def _gateway_upstreams(url: str) -> dict[str, bool] | None:
    """Which upstreams the gateway has a ready instance of (its readiness `details`)."""
    pool, _ = pool_for(url, connect_timeout=2.0)
    try:
        reply = await exchange(pool, "GET", "/health/ready", (), b"", 2.0)
        details = json.loads(reply.body).get("details")
    except (UpstreamError, ValueError, AttributeError):
        return None
    finally:
        pool.close()
    return (
        {str(name): bool(ok) for name, ok in details.items()} if isinstance(details, dict) else None
    )


async def follow(supervisor: Supervisor, project: Project) -> None:
    """Run beside the stack (`run_stack(watch_changes=...)`) until it stops."""
    await Watch(supervisor, project).run()
