"""Cross-reference checks: what a schema alone cannot see (names that must resolve, clashes)."""

from __future__ import annotations

import fnmatch
import keyword
from collections.abc import Iterator
from dataclasses import dataclass, field

from generator.auth_rules import AUTH_RULES, auth_rule
from generator.crud_events import crud_events
from generator.errors import SpecIssue
from generator.kinds import KINDS, OPTION_GROUPS, kind_of
from generator.loader import Document, PathKey, dotted
from generator.model import singular
from generator.spec import ColumnSpec, RouteSpec, ScalingSpec, Spec
from generator.system_tables import SYSTEM_TABLES
from generator.validation import suggest

CRUD_OPERATIONS = ("list", "get", "create", "replace", "update", "delete")

# PostgreSQL's reserved key words (SQL:2016 reserved ones that Postgres also reserves).
_SQL_RESERVED_WORDS = """
    all analyse analyze and any array as asc asymmetric both case cast check collate
    column constraint create current_catalog current_date current_role current_time
    current_timestamp current_user default deferrable desc distinct do else end except
    false fetch for foreign from grant group having in initially intersect into lateral
    leading limit localtime localtimestamp not null offset on only or order placing
    primary references returning select session_user some symmetric system_user table
    then to trailing true union unique user using variadic when where window with
"""
SQL_RESERVED = frozenset(_SQL_RESERVED_WORDS.split())
# Names SQLAlchemy's declarative models and pydantic's models keep for themselves.
MODEL_RESERVED = frozenset({"metadata", "registry", "model_config", "model_fields"})


@dataclass
class _Checker:
    spec: Spec
    document: Document
    issues: list[SpecIssue] = field(default_factory=list)

    def error(self, path: PathKey, message: str, *, key: bool = False) -> None:
        location = self.document.locate(path, key=key)
        self.issues.append(SpecIssue(location, dotted(path), message))

    def run(self) -> list[SpecIssue]:
        self.check_ports()
        self.check_names()
        self.check_events_and_topics()
        self.check_services()
        self.check_scaling()
        self.check_auth()
        self.check_descriptions(self.document.data, ())
        return self.issues

    # -- tokens ------------------------------------------------------------------------------
    def check_auth(self) -> None:
        """The issuer is a service serving its JWKS on a public GET route, and every role a
        route asks for is one of the declared roles."""
        auth = self.spec.auth
        routes: list[tuple[PathKey, str, list[str] | None]] = [
            (("services", name, "routes", index), route.auth, route.roles)
            for name, svc in self.spec.services.items()
            for index, route in enumerate(svc.routes)
        ]
        routes += [
            (("gateway", "routes", index), route.auth, route.roles)
            for index, route in enumerate(self.spec.gateway.routes)
        ]
        if auth is None:
            for path, rule, _ in routes:
                if auth_rule(rule).token == "user":
                    self.error(
                        (*path, "auth"),
                        f"`auth: {rule}` needs a token issuer: declare the top-level `auth` "
                        "(issuer, jwks, roles)",
                    )
                    return
            return
        issuer = self.spec.services.get(auth.issuer) if auth.issuer else None
        if auth.issuer is None:
            if auth.jwks.startswith("/"):
                self.error(
                    ("auth", "jwks"),
                    "without `issuer`, `jwks` is the full URL of the identity provider's keys",
                )
        elif issuer is None:
            self.error(
                ("auth", "issuer"),
                f"unknown service '{auth.issuer}'{suggest(auth.issuer, self.spec.services)}",
            )
        elif not any(
            route.method == "GET"
            and route.path == auth.jwks
            and auth_rule(route.auth).token is None
            for route in issuer.routes
        ):
            self.error(
                ("auth", "jwks"),
                f"service '{auth.issuer}' has no public GET route at '{auth.jwks}' to serve "
                "its keys",
            )
        declared = set(auth.roles)
        for path, rule, roles in routes:
            # The roles a rule implies, else those the route names (which only a rule that
            # takes them may: that is reported on its own).
            implied = auth_rule(rule).roles
            for role in implied or roles or []:
                if role not in declared:
                    self.error(
                        (*path, "auth" if implied else "roles"),
                        f"role '{role}' is not among the declared roles "
                        f"({', '.join(auth.roles)}){suggest(role, declared)}",
                    )

    # -- free text ---------------------------------------------------------------------------
    def check_descriptions(self, node: object, path: PathKey) -> None:
        """Descriptions are copied into YAML comments, Markdown tables and docstrings, where a
        line break (or another control character) would start lines of its own."""
        items: list[tuple[str | int, object]] = []
        if isinstance(node, dict):
            items = list(node.items())
        elif isinstance(node, list):
            items = list(enumerate(node))
        for key, value in items:
            if key == "description" and isinstance(value, str) and not value.isprintable():
                self.error(
                    (*path, key),
                    "a description is one line of printable text "
                    "(it is copied into comments, tables and docstrings)",
                )
            else:
                self.check_descriptions(value, (*path, key))

    # -- ports and identifiers ---------------------------------------------------------------
    def check_ports(self) -> None:
        seen: dict[int, str] = {}
        owners: list[tuple[PathKey, int]] = [
            (("gateway", "port"), self.spec.gateway.port),
            (("event_bus", "port"), self.spec.event_bus.port),
        ]
        owners += [
            (("services", name, "port"), svc.port) for name, svc in self.spec.services.items()
        ]
        for path, port in owners:
            if port in seen:
                self.error(path, f"port {port} is already used by {seen[port]}")
            else:
                seen[port] = dotted(path[:-1])
        bus_database = self.spec.event_bus.database or f"{self.spec.platform.name}_events"
        databases: dict[str, str] = {bus_database: "the event bus"}
        for name, svc in self.spec.services.items():
            if svc.database in databases:
                self.error(
                    ("services", name, "database"),
                    f"database '{svc.database}' already belongs to "
                    f"{databases[svc.database]} (one database per service)",
                )
            databases.setdefault(svc.database, f"service '{name}'")

    def check_names(self) -> None:
        for name in self.spec.services:
            self.reserved(("services", name), name, sql=False)
        for event, event_spec in self.spec.events.items():
            for payload_field in event_spec.payload:
                self.reserved(("events", event, "payload", payload_field), payload_field, sql=False)
        for name, svc in self.spec.services.items():
            for table, table_spec in svc.tables.items():
                self.reserved(("services", name, "tables", table), table, sql=True)
                if table in SYSTEM_TABLES:
                    self.error(
                        ("services", name, "tables", table),
                        f"'{table}' is a table the platform adds itself; choose another name",
                        key=True,
                    )
                for column in table_spec.columns:
                    column_path = ("services", name, "tables", table, "columns", column)
                    self.reserved(column_path, column, sql=True)
            for index, route in enumerate(svc.routes):
                if route.handler:
                    handler_path = ("services", name, "routes", index, "handler")
                    self.reserved(handler_path, route.handler, sql=False, value=True)

    def reserved(self, path: PathKey, name: str, *, sql: bool, value: bool = False) -> None:
        if keyword.iskeyword(name) or keyword.issoftkeyword(name):
            self.error(
                path, f"'{name}' is a reserved word in Python; choose another name", key=not value
            )
        elif sql and name in SQL_RESERVED:
            self.error(path, f"'{name}' is a reserved word in SQL; choose another name", key=True)
        elif sql and name in MODEL_RESERVED:
            self.error(
                path, f"'{name}' is reserved by the generated models; choose another name", key=True
            )

    # -- events and topics -------------------------------------------------------------------
    def check_events_and_topics(self) -> None:
        for event, event_spec in self.spec.events.items():
            topics = [
                topic
                for topic, topic_spec in self.spec.topics.items()
                if any(fnmatch.fnmatchcase(event, pattern) for pattern in topic_spec.events)
            ]
            if not topics:
                self.error(
                    ("events", event),
                    f"event '{event}' has no topic: no topic's `events` pattern matches it",
                    key=True,
                )
            elif len(topics) > 1:
                self.error(
                    ("events", event),
                    f"event '{event}' matches several topics: {', '.join(topics)}",
                    key=True,
                )
            if event_spec.key not in event_spec.payload:
                self.error(
                    ("events", event, "key"),
                    f"key '{event_spec.key}' is not a payload field"
                    f"{suggest(event_spec.key, event_spec.payload)}",
                )
        producers: dict[str, str] = {}
        for name, svc in self.spec.services.items():
            for index, event in enumerate(svc.events.publishes):
                path = ("services", name, "events", "publishes", index)
                if event not in self.spec.events:
                    self.error(
                        path,
                        f"unknown event '{event}'{suggest(event, self.spec.events)}; "
                        "declare it under `events`",
                    )
                elif event in producers:
                    self.error(
                        path,
                        f"event '{event}' is already published by service '{producers[event]}'",
                    )
                else:
                    producers[event] = name
        for name, svc in self.spec.services.items():
            for index, event in enumerate(svc.events.consumes):
                path = ("services", name, "events", "consumes", index)
                if event not in producers:
                    self.error(
                        path,
                        f"event '{event}' is consumed but no service publishes it"
                        f"{suggest(event, producers)}",
                    )

    # -- services: tables, routes, calls, sagas ----------------------------------------------
    def check_services(self) -> None:
        routes: dict[tuple[str, str], str] = {}
        prefixes: dict[str, str] = {}
        for name, svc in self.spec.services.items():
            base: PathKey = ("services", name)
            if svc.prefix in prefixes:
                self.error(
                    (*base, "prefix"),
                    f"prefix '{svc.prefix}' is already used by service '{prefixes[svc.prefix]}'",
                )
            prefixes.setdefault(svc.prefix, name)
            for table, table_spec in svc.tables.items():
                self.check_table((*base, "tables", table), table, table_spec.columns)
                columns = table_spec.columns
                for index, idx in enumerate(table_spec.indexes):
                    for position, column in enumerate(idx.columns):
                        path = (*base, "tables", table, "indexes", index, "columns", position)
                        if column not in columns:
                            self.error(
                                path,
                                f"index on unknown column '{column}' of table '{table}'"
                                f"{suggest(column, columns)}",
                            )
                        elif columns[column].encrypted:
                            self.error(path, f"index on encrypted column '{column}'")
                for index, flt in enumerate(table_spec.filters):
                    path = (*base, "tables", table, "filters", index)
                    targets = [flt.column] if flt.column else list(flt.columns or [])
                    if bool(flt.column) == bool(flt.columns):
                        self.error(path, "a filter names either `column` or `columns`")
                    if flt.op == "search" and flt.column:
                        self.error(path, "a `search` filter takes `columns`")
                    for column in targets:
                        if column not in columns:
                            self.error(
                                path,
                                f"filter on unknown column '{column}'{suggest(column, columns)}",
                            )
                        elif columns[column].secret:
                            # A filter on a secret answers questions about its value.
                            self.error(path, f"filter on secret column '{column}'")
                        elif columns[column].encrypted:
                            self.error(path, f"filter on encrypted column '{column}'")
                for index, column in enumerate(table_spec.sort):
                    path = (*base, "tables", table, "sort", index)
                    if column not in columns:
                        self.error(
                            path, f"sort on unknown column '{column}'{suggest(column, columns)}"
                        )
                    elif columns[column].secret:
                        # The order of the rows would tell the secret's order.
                        self.error(path, f"sort on secret column '{column}'")
                    elif columns[column].encrypted:
                        self.error(path, f"sort on encrypted column '{column}'")
            for index, callee in enumerate(svc.calls):
                path = (*base, "calls", index)
                if callee == name:
                    self.error(path, "a service does not call itself")
                elif callee not in self.spec.services:
                    self.error(
                        path,
                        f"call to unknown service '{callee}'{suggest(callee, self.spec.services)}",
                    )
            names: set[str] = set()
            for index, route in enumerate(svc.routes):
                self.check_route((*base, "routes", index), name, route, routes, names)
            for saga, saga_spec in svc.sagas.items():
                for index, step in enumerate(saga_spec.steps):
                    for attr in ("call", "compensate"):
                        target = getattr(step, attr)
                        if target is not None:
                            self.check_call(
                                (*base, "sagas", saga, "steps", index, attr), name, target
                            )
        self.check_gateway_routes(routes, prefixes)

    def check_gateway_routes(
        self, seen: dict[tuple[str, str], str], prefixes: dict[str, str]
    ) -> None:
        bus = self.spec.event_bus
        if bus.prefix in prefixes:
            self.error(
                ("event_bus", "prefix"),
                f"prefix '{bus.prefix}' is already used by service '{prefixes[bus.prefix]}'",
            )
        upstreams = {name: svc.prefix for name, svc in self.spec.services.items()}
        upstreams["event_bus"] = bus.prefix
        for index, route in enumerate(self.spec.gateway.routes):
            path: PathKey = ("gateway", "routes", index)
            if route.upstream not in upstreams:
                self.error(
                    (*path, "upstream"),
                    f"route to unknown service '{route.upstream}'"
                    f"{suggest(route.upstream, upstreams)}",
                )
                continue
            prefix = upstreams[route.upstream]
            if not (route.path == prefix or route.path.startswith(prefix + "/")):
                self.error((*path, "path"), f"path '{route.path}' is outside the prefix '{prefix}'")
            signature = (route.method, route.path)
            if signature in seen:
                first = seen[signature]
                self.error(path, f"duplicate route {route.method} {route.path} (first at {first})")
            seen.setdefault(signature, dotted(path))
            if route.roles is not None and not auth_rule(route.auth).takes_roles:
                self.error((*path, "roles"), _roles_apply())

    def check_table(self, path: PathKey, table: str, columns: dict[str, ColumnSpec]) -> None:
        keys = [column for column, spec in columns.items() if spec.primary_key]
        if len(keys) != 1:
            self.error(
                path,
                f"table '{table}' needs exactly one primary key column, has {len(keys)}",
                key=True,
            )
        for column, spec in columns.items():
            for problem in _column_problems(spec):
                self.error((*path, "columns", column), problem, key=True)
            if spec.renamed_from and spec.renamed_from in columns:
                self.error(
                    (*path, "columns", column, "renamed_from"),
                    f"column '{spec.renamed_from}' still exists",
                )

    def check_route(
        self,
        path: PathKey,
        service: str,
        route: RouteSpec,
        seen: dict[tuple[str, str], str],
        names: set[str],
    ) -> None:
        svc = self.spec.services[service]
        signature = (route.method, route.path)
        if signature in seen:
            self.error(
                path, f"duplicate route {route.method} {route.path} (first at {seen[signature]})"
            )
        seen.setdefault(signature, dotted(path))
        if auth_rule(route.auth).via_gateway and not (
            route.path == svc.prefix or route.path.startswith(svc.prefix + "/")
        ):
            self.error(
                (*path, "path"), f"path '{route.path}' is outside the service prefix '{svc.prefix}'"
            )
        if route.roles is not None and not auth_rule(route.auth).takes_roles:
            self.error((*path, "roles"), _roles_apply())
        if (route.handler is None) == (route.crud is None):
            self.error(path, "a route names exactly one of `handler` or `crud`")
        if route.crud is not None:
            table, _, operation = route.crud.partition(".")
            if table not in svc.tables:
                self.error((*path, "crud"), f"unknown table '{table}'{suggest(table, svc.tables)}")
            elif operation not in CRUD_OPERATIONS:
                self.error(
                    (*path, "crud"),
                    f"unknown operation '{operation}'{suggest(operation, CRUD_OPERATIONS)}; "
                    f"expected one of {', '.join(CRUD_OPERATIONS)}",
                )
            else:
                self.check_crud_events(path, service, table, operation)
                needs_key = operation in {"get", "replace", "update", "delete"}
                if needs_key and not route.path.endswith("}"):
                    self.error(
                        (*path, "path"),
                        f"`{operation}` needs the row's key as the last path parameter",
                    )
        if route.crud is not None:
            for key in ("body", "status"):
                if getattr(route, key) is not None:
                    message = f"`{key}` is for handler routes; CRUD routes derive it"
                    self.error((*path, key), message)
        if route.body is not None and route.method not in {"POST", "PUT", "PATCH"}:
            self.error((*path, "body"), f"a {route.method} request carries no body")
        if 500 in route.errors:
            self.error((*path, "errors"), "500 is a bug, not an answer a route documents")
        if route.saga is not None and route.saga not in svc.sagas:
            self.error(
                (*path, "saga"), f"unknown saga '{route.saga}'{suggest(route.saga, svc.sagas)}"
            )
        if route.name is not None:
            if route.name in names:
                self.error(
                    (*path, "name"),
                    f"route name '{route.name}' is used twice in service '{service}'",
                )
            names.add(route.name)

    def check_crud_events(self, path: PathKey, service: str, table: str, operation: str) -> None:
        svc = self.spec.services[service]
        columns = svc.tables[table].columns
        key = next((name for name, column in columns.items() if column.primary_key), "id")
        published = {
            event: list(self.spec.events[event].payload)
            for event in svc.events.publishes
            if event in self.spec.events
        }
        for event in crud_events(singular(table), key, columns, operation, published):
            if event.missing:
                self.error(
                    (*path, "crud"),
                    f"`{operation}` of '{table}' publishes '{event.event}', but nothing provides "
                    f"its payload field {', '.join(repr(f) for f in event.missing)} "
                    "(use the row's columns, '<row>_id', 'fields', 'old_<column>'/'new_<column>')",
                )

    def check_call(self, path: PathKey, service: str, target: str) -> None:
        callee, _, operation = target.partition(".")
        calls = self.spec.services[service].calls
        if callee not in self.spec.services:
            self.error(
                path,
                f"unknown call '{target}': no service '{callee}'"
                f"{suggest(callee, self.spec.services)}",
            )
        elif callee not in calls:
            self.error(
                path,
                f"unknown call '{target}': service '{service}' does not declare "
                f"`calls: [{callee}]`",
            )
        else:
            operations = [r.name for r in self.spec.services[callee].routes if r.name]
            if operation not in operations:
                self.error(
                    path,
                    f"unknown call '{target}': service '{callee}' has no route named "
                    f"'{operation}'{suggest(operation, operations)}",
                )

    # -- scaling -----------------------------------------------------------------------------
    def check_scaling(self) -> None:
        for path, scaling in self.scaling_blocks():
            defaults = self.spec.defaults.scaling
            low = scaling.min if scaling.min is not None else defaults.min
            high = scaling.max if scaling.max is not None else defaults.max
            if low > high:
                self.error(path, f"scaling min ({low}) is greater than max ({high})")
            for target in ("cpu", "memory"):
                value = getattr(scaling, target)
                if value is not None and not 1 <= value <= 100:
                    self.error(
                        (*path, target), f"{target} target {value} is out of 1..100 (percent)"
                    )

    def scaling_blocks(self) -> Iterator[tuple[PathKey, ScalingSpec]]:
        d = self.spec.defaults.scaling
        yield ("defaults", "scaling"), ScalingSpec(min=d.min, max=d.max, cpu=d.cpu, memory=d.memory)
        yield ("gateway", "scaling"), self.spec.gateway.scaling
        yield ("event_bus", "scaling"), self.spec.event_bus.scaling
        for name, svc in self.spec.services.items():
            yield ("services", name, "scaling"), svc.scaling


def _article(word: str) -> str:
    return "an" if word[:1] in "aeio" else "a"


def _ticked(names: list[str] | tuple[str, ...], joiner: str) -> str:
    return joiner.join(f"`{name}`" for name in names)


def _column_problems(spec: ColumnSpec) -> Iterator[str]:
    name = spec.type
    kind = kind_of(name)
    for group in OPTION_GROUPS:
        given = [getattr(spec, option) for option in group]
        if group[0] in kind.options:
            if any(value is None or value == [] for value in given):
                yield f"{_article(name)} `{name}` column needs {_ticked(group, ' and ')}"
        elif any(value is not None for value in given):
            verb = "does" if len(group) == 1 else "do"
            yield f"{_ticked(group, '/')} {verb} not apply to a `{name}` column"
        if (
            group == ("precision", "scale")
            and "precision" in kind.options
            and spec.precision is not None
            and spec.scale is not None
            and spec.scale > spec.precision
        ):
            yield "`scale` cannot exceed `precision`"
    if spec.check is not None and not kind.checkable:
        yield f"`check` applies to numeric columns, not `{name}`"
    yield from _encryption_problems(spec)
    if spec.on_update is not None and not kind.on_update:
        updating = [other for other, k in KINDS.items() if k.on_update]
        yield f"`on_update: now` applies to {_ticked(updating, ' or ')} columns"
    default = spec.default
    if default is None:
        return
    allowed = kind.literal_defaults
    if isinstance(default, str) and default in kind.functions:
        return
    if not allowed:
        if kind.functions:
            words = _ticked(list(kind.functions), " or ")
            yield f"a `{name}` default can only be {words}"
        else:
            yield f"a `{name}` column takes no default"
    elif (isinstance(default, bool) and bool not in allowed) or not isinstance(default, allowed):
        yield f"default {default!r} does not fit a `{name}` column"
    elif "values" in kind.options and spec.values and default not in spec.values:
        yield f"default '{default}' is not one of {', '.join(spec.values)}"
    elif isinstance(default, str) and spec.length is not None and len(default) > spec.length:
        yield f"default '{default}' is longer than length {spec.length}"


def _encryption_problems(spec: ColumnSpec) -> Iterator[str]:
    """An encrypted value differs each time it is written and is opaque to the database:
    nothing can compare, order or constrain it there."""
    if not spec.encrypted:
        return
    if not kind_of(spec.type).encryptable:
        kinds = [name for name, kind in KINDS.items() if kind.encryptable]
        yield f"`encrypted` applies to {_ticked(kinds, ' or ')} columns, not `{spec.type}`"
    for option, what in (("primary_key", "a primary key"), ("unique", "unique")):
        if getattr(spec, option):
            yield f"an encrypted column cannot be {what}: the database sees only ciphertext"
    if spec.default is not None:
        yield "an encrypted column takes no default: the database would store it in plaintext"


def _roles_apply() -> str:
    takes = [f"auth: {name}" for name, rule in AUTH_RULES.items() if rule.takes_roles]
    return f"`roles` only applies to {_ticked(takes, ' or ')}"


def check_spec(spec: Spec, document: Document) -> list[SpecIssue]:
    """Every cross-reference problem of a schema-valid spec."""
    return _Checker(spec, document).run()
