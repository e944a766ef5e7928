"""The command line fits its ecosystem: shell completion, help that reads whole, `--json`
answers, distinct exit codes with one-line messages, NO_COLOR, `graph` and `explain`."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
import yaml
from cloudretail.cli import app, first_sentence
from cloudretail.runtime import stack
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STARTER = ROOT / "templates" / "project" / "spec" / "cloudretail.yaml.jinja"
runner = CliRunner()


def _starter(tmp_path: Path) -> Path:
    """The spec `cloudretail init` writes (its template with the default answers)."""
    text = STARTER.read_text().replace("{{ name }}", "shop").replace("{{ domain }}", "shop.example")
    path = tmp_path / "spec" / "cloudretail.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _commands(group: typer.core.TyperGroup, prefix: tuple[str, ...] = ()):
    context = group.context_class(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        yield (*prefix, name), command
        if isinstance(command, typer.core.TyperGroup):
            yield from _commands(command, (*prefix, name))


# -- completion and help ---------------------------------------------------------------------


def test_show_completion_prints_a_bash_script():
    result = runner.invoke(app, ["--show-completion", "bash"])
    assert result.exit_code == 0, result.output
    assert "complete" in result.stdout and "_CLOUDRETAIL_COMPLETE" in result.stdout


def test_every_help_text_reads_whole():
    top = typer.main.get_command(app)
    assert isinstance(top, typer.core.TyperGroup)
    outputs = {"": runner.invoke(app, ["--help"]).stdout}
    for words, _ in _commands(top):
        result = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "100"})
        assert result.exit_code == 0, (words, result.output)
        outputs[" ".join(words)] = result.stdout
    for name, text in outputs.items():
        flat = " ".join(text.split())
        # Rich markup once swallowed "[default: all]", leaving "Services to migrate ."
        assert not re.search(r"\S \.(\s|$)", flat), (name, flat)
        assert "[]" not in flat and "()" not in flat, (name, flat)
    assert "Services to migrate [default: all]." in " ".join(outputs["migrate"].split())
    # The command list shows each command's whole first sentence, not one cut with "...".
    listing = " ".join(outputs[""].split())
    for words, command in _commands(top):
        if len(words) == 1:
            assert first_sentence(command.help or "") in listing, words


# -- JSON ------------------------------------------------------------------------------------


def test_validate_json_of_a_valid_spec(in_root: Path):
    result = runner.invoke(app, ["validate", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["ok"] is True and answer["spec"] == "spec/cloudretail.yaml"
    assert {
        key: value for key, value in answer["services"][2].items() if key in ("name", "port")
    } == {"name": "order", "port": 3003}
    assert {"from": "order", "to": "payment"} in answer["calls"]
    assert answer["gateway"]["port"] == 8080


def test_validate_json_of_an_invalid_spec_locates_each_error(in_root: Path):
    case = "tests/specs/invalid/many_problems.yaml"
    result = runner.invoke(app, ["validate", case, "--json"])
    assert result.exit_code == 2
    answer = json.loads(result.stdout)
    assert answer["ok"] is False and len(answer["errors"]) > 1
    for error in answer["errors"]:
        assert error["file"] == case
        assert isinstance(error["line"], int) and isinstance(error["column"], int)
        assert error["message"]
    assert any(error["path"].startswith("services.") for error in answer["errors"])


def test_generate_check_json(in_root: Path, tmp_path: Path):
    out = tmp_path / "gen"
    handlers = ["--handlers", str(tmp_path / "handlers")]
    assert runner.invoke(app, ["generate", "--out", str(out), *handlers]).exit_code == 0
    fresh = runner.invoke(app, ["generate", "--out", str(out), "--check", "--json", *handlers])
    assert fresh.exit_code == 0, fresh.output
    answer = json.loads(fresh.stdout)
    assert answer["ok"] and not answer["stale"] and answer["unchanged"] > 100
    (out / "kafka" / "topics.yaml").write_text("edited\n")
    (out / "gateway" / "routes.yaml").unlink()
    stale = runner.invoke(app, ["generate", "--out", str(out), "--check", "--json", *handlers])
    assert stale.exit_code == 1
    answer = json.loads(stale.stdout)
    assert answer["stale"] is True
    assert answer["changed"] == ["kafka/topics.yaml"]
    assert answer["added"] == ["gateway/routes.yaml"]


def test_generate_json_of_an_invalid_spec(in_root: Path, tmp_path: Path):
    case = "tests/specs/invalid/wrong_type.yaml"
    result = runner.invoke(app, ["generate", "--spec", case, "--out", str(tmp_path), "--json"])
    assert result.exit_code == 2
    errors = json.loads(result.stdout)["errors"]
    assert errors and all(error["file"] == case for error in errors)


def test_status_json(tmp_path: Path):
    nothing = runner.invoke(app, ["status", "--data-dir", str(tmp_path), "--json"])
    assert nothing.exit_code == 1
    assert json.loads(nothing.stdout) == {
        "ok": True,
        "data_dir": str(tmp_path),
        "running": False,
        "processes": [],
    }
    # A supervisor that is alive (this process), one of its processes gone.
    state = {
        "status": "ready",
        "supervisor": os.getpid(),
        "processes": {"gateway": {"pid": None, "url": "http://127.0.0.1:9", "port": 9}},
    }
    (tmp_path / stack.STATE_FILE).write_text(json.dumps(state))
    result = runner.invoke(app, ["status", "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["running"] and answer["status"] == "ready"
    assert answer["processes"] == [
        {"name": "gateway", "service": "gateway", "url": "http://127.0.0.1:9", "state": "down"}
    ]


# -- exit codes ------------------------------------------------------------------------------


def _one_line_error(result) -> str:
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result.output
    return lines[0]


def test_a_spec_path_that_is_a_folder_is_an_environment_error(in_root: Path):
    result = runner.invoke(app, ["validate", "spec"])
    assert result.exit_code == 3
    assert _one_line_error(result) == "spec:1:1: cannot read: a folder, not a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_spec_is_an_environment_error(tmp_path: Path):
    spec = _starter(tmp_path)
    spec.chmod(0)
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 3
    assert "cannot read: Permission denied" in _one_line_error(result)


def _read_only(folder: Path) -> None:
    """No writing into `folder`, even for root (immutable), or skip the test."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("root writes into any folder, and this one cannot be made immutable")


def _writable(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True, check=False)
    folder.chmod(0o755)


def test_a_read_only_output_folder_is_an_environment_error(tmp_path: Path):
    spec = _starter(tmp_path)
    out = tmp_path / "generated"
    out.mkdir()
    _read_only(out)
    try:
        result = runner.invoke(app, ["generate", "--spec", str(spec), "--out", str(out)])
    finally:
        _writable(out)
    assert result.exit_code == 3
    line = _one_line_error(result)
    assert line.startswith(f"error: {out}/"), line
    assert line.endswith((": operation not permitted", ": permission denied")), line


def test_an_os_error_while_writing_is_one_line_and_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """What a read-only output folder does, whoever runs it (root writes anywhere)."""
    spec = _starter(tmp_path)

    def refuse(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    result = runner.invoke(app, ["generate", "--spec", str(spec), "--out", str(tmp_path / "g")])
    assert result.exit_code == 3
    line = _one_line_error(result)
    assert line.startswith("error: ") and line.endswith(": permission denied"), line
    assert str(tmp_path / "g") in line


def test_exit_codes_tell_stale_from_bad_input_from_the_machine(in_root: Path, tmp_path: Path):
    out = tmp_path / "gen"
    handlers = ["--handlers", str(tmp_path / "handlers")]
    assert runner.invoke(app, ["generate", "--out", str(out), *handlers]).exit_code == 0
    assert runner.invoke(app, ["generate", "--out", str(out), "--check", *handlers]).exit_code == 0
    (out / "kafka" / "topics.yaml").write_text("edited\n")
    stale = runner.invoke(app, ["generate", "--out", str(out), "--check", *handlers])
    assert stale.exit_code == 1
    bad = runner.invoke(app, ["validate", "tests/specs/invalid/wrong_type.yaml"])
    assert bad.exit_code == 2
    missing = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 3


def test_a_port_in_use_is_an_environment_error():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        plan = SimpleNamespace(
            processes=[SimpleNamespace(name="gateway", port=port)], broker=None, mail_sink=None
        )
        with pytest.raises(stack.PortInUseError) as refused:
            stack.check_ports(plan)  # type: ignore[arg-type]
    assert refused.value.exit_code == 3
    assert f"port {port} (gateway) is in use" in str(refused.value)


def test_up_with_a_port_in_use_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Refused before anything starts (nothing is spawned), the holder named."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        spec = _starter(tmp_path)
        spec.write_text(spec.read_text().replace("port: 8280", f"port: {port}"))
        monkeypatch.chdir(tmp_path)
        assert runner.invoke(app, ["generate"]).exit_code == 0
        result = runner.invoke(app, ["up", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 3, result.output
    assert f"port {port} (gateway) is in use by" in _one_line_error(result)
    assert not (tmp_path / "data" / "logs").exists()


# -- NO_COLOR --------------------------------------------------------------------------------


def test_no_color_means_no_escape_codes(in_root: Path):
    env = {**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "1", "TERM": "xterm-256color"}
    cloudretail = str(BIN / "cloudretail")
    runs = [
        ["--help"],
        ["migrate", "--help"],
        ["validate", "--bogus-option"],
        ["validate", "tests/specs/invalid/many_problems.yaml"],
        ["validate", "--json"],
        ["graph"],
    ]
    for arguments in runs:
        done = subprocess.run(
            [cloudretail, *arguments], cwd=in_root, env=env, capture_output=True, text=True
        )
        assert "\x1b[" not in done.stdout + done.stderr, arguments
        assert done.stdout + done.stderr, arguments


def test_no_color_strips_the_stack_console_colours(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    line = "\x1b[36mgateway   \x1b[0m | ready"
    stack._print(line)
    assert "\x1b[" in capsys.readouterr().out  # coloured on a terminal by default
    monkeypatch.setenv("NO_COLOR", "1")
    stack._print(line)
    assert capsys.readouterr().out == "gateway    | ready\n"


# -- "did you mean" and one error per cause --------------------------------------------------


def test_a_misspelt_column_type_gets_a_did_you_mean(tmp_path: Path):
    spec = _starter(tmp_path)
    spec.write_text(
        spec.read_text().replace("{type: decimal, precision", "{type: decimel, precision")
    )
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert "'decimel' is not one of" in result.stderr
    assert "(did you mean 'decimal'?)" in result.stderr


def test_a_misspelt_route_method_and_payload_type_get_a_did_you_mean(tmp_path: Path):
    spec = _starter(tmp_path)
    text = spec.read_text().replace(
        "{method: GET, path: /api/items,", "{method: GTE, path: /api/items,"
    )
    spec.write_text(text.replace("note: string | null", "note: strng | null"))
    result = runner.invoke(app, ["validate", str(spec)])
    assert "(did you mean 'GET'?)" in result.stderr
    assert "(did you mean 'string | null'?)" in result.stderr


def test_one_typo_in_calls_gives_one_error(in_root: Path, tmp_path: Path):
    """`inventory` misspelt in the order service's `calls`: before, the three saga steps
    that call inventory each said it was not declared (4 errors for one typo)."""
    text = (in_root / "spec" / "cloudretail.yaml").read_text()
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        text.replace("calls: [inventory, payment, product]", "calls: [inventorx, payment, product]")
    )
    result = runner.invoke(app, ["validate", str(spec), "--json"])
    errors = json.loads(result.stdout)["errors"]
    assert [error["path"] for error in errors] == ["services.order.calls[0]"], errors
    assert "did you mean 'inventory'" in errors[0]["message"]


def test_one_typo_in_publishes_gives_one_error(in_root: Path, tmp_path: Path):
    """Every consumer of the misspelt event would say nobody publishes it."""
    text = (in_root / "spec" / "cloudretail.yaml").read_text()
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace("publishes: [order.created,", "publishes: [order.creatd,"))
    result = runner.invoke(app, ["validate", str(spec), "--json"])
    errors = json.loads(result.stdout)["errors"]
    assert [error["path"] for error in errors] == ["services.order.events.publishes[0]"], errors


def test_an_unrelated_undeclared_call_is_still_reported(tmp_path: Path):
    """Only what the typo explains is left out: a call that no typo is near stays an error."""
    spec = _starter(tmp_path)
    data = yaml.safe_load(spec.read_text())
    data["services"]["cart"]["calls"] = ["zzz"]
    spec.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["validate", str(spec), "--json"])
    paths = [error["path"] for error in json.loads(result.stdout)["errors"]]
    assert "services.cart.calls[0]" in paths
    assert "services.cart.sagas.checkout.steps[0].call" in paths


# -- graph and explain -----------------------------------------------------------------------


def test_graph_as_mermaid(in_root: Path):
    result = runner.invoke(app, ["graph"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.splitlines()[1] == "graph LR"
    assert 'OrderService["Order Service :3003"]' in text
    assert 'ApiGateway -->|"/api/orders/*"| OrderService' in text
    assert 'OrderService -.->|"calls"| PaymentService' in text  # a service-to-service call
    assert re.search(r'OrderService ==>\|"[^"]*order\.created[^"]*"\| OrderEvents', text)
    assert re.search(r'PaymentEvents ==>\|"[^"]*payment\.completed[^"]*"\| OrderService', text)
    assert 'OrderServiceDB[("cloudretail_orders")]' in text
    assert "OrderEvents ==> EventBus" in text


def test_graph_as_dot(in_root: Path):
    result = runner.invoke(app, ["graph", "--format", "dot"])
    assert result.exit_code == 0, result.output
    assert '"OrderService" -> "PaymentService" [label="calls", style=dotted];' in result.stdout
    assert result.stdout.rstrip().endswith("}")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_graph_as_svg(in_root: Path):
    result = runner.invoke(app, ["graph", "--format", "svg"])
    assert result.exit_code == 0, result.output
    assert "<svg" in result.stdout and "Order Service :3003" in result.stdout


def test_graph_as_svg_without_graphviz_says_what_to_install(
    in_root: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PATH", "/nonexistent")
    result = runner.invoke(app, ["graph", "--format", "svg"])
    assert result.exit_code == 3
    assert "needs Graphviz's `dot`" in _one_line_error(result)


def test_explain_a_file(in_root: Path):
    result = runner.invoke(app, ["explain", "generated/services/order/models.py", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["target"] == "cloudretail.generator.targets.migrations"
    assert answer["template"] == "services/models.py.j2"
    assert [key["path"] for key in answer["from"]] == ["services.order"]
    network = "generated/k8s/base/network/cloudretail-orders-postgres.yaml"
    answer = json.loads(runner.invoke(app, ["explain", network, "--json"]).stdout)
    assert [key["path"] for key in answer["from"]] == ["services.order.database"]


def test_explain_a_line(in_root: Path):
    models = in_root / "generated" / "services" / "order" / "models.py"
    number = next(
        index
        for index, line in enumerate(models.read_text().splitlines(), start=1)
        if line.strip().startswith("total_amount:")
    )
    result = runner.invoke(app, ["explain", f"generated/services/order/models.py:{number}"])
    assert result.exit_code == 0, result.output
    assert "services.order.tables.orders.columns.total_amount (spec/cloudretail.yaml:" in (
        result.stdout
    )
    events = in_root / "generated" / "events.py"
    number = events.read_text().splitlines().index("class OrderCreated(BaseModel):") + 1
    answer = json.loads(
        runner.invoke(app, ["explain", f"generated/events.py:{number}", "--json"]).stdout
    )
    assert [key["path"] for key in answer["line"]["keys"]] == ["events.order.created"]


def test_explain_refuses_what_is_not_generated(in_root: Path):
    for target in ("handlers/order.py", "generated/nothing.py", "generated/events.py:99999"):
        result = runner.invoke(app, ["explain", target])
        assert result.exit_code == 2, target
        assert _one_line_error(result).startswith(target.split(":99999")[0]), target
