"""One FastAPI service per spec service: `generated/services/<name>/`.

This module turns the model into the Python-specific view the templates print: type
expressions, imports, whole lines wrapped to 100 columns. Templates make no decisions.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

from cloudretail.generator.crud_events import CrudEvent, FieldSource, crud_events
from cloudretail.generator.handlers import event_handler_name
from cloudretail.generator.kinds import KINDS
from cloudretail.generator.model import Column, Platform, Route, Saga, Service, Table, pascal
from cloudretail.generator.pycode import Imports, call, pytuple
from cloudretail.generator.render import OutputFile, pystr
from cloudretail.generator.targets.personal_data import PersonalDataCode, personal_data_code

PAGE_LIMIT_DEFAULT = 20
PAGE_LIMIT_MAX = 100
# OFFSET is a BIGINT on every backend; a larger one must be a 422, not a driver overflow.
BIGINT_MAX = 2**63 - 1
_CHECK_OPERATORS = {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}


@dataclass(frozen=True)
class ColumnCode:
    name: str
    secret: bool
    schema_type: str
    model_line: str
    create_line: str | None
    update_line: str | None


@dataclass(frozen=True)
class FilterCode:
    name: str
    param: str
    condition: str


@dataclass(frozen=True)
class TableCode:
    table: Table
    class_name: str
    columns: tuple[ColumnCode, ...]
    table_args_block: str
    filters: tuple[FilterCode, ...]
    sort_values: tuple[str, ...]
    aliases: tuple[str, ...]
    where_line: str
    not_null_line: str
    default_order: str
    key_type: str
    cache_ttl: int | None


@dataclass(frozen=True)
class RouteCode:
    route: Route
    function: str
    kind: str  # "handler" or a CRUD operation
    decorator: str
    params: tuple[str, ...]
    returns: str
    table: TableCode | None
    key_param: str | None
    publish: tuple[str, ...] = ()  # statements (indented) that write this write's events


@dataclass(frozen=True)
class SagaCode:
    saga: Saga
    constant: str
    steps: tuple[str, ...]  # Step(...) expressions, indented, each ending with a comma


@dataclass(frozen=True)
class ModelsCode:
    """What models.py of one database prints."""

    tables: tuple[TableCode, ...]
    imports: str


@dataclass(frozen=True)
class ServiceCode:
    service: Service
    package: str
    docstring: str
    tables: tuple[TableCode, ...]  # the spec's own tables, with API schemas
    routes: tuple[RouteCode, ...]
    models: ModelsCode
    schema_imports: str
    route_imports: str
    publishes: bool
    has_handlers: bool
    sagas: tuple[SagaCode, ...]
    event_handlers: tuple[tuple[str, str], ...]  # (event type, handler expression)
    token_roles: str  # the spec's `auth.roles` as a Python tuple, or None
    encrypted_columns: str  # `table.column` of the encrypted columns, as a Python tuple
    personal_data: PersonalDataCode | None = None  # GDPR: its personal_data.py


# -- columns -------------------------------------------------------------------------------


def _add_type(imports: Imports, column: Column) -> None:
    if column.kind.python_import:
        imports.add(*column.kind.python_import)


def _server_default(column: Column) -> str | None:
    found = column.kind.server_default(column.default)
    if found is None:
        return None
    text, is_sql = found
    return f"sa.text({pystr(text)})" if is_sql else pystr(text)


def _python_default(column: Column) -> str | None:
    return column.kind.python_default(column.default)


def _model_line(column: Column, table: Table) -> str:
    if column.encrypted:
        args = [f"EncryptedText({pystr(table.encrypted_context(column))})"]
    else:
        args = [column.kind.model_expr(column)]
    if column.primary_key:
        args.append("primary_key=True")
    elif not column.nullable:
        args.append("nullable=False")
    default = _python_default(column)
    if default is not None:
        args.append(f"default={default}")
    server_default = _server_default(column)
    if server_default is not None:
        args.append(f"server_default={server_default}")
    if column.on_update_now:
        args.append(f"onupdate={column.kind.functions['now'].python}")
    mapped = column.kind.python + (" | None" if column.nullable else "")
    return call(f"{column.name}: Mapped[{mapped}] = mapped_column(", args, indent=4)


def enum_alias(table: Table, column: Column) -> str:
    """Enum columns get a named Literal type: `OrderStatus = Literal["pending", ...]`."""
    return f"{table.class_name}{pascal(column.name)}"


def _schema_type(column: Column, table: Table) -> str:
    if "values" in column.kind.options:
        return enum_alias(table, column)
    return column.kind.python


def _constraints(column: Column) -> list[str]:
    # What the column's type itself can hold (its length, digits or integer range), then
    # its CHECK.
    found = column.kind.bounds(column)
    if column.check is not None:
        match = re.fullmatch(r"(>=|<=|>|<)\s*(-?[0-9.]+)", column.check)
        if match:
            bound = column.kind.number(match.group(2))
            keyword = _CHECK_OPERATORS[match.group(1)]
            # The CHECK's bound takes the place of the type's on its side (ge=0, not ge=-2**31).
            side = ("ge=", "gt=") if keyword in {"ge", "gt"} else ("le=", "lt=")
            position = next((i for i, c in enumerate(found) if c.startswith(side)), len(found))
            found[position : position + 1] = [f"{keyword}={bound}"]
    return found


def _field_line(column: Column, table: Table, *, optional: bool, default: str | None) -> str:
    annotation = _schema_type(column, table) + (" | None" if optional else "")
    constraints = _constraints(column)
    head = f"{column.name}: {annotation}"
    if not constraints:
        return f"    {head}" + (f" = {default}" if default is not None else "")
    args = ([f"default={default}"] if default is not None else []) + constraints
    return call(f"{head} = Field(", args, indent=4)


def _create_line(column: Column, table: Table) -> str | None:
    if column.generated:
        return None
    if column.default is not None:
        default = _python_default(column)
        return _field_line(column, table, optional=column.nullable, default=default)
    if column.nullable:
        return _field_line(column, table, optional=True, default="None")
    return _field_line(column, table, optional=False, default=None)


def _update_line(column: Column, table: Table) -> str | None:
    if column.generated or column.primary_key:
        return None
    return _field_line(column, table, optional=True, default="None")


def _column_code(column: Column, table: Table) -> ColumnCode:
    return ColumnCode(
        name=column.name,
        secret=column.secret,
        schema_type=_schema_type(column, table) + (" | None" if column.nullable else ""),
        model_line=_model_line(column, table),
        create_line=_create_line(column, table),
        update_line=_update_line(column, table),
    )


# -- tables --------------------------------------------------------------------------------


def table_args_block(args: tuple[str, ...]) -> str:
    """`__table_args__ = (...)` as ruff formats it (a lone element stays on one line)."""
    if not args:
        return ""
    if len(args) == 1 and "\n" not in args[0]:
        line = f"    __table_args__ = ({args[0]},)"
        if len(line) <= 100:
            return line
    inner = "".join(f"        {arg},\n" for arg in args)
    return f"    __table_args__ = (\n{inner}    )"


def _table_args(table: Table) -> tuple[str, ...]:
    args = [
        call(
            "sa.CheckConstraint(",
            [pystr(column.check_sql), f"name={pystr(table.check_name(column))}"],
            indent=8,
        ).strip()
        for column in table.columns
        if column.check_sql is not None
    ]
    args += [
        f"sa.UniqueConstraint({pystr(column.name)}, name={pystr(table.unique_name(column))})"
        for column in table.columns
        if column.unique
    ]
    args += [
        "sa.Index("
        + ", ".join(pystr(part) for part in (index.name, *index.columns))
        + (", unique=True" if index.unique else "")
        + ")"
        for index in table.indexes
    ]
    return tuple(args)


def _filter_code(table: Table, name: str, op: str, columns: tuple[str, ...]) -> FilterCode:
    if op == "search":
        targets = ", ".join(f"{table.class_name}.{column}" for column in columns)
        targets += "," if len(columns) == 1 else ""
        return FilterCode(name, f"{name}: str | None = None", f"crud.search(({targets}), {name})")
    column = next(c for c in table.columns if c.name == columns[0])
    python_type = column.kind.python
    # Bounded like the column, so a value it cannot hold is a 422 naming the parameter
    # instead of a driver error; a string longer than the column just matches nothing.
    bounds = column.kind.bounds(column, length=False)
    annotation = f"{python_type} | None"
    if bounds:
        query = f"Query({', '.join(bounds)})"
        annotation = f"Annotated[{annotation}, {query}]"
        if len(f"    {name}: {annotation} = None,") > 100:  # as ruff format splits it
            annotation = f"Annotated[\n        {python_type} | None,\n        {query},\n    ]"
    return FilterCode(
        name,
        f"{name}: {annotation} = None",
        f"crud.{op}({table.class_name}.{column.name}, {name})",
    )


def _table_code(table: Table, *, listed: bool = False) -> TableCode:
    """`listed`: a generated list route serves the table, so it needs a Sort type."""
    filters = tuple(_filter_code(table, f.name, f.op, f.columns) for f in table.filters)
    # Only the spec's sort columns (never secret ones: the checks refuse them); a table
    # without any sorts by its key alone. Anything else is a 422 on `sort`.
    sort_columns = table.sort or (table.primary_key.name,)
    sort_values = tuple(value for column in sort_columns for value in (column, f"-{column}"))
    not_null = sorted(
        c.name for c in table.columns if not c.nullable and not c.generated and not c.primary_key
    )
    not_null_line = ""
    if not_null:
        head = "    not_null: ClassVar[frozenset[str]] = frozenset("
        names = [pystr(name) for name in not_null]
        not_null_line = head + "{" + ", ".join(names) + "})"
        if len(not_null_line) > 100:
            items = "".join(f"            {name},\n" for name in names)
            not_null_line = f"{head}\n        {{\n{items}        }}\n    )"
    aliases = [
        call(f"{enum_alias(table, c)} = Literal[", [pystr(v) for v in c.values], indent=0, tail="]")
        for c in table.columns
        if "values" in c.kind.options
    ]
    if table.sort or listed:
        values = [pystr(value) for value in sort_values]
        aliases.append(call(f"{table.class_name}Sort = Literal[", values, indent=0, tail="]"))
    return TableCode(
        table=table,
        class_name=table.class_name,
        columns=tuple(_column_code(column, table) for column in table.columns),
        table_args_block=table_args_block(_table_args(table)),
        filters=filters,
        sort_values=sort_values,
        aliases=tuple(aliases),
        where_line=call("where = crud.where(", [f.condition for f in filters], indent=4),
        not_null_line=not_null_line,
        default_order=table.sort[0] if table.sort else table.primary_key.name,
        key_type=table.primary_key.kind.python,
        cache_ttl=table.cache_ttl_seconds,
    )


# -- events of CRUD writes -----------------------------------------------------------------


def _source_expr(source: FieldSource) -> str:
    if source.kind in {"key", "column"}:
        return f"row.{source.column}"
    if source.kind == "changes":
        return "crud.new_values(changes)"
    index = 0 if source.kind == "old" else 1
    return f"changes[{pystr(source.column)}][{index}]"


def _publish_call(event: CrudEvent, indent: int) -> str:
    items = [f"{pystr(s.field)}: {_source_expr(s)}" for s in event.sources]
    pad = " " * indent
    payload = "{" + ", ".join(items) + "}"
    if len(f"{pad}    {payload},") > 100:
        inner = "".join(f"{pad}        {item},\n" for item in items)
        payload = "{\n" + inner + pad + "    }"
    args = ["session", pystr(event.event), payload]
    one_line = f"{pad}await events.publish({', '.join(args)})"
    if len(one_line) <= 100 and "\n" not in payload:
        return one_line
    return f"{pad}await events.publish(\n" + "".join(f"{pad}    {a},\n" for a in args) + f"{pad})"


def _publish_lines(events: list[CrudEvent]) -> tuple[str, ...]:
    lines = []
    for event in events:
        if event.trigger == "always":
            lines.append(_publish_call(event, 4))
        else:
            condition = (
                "changes"
                if event.trigger == "changed"
                else (f"{pystr(event.trigger.partition(':')[2])} in changes")
            )
            lines.append(f"    if {condition}:\n{_publish_call(event, 8)}")
    return tuple(lines)


# -- routes --------------------------------------------------------------------------------


def _path_params(path: str) -> list[str]:
    return re.findall(r"{([a-z_][a-z0-9_]*)}", path)


def _route_code(
    route: Route, tables: dict[str, TableCode], published: dict[str, list[str]]
) -> RouteCode:
    table = tables.get(route.crud_table or "")
    kind = route.crud_operation or ("subject_data" if route.subject_data else "handler")
    params = _path_params(route.path)
    key_param = params[-1] if params else None
    if table is None:
        function = route.handler or route.name or ""
        tag = route.service
    else:
        noun = table.table.name if kind == "list" else table.table.row_name
        function = f"{kind}_{noun}"
        tag = table.table.name
    decorator_args = [pystr(route.path)]
    signature: list[str] = []
    returns = "Any"
    if kind == "subject_data":
        signature = [f"{name}: uuid.UUID" for name in params] + ["session: SessionDep"]
        returns = "dict[str, Any]"
    elif table is None:
        signature = ["ctx: ContextDep", *(f"{name}: str" for name in params)]
    else:
        cls = table.class_name
        key = f"{key_param}: {table.key_type}" if key_param else None
        cached = table.cache_ttl is not None
        read = f"{cls}Read"
        if kind == "list":
            decorator_args.append(f"response_model={cls}Page")
            signature = (["request: Request"] if cached else []) + ["session: SessionDep"]
            signature += ["cache: CacheDep"] if cached else []
            signature += [
                f"limit: Annotated[int, Query(ge=1, le={PAGE_LIMIT_MAX})] = {PAGE_LIMIT_DEFAULT}",
                f"offset: Annotated[int, Query(ge=0, le={BIGINT_MAX})] = 0",
                f"sort: {cls}Sort | None = None",
            ]
            signature += [f.param for f in table.filters]
            returns = "Response" if cached else f"{cls}Page"
        elif kind == "get":
            decorator_args.append(f"response_model={read}")
            signature = ["request: Request"] if cached else []
            signature += [key or "", "session: SessionDep"]
            signature += ["cache: CacheDep"] if cached else []
            returns = "Response" if cached else read
        elif kind in {"create", "replace", "update"}:
            body = f"{cls}Update" if kind == "update" else f"{cls}Create"
            decorator_args.append(f"response_model={read}")
            if kind == "create":
                decorator_args.append("status_code=201")
            signature = ([key] if key else []) + [f"body: {body}", "session: SessionDep"]
            signature += ["cache: CacheDep"] if cached else []
            returns = read
        elif kind == "delete":
            decorator_args.append("status_code=204")
            decorator_args.append("response_class=Response")
            signature = [key or "", "session: SessionDep"] + (["cache: CacheDep"] if cached else [])
            returns = "Response"
    if table is None and route.status is not None:
        decorator_args.append(f"status_code={route.status}")
    decorator_args.append(f"tags=[{pystr(tag)}]")
    decorator_args.append(f"responses=problems({', '.join(map(str, route.problems))})")
    if route.body is not None:
        decorator_args.append(f"openapi_extra=request_body(handlers.{route.body})")
    dependency = route.rule.dependency_expr(route.roles)
    if dependency is not None:
        decorator_args.append(f"dependencies=[{dependency}]")
    decorator = call(f"@router.{route.method.lower()}(", decorator_args, indent=0)
    publish: tuple[str, ...] = ()
    if table is not None:
        found = crud_events(
            table.table.row_name,
            table.table.primary_key.name,
            [column.name for column in table.table.columns],
            kind,
            published,
        )
        publish = _publish_lines([event for event in found if not event.missing])
    return RouteCode(
        route=route,
        function=function,
        kind=kind,
        decorator=decorator,
        params=tuple(signature),
        returns=returns,
        table=table,
        key_param=key_param,
        publish=publish,
    )


# -- imports -------------------------------------------------------------------------------


def _model_imports(tables: tuple[Table, ...]) -> str:
    imports = (
        Imports()
        .add("sqlalchemy as sa")
        .add("sqlalchemy.orm", "DeclarativeBase", "Mapped", "mapped_column")
    )
    for table in tables:
        for column in table.columns:
            kind = column.kind
            _add_type(imports, column)
            if column.encrypted:
                imports.add("cloudretail.runtime.types", "EncryptedText")
            elif kind.runtime_type is not None:
                imports.add("cloudretail.runtime.types", kind.runtime_type)
            if isinstance(column.default, str) and column.default in kind.functions:
                imports.add(*kind.functions[column.default].imports)
            if column.on_update_now:
                imports.add(*kind.functions["now"].imports)
    return imports.lines()


def _schema_imports(service: Service, tables: tuple[TableCode, ...]) -> str:
    imports = Imports().add("pydantic", "BaseModel", "ConfigDict")
    imports.add("cloudretail.runtime.schemas", "PatchModel")
    text = "\n".join(
        line
        for table in tables
        for column in table.columns
        for line in (column.create_line, column.update_line)
        if line
    )
    for table in tables:
        for column in table.table.columns:
            _add_type(imports, column)
    if "Field(" in text:
        imports.add("pydantic", "Field")
    if "decimal_pattern(" in text:
        imports.add("cloudretail.runtime.schemas", "decimal_pattern")
    if any(t.aliases for t in tables):
        imports.add("typing", "Literal")
    if any(t.not_null_line for t in tables):
        imports.add("typing", "ClassVar")
    return imports.lines()


def _route_imports(service: Service, routes: tuple[RouteCode, ...]) -> str:
    imports = Imports().add("fastapi", "APIRouter").add("cloudretail.runtime.openapi", "problems")
    package = f"generated.services.{service.name}"
    text = "\n".join(param for route in routes for param in route.params)
    text += "\n" + "\n".join(route.returns + route.decorator for route in routes)
    for route in routes:
        if route.route.rule.dependency_import:
            imports.add(*route.route.rule.dependency_import)
        if route.kind == "handler":
            if route.route.body is not None:
                imports.add("cloudretail.runtime.openapi", "request_body")
            imports.add("typing", "Any")
            imports.add("cloudretail.runtime.handlers", "ContextDep")
            imports.add("handlers", f"{service.name} as handlers")
            continue
        if route.kind == "subject_data":
            imports.add("typing", "Any").add("uuid")
            imports.add(f"{package}.personal_data", "PERSONAL_DATA")
            continue
        assert route.table is not None
        imports.add("cloudretail.runtime", "crud")
        cls = route.table.class_name
        imports.add(f"{package}.models", cls)
        schemas = {
            "list": ["Page", "Read", "Sort"],
            "get": ["Read"],
            "create": ["Create", "Read"],
            "replace": ["Create", "Read"],
            "update": ["Update", "Read"],
            "delete": [],
        }[route.kind]
        if schemas:
            imports.add(f"{package}.schemas", *(cls + suffix for suffix in schemas))
    for pattern, module, name in (
        (r"\bAnnotated\[", "typing", "Annotated"),
        (r"\bQuery\(", "fastapi", "Query"),
        (r"\bRequest\b", "fastapi", "Request"),
        (r"\bResponse\b", "fastapi", "Response"),
        (r"\bDepends\(", "fastapi", "Depends"),
        (r"\bSessionDep\b", "cloudretail.runtime.deps", "SessionDep"),
        (r"\bCacheDep\b", "cloudretail.runtime.deps", "CacheDep"),
        (r"\bdecimal_pattern\(", "cloudretail.runtime.schemas", "decimal_pattern"),
    ):
        if re.search(pattern, text):
            imports.add(module, name)
    for kind in KINDS.values():  # key and filter types
        if kind.python_import and re.search(rf"\b{re.escape(kind.python)}\b", text):
            imports.add(*kind.python_import)
    if any(route.kind == "delete" for route in routes):
        imports.add("fastapi", "Response")
    if any(route.publish for route in routes):
        imports.add(package, "events")
    return imports.lines()


def _call_expr(target: str, platform: Platform, head: str) -> str:
    """`Call(...)` as an argument line at 12 spaces (exploded when too long)."""
    callee, _, operation = target.partition(".")
    route = next(r for r in platform.service(callee).routes if r.name == operation)
    args = [pystr(callee), pystr(route.method), pystr(route.path)]
    # reserve=1: the enclosing call puts a comma after this argument.
    return call(head, args, indent=12, tail=")", reserve=1).lstrip()


def _saga_code(saga: Saga, platform: Platform) -> SagaCode:
    steps = []
    for step in saga.steps:
        args = [pystr(step.name), _call_expr(step.call, platform, "Call(")]
        if step.compensate:
            args.append(_call_expr(step.compensate, platform, "compensate=Call("))
        steps.append(call("Step(", args, indent=8, tail="),"))
    return SagaCode(saga=saga, constant=saga.name.upper(), steps=tuple(steps))


def models_code(tables: tuple[Table, ...]) -> ModelsCode:
    return ModelsCode(
        tables=tuple(_table_code(table) for table in tables), imports=_model_imports(tables)
    )


def _event_handler(service: Service, event: str) -> str:
    """The consumer's handler of `event`: the hand-written `on_<event>`, or for the erasure
    event of a service holding personal data the declared erasure, then `on_<event>` if
    the handlers define one."""
    function = event_handler_name(event)
    personal = service.personal_data
    if personal is not None and personal.applies_erasure and event == personal.erasure_event:
        return f"PERSONAL_DATA.erasure_handler(getattr(handlers, {pystr(function)}, None))"
    return f"handlers.{function}"


def service_code(service: Service, platform: Platform) -> ServiceCode:
    listed = {route.crud_table for route in service.routes if route.crud_operation == "list"}
    tables = {
        table.name: _table_code(table, listed=table.name in listed)
        for table in service.tables
        if not table.system
    }
    published = {
        event.name: [field.name for field in event.payload]
        for event in platform.events
        if event.producer == service.name
    }
    routes = tuple(_route_code(route, tables, published) for route in service.routes)
    summary = f"{service.title}: {service.description}" if service.description else service.title
    # In a docstring, a backslash escapes and `"""` ends it: the spec's text is kept literal.
    wrapped = textwrap.fill(summary, width=96).replace("\\", "\\\\").replace('"""', '\\"""')
    if wrapped.endswith('"'):  # it would run into the closing quotes
        wrapped = wrapped[:-1] + '\\"'
    docstring = f'"""{wrapped}"""' if "\n" not in wrapped else f'"""{wrapped}\n"""'
    return ServiceCode(
        service=service,
        package=f"generated.services.{service.name}",
        docstring=docstring,
        tables=tuple(tables.values()),
        routes=routes,
        models=models_code(service.tables),
        publishes=bool(service.publishes),
        has_handlers=any(route.handler for route in service.routes) or bool(service.consumes),
        event_handlers=tuple((event, _event_handler(service, event)) for event in service.consumes),
        sagas=tuple(_saga_code(saga, platform) for saga in service.sagas),
        schema_imports=_schema_imports(service, tuple(tables.values())),
        route_imports=_route_imports(service, routes),
        token_roles=pytuple(platform.auth.roles if platform.auth else None),
        encrypted_columns=pytuple(service.encrypted_columns),
        personal_data=personal_data_code(service) if service.personal_data else None,
    )


def files(platform: Platform) -> list[OutputFile]:
    out = [
        OutputFile("__init__.py", "services/package.py.j2", {"doc": "Generated platform code."}),
        OutputFile(
            "services/__init__.py",
            "services/package.py.j2",
            {"doc": "One package per service of the spec."},
        ),
    ]
    for service in platform.services:
        code = service_code(service, platform)
        base = f"services/{service.name}"
        context = {"platform": platform, "code": code, "service": service}
        modules = ("__init__.py", "__main__.py", "app.py", "schemas.py", "routes.py")
        for name in modules:
            out.append(OutputFile(f"{base}/{name}", f"services/{name}.j2", context))
        if code.publishes:
            out.append(OutputFile(f"{base}/events.py", "services/events.py.j2", context))
        if code.sagas:
            out.append(OutputFile(f"{base}/sagas.py", "services/sagas.py.j2", context))
        if code.personal_data:
            path = f"{base}/personal_data.py"
            out.append(OutputFile(path, "services/personal_data.py.j2", context))
    return out
