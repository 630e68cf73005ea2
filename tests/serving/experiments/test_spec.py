"""Spec validation: every bad input is refused at load with the field named."""
from __future__ import annotations

import pytest

from serving.experiments.spec import ExperimentConfigError, check_set, parse_spec, read_spec
from tests.serving.experiments.conftest import spec_dict, write_spec


def test_valid_spec_parses():
    s = parse_spec(spec_dict())
    assert s.name == "ab" and [v.name for v in s.variants] == ["popular", "trained"]
    assert s.variant("popular").overrides.retrieval == "popular"


@pytest.mark.parametrize("change,field", [
    ({"variants": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.4}], "control": "a"}, "variants.weight"),
    ({"end": "2019-01-01T00:00:00Z"}, "end"),
    ({"control": "nobody"}, "control"),
    ({"variants": [{"name": "a", "weight": 0.5}, {"name": "a", "weight": 0.5}], "control": "a"}, "variants.name"),
    ({"traffic": {"offset": 0.6, "share": 0.5}}, "traffic"),
    ({"salt": "short"}, "salt"),
    ({"colour": "blue"}, "colour"),
    ({"variants": [{"name": "popular", "weight": 0.5, "overrides": {"ranker": "maybe"}},
                   {"name": "trained", "weight": 0.5}]}, "variants.0.overrides.ranker"),
    ({"primary_metric": {"name": "revenue_per_user"}}, "mde.baseline_sd"),
])
def test_bad_spec_names_the_field(change, field):
    with pytest.raises(ExperimentConfigError) as e:
        parse_spec(spec_dict(**change), "conf/experiment/ab.yaml")
    assert field in str(e.value) and "conf/experiment/ab.yaml" in str(e.value)


def test_unknown_bundle_version():
    d = spec_dict(variants=[{"name": "popular", "weight": 0.5}, {"name": "trained", "weight": 0.5, "bundle": "v9"}])
    with pytest.raises(ExperimentConfigError, match=r"variants\.1\.bundle: unknown bundle version 'v9'"):
        check_set([parse_spec(d)], known_bundles=["b1", "b2"])
    check_set([parse_spec(d)], known_bundles=["b1", "v9"])


def test_two_running_experiments_claiming_the_same_traffic():
    a = parse_spec(spec_dict("a", "salt-aaaa-1", traffic={"offset": 0.0, "share": 0.6}))
    b = parse_spec(spec_dict("b", "salt-bbbb-1", traffic={"offset": 0.5, "share": 0.5}))
    with pytest.raises(ExperimentConfigError, match=r"experiment 'b': traffic: .* overlaps .* of experiment 'a'"):
        check_set([a, b])
    c = parse_spec(spec_dict("c", "salt-cccc-1", traffic={"offset": 0.6, "share": 0.4}))
    check_set([a, c])  # disjoint traffic
    d = parse_spec(spec_dict("d", "salt-dddd-1", start="2000-01-01T00:00:00Z", end="2001-01-01T00:00:00Z"))
    check_set([a, d])  # same traffic, disjoint time


def test_reused_salt():
    a = parse_spec(spec_dict("a", "salt-same-1", traffic={"offset": 0.0, "share": 0.5}))
    b = parse_spec(spec_dict("b", "salt-same-1", traffic={"offset": 0.5, "share": 0.5}))
    with pytest.raises(ExperimentConfigError, match=r"experiment 'b': salt: 'salt-same-1' is already the salt of"):
        check_set([a, b])


def test_read_spec_from_yaml_and_the_shipped_examples(tmp_path):
    p = write_spec(tmp_path, spec_dict())
    assert read_spec(p).salt == "salt-ab-0001"
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ExperimentConfigError, match="not valid YAML"):
        read_spec(tmp_path / "broken.yaml")
    shipped = [read_spec(f"conf/experiment/{n}.yaml") for n in ("homepage_ab", "homepage_aa")]
    check_set(shipped)


def test_variant_rule_overrides_keep_the_other_rule_settings():
    """A variant that changes one rule keeps every other configured rule (e.g. the diversity lambda)."""
    import dataclasses

    from serving.experiments.router import variant_settings
    from serving.experiments.spec import Overrides, RuleOverrides, Variant
    from serving.recommender import RecommendSettings
    from serving.rules import RuleSettings

    base = dataclasses.replace(RecommendSettings(), rules=RuleSettings(no_repurchase_days=30, max_per_category=3,
                                                                       diversity=0.4))
    v = Variant(name="b", weight=0.5, overrides=Overrides(rules=RuleOverrides(max_per_category=1)))
    got = variant_settings(base, v).rules
    assert (got.no_repurchase_days, got.max_per_category, got.diversity) == (30, 1, 0.4)
