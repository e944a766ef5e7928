"""`cloudretail up --broker-port/--mail-port`: the embedded broker's and the SMTP sink's
ports are not in the spec, so two projects' stacks on one machine set them apart here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer.main
from cloudretail.cli import app
from cloudretail.generator import load_platform
from cloudretail.generator.stack import (
    EMBEDDED_BROKER_PORT,
    MAIL_SINK_PORT,
    StackOptions,
)
from cloudretail.generator.stack import plan as stack_plan
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
PLATFORM = load_platform(ROOT / "spec" / "cloudretail.yaml")


def test_every_process_reaches_the_broker_and_sink_on_the_ports_given(tmp_path: Path):
    options = StackOptions(tmp_path, broker_port=19092, mail_port=11025)
    plan = stack_plan(PLATFORM, options, ROOT / "generated")
    assert plan.broker is not None and plan.broker.port == 19092
    assert plan.bootstrap == "127.0.0.1:19092"
    assert {p.env["KAFKA_BOOTSTRAP_SERVERS"] for p in plan.processes} == {"127.0.0.1:19092"}
    assert plan.mail_sink is not None and plan.mail_sink.port == 11025
    senders = [p for p in plan.processes if "SMTP_URL" in p.env]
    assert senders and {p.env["SMTP_URL"] for p in senders} == {"smtp://127.0.0.1:11025"}


def test_the_defaults_are_the_customary_ports(tmp_path: Path):
    plan = stack_plan(PLATFORM, StackOptions(tmp_path), ROOT / "generated")
    assert plan.broker is not None and plan.broker.port == EMBEDDED_BROKER_PORT == 9092
    assert plan.mail_sink is not None and plan.mail_sink.port == MAIL_SINK_PORT == 1025
    # The command's defaults are the same (cli.py does not import the stack to start).
    up = typer.main.get_command(app).commands["up"]  # type: ignore[attr-defined]
    defaults = {param.name: param.default for param in up.params}
    assert (defaults["broker_port"], defaults["mail_port"]) == (
        EMBEDDED_BROKER_PORT,
        MAIL_SINK_PORT,
    )


def test_a_port_out_of_range_is_refused(tmp_path: Path):
    for option, value in (("--broker-port", "0"), ("--mail-port", "70000")):
        refused = CliRunner().invoke(app, ["up", option, value, "--data-dir", str(tmp_path)])
        assert refused.exit_code == 2, refused.output
        assert option in refused.output


def test_the_processes_import_the_project_from_its_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Wherever `up` runs from and whatever PYTHONSAFEPATH says, every process finds the
    project's `generated` and `handlers` (the folder holding generated/), then what the
    environment's PYTHONPATH already named."""
    monkeypatch.setenv("PYTHONPATH", "/opt/site")
    plan = stack_plan(PLATFORM, StackOptions(tmp_path), ROOT / "generated")
    paths = {p.env["PYTHONPATH"] for p in plan.processes}
    assert paths == {f"{ROOT}{os.pathsep}/opt/site"}, paths
    monkeypatch.delenv("PYTHONPATH")
    alone = stack_plan(PLATFORM, StackOptions(tmp_path), ROOT / "generated")
    assert {p.env["PYTHONPATH"] for p in alone.processes} == {str(ROOT)}
