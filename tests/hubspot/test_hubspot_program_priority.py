"""Two programs of one vendor: a contact both may email belongs to the higher priority only.
`sync` of each program against the HubSpot fake, each on its own store, each naming the other
under `eligibility.competing`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.eligibility import Rival
from crm_elasticity.core.explain import explain_contact
from crm_elasticity.core.mapping import MappingError, load_mapping
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.fakes.hubspot_server import prop
from tests.governance_helpers import withheld_for
from tests.hubspot.hubspot_helpers import MAPPING, make_connector

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PROMO_AUDIENCE = {"lifecyclestage": ["lead", "marketingqualifiedlead"]}


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def write_programs(directory: Path, news_priority: int = 1, promo_priority: int = 5) -> None:
    """newsletter.yaml (the shipped mapping, renamed) and promo.yaml (its own `promo_*`
    properties and lists, for leads who opted in to promotions), each naming the other."""
    base = yaml.safe_load(MAPPING.read_text())
    base.pop("holdout", None)  # no contact is held out by chance here
    news = {**base, "program": "newsletter"}
    news["eligibility"] = {
        "consent_property": "hs_email_optout",
        "priority": news_priority,
        "competing": ["promo.yaml"],
    }
    (directory / "newsletter.yaml").write_text(yaml.safe_dump(news, sort_keys=False))
    promo = {**base, "program": "promo"}
    promo["eligibility"] = {
        "consent_property": "promo_consent",
        "consent_means": "opt_in",
        "priority": promo_priority,
        "audience": PROMO_AUDIENCE,
        "competing": ["newsletter.yaml"],
    }
    text = yaml.safe_dump(promo, sort_keys=False).replace("elastic_", "promo_")
    (directory / "promo.yaml").write_text(text.replace("Elastic", "Promo"))


def dormant(fake, **extra) -> str:
    """Dormant for 33 days in both programs: reactivation step 1 is due in each."""
    changed = NOW - timedelta(days=33)
    values = {}
    for prefix in ("elastic_", "promo_"):
        values.update(
            {
                f"{prefix}campaign_status": "dormant",
                f"{prefix}engagement_score": "0",
                f"{prefix}reactivation_cycle": "0",
                f"{prefix}unanswered_sends": "3",
                f"{prefix}status_changed_at": iso(changed),
                f"{prefix}last_engagement_date": iso(changed - timedelta(days=90)),
            }
        )
    return fake.add_contact({**values, **extra})


def step(fake, cid: str, prefix: str) -> str | None:
    return fake.contact(cid).get(f"{prefix}reactivation_step") or None


@pytest.fixture
def programs(fake, clock, tmp_path):
    fake.properties["contacts"]["promo_consent"] = prop("promo_consent", "bool", "booleancheckbox")
    fake.properties["contacts"]["lifecyclestage"] = prop("lifecyclestage", "enumeration", "select")
    write_programs(tmp_path)
    built = {}
    for name in ("newsletter", "promo"):
        connector = make_connector(fake, load_mapping(tmp_path / f"{name}.yaml"), clock)
        connector.provision()
        built[name] = (connector, SQLiteStore(tmp_path / f"{name}.sqlite3"))
    return built


def test_a_contact_both_programs_may_email_gets_only_the_higher_prioritys_steps(fake, programs):
    both = dormant(fake, lifecyclestage="lead", promo_consent="true")
    customer = dormant(fake, lifecyclestage="customer", promo_consent="true")  # not promo's
    unconsented = dormant(fake, lifecyclestage="lead")  # promo may not email it
    for name in ("newsletter", "promo"):
        connector, store = programs[name]
        Runner(connector, store, clock=lambda: NOW).sync(NOW)
    news_store = programs["newsletter"][1]
    # The lead who opted in to promotions is promo's: the newsletter withholds, and says why.
    assert step(fake, both, "promo_") == "1"
    assert step(fake, both, "elastic_") in (None, "0")
    (withheld,) = withheld_for(news_store.ledger_for(both), "other_program:promo")
    assert withheld.reason == "other_program:promo"
    # Contacts promo cannot take stay the newsletter's.
    assert step(fake, customer, "elastic_") == "1"
    assert step(fake, unconsented, "elastic_") == "1"
    assert not withheld_for(news_store.ledger_for(customer), "other_program:promo")
    # The promo program never withholds for the newsletter (it ranks first).
    promo_store = programs["promo"][1]
    assert all(
        not d.actions or d.actions[0].kind != "reactivation_step_withheld"
        for d in promo_store.ledger_for(both)
    )
    text = explain_contact(Path(news_store.path), both)
    assert text is not None and "other_program:promo" in text


def test_the_step_goes_out_once_the_winning_program_no_longer_takes_the_contact(fake, programs):
    both = dormant(fake, lifecyclestage="lead", promo_consent="true")
    connector, store = programs["newsletter"]
    Runner(connector, store, clock=lambda: NOW).sync(NOW)
    assert step(fake, both, "elastic_") in (None, "0")
    fake.set_contact(both, {"lifecyclestage": "customer"})  # out of promo's audience
    later = NOW + timedelta(days=8)  # asked again a step's wait later
    Runner(connector, store, clock=lambda: later).sync(later)
    assert step(fake, both, "elastic_") == "1"


def test_equal_priorities_fall_to_the_program_name(tmp_path):
    write_programs(tmp_path, news_priority=3, promo_priority=3)
    news = load_mapping(tmp_path / "newsletter.yaml").policy.program.governance
    promo = load_mapping(tmp_path / "promo.yaml").policy.program.governance
    taken = {"lifecyclestage": "lead", "promo_consent": "true", "hs_email_optout": "false"}
    assert news.withheld(taken) is None  # "newsletter" sorts before "promo"
    assert promo.withheld(taken) == "other_program:newsletter"
    assert [r.program for r in promo.ahead] == ["newsletter"] and news.ahead == ()
    # What a program cannot see it does not decide on: unread properties prove nothing.
    assert promo.withheld({"lifecyclestage": "lead", "promo_consent": "true"}) is None
    assert isinstance(promo.ahead[0], Rival)


def test_a_competing_file_that_cannot_compete_is_named(tmp_path):
    write_programs(tmp_path)
    news = yaml.safe_load((tmp_path / "newsletter.yaml").read_text())
    news["eligibility"]["competing"] = ["missing.yaml", "newsletter.yaml"]
    (tmp_path / "newsletter.yaml").write_text(yaml.safe_dump(news))
    sf = yaml.safe_load((MAPPING.parent / "salesforce.yaml").read_text())
    (tmp_path / "sf.yaml").write_text(yaml.safe_dump(sf))
    with pytest.raises(MappingError) as caught:
        load_mapping(tmp_path / "newsletter.yaml")
    problems = "\n".join(caught.value.problems)
    assert "eligibility.competing[0]" in problems and "cannot read" in problems
    assert "eligibility.competing[1]" in problems and "is this program" in problems
    news["eligibility"]["competing"] = ["sf.yaml"]
    (tmp_path / "newsletter.yaml").write_text(yaml.safe_dump(news))
    with pytest.raises(MappingError, match="only programs of the same vendor"):
        load_mapping(tmp_path / "newsletter.yaml")


def test_serve_refuses_two_programs_of_one_vendor_and_names_the_way(tmp_path):
    from typer.testing import CliRunner

    from crm_elasticity.connectors.cli import app

    write_programs(tmp_path)
    result = CliRunner().invoke(
        app,
        ["serve", str(tmp_path / "newsletter.yaml"), str(tmp_path / "promo.yaml")],
        env={"ELASTICITY_DATA_DIR": str(tmp_path / "data")},
    )
    assert result.exit_code == 1, result.output
    assert "both hubspot programs" in result.output
    assert "eligibility.competing" in result.output
    assert not (tmp_path / "data" / "elasticity.sqlite3").exists()
