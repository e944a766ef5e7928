"""The generated load test (generated/loadtest/artillery.yaml): every request is a route of
the spec that the gateway serves, the thresholds are the spec's, the journeys are derived
from the routes (of this spec and of another platform's), the bodies fit the handlers'
models, and Artillery itself accepts the script.

Artillery is not installed by `make test` or CI (it takes over a minute, see README "Load
tests"); without it, the one test that needs it skips and says how to install it.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudretail.generator import SpecError, load_platform
from cloudretail.generator.checks import check_spec
from cloudretail.generator.loader import load_text
from cloudretail.generator.model import Platform, duration_ms
from cloudretail.generator.render import render_files
from cloudretail.generator.targets import loadtest
from cloudretail.generator.validation import parse_spec

from tests.deploy.conftest import GENERATED

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "spec" / "cloudretail.yaml"
LIBRARY = ROOT / "examples" / "library" / "spec" / "library.yaml"
MINIMAL = ROOT / "tests" / "specs" / "minimal.yaml"
SCRIPT = GENERATED / "loadtest" / "artillery.yaml"
ARTILLERY = ROOT / ".venv-tools" / "artillery" / "node_modules" / ".bin" / "artillery"
VARIABLE = re.compile(r"{{ *(\$?[A-Za-z_][A-Za-z0-9_]*) *}}")
# What Artillery does with a script before it sends a request (`artillery run`'s first
# steps: parse, resolve, validate against its schema), and whether each plugin it names loads.
CHECK = """
const path = require('path');
const artillery = process.argv[1];
global.artillery = {testRunId: 'check'};
const prepare = require(path.join(artillery, 'lib/util/prepare-test-execution-plan.js'));
prepare([process.argv[2]], {}, []).then((script) => {
  for (const name of Object.keys(script.config.plugins)) {
    require.resolve('artillery-plugin-' + name, {paths: [artillery]});
  }
  console.log(JSON.stringify(script.scenarios.map((s) => s.name)));
}, (error) => { console.error(error.message); process.exit(2); });
"""


def _script(text: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SCRIPT.read_text() if text is None else text)
    return data


def _requests(scenario: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(method, spec) for item in scenario["flow"] for method, spec in item.items()]


def _flows(script: dict[str, Any]) -> dict[str, list[str]]:
    return {
        scenario["name"]: [spec["name"] for _, spec in _requests(scenario)]
        for scenario in script["scenarios"]
    }


def _platform_with(tmp_path: Path, source: Path, load_test: dict[str, Any]) -> Platform:
    data = yaml.safe_load(source.read_text())
    data["load_test"] = load_test
    spec = tmp_path / source.name
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_platform(spec)


def _render(platform: Platform) -> dict[str, Any]:
    files = render_files(loadtest.files(platform), platform.source)
    return _script(files["loadtest/artillery.yaml"])


def _issues(source: Path, load_test: dict[str, Any], **changes: Any) -> list[str]:
    data = yaml.safe_load(source.read_text())
    data.update(changes)
    data["load_test"] = load_test
    document = load_text(yaml.safe_dump(data, sort_keys=False), "t.yaml")
    try:
        spec = parse_spec(document)
    except SpecError as error:
        return [f"{i.where}: {i.message}" for i in error.issues]
    return [f"{i.where}: {i.message}" for i in check_spec(spec, document)]


# -- the real spec's script ------------------------------------------------------------------


def test_every_request_is_a_gateway_route_of_the_spec_with_its_method() -> None:
    platform = load_platform(SPEC)
    routes = {(route.method, route.path): route for route in platform.gateway.routes}
    script = _script()
    seen = 0
    for scenario in script["scenarios"]:
        for method, request in _requests(scenario):
            verb, path = request["name"].split(" ", 1)
            assert verb.lower() == method
            assert (verb, path) in routes, f"{verb} {path} is not a route the gateway serves"
            route = routes[verb, path]
            # The url is the route's path, its parameter filled by a variable.
            assert re.sub(r"{[^}]+}", "{}", path) == VARIABLE.sub("{}", request["url"])
            assert request["expect"] == [{"statusCode": route.status or 200}]
            # A token goes with the routes that need one, and only with those.
            sends_token = "Authorization" in request.get("headers", {})
            assert sends_token == (route.rule.token is not None), request["name"]
            seen += 1
    assert seen == 10


def test_the_thresholds_and_the_load_are_the_specs() -> None:
    spec = yaml.safe_load(SPEC.read_text())
    load, gateway = spec["load_test"], spec["gateway"]
    config = _script()["config"]
    assert config["target"] == f"http://127.0.0.1:{gateway['port']}"
    assert config["phases"] == [
        {
            "name": "steady",
            "duration": duration_ms(load["duration"]) // 1000,
            "arrivalRate": load["arrival_rate"],
        }
    ]
    assert config["ensure"] == {
        "thresholds": [
            {"http.response_time.p95": duration_ms(load["p95"])},
            {"http.response_time.p99": duration_ms(load["p99"])},
        ],
        "maxErrorRate": load["max_error_ratio"] * 100,
    }
    # A failed expectation fails its virtual user, which is what maxErrorRate counts.
    assert config["plugins"]["expect"]["reportFailuresAsErrors"] is True
    assert set(config["plugins"]) >= {"ensure", "expect"}


def test_the_journeys_browse_register_and_place_an_order() -> None:
    script = _script()
    weights = yaml.safe_load(SPEC.read_text())["load_test"]["weights"]
    assert {s["name"]: s["weight"] for s in script["scenarios"]} == weights
    account = ["POST /api/users/register", "POST /api/users/login"]
    browse = ["GET /api/products", "GET /api/products/{id}"]
    assert _flows(script) == {
        "browse": browse,
        "register": account,
        "place_order": [*account, *browse, "POST /api/orders", "GET /api/orders/{id}"],
    }


def test_each_variable_is_set_before_it_is_read() -> None:
    """A journey reads only what an earlier answer of its own gave (or Artillery's per-user
    `$uuid`), so every virtual user signs up with an email of its own."""
    for scenario in _script()["scenarios"]:
        known = {"$uuid"}
        for _, request in _requests(scenario):
            used = set(VARIABLE.findall(json.dumps(request)))
            assert used <= known, (scenario["name"], request["name"], used - known)
            if "capture" in request:
                known.add(request["capture"]["as"])
        if scenario["name"] != "browse":
            assert "{{ $uuid }}" in json.dumps(scenario["flow"][0])


def test_the_bodies_fit_the_handlers_models() -> None:
    """The order body is a valid NewOrder once its product is filled in (the product comes from
    the catalog list, as `up --demo` loads it); sign-up and login bodies likewise."""
    from handlers.order import NewOrder
    from handlers.user import Credentials, Registration

    models = {
        "POST /api/orders": NewOrder,
        "POST /api/users/register": Registration,
        "POST /api/users/login": Credentials,
    }
    checked = set()
    for scenario in _script()["scenarios"]:
        for _, request in _requests(scenario):
            if "json" not in request:
                continue
            filled = VARIABLE.sub(lambda _: str(uuid.uuid4()), json.dumps(request["json"]))
            models[request["name"]].model_validate_json(filled)
            checked.add(request["name"])
    assert checked == set(models)


def test_the_script_is_what_the_spec_renders_to(in_root: Path) -> None:
    platform = load_platform(Path("spec/cloudretail.yaml"))
    files = render_files(loadtest.files(platform), platform.source)
    assert files == {"loadtest/artillery.yaml": SCRIPT.read_text()}


# -- derived from any spec -------------------------------------------------------------------


def test_another_platforms_journeys_come_from_its_routes(tmp_path: Path, in_root: Path) -> None:
    platform = _platform_with(
        tmp_path,
        LIBRARY,
        {
            "account": {"signup": "/api/members/register", "login": "/api/members/login"},
            "weights": {"register": 0},
            "p95": "2s",
            "p99": "3s",
            "bodies": {
                "Registration": {
                    "email": "u-{unique}@library.example",
                    "password": "pw-{unique}",
                    "name": "Reader",
                },
                "Credentials": {"email": "u-{unique}@library.example", "password": "pw-{unique}"},
                "LoanRequest": {"copy_id": "{copy}"},
            },
        },
    )
    script = _render(platform)
    account = ["POST /api/members/register", "POST /api/members/login"]
    assert _flows(script) == {
        "browse": [
            "GET /api/catalog/titles",
            "GET /api/catalog/titles/{id}",
            "GET /api/catalog/copies",
            "GET /api/catalog/copies/{id}",
        ],
        # register has weight 0: left out
        "borrow": [
            *account,
            "GET /api/catalog/copies",
            "GET /api/catalog/copies/{id}",
            "POST /api/loans",
            "GET /api/loans/{id}",
        ],
    }
    borrow = _requests(script["scenarios"][1])
    assert borrow[2][1]["capture"] == {"json": "$.items[*].id", "as": "copy"}
    assert borrow[4][1]["json"] == {"copy_id": "{{ copy }}"}
    assert borrow[5][1]["url"] == "/api/loans/{{ id }}"
    assert script["config"]["target"] == "http://127.0.0.1:8180"
    assert script["config"]["ensure"]["thresholds"] == [
        {"http.response_time.p95": 2000},
        {"http.response_time.p99": 3000},
    ]


def test_defaults_and_journeys_without_an_account(tmp_path: Path, in_root: Path) -> None:
    """`load_test: {}`: the defaults, and no journey that needs a token (the minimal spec's
    tokens come from an outside identity provider)."""
    script = _render(_platform_with(tmp_path, MINIMAL, {}))
    assert _flows(script) == {"browse": ["GET /api/items", "GET /api/items/{id}"]}
    config = script["config"]
    assert config["phases"] == [{"name": "steady", "duration": 60, "arrivalRate": 2}]
    assert config["ensure"]["thresholds"] == [
        {"http.response_time.p95": 500},
        {"http.response_time.p99": 1000},
    ]
    assert config["ensure"]["maxErrorRate"] == 1


def test_no_load_test_section_no_script(in_root: Path) -> None:
    assert loadtest.files(load_platform(MINIMAL)) == []


def test_load_test_mistakes_are_reported_where_they_are() -> None:
    data = yaml.safe_load(SPEC.read_text())
    good = data["load_test"]
    assert _issues(SPEC, good) == []

    bad = copy.deepcopy(good)
    bad["account"]["signup"] = "/api/users/registr"
    bad["weights"]["place_ordr"] = 2
    bad["bodies"]["NewOrder"]["items"][0]["product_id"] = "{prodcut}"
    bad["bodies"]["Credentials"]["password"] = "{product}"
    bad.update(duration="500ms", p95="2s")
    assert _issues(SPEC, bad) == [
        "load_test.duration: at least 1s: load phases last whole seconds",
        "load_test.p95: the p95 ceiling (2s) is above the p99 one (1s)",
        "load_test.account.signup: service 'user' has no public POST route at "
        "'/api/users/registr' (did you mean '/api/users/register'?)",
        "load_test.weights.place_ordr: no journey 'place_ordr' (journeys: browse, "
        "place_order, register) (did you mean 'place_order'?)",
        "load_test.bodies.Credentials: unknown placeholder '{product}' (known here: {unique})",
        "load_test.bodies.NewOrder: unknown placeholder '{prodcut}' (known here: {product}, "
        "{unique}) (did you mean 'product'?)",
    ]

    unused = copy.deepcopy(good)
    unused["bodies"]["NewOrdr"] = {}
    assert _issues(SPEC, unused) == [
        "load_test.bodies.NewOrdr: no journey sends a `NewOrdr` body (did you mean 'NewOrder'?)"
    ]

    missing = copy.deepcopy(good)
    del missing["bodies"]["NewOrder"]
    assert _issues(SPEC, missing) == [
        "load_test.bodies: POST /api/orders sends a `NewOrder` body: give one here"
    ]


def test_an_account_needs_the_platforms_own_issuer_and_a_journey_is_needed() -> None:
    account = {"signup": "/api/cart/join", "login": "/api/cart/login"}
    assert _issues(MINIMAL, {"account": account}) == [
        "load_test.account: signing up and logging in needs the platform's own token issuer "
        "(`auth.issuer`)"
    ]
    assert _issues(MINIMAL, {"weights": {"browse": 0}}) == [
        "load_test: no journey to run: no table with a public list route, no `account`, no "
        "saga route a virtual user may call, or every weight 0"
    ]


# -- Artillery -------------------------------------------------------------------------------


def _artillery_package() -> Path:
    found = ARTILLERY if ARTILLERY.exists() else shutil.which("artillery")
    if found is None or shutil.which("node") is None:
        pytest.skip(
            "Artillery is not installed (`make artillery` puts it in .venv-tools/artillery); "
            "CI does not install it"
        )
    return Path(found).resolve().parents[1]  # <node_modules>/artillery/bin/run


def _artillery_check(package: Path, script: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node is not None
    return subprocess.run(
        [node, "-e", CHECK, str(package), str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(Path(node).parent), "ARTILLERY_DISABLE_TELEMETRY": "true"},
    )


def test_artillery_accepts_the_script(tmp_path: Path) -> None:
    """Artillery parses and validates the script as `artillery run` does, and loads every
    plugin it names; nothing is sent. A script its schema refuses is refused here too."""
    package = _artillery_package()
    checked = _artillery_check(package, SCRIPT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout.splitlines()[-1]) == ["browse", "register", "place_order"]

    broken = _script()
    del broken["scenarios"][2]["flow"][4]["post"]["url"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    refused = _artillery_check(package, path)
    assert refused.returncode != 0
    assert '"scenarios[2].flow[4].post.url" is required' in refused.stdout

    unknown = _script()
    unknown["config"]["plugins"]["ensur"] = {}
    path.write_text(yaml.safe_dump(unknown))
    refused = _artillery_check(package, path)
    assert refused.returncode != 0 and "artillery-plugin-ensur" in refused.stderr


def test_the_json_schema_documents_the_section() -> None:
    """`cloudretail schema` (editor completion) describes `load_test` and its defaults."""
    from cloudretail.generator.spec import Spec

    schema = Spec.model_json_schema()
    section = schema["$defs"]["LoadTestSpec"]
    assert schema["properties"]["load_test"]["description"]
    assert section["additionalProperties"] is False
    assert {name: field.get("default") for name, field in section["properties"].items()} == {
        "duration": "60s",
        "arrival_rate": 2,
        "p95": "500ms",
        "p99": "1s",
        "max_error_ratio": 0.01,
        "weights": {},
        "account": None,
        "bodies": {},
    }
    assert all(field["description"] for field in section["properties"].values())
