"""The metric names a PromQL expression selects (every selector the generator writes has a
label matcher, `name{...}`); label names and functions never precede a `{`."""

from __future__ import annotations

import re

SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def metric_names(expr: str) -> set[str]:
    return set(SELECTOR.findall(expr))
