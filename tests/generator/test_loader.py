from __future__ import annotations

import pytest
from cloudretail.generator.errors import Location, SpecError
from cloudretail.generator.loader import dotted, load_text


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


def test_an_alias_inside_its_own_anchor_is_an_error_not_a_recursion_crash():
    with pytest.raises(SpecError) as caught:
        load_text("a: &a [1, *a]\n", "s.yaml")
    (issue,) = caught.value.issues
    assert (
        str(issue) == "s.yaml:1:4: a[1]: a recursive alias: refers back to a node that contains it"
    )


def test_aliases_that_expand_exponentially_are_refused():
    """A 'billion laughs': each level repeats the one before ten times."""
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 5)]
    with pytest.raises(SpecError) as caught:
        load_text("\n".join(levels) + "\n", "s.yaml")
    (issue,) = caught.value.issues
    assert issue.location.path == "s.yaml"
    assert "more than 100000 values" in issue.message


def test_a_control_character_is_located_malformed_yaml():
    with pytest.raises(SpecError) as caught:
        load_text("a: 1\nb: x\x1fy\n", "s.yaml")
    assert str(caught.value) == (
        "s.yaml:2:5: malformed YAML: unacceptable character #x001f: "
        "control characters are not allowed"
    )


def test_values_yaml_cannot_construct_are_located_problems():
    """An impossible date, or an explicit tag the value does not fit."""
    text = "a: 2001-13-01\nb: !!float x\nc: !!bool maybe\nd: !!timestamp x\n? !!int x\n: 1\n"
    with pytest.raises(SpecError) as caught:
        load_text(text, "s.yaml")
    assert [str(issue) for issue in caught.value.issues] == [
        "s.yaml:1:4: a: cannot read '2001-13-01' as a timestamp: month must be in 1..12",
        "s.yaml:2:4: b: cannot read 'x' as a float",
        "s.yaml:3:4: c: cannot read 'maybe' as a bool",
        "s.yaml:4:4: d: cannot read 'x' as a timestamp",
        "s.yaml:5:3: cannot read 'x' as an int",
    ]
