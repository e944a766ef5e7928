"""CloudRetail: one YAML spec in, a working microservice platform out.

The distribution's one importable name. `cloudretail.runtime` is what generated services
run on; `cloudretail.generator`, `cloudretail.cli` and `cloudretail.templates` make up the
tool (the `cli` extra). In this repository the subpackages are the top-level folders
`runtime/`, `generator/`, `templates/` and `cli.py` (linked here); the wheel places them in
this package.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cloudretail")
except PackageNotFoundError:  # imported from a checkout that is not installed
    __version__ = "0+unknown"
