"""Campaign YAML validation: every shipped campaign parses; bad input fails naming the field."""
from __future__ import annotations

import copy

import pytest

from serving.campaigns.spec import CampaignConfigError, parse_campaign
from tests.serving.campaigns.conftest import REPO, make_cfg


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "campaign").glob("[!_]*.yaml")))
def test_shipped_campaigns_parse(name):
    from serving.campaigns.spec import from_hydra

    c = from_hydra(make_cfg(f"campaign={name}").campaign)
    assert c.id == name and c.model.features and c.channels.order
    assert c.job.out_dir.endswith(f"campaigns/{name}")


def _bad(raw, path, value):
    raw = copy.deepcopy(raw)
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return raw


@pytest.mark.parametrize("path,value,field,words", [
    ("budget.max_users", -5, "budget.max_users", "negative"),
    ("budget.max_cost", -0.5, "budget.max_cost", "negative"),
    ("eligibility.min_recency_days", 400, "eligibility.min_recency_days", "no user can match"),
    ("eligibility.lifecycle", ["active", "zombie"], "eligibility.lifecycle", "zombie"),
    ("eligibility.lifecycle", [], "eligibility.lifecycle", "nobody"),
    ("control.fraction", 1.0, "control.fraction", "[0, 1)"),
    ("channels.order", ["email", "fax"], "channels.order", "fax"),
    ("channels.order", ["email", "sms"], "channels.cost", "sms"),
    ("send_time.quiet_start", 24, "send_time.quiet_start", "0-23"),
    ("send_time.default_timezone", "Europe/Londn", "send_time.default_timezone", "Europe/Londn"),
    ("offer.tiers", [{"max_price_sensitivity": 0.5, "discount": 0.1}], "offer.tiers", "1.0"),
    ("budget.max_users", "many", "budget.max_users", "integer"),
    ("exclusions.opted_out", False, "exclusions.opted_out", "never contacted"),
    ("exclusions.bought_category_within_days", 30, "exclusions.bought_category_within_days", "objective.category"),
    ("model.log_features", ["clv", "age"], "model.log_features", "age"),
])
def test_bad_values_name_the_field(campaign_raw, path, value, field, words):
    with pytest.raises(CampaignConfigError) as e:
        parse_campaign(_bad(campaign_raw, path, value))
    assert e.value.field == field
    assert f"campaign.{field}" in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("where", ["", "eligibility.", "offer.tiers.0.", "channels."])
def test_unknown_field_is_rejected(campaign_raw, where):
    raw = copy.deepcopy(campaign_raw)
    node = raw
    for k in [k for k in where.split(".") if k]:
        node = node[int(k)] if k.isdigit() else node[k]
    if isinstance(node, dict) and "cost" in node and where == "channels.":
        node["costs"] = {"email": 1}          # a typo of an existing field
        expect = "channels.costs"
    else:
        node["max_user"] = 10
        expect = ("offer.tiers[0]." if where == "offer.tiers.0." else where) + "max_user"
    with pytest.raises(CampaignConfigError, match="unknown field") as e:
        parse_campaign(raw)
    assert e.value.field == expect


def test_bad_campaign_fails_before_any_scoring(tmp_path, monkeypatch):
    """build_audience.run validates first: a negative budget fails even though no profiles exist."""
    from serving.campaigns import build_audience

    called = []
    monkeypatch.setattr(build_audience, "load_profiles", lambda *a, **k: called.append(1))
    cfg = make_cfg("campaign=winback", "campaign.budget.max_users=-1", f"paths.artifacts={tmp_path}")
    with pytest.raises(CampaignConfigError, match="budget.max_users"):
        build_audience.run(cfg)
    assert not called


@pytest.mark.parametrize("entry", [("-m", "serving.campaigns.build_audience"), ("-m", "training.campaigns.train"),
                                   ("scripts/build_audience.py",)])
def test_cli_prints_one_line_and_exits_nonzero(tmp_path, entry):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, *entry, "campaign=winback",
                        "+campaign.eligibility.favourite_colour=blue", f"paths.artifacts={tmp_path}"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert "campaign.eligibility.favourite_colour: unknown field" in r.stderr
    assert not (tmp_path / "campaigns").exists()


@pytest.mark.parametrize("path,value,field,words", [
    ("budget.min_score", 1.5, "budget.min_score", "[0, 1]"),
    ("budget.min_score", -0.1, "budget.min_score", "[0, 1]"),
    ("exclusions.max_churn_prob", 1.2, "exclusions.max_churn_prob", "[0, 1]"),
    ("model.lr", -0.001, "model.lr", "positive"),
    ("model.lr", "fast", "model.lr", "number"),
    ("model.epochs", 0, "model.epochs", "positive"),
    ("model.dropout", 1.0, "model.dropout", "[0, 1)"),
    ("model.kind", "magic", "model.kind", "magic"),
    ("model.features", ["recency_days", "recency_days"], "model.features", "twice"),
    ("evaluation.margin_rate", 0.0, "evaluation.margin_rate", "(0, 1]"),
    ("evaluation.attribution_days", 0, "evaluation.attribution_days", "positive"),
    ("job.backtest_cutoff", "2011-13-01", "job.backtest_cutoff", "YYYY-MM-DD"),
])
def test_thresholds_and_model_values_name_the_field(campaign_raw, path, value, field, words):
    with pytest.raises(CampaignConfigError) as e:
        parse_campaign(_bad(campaign_raw, path, value))
    assert e.value.field == field and words in str(e.value)


def test_uplift_scores_may_be_negative(campaign_raw):
    raw = _bad(_bad(campaign_raw, "model.kind", "uplift"), "budget.min_score", -0.05)
    assert parse_campaign(raw).budget.min_score == -0.05


def test_published_json_schema_is_current():
    """conf/campaign/campaign.schema.json is what the spec generates (regenerate: python -m serving.campaigns.spec)."""
    import json

    from serving.campaigns.spec import SCHEMA_FILE, json_schema

    assert json.loads(SCHEMA_FILE.read_text()) == json.loads(json.dumps(json_schema()))
    schema = json_schema()
    assert schema["additionalProperties"] is False and {"id", "name", "data"} <= set(schema["required"])


def test_shipped_campaigns_validate_against_the_json_schema():
    """A campaign writer's editor check (the JSON Schema) accepts every shipped campaign and refuses a typo."""
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    from serving.campaigns.spec import json_schema

    schema = json_schema()
    for path in (REPO / "conf" / "campaign").glob("[!_]*.yaml"):
        raw = yaml.safe_load(path.read_text())
        raw.pop("defaults", None)
        jsonschema.validate(raw, schema)
        raw["budget"]["max_user"] = 3
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(raw, schema)
