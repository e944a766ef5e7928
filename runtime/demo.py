"""Demo data for `cloudretail up --demo`: the project's `demo.yaml` (beside its spec), sent
through the gateway in order, as any client would send it.

The file says how the platform's admin logs in and which requests to make, each anonymous
or as that admin. A request answered 409 is taken as "already there" and skipped with the
requests under its `then`, so loading twice changes nothing. `{field}` in a `then` request's
path or in a string of its body is that field of its parent's answer (the id of what it
created, say).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

_FIELD = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DemoLogin(_Strict):
    """How the admin gets a token: `{admin_email}` and `{admin_password}` in the body are
    the stack's admin credentials; `token` names the answer's field that holds it."""

    path: str = Field(pattern=r"^/")
    body: dict[str, Any]
    token: str = "access_token"


class DemoRequest(_Strict):
    as_: Literal["admin", "anonymous"] = Field(default="anonymous", alias="as")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str = Field(pattern=r"^/")
    body: Any = None
    then: tuple[DemoRequest, ...] = ()


class DemoReport(_Strict):
    """A GET sent after the requests, whose answer's `show` fields are printed. Work the
    requests started elsewhere (events, say) may take a moment: with `until`, the GET is
    repeated (up to `wait` seconds) until that field of the answer is truthy."""

    label: str = Field(min_length=1, max_length=40)
    as_: Literal["admin", "anonymous"] = Field(default="anonymous", alias="as")
    path: str = Field(pattern=r"^/")
    show: tuple[str, ...] = Field(min_length=1)  # dotted field paths: `totals.orders`
    until: str | None = None
    wait: float = Field(default=20.0, gt=0, le=120)


class DemoFile(_Strict):
    login: DemoLogin | None = None
    requests: tuple[DemoRequest, ...] = Field(min_length=1)
    # Printed after loading, e.g. the demo account's credentials.
    show: str = ""
    report: tuple[DemoReport, ...] = ()


class DemoError(Exception):
    """Bad demo data or an answer that is neither success nor 409; names which and where."""


@dataclass(frozen=True)
class DemoResult:
    sent: int
    created: int
    existing: int
    show: str
    reports: tuple[tuple[str, str], ...] = ()  # (label, the fields it shows)


def read_demo(path: Path) -> DemoFile:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DemoError(f"{path}: cannot read it: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise DemoError(f"{path}: not valid YAML: {error}") from None
    try:
        return DemoFile.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        count = error.error_count()
        more = f" (and {count - 1} more problems)" if count > 1 else ""
        raise DemoError(f"{path}: {where}: {first['msg']}{more}") from None


def _fill(template: str, values: dict[str, Any], where: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise DemoError(f"{where}: the answer it follows has no field '{name}'")
        return str(values[name])

    return _FIELD.sub(value, template)


def _fill_body(body: Any, values: dict[str, Any], where: str) -> Any:
    if isinstance(body, str):
        return _fill(body, values, where)
    if isinstance(body, list):
        return [_fill_body(item, values, where) for item in body]
    if isinstance(body, dict):
        return {key: _fill_body(item, values, where) for key, item in body.items()}
    return body


async def load_demo(
    gateway: str, demo: DemoFile, admin_email: str, admin_password: str, *, source: str = "demo"
) -> DemoResult:
    async with httpx.AsyncClient(base_url=gateway, timeout=15.0) as client:
        admin: dict[str, str] = {}
        if demo.login is not None:
            credentials = {"admin_email": admin_email, "admin_password": admin_password}
            body = {
                key: _fill(value, credentials, f"{source}: login.body.{key}")
                if isinstance(value, str)
                else value
                for key, value in demo.login.body.items()
            }
            answer = await client.post(demo.login.path, json=body)
            if answer.status_code != 200:
                raise DemoError(
                    f"{source}: login: the admin login answered {answer.status_code}: "
                    f"{answer.text[:300]}"
                )
            admin = {"Authorization": f"Bearer {answer.json()[demo.login.token]}"}
        counts = {"sent": 0, "created": 0, "existing": 0}

        async def send(requests: tuple[DemoRequest, ...], values: dict[str, Any], at: str) -> None:
            for index, request in enumerate(requests):
                where = f"{source}: {at}[{index}] {request.method} {request.path}"
                if request.as_ == "admin" and not admin:
                    raise DemoError(f"{where}: sent as admin, but the file has no `login`")
                answer = await client.request(
                    request.method,
                    _fill(request.path, values, where),
                    json=_fill_body(request.body, values, where) if values else request.body,
                    headers=admin if request.as_ == "admin" else None,
                )
                counts["sent"] += 1
                if answer.status_code == 409:
                    counts["existing"] += 1
                    continue
                if not answer.is_success:
                    raise DemoError(f"{where}: answered {answer.status_code}: {answer.text[:300]}")
                counts["created"] += answer.status_code == 201
                fields = answer.json() if answer.content else {}
                await send(
                    request.then, fields if isinstance(fields, dict) else {}, f"{at}[{index}].then"
                )

        await send(demo.requests, {}, "requests")
        reports = []
        for index, report in enumerate(demo.report):
            where = f"{source}: report[{index}] GET {report.path}"
            if report.as_ == "admin" and not admin:
                raise DemoError(f"{where}: sent as admin, but the file has no `login`")
            headers = admin if report.as_ == "admin" else None
            answer = await _poll(client, report, headers, where)
            shown = ", ".join(f"{name}={_field(answer, name)}" for name in report.show)
            reports.append((report.label, shown))
    return DemoResult(
        counts["sent"], counts["created"], counts["existing"], demo.show, tuple(reports)
    )


def _field(answer: Any, dotted: str) -> Any:
    value = answer
    for name in dotted.split("."):
        if not isinstance(value, dict) or name not in value:
            return None
        value = value[name]
    return value


async def _poll(
    client: httpx.AsyncClient, report: DemoReport, headers: dict[str, str] | None, where: str
) -> Any:
    deadline = time.monotonic() + report.wait
    while True:
        answer = await client.get(report.path, headers=headers)
        if not answer.is_success:
            raise DemoError(f"{where}: answered {answer.status_code}: {answer.text[:300]}")
        body = answer.json()
        if report.until is None or _field(body, report.until) or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.5)
