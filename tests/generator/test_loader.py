from __future__ import annotations

import pytest

from generator.errors import Location, SpecError
from generator.loader import dotted, load_text


def test_locations_of_values_and_keys():
    doc = load_text("a:\n  b: [1, {c: 2}]\n  d: x\n", "s.yaml")
    assert doc.data == {"a": {"b": [1, {"c": 2}], "d": "x"}}
    assert doc.locate(("a", "b", 1, "c")) == Location("s.yaml", 2, 14)
    assert doc.locate(("a", "d"), key=True) == Location("s.yaml", 3, 3)
    assert doc.locate(("a", "d")) == Location("s.yaml", 3, 6)


def test_locate_falls_back_to_the_deepest_known_parent():
    doc = load_text("a:\n  b: 1\n", "s.yaml")
    assert doc.locate(("a", "missing", "deeper")) == Location("s.yaml", 2, 3)


def test_duplicate_keys_are_an_error_not_a_silent_overwrite():
    with pytest.raises(SpecError) as caught:
        load_text("a: 1\nb: 2\na: 3\n", "s.yaml")
    assert str(caught.value) == "s.yaml:3:1: a: duplicate key 'a'"


def test_malformed_yaml_names_line_and_column():
    with pytest.raises(SpecError) as caught:
        load_text("a: [1, 2\nb: 3\n", "s.yaml")
    (issue,) = caught.value.issues
    assert issue.location.line == 2
    assert issue.message.startswith("malformed YAML:")


def test_empty_document():
    with pytest.raises(SpecError, match="the spec is empty"):
        load_text("# nothing\n", "s.yaml")


def test_merge_keys_are_resolved():
    doc = load_text("base: &b {x: 1}\nthing:\n  <<: *b\n  y: 2\n", "s.yaml")
    assert doc.data["thing"] == {"x": 1, "y": 2}


def test_dotted_paths():
    assert dotted(("services", "order", "events", "consumes", 1)) == (
        "services.order.events.consumes[1]"
    )
    assert dotted(()) == ""
