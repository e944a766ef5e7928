"""Tests of CloudRetail as others install it: from a wheel built in the test, into a fresh
venv. Select them with `-m new_project`."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "new_project: a project made by `cloudretail init` from a freshly built wheel "
        "(builds, installs, runs `up`; minutes)",
    )
