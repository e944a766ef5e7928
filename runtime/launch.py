"""`cloudretail up` after the plan: the stack's secrets and signing key, a stack already
running, a reset, then the supervisor (here, or detached), and the welcome: what runs
where, the admin's credentials, the demo data."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudretail.runtime import stack
from cloudretail.runtime.auth import DEV_KEY_NAME, kept_private_key
from cloudretail.runtime.demo import DemoError, DemoFile, load_demo
from cloudretail.runtime.pids import alive
from cloudretail.runtime.stackplan import StackPlan

if TYPE_CHECKING:
    from cloudretail.runtime.watch import Project

Say = Callable[[str], None]


class LaunchError(Exception):
    """The stack cannot start; the message says why and what to do, `code` is the exit code
    (2: refused before starting, 3: a port it needs is in use, 1: it started and failed)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def stack_table(processes: list[tuple[str, str]], states: dict[str, str]) -> str:
    """`processes`: (name, base url) pairs."""
    rows = [("service", "url", "state", "docs")]
    for name, url in processes:
        docs = f"{url}/docs"  # Swagger UI; the gateway's over every routed operation
        rows.append((name, url, states.get(name, "?"), docs))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )


def launch(
    plan: StackPlan,
    data_dir: Path,
    *,
    detach: bool,
    reset: bool,
    demo: DemoFile | None,
    demo_source: str,
    say: Say,
    warn: Say,
    watch: Project | None = None,
) -> int:
    """Start the planned stack; its exit code (0 once a detached stack is ready). With
    `watch`, the stack follows the project's files (`cloudretail.runtime.watch`)."""
    if watch is not None and detach:
        raise LaunchError("--watch follows the files from the terminal it runs in: drop --detach")
    running = stack.read_state(data_dir)
    if running and alive(running.get("supervisor")):
        raise LaunchError(
            f"a stack is already running from {data_dir} (pid {running['supervisor']}); "
            "see `cloudretail status`, stop it with `cloudretail down`"
        )
    try:  # before anything starts, detached or not: exit 3, what holds the port named
        stack.check_ports(plan)
    except stack.StackError as error:
        raise LaunchError(str(error), code=error.exit_code) from None
    if reset:
        stack.reset_data(plan)
    keep = stack.stack_secrets(data_dir, plan.platform)
    extra_env = {
        "SERVICE_TOKEN": keep["service_token"],
        "ENCRYPTION_KEYS": keep["encryption_keys"],
        "CLOUDRETAIL_ADMIN_EMAIL": keep["admin_email"],
        "CLOUDRETAIL_ADMIN_PASSWORD": keep["admin_password"],
        # The stack's signing key, made once and kept with its data.
        "JWT_PRIVATE_KEY_FILE": str(kept_private_key(data_dir.resolve() / "keys" / DEV_KEY_NAME)),
    }
    urls = [(p.name, f"http://127.0.0.1:{p.port}") for p in plan.processes]

    def welcome(states: dict[str, str]) -> None:
        say("")
        say(stack_table(urls, states))
        say(f"\n  gateway: {plan.gateway}   logs: {data_dir}/logs/")
        say(f"  console: {plan.gateway}/_console")
        note = f" (generated; kept in {data_dir / 'secrets.json'})"
        generated = keep["admin_password_generated"]
        say(
            f"  admin:   {keep['admin_email']} / {keep['admin_password']}"
            + (note if generated else "")
        )
        if plan.mail_sink:
            say(
                f"  mail:    the services' mails land in {plan.mail_sink.directory}; "
                "`cloudretail mails` lists them"
            )
        if demo is None:
            return
        try:
            loaded = asyncio.run(
                load_demo(
                    plan.gateway,
                    demo,
                    keep["admin_email"],
                    keep["admin_password"],
                    source=demo_source,
                )
            )
        except DemoError as error:
            warn(f"  demo:    not loaded: {error}")
            return
        say(
            f"  demo:    {loaded.sent} requests ({loaded.created} created, "
            f"{loaded.existing} there already)" + (f"; {loaded.show}" if loaded.show else "")
        )
        for label, shown in loaded.reports:
            say(f"  {label + ':':<8} {shown}")

    if detach:
        pid = stack.spawn_detached(data_dir, plan, extra_env)
        say(f"starting the stack in the background (supervisor pid {pid}) ...")
        state = stack.wait_detached(data_dir, pid)
        if state["status"] != "ready":
            stack.stop_detached(data_dir)
            raise LaunchError(
                f"the stack did not start: {', '.join(state.get('failed', []))}\n"
                f"see {data_dir}/logs/supervisor.log",
                code=1,
            )
        welcome(asyncio.run(stack.health(state)))
        say("  stop it with `cloudretail down`")
        return 0

    async def ready(supervisor: stack.Supervisor) -> None:
        await asyncio.to_thread(welcome, {c.name: "ready" for c in supervisor.children})
        say("  press Ctrl-C to stop")

    watch_changes = None
    if watch is not None:
        from cloudretail.runtime.watch import follow

        project = watch

        def watch_changes(supervisor: stack.Supervisor) -> Coroutine[Any, Any, None]:
            return follow(supervisor, project)

    try:
        return asyncio.run(
            stack.run_stack(
                plan, console=True, extra_env=extra_env, on_ready=ready, watch_changes=watch_changes
            )
        )
    except stack.StackError as error:
        raise LaunchError(str(error), code=error.exit_code) from None
