"""Cross-reference checks: what a schema alone cannot see (names that must resolve, clashes)."""

from __future__ import annotations

import fnmatch
import keyword
from collections.abc import Iterator
from dataclasses import dataclass, field

from cloudretail.generator.auth_rules import AUTH_RULES, auth_rule
from cloudretail.generator.crud_events import crud_events
from cloudretail.generator.errors import SpecIssue
from cloudretail.generator.kinds import KINDS, OPTION_GROUPS, kind_of
from cloudretail.generator.load_checks import check_load_test
from cloudretail.generator.loader import Document, PathKey, dotted
from cloudretail.generator.model import SUBJECT_DATA_ROUTE, singular, subject_data_path
from cloudretail.generator.spec import ColumnSpec, RouteSpec, ScalingSpec, Spec, TableSpec
from cloudretail.generator.system_tables import SYSTEM_TABLES
from cloudretail.generator.validation import closest, suggest

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
    # One root cause, one error: a misspelt name in a service's `calls` (or `publishes`) is
    # reported where it is written, and the name it was meant to be is kept here, so that
    # what follows from its absence (a saga step calling that service, a consumer of that
    # event) is not reported again: (service, the service it meant to call) or
    # ("publishes", the event meant).
    meant: set[tuple[str, str]] = field(default_factory=set)

    def error(self, path: PathKey, message: str, *, key: bool = False) -> None:
        location = self.document.locate(path, key=key)
        self.issues.append(SpecIssue(location, dotted(path), message))

    def run(self) -> list[SpecIssue]:
        self.check_ports()
        self.check_names()
        self.check_events_and_topics()
        self.check_services()
        self.check_personal_data()
        self.check_scaling()
        self.check_databases()
        self.check_auth()
        check_load_test(self.spec, self.error)
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
                    self.meant.add(("publishes", closest(event, self.spec.events) or ""))
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
                if event not in producers and ("publishes", event) not in self.meant:
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
                    self.meant.add((name, closest(callee, self.spec.services) or ""))
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
        elif callee not in calls and (service, callee) not in self.meant:
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

    # -- personal data (GDPR) ----------------------------------------------------------------
    def check_personal_data(self) -> None:
        """A table's `subject` and its columns' `pii` say what erasing a person does: refuse
        what erasure could not do, and what would leave the person behind."""
        holders: dict[str, str] = {}  # service -> its first table naming a subject
        for name, svc in self.spec.services.items():
            for table, table_spec in svc.tables.items():
                self.check_subject_table(("services", name, "tables", table), name, table)
                if table_spec.subject is not None:
                    holders.setdefault(name, table)
        self.check_gdpr(holders)

    def check_subject_table(self, path: PathKey, service: str, table: str) -> None:
        spec = self.spec.services[service].tables[table]
        columns = spec.columns
        for column, column_spec in columns.items():
            for problem in _pii_problems(column_spec):
                self.error((*path, "columns", column), problem, key=True)
        subject = spec.subject
        if subject is None:
            personal = [column for column, c in columns.items() if c.pii is not None]
            if personal:
                self.error(
                    (*path, "columns", personal[0], "pii"),
                    f"table '{table}' marks personal data (`pii`) but names no `subject`: "
                    "say which column names the person its rows are about",
                )
            if spec.subject_through is not None:
                self.error(
                    (*path, "subject_through"),
                    f"`subject_through` needs `subject`: the column holding the key of a "
                    f"'{spec.subject_through}' row",
                )
            if spec.erasure != "columns":
                self.error((*path, "erasure"), "`erasure` needs a `subject`: whose rows?")
            return
        if subject not in columns:
            self.error(
                (*path, "subject"),
                f"unknown subject column '{subject}' of table '{table}'{suggest(subject, columns)}",
            )
            return
        if spec.subject_through is not None:
            self.check_subject_through(path, service, table)
        elif columns[subject].type != "uuid":
            kind = columns[subject].type
            self.error(
                (*path, "subject"),
                f"subject column '{subject}' of table '{table}' is {_article(kind)} `{kind}`; "
                "a subject is named by a `uuid` column",
            )
        if spec.erasure == "delete":
            for column, column_spec in columns.items():
                if column_spec.pii not in (None, "erase"):
                    self.error(
                        (*path, "columns", column, "pii"),
                        f"the rows of '{table}' are deleted on erasure (`erasure: delete`): "
                        f"column '{column}' cannot be `pii: {column_spec.pii}`",
                    )
            return
        self.check_erased_columns(path, table, spec)

    def check_erased_columns(self, path: PathKey, table: str, spec: TableSpec) -> None:
        """Erasure by columns (`erasure: columns`): every column can take what it is given,
        the subject goes, and no unique constraint refuses a second erased subject."""
        columns = spec.columns
        subject = spec.subject or ""
        if spec.subject_through is None:
            if columns[subject].primary_key:
                self.error(
                    (*path, "subject"),
                    f"subject column '{subject}' is the primary key of '{table}': its rows "
                    "cannot lose it, so erase them whole (`erasure: delete`)",
                )
            elif columns[subject].pii not in ("anonymise", "erase"):
                self.error(
                    (*path, "columns", subject),
                    f"subject column '{subject}' of '{table}' needs `pii: anonymise` (or "
                    "`erase`): the rows an erasure keeps must not point at the person",
                    key=True,
                )
        for column, column_spec in columns.items():
            if (
                column_spec.pii == "erase"
                and not column_spec.nullable
                and not column_spec.primary_key
                and column_spec.replacement is None
                and not column_spec.pii_keys
            ):
                self.error(
                    (*path, "columns", column, "pii"),
                    f"column '{column}' of '{table}' is not nullable: `pii: erase` needs a "
                    "`replacement` to write instead (or `erasure: delete` for the table)",
                )
        unique: list[tuple[PathKey, str, list[str]]] = [
            ((*path, "columns", column), f"unique column '{column}'", [column])
            for column, column_spec in columns.items()
            if column_spec.unique
        ]
        unique += [
            (
                (*path, "indexes", index),
                f"unique index '{idx.name or f'idx_{table}_' + '_'.join(idx.columns)}'",
                idx.columns,
            )
            for index, idx in enumerate(spec.indexes)
            if idx.unique
        ]
        for where, what, names in unique:
            found = [columns[name] for name in names if name in columns]
            if any(column.primary_key for column in found):
                continue
            fixed = [name for name in names if name in columns and _erased_to_one(columns[name])]
            if fixed and not any(_erased_to_null(column) for column in found):
                self.error(
                    where,
                    f"{what} of '{table}' would refuse a second erased subject: erasure writes "
                    f"one fixed value to {_ticked(fixed, ' and ')} in every row it keeps; let "
                    "it erase another of its columns to NULL (`pii: erase`, nullable)",
                )

    def check_subject_through(self, path: PathKey, service: str, table: str) -> None:
        tables = self.spec.services[service].tables
        spec = tables[table]
        through = spec.subject_through or ""
        parent = tables.get(through)
        if parent is None or through == table:
            self.error(
                (*path, "subject_through"),
                f"unknown table '{through}'{suggest(through, [t for t in tables if t != table])}"
                if parent is None
                else "a table's subject cannot come through itself",
            )
            return
        if parent.subject is None or parent.subject_through is not None:
            self.error(
                (*path, "subject_through"),
                f"table '{through}' names no `subject` column of its own to take the subject from",
            )
            return
        key = next((c for c, column in parent.columns.items() if column.primary_key), None)
        subject = spec.subject or ""
        if key is not None and parent.columns[key].type != spec.columns[subject].type:
            self.error(
                (*path, "subject"),
                f"subject column '{subject}' is {_article(spec.columns[subject].type)} "
                f"`{spec.columns[subject].type}`, but holds keys of '{through}' "
                f"('{key}' is {_article(parent.columns[key].type)} `{parent.columns[key].type}`)",
            )

    def check_gdpr(self, holders: dict[str, str]) -> None:
        gdpr = self.spec.gdpr
        if gdpr is None:
            for service, table in holders.items():
                self.error(
                    ("services", service, "tables", table, "subject"),
                    "a `subject` needs the top-level `gdpr` (`erasure_event`, `subject_key`): "
                    "which event erases a subject",
                )
            return
        event = self.spec.events.get(gdpr.erasure_event)
        if event is None:
            self.error(
                ("gdpr", "erasure_event"),
                f"unknown event '{gdpr.erasure_event}'"
                f"{suggest(gdpr.erasure_event, self.spec.events)}",
            )
            return
        kind = event.payload.get(gdpr.subject_key)
        if kind is None:
            self.error(
                ("gdpr", "subject_key"),
                f"event '{gdpr.erasure_event}' has no payload field '{gdpr.subject_key}'"
                f"{suggest(gdpr.subject_key, event.payload)}",
            )
        elif kind != "uuid":
            self.error(
                ("gdpr", "subject_key"),
                f"payload field '{gdpr.subject_key}' of '{gdpr.erasure_event}' is `{kind}`; "
                "the subject is named by a `uuid` that is never null",
            )
        published = any(
            gdpr.erasure_event in s.events.publishes for s in self.spec.services.values()
        )
        if not published and ("publishes", gdpr.erasure_event) not in self.meant:
            self.error(
                ("gdpr", "erasure_event"),
                f"no service publishes '{gdpr.erasure_event}': the one that does owns the "
                "subjects (it erases its own rows and gathers their export)",
            )
        owners = [
            name
            for name, svc in self.spec.services.items()
            if gdpr.erasure_event in svc.events.publishes
        ]
        for owner in owners:
            # The export calls each holder: a call the spec shows, like every other edge.
            calls = self.spec.services[owner].calls
            for service, table in holders.items():
                if service != owner and service not in calls and (owner, service) not in self.meant:
                    self.error(
                        ("services", owner, "calls"),
                        f"service '{service}' holds personal data (table '{table}' names a "
                        f"`subject`) and '{owner}' gathers the GDPR export: add '{service}' "
                        f"to services.{owner}.calls",
                    )
        for service, table in holders.items():
            svc = self.spec.services[service]
            if gdpr.erasure_event not in (*svc.events.consumes, *svc.events.publishes):
                self.error(
                    ("services", service, "tables", table, "subject"),
                    f"service '{service}' holds personal data (table '{table}' names a "
                    f"`subject`) but does not consume '{gdpr.erasure_event}': add it to "
                    "`events.consumes`, or erasure never reaches it",
                )
            path = subject_data_path(service)
            for index, route in enumerate(svc.routes):
                if route.path == path or route.name == SUBJECT_DATA_ROUTE:
                    clash = "path" if route.path == path else "name"
                    self.error(
                        ("services", service, "routes", index, clash),
                        f"route {clash} '{getattr(route, clash)}' is taken by the route the "
                        f"platform adds to a service holding personal data (GET {path}, "
                        f"'{SUBJECT_DATA_ROUTE}', for the GDPR export)",
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

    def check_databases(self) -> None:
        """Each entry of `databases` names a database of the spec."""
        known = {svc.database for svc in self.spec.services.values()}
        known.add(self.spec.event_bus.database or f"{self.spec.platform.name}_events")
        for name in self.spec.databases:
            if name not in known:
                self.error(
                    ("databases", name),
                    f"no service or event bus uses database '{name}'{suggest(name, known)}",
                    key=True,
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


def _pii_problems(spec: ColumnSpec) -> Iterator[str]:
    """What a column's own `pii`, `pii_keys` and `replacement` contradict."""
    kind = kind_of(spec.type)
    changes = spec.pii in ("erase", "anonymise")
    if spec.pii is not None and spec.primary_key:
        yield (
            "a primary key cannot be `pii`: it is the row's identity (to erase whole rows, "
            "give the table `erasure: delete`)"
        )
    if spec.pii_keys is not None:
        if not changes:
            yield "`pii_keys` go with `pii: erase` or `pii: anonymise`"
        elif not kind.keyed:
            keyed = [name for name, k in KINDS.items() if k.keyed]
            yield f"`pii_keys` apply to {_ticked(keyed, ' or ')} columns, not `{spec.type}`"
    if spec.replacement is not None:
        if not changes:
            yield "`replacement` goes with `pii: erase` or `pii: anonymise`"
        elif spec.pii == "erase" and spec.pii_keys:
            yield "with `pii_keys`, `erase` sets the keys to null: `replacement` is for `anonymise`"
        else:
            yield from _replacement_problems(spec)
    elif spec.pii == "anonymise" and kind.anonymous is None:
        yield (
            f"`pii: anonymise` on {_article(spec.type)} `{spec.type}` column needs a "
            "`replacement`: the fixed value it writes"
        )


def _replacement_problems(spec: ColumnSpec) -> Iterator[str]:
    value = spec.replacement
    allowed = kind_of(spec.type).replacement_types
    if not allowed:
        yield f"{_article(spec.type)} `{spec.type}` column takes no `replacement`"
    elif (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        yield f"replacement {value!r} does not fit {_article(spec.type)} `{spec.type}` column"
    elif spec.values and value not in spec.values:
        yield f"replacement '{value}' is not one of {', '.join(spec.values)}"
    elif isinstance(value, str) and spec.length is not None and len(value) > spec.length:
        yield f"replacement '{value}' is longer than length {spec.length}"


def _erased_to_one(spec: ColumnSpec) -> bool:
    """Erasure writes the same value into this column of every row it keeps."""
    if spec.pii_keys:
        return False
    return spec.pii == "anonymise" or (spec.pii == "erase" and spec.replacement is not None)


def _erased_to_null(spec: ColumnSpec) -> bool:
    return spec.pii == "erase" and spec.replacement is None and not spec.pii_keys and spec.nullable


def _roles_apply() -> str:
    takes = [f"auth: {name}" for name, rule in AUTH_RULES.items() if rule.takes_roles]
    return f"`roles` only applies to {_ticked(takes, ' or ')}"


def check_spec(spec: Spec, document: Document) -> list[SpecIssue]:
    """Every cross-reference problem of a schema-valid spec."""
    return _Checker(spec, document).run()
