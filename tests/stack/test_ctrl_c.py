"""Ctrl-C on `cloudretail up` in a terminal: the signal reaches the whole foreground process
group. Everything stops in order (gateway, services, event bus, broker), each quietly and in
time: no traceback, no error lines, nothing killed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cloudretail.runtime.events.broker import port_holder

from tests.stack.conftest import ROOT
from tests.stack.test_up_down import PORTS

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_ctrl_c_stops_everything_quietly(tmp_path: Path) -> None:
    env = {**os.environ, "CLOUDRETAIL_ADMIN_EMAIL": "", "CLOUDRETAIL_ADMIN_PASSWORD": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--data-dir", str(tmp_path), "--reset"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,  # a terminal's foreground job: Ctrl-C signals every member
    )
    lines: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(ANSI.sub("", line.rstrip("\n")))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and process.poll() is None:
            if any("gateway is ready" in line for line in lines):
                break
            time.sleep(0.3)
        assert any("gateway is ready" in line for line in lines), "\n".join(lines[-30:])
        time.sleep(3)  # consumers joined their groups: the state a user presses Ctrl-C in
        started = len(lines)
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(timeout=5)
    after = lines[started:]
    shown = "\n".join(after[-60:])
    assert code in (0, 130), shown
    assert not [line for line in after if "Traceback" in line], shown
    assert not [line for line in after if "did not stop in time" in line], shown
    assert not [line for line in after if re.search(r"\|\s+(ERROR|CRITICAL)\b", line)], shown
    assert any(line.endswith("| stopped") for line in after), shown
    phases = [line.split("| stopping ", 1)[1] for line in after if "| stopping " in line]
    assert phases[0] == "gateway", shown
    assert "order" in phases[1] and "user" in phases[1], shown
    assert phases[2:] == ["eventbus", "the embedded broker"], shown
    assert [port for port in PORTS if port_holder("127.0.0.1", port)] == []
