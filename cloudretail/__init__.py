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


# The modules only the `cli` extra installs; the console script exists in every install.
_CLI_ONLY = frozenset({"typer", "click", "copier", "jinja2", "ruff"})


def main() -> None:
    """The `cloudretail` command: the CLI, or one line saying how to install it."""
    import sys

    try:
        from cloudretail.cli import main as cli_main
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in _CLI_ONLY:
            raise
        print(
            f"cloudretail: this install is the runtime alone ({error.name} is missing); "
            "the command line needs the `cli` extra: pip install 'cloudretail[cli]'",
            file=sys.stderr,
        )
        sys.exit(3)  # the CLI's code for what the machine lacks (cloudretail.cli)
    cli_main()
