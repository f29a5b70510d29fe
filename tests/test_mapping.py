"""Mapping files: the shipped ones are valid; a broken one gets one message per problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from crm_elasticity.core.mapping import MappingError, load_mapping, parse_mapping
from crm_elasticity.core.models import CANONICAL_FIELDS

SHIPPED = sorted(Path("mappings").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_mappings_are_valid_and_use_the_seed_defaults(path):
    mapping = load_mapping(path)
    p = mapping.policy
    seed = {"open": 5, "click": 10, "high_intent_visit": 15}
    assert {k: p.points[k] for k in seed} == seed
    assert set(p.points) == {*seed, "form_submit"}
    assert (p.threshold, p.max_unanswered_sends, p.dormant_after_days) == (20, 3, 90)
    assert (p.cooling_days, p.reactivation_steps, p.step_wait_days) == (30, 2, 7)
    assert p.max_reactivation_cycles == 2
    assert (p.decay.factor, p.decay.after_days, p.decay.every_days) == (0.5, 30, 30)
    assert set(mapping.fields) == set(CANONICAL_FIELDS)
    assert len(p.version) == 12


def test_salesforce_mapping_uses_custom_fields():
    mapping = load_mapping("mappings/salesforce.yaml")
    assert all(f.property.endswith("__c") for f in mapping.fields.values())


def test_the_same_file_gets_the_same_policy_version(tmp_path):
    text = Path("mappings/hubspot.yaml").read_bytes()
    (tmp_path / "a.yaml").write_bytes(text)
    (tmp_path / "b.yaml").write_bytes(text + b"\n# a comment changes the content\n")
    a = load_mapping(tmp_path / "a.yaml").policy.version
    assert a == load_mapping("mappings/hubspot.yaml").policy.version
    assert a != load_mapping(tmp_path / "b.yaml").policy.version


def broken(mutate) -> bytes:
    data = yaml.safe_load(Path("mappings/hubspot.yaml").read_text())
    mutate(data)
    return yaml.safe_dump(data, allow_unicode=True).encode()


def problems_of(raw: bytes) -> list[str]:
    with pytest.raises(MappingError) as info:
        parse_mapping(raw, "broken.yaml")
    return info.value.problems


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(colour="blue"), "broken.yaml: colour: unknown key"),
        (lambda d: d["policy"].update(threshold="high"), "broken.yaml: policy.threshold:"),
        (
            lambda d: d["fields"].pop("engagement_score"),
            "missing canonical field(s) ['engagement_score']",
        ),
        (lambda d: d["policy"].update(cooling_days=-3), "broken.yaml: policy.cooling_days:"),
        (
            lambda d: d["signals"][0].update(event="teleport"),
            "signals[0].event: unknown event type 'teleport'",
        ),
        (lambda d: d["policy"]["decay"].update(factor=0), "broken.yaml: policy.decay.factor:"),
        (
            lambda d: d["fields"]["campaign_status"].update(type="colour"),
            "fields.campaign_status.type:",
        ),
        (lambda d: d.pop("object"), "broken.yaml: object: required key is missing"),
        (lambda d: d["lists"][1].update(statuses=["Sleeping"]), "lists[1].statuses[0]:"),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "missing-field",
        "negative-wait",
        "unknown-event",
        "zero-decay",
        "bad-field-type",
        "missing-key",
        "unknown-status",
    ],
)
def test_each_problem_names_file_key_path_and_expectation(mutate, expected):
    problems = problems_of(broken(mutate))
    assert len(problems) == 1, problems
    assert re.match(r"broken\.yaml:\d+:\d+: ", problems[0]), problems[0]
    assert expected.removeprefix("broken.yaml: ") in problems[0]


def test_every_problem_is_listed_at_once():
    def many(d):
        d["policy"]["threshold"] = -1
        d["policy"]["step_wait_days"] = -7
        d["surprise"] = True
        d["fields"]["campaign_status"]["type"] = "colour"

    problems = problems_of(broken(many))
    assert len(problems) == 4
    assert all(re.match(r"broken\.yaml:\d+:\d+: ", p) for p in problems), problems


def test_yaml_syntax_error_names_the_line():
    problems = problems_of(b"program: x\nvendor: [unclosed\n")
    assert problems[0].startswith("broken.yaml: line ")
    assert "not valid YAML" in problems[0]


def test_a_file_that_is_not_a_mapping_of_keys():
    assert "expected a mapping of keys" in problems_of(b"- just\n- a list\n")[0]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(MappingError) as info:
        load_mapping(tmp_path / "nope.yaml")
    assert "cannot read the file" in info.value.problems[0]


SOURCE = b"""program: p
vendor: hubspot
object: contacts
fields:
  campaign_status: {property: a, type: enumeration}
policy:
  treshold: 20
  cooling_days: -1
surprise: yes
"""


def test_problems_carry_line_and_column_and_all_come_in_one_pass():
    problems = problems_of(SOURCE)
    by_key = {p.split(": ")[1]: p for p in problems}
    assert by_key["policy.treshold"].startswith("broken.yaml:7:3: ")
    assert "did you mean 'threshold'?" in by_key["policy.treshold"]
    assert by_key["policy.cooling_days"].startswith("broken.yaml:8:3: ")
    assert by_key["surprise"].startswith("broken.yaml:9:1: ")
    assert by_key["fields"].startswith("broken.yaml:4:1: ")  # missing canonical fields


def test_two_canonical_fields_on_one_property_is_a_problem():
    def same(d):
        d["fields"]["engagement_score"]["property"] = d["fields"]["campaign_status"]["property"]

    problems = problems_of(broken(same))
    assert len(problems) == 1
    assert "fields.engagement_score.property" in problems[0]
    assert "already the property of fields.campaign_status" in problems[0]


def test_an_error_repeats_only_a_bounded_part_of_a_large_value():
    problems = problems_of(b"program: p\nvendor: hubspot\nobject: [" + b"x, " * 5000 + b"x]\n")
    assert all(len(p) < 400 for p in problems), [len(p) for p in problems]


def alias_bomb(levels: int) -> bytes:
    """The shipped mapping with `program` replaced by nested aliases: nine of the level below
    on each level, a few hundred bytes that expand to 9**levels strings."""
    nested = ['&x0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    nested += [f"&x{i} [" + ",".join([f"*x{i - 1}"] * 9) + "]" for i in range(1, levels)]
    base = Path("mappings/hubspot.yaml").read_text().splitlines()
    kept = [line for line in base if not line.startswith("program:")]
    return ("\n".join(kept) + "\nprogram: [" + ", ".join(nested) + "]\n").encode()


def test_an_alias_bomb_is_refused_with_a_short_message():
    raw = alias_bomb(6)  # 531,441 strings once expanded; the old loader printed them all
    assert len(raw) < len(Path("mappings/hubspot.yaml").read_bytes()) + 500
    problems = problems_of(raw)
    assert len(problems) == 1
    assert "aliases expand to more than" in problems[0]
    assert len("\n".join(problems)) < 300


def test_alias_expansion_is_counted_without_expanding():
    from crm_elasticity.core.mapping import AliasBombError, expanded_size

    small = yaml.compose("a: &a [1, 2, 3]\nb: [*a, *a]\n")
    # the map, key a, [1, 2, 3], key b, and b's list holding the three-item list twice
    assert expanded_size(small) == 1 + 1 + 4 + 1 + (1 + 2 * 4)
    nine_levels = yaml.compose(alias_bomb(9).decode())  # 387 million strings when expanded
    with pytest.raises(AliasBombError):
        expanded_size(nine_levels, limit=1000)
    with pytest.raises(AliasBombError, match="contains it"):
        expanded_size(yaml.compose("a: &a [1, *a]\n"))


def test_a_few_aliases_still_load():
    text = Path("mappings/hubspot.yaml").read_text()
    raw = (
        text + "\nsegments:\n  - {name: eu, where: &eu {country: [FR, DE]}}\n"
        "  - {name: eu2, where: *eu}\n"
    ).encode()
    mapping = parse_mapping(raw, "aliases.yaml")
    assert mapping.segments[0].where == mapping.segments[1].where


def test_a_huge_value_in_an_error_is_quoted_short():
    data = yaml.safe_load(Path("mappings/hubspot.yaml").read_text())
    data["program"] = ["x" * 1000] * 5000
    problems = problems_of(yaml.safe_dump(data).encode())
    assert any(re.match(r"broken\.yaml:\d+:\d+: program: ", p) for p in problems), problems
    assert len("\n".join(problems)) < 500


def test_a_validator_quoting_a_huge_value_prints_one_short_line():
    data = yaml.safe_load(Path("mappings/hubspot.yaml").read_text())
    data["signals"][0]["patterns"] = ["(" + "x" * 200_000]  # not a valid regex, and huge
    problems = problems_of(yaml.safe_dump(data).encode())
    assert any(re.match(r"broken\.yaml:\d+:\d+: signals\[0\]\.patterns", p) for p in problems)
    assert all(len(p) <= 500 for p in problems)


def test_validate_refuses_an_alias_bomb_with_a_short_message(tmp_path):
    from typer.testing import CliRunner

    from crm_elasticity.connectors.cli import app

    bomb = tmp_path / "bomb.yaml"
    bomb.write_bytes(alias_bomb(7))  # 4.8 million strings once expanded
    result = CliRunner().invoke(app, ["validate", str(bomb)])
    assert result.exit_code == 2
    assert "aliases expand to more than 100,000 nodes" in result.output
    assert len(result.output) < 500
