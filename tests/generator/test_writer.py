from __future__ import annotations

from pathlib import Path

import pytest
from cloudretail.generator.errors import GeneratedFileError, OutputConflictError
from cloudretail.generator.writer import MANIFEST, apply, plan, read_manifest


def test_first_run_writes_everything_and_a_manifest(tmp_path: Path):
    result = plan(tmp_path, {"a.txt": "A\n", "sub/b.txt": "B\n"})
    assert result.added == ["a.txt", "sub/b.txt"]
    apply(result)
    assert (tmp_path / "sub" / "b.txt").read_text() == "B\n"
    assert read_manifest(tmp_path) == {"a.txt", "sub/b.txt"}


def test_only_changed_files_are_written(tmp_path: Path):
    apply(plan(tmp_path, {"a.txt": "A\n", "b.txt": "B\n"}))
    before = (tmp_path / "a.txt").stat().st_mtime_ns
    result = plan(tmp_path, {"a.txt": "A\n", "b.txt": "B2\n"})
    assert (result.changed, result.unchanged) == (["b.txt"], ["a.txt"])
    apply(result)
    assert (tmp_path / "a.txt").stat().st_mtime_ns == before
    assert (tmp_path / "b.txt").read_text() == "B2\n"


def test_owned_files_the_spec_no_longer_produces_are_removed(tmp_path: Path):
    apply(plan(tmp_path, {"keep.txt": "k\n", "old/gone.txt": "g\n"}))
    result = plan(tmp_path, {"keep.txt": "k\n"})
    assert result.removed == ["old/gone.txt"]
    apply(result)
    assert not (tmp_path / "old").exists()
    assert read_manifest(tmp_path) == {"keep.txt"}


def test_files_it_does_not_own_are_never_touched(tmp_path: Path):
    (tmp_path / "notes.md").write_text("mine\n")
    apply(plan(tmp_path, {"a.txt": "A\n"}))
    apply(plan(tmp_path, {}))
    assert (tmp_path / "notes.md").read_text() == "mine\n"
    assert not (tmp_path / "a.txt").exists()


def test_refuses_to_overwrite_a_file_it_does_not_own(tmp_path: Path):
    (tmp_path / "a.txt").write_text("hand-written\n")
    with pytest.raises(OutputConflictError, match="did not write"):
        plan(tmp_path, {"a.txt": "A\n", "b.txt": "B\n"})
    assert (tmp_path / "a.txt").read_text() == "hand-written\n"
    assert not (tmp_path / "b.txt").exists()
    assert not (tmp_path / MANIFEST).exists()


def test_identical_unowned_file_is_adopted(tmp_path: Path):
    (tmp_path / "a.txt").write_text("A\n")
    result = plan(tmp_path, {"a.txt": "A\n"})
    assert result.unchanged == ["a.txt"]
    apply(result)
    assert read_manifest(tmp_path) == {"a.txt"}


def test_diff_shows_what_would_change(tmp_path: Path):
    apply(plan(tmp_path, {"a.txt": "one\ntwo\n", "gone.txt": "x\n"}))
    result = plan(tmp_path, {"a.txt": "one\nthree\n", "new.txt": "n\n"})
    diff = result.diff()
    assert "--- a/a.txt\n+++ b/a.txt\n" in diff
    assert "-two\n+three\n" in diff
    assert "--- /dev/null\n+++ b/new.txt\n" in diff
    assert "--- a/gone.txt\n+++ /dev/null\n" in diff
    assert result.stale


def test_no_temp_files_are_left_behind(tmp_path: Path):
    apply(plan(tmp_path, {"a.txt": "A\n"}))
    apply(plan(tmp_path, {"a.txt": "B\n"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "a.txt"]


# ----------------------------------------------------------------------------- bad output folders


def test_an_output_folder_that_is_a_file_is_refused(tmp_path: Path):
    out = tmp_path / "out"
    out.write_text("a file\n")
    with pytest.raises(GeneratedFileError) as caught:
        plan(out, {"a.txt": "A\n"})
    assert caught.value.lines == [f"{out}: not a folder"]
    assert out.read_text() == "a file\n"


def test_an_unreadable_manifest_is_refused(tmp_path: Path):
    (tmp_path / MANIFEST).mkdir()
    with pytest.raises(GeneratedFileError) as caught:
        plan(tmp_path, {"a.txt": "A\n"})
    assert caught.value.lines[0].startswith(f"{tmp_path / MANIFEST}: cannot read the manifest")
    assert not (tmp_path / "a.txt").exists()


def test_a_file_where_a_folder_is_wanted_is_a_conflict_and_nothing_is_written(tmp_path: Path):
    apply(plan(tmp_path, {"a.txt": "A\n"}))
    (tmp_path / "sub").write_text("mine\n")
    with pytest.raises(OutputConflictError) as caught:
        plan(tmp_path, {"a.txt": "A2\n", "sub/b.txt": "B\n"})
    assert caught.value.paths == [str(tmp_path / "sub")]
    assert (tmp_path / "a.txt").read_text() == "A\n"
    assert (tmp_path / "sub").read_text() == "mine\n"


def test_a_folder_where_an_owned_file_is_wanted_is_a_conflict(tmp_path: Path):
    apply(plan(tmp_path, {"a.txt": "A\n", "b.txt": "B\n"}))
    (tmp_path / "b.txt").unlink()
    (tmp_path / "b.txt").mkdir()
    with pytest.raises(OutputConflictError):
        plan(tmp_path, {"a.txt": "A2\n", "b.txt": "B2\n"})
    assert (tmp_path / "a.txt").read_text() == "A\n"
