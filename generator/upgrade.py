"""`cloudretail upgrade`: bring a project made by `cloudretail init` up to a newer project
template with copier's three-way update, keeping the project's own changes.

Copier updates only from a template in git, at a version (a tag): it renders the template
the project was made from and the new one with the project's answers, and merges the
difference into the project. CloudRetail's template is a plain folder of the installed
package, so:

- The template store, a git repository on this machine (`$CLOUDRETAIL_TEMPLATE_STORE`, else
  `$XDG_DATA_HOME/cloudretail/project-template`, else `~/.local/share/...`), keeps every
  template this machine's CloudRetail has used: `init` and `upgrade` record the installed
  one as a commit tagged with the CloudRetail version (a development install whose template
  changed without a new version gets an untagged commit after it). `init` renders the
  project from the store, so its answers file (`.cloudretail-answers.yml`) names the store
  (`_src_path`) and the template's commit (`_commit`).
- `upgrade` finds the project's template in the store (`--base DIR` records it when the
  store lacks it: another machine, an older install), records the new template, and runs
  copier's update in a clone of the project's repository (copier wants a clean git work
  tree, and the answers file must point at this machine's store). The clone's changes are
  then applied to the project as a patch: the project is only written once everything
  worked, and stays as it was when something fails.
- Copier reports success even when a change of the template and a change of the project
  touch the same lines: it writes conflict markers into the file. The changed files are
  searched for them (and for `.rej` files), and each is listed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cloudretail.generator.errors import CloudRetailError, EnvironmentProblem
from packaging.version import InvalidVersion, Version

ANSWERS_FILE = ".cloudretail-answers.yml"
_IDENTITY = ("-c", "user.name=CloudRetail", "-c", "user.email=cloudretail@localhost")
_MARKER = re.compile(rb"^(<{7}|>{7}) ", re.MULTILINE)


class UpgradeError(CloudRetailError):
    """The project cannot be upgraded as it is (not made by `init`, not committed ...)."""


def store_path() -> Path:
    """Where this machine keeps the project templates its CloudRetail has used."""
    configured = os.environ.get("CLOUDRETAIL_TEMPLATE_STORE")
    if configured:
        return Path(configured)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "cloudretail" / "project-template"


def _git_binary() -> str:
    found = shutil.which("git")
    if found is None:
        raise EnvironmentProblem("git is not installed; copier's update needs it")
    return found


def _git(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, raw: bool = False
) -> str:
    done = subprocess.run(
        [_git_binary(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, args, done.stdout, done.stderr)
    return done.stdout if raw else done.stdout.strip()


def _store_git(store: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return _git("--git-dir", str(store / ".git"), *args, env=env)


def _ensure_store(store: Path) -> None:
    if (store / ".git").is_dir():
        return
    store.mkdir(parents=True, exist_ok=True)
    _git("init", "--quiet", "--initial-branch=main", str(store))


def _is_release(version: str) -> bool:
    try:
        return not Version(version).local
    except InvalidVersion:
        return False


def record_template(template: Path, version: str) -> str:
    """Record the template folder in the store (once per distinct content) and return the
    git ref copier can use for it: its version tag, or `git describe` of its commit."""
    store = store_path()
    _ensure_store(store)
    with tempfile.TemporaryDirectory(prefix="cloudretail-index-") as scratch:
        # Its own index and the template folder as the work tree: nothing is copied, and
        # `--force` keeps files the template's own .gitignore would leave out.
        env = {"GIT_INDEX_FILE": str(Path(scratch) / "index"), "GIT_WORK_TREE": str(template)}
        _store_git(store, "add", "--all", "--force", ".", env=env)
        tree = _store_git(store, "write-tree", env=env)
    known = _store_git(store, "log", "--all", "--format=%H %T")
    for line in known.splitlines():
        commit, _, commit_tree = line.partition(" ")
        if commit_tree == tree:
            return _describe(store, commit)
    parent = _store_git(store, "rev-parse", "--verify", "--quiet", "main") if known else ""
    message = f"The project template of CloudRetail {version}"
    commit = _store_git(
        store,
        *_IDENTITY,
        "commit-tree",
        tree,
        *(["-p", parent] if parent else []),
        "-m",
        message,
    )
    _store_git(store, "update-ref", "refs/heads/main", commit)
    tagged = bool(_store_git(store, "tag", "--list", version))
    if _is_release(version) and not tagged:
        _store_git(store, "tag", version, commit)
    return _describe(store, commit)


def _describe(store: Path, commit: str) -> str:
    return _store_git(store, "describe", "--tags", "--always", commit)


def template_source(template: Path, version: str) -> tuple[str, str | None]:
    """What `init` renders from: the store and the recorded template's ref, so the answers
    file names both; the folder itself when git or the store is not available (the project
    is made all the same, and `upgrade --base` can record its template later)."""
    try:
        ref = record_template(template, version)
    except (OSError, subprocess.CalledProcessError, EnvironmentProblem):
        return str(template), None
    return _portable(store_path()), ref


def _portable(path: Path) -> str:
    """The store's path as the answers file keeps it: `~/...` under the home folder, so it
    holds for everyone who works on the project."""
    home = Path.home()
    try:
        return "~/" + path.resolve().relative_to(home.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


@dataclass(frozen=True)
class UpgradeResult:
    project: Path
    old: str  # the template ref the project was at
    new: str  # the template ref it is at now
    changed: tuple[str, ...]  # files the upgrade changed, relative to the project
    conflicts: tuple[str, ...]  # of those, the ones holding conflict markers or a .rej


def _answers(project: Path) -> dict[str, Any]:
    path = project / ANSWERS_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UpgradeError(
            f"{project} has no {ANSWERS_FILE}: upgrade works on a project made by "
            "`cloudretail init`"
        ) from None
    except yaml.YAMLError as error:
        raise UpgradeError(f"{path}: not YAML: {error}") from None
    if not isinstance(data, dict):
        raise UpgradeError(f"{path}: not the answers copier writes")
    return data


def _checked_project(project: Path) -> tuple[Path, Path]:
    """The project's repository root and the project's folder inside it."""
    if not project.is_dir():
        raise UpgradeError(f"{project} is not a folder")
    try:
        top = Path(_git("rev-parse", "--show-toplevel", cwd=project))
    except subprocess.CalledProcessError:
        raise UpgradeError(
            f"{project} is not in a git repository: copier merges into committed work "
            "(`git init && git add . && git commit -m 'New platform'`)"
        ) from None
    dirty = _git("status", "--porcelain", "--", ".", cwd=project, raw=True)
    if dirty:
        files = ", ".join(line[3:] for line in dirty.splitlines()[:5])
        raise UpgradeError(
            f"{project} has uncommitted changes ({files}); commit or stash them, so that "
            "the upgrade's changes can be reviewed (and undone) on their own"
        )
    subdir = project.resolve().relative_to(top.resolve())
    return top, subdir


def _resolves(ref: str) -> bool:
    try:
        _store_git(store_path(), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except (subprocess.CalledProcessError, OSError):
        return False
    return True


def _conflicts(root: Path, files: Sequence[str]) -> list[str]:
    found = []
    for name in files:
        path = root / name
        if name.endswith(".rej"):
            found.append(name)
            continue
        try:
            if _MARKER.search(path.read_bytes()):
                found.append(name)
        except (FileNotFoundError, IsADirectoryError):
            continue
    return found


def upgrade(
    project: Path,
    template: Path,
    version: str,
    data: dict[str, Any],
    *,
    base: Path | None = None,
) -> UpgradeResult:
    """Update `project` from the template it was made from to `template` (CloudRetail
    `version`), with the answers it was made with and `data` on top; see the module's
    docstring. Raises UpgradeError for a project that cannot be upgraded as it is."""
    _git_binary()
    if not template.is_dir():
        raise UpgradeError(f"{template} is not a template folder")
    if base is not None and not base.is_dir():
        raise UpgradeError(f"--base {base} is not a template folder")
    try:
        return _upgrade(project, template, version, data, base)
    except subprocess.CalledProcessError as error:
        said = (error.stderr or b"").strip()
        text = said.decode(errors="replace") if isinstance(said, bytes) else said
        last = text.splitlines()[-1] if text else f"exit status {error.returncode}"
        raise EnvironmentProblem(f"git failed while upgrading {project}: {last}") from None


def _upgrade(
    project: Path, template: Path, version: str, data: dict[str, Any], base: Path | None
) -> UpgradeResult:
    import copier

    top, subdir = _checked_project(project)
    answers = _answers(project)
    made_with = str(answers.get("cloudretail_version") or "")
    if base is not None:
        old = record_template(base, made_with or "0")
    else:
        old = str(answers.get("_commit") or made_with)
        if not old or not _resolves(old):
            raise EnvironmentProblem(
                f"the template {project} was made from (CloudRetail {made_with or '?'}"
                f"{', ' + old if old and old != made_with else ''}) is not in the template "
                f"store {store_path()}; give it with --base DIR (the templates/project folder "
                "of that CloudRetail)"
            )
    new = record_template(template, version)
    if _store_git(store_path(), "rev-parse", f"{old}^{{commit}}") == _store_git(
        store_path(), "rev-parse", f"{new}^{{commit}}"
    ):
        return UpgradeResult(project, old, new, (), ())
    with tempfile.TemporaryDirectory(prefix="cloudretail-upgrade-") as scratch:
        clone = Path(scratch) / "project"
        _git("clone", "--quiet", str(top), str(clone))
        inside = clone / subdir
        start = _git("rev-parse", "HEAD", cwd=clone)
        answers_path = inside / ANSWERS_FILE
        pointed = {**answers, "_src_path": str(store_path().resolve()), "_commit": old}
        answers_path.write_text(_answers_text(pointed), encoding="utf-8")
        _git(
            *_IDENTITY,
            "commit",
            "--quiet",
            "--no-verify",
            "--allow-empty",
            "-am",
            "upgrade: from",
            cwd=clone,
        )
        try:
            copier.run_update(
                str(inside),
                answers_file=ANSWERS_FILE,
                vcs_ref=new,
                data=data,
                defaults=True,
                overwrite=True,
                quiet=True,
                conflict="inline",
            )
        except copier.errors.CopierError as error:
            raise UpgradeError(f"copier could not update {project}: {error}") from None
        # The answers as `init` writes them: the store's path portable.
        written = answers_path.read_text(encoding="utf-8")
        portable = f"_src_path: {_portable(store_path())}"
        answers_path.write_text(
            re.sub(r"^_src_path: .*$", portable, written, flags=re.MULTILINE), encoding="utf-8"
        )
        _git("add", "--all", ".", cwd=clone)
        names = _git("diff", "--cached", "--name-only", start, "--", str(subdir), cwd=clone)
        changed = [str(Path(name).relative_to(subdir)) for name in names.splitlines() if name]
        conflicts = _conflicts(inside, changed)
        patch = subprocess.run(
            [_git_binary(), "diff", "--cached", "--binary", start],
            cwd=clone,
            capture_output=True,
            check=True,
        ).stdout
    if patch:
        subprocess.run(
            [_git_binary(), "apply", "--binary", "--whitespace=nowarn", "-"],
            cwd=top,
            input=patch,
            capture_output=True,
            check=True,
        )
    return UpgradeResult(project, old, new, tuple(changed), tuple(conflicts))


def _answers_text(answers: dict[str, Any]) -> str:
    head = "# Changes here will be overwritten by Copier; NEVER EDIT MANUALLY\n"
    return head + yaml.safe_dump(answers, sort_keys=True, allow_unicode=True)
