"""The campaign fixtures of ``tests/serving/campaigns`` (composed configs, synthetic profiles)."""
from tests.serving.campaigns.conftest import campaign, campaign_raw, make_cfg, profiles, tiny_model  # noqa: F401
