"""The campaign spec (``conf/campaign/<name>.yaml``): typed, strictly validated, with a JSON Schema.

A campaign says whom to target (eligibility, exclusions), with what (offer), where (channel by
preference and consent), when (send time outside quiet hours), how many (budget), how its model is
trained (model) and how it is measured (random control group, attribution window, margin).
``parse_campaign`` validates the plain mapping from Hydra with pydantic (strict types, unknown fields
refused) and then the rules types cannot express (a minimum above its maximum, a control fraction of
1, a score threshold outside [0, 1], a negative budget or learning rate). Every problem raises
``CampaignConfigError`` naming the dotted field, before any data is read or any model trained.
Checks against the data (unknown segment or country) are ``serving.campaigns.eligibility.check_targeting``.

The JSON Schema for campaign writers is published at ``conf/campaign/campaign.schema.json``;
``python -m serving.campaigns.spec`` rewrites it (a test fails when it is stale).

About 480 lines: the sections (types, defaults, descriptions) and the rules between their fields are
one contract for campaign writers, kept in one file so that a new field and its rule change together.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError

LIFECYCLE_STAGES = ("new", "active", "at_risk", "dormant", "churned")
CHANNELS = ("email", "sms", "push")
MODEL_KINDS = ("response", "uplift")
ID_REGEX = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
ID_PATTERN = re.compile(ID_REGEX)
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "conf" / "campaign" / "campaign.schema.json"


class CampaignConfigError(ValueError):
    """A campaign definition is invalid. ``field`` is the dotted path of the offending setting."""

    def __init__(self, field_path: str, message: str):
        self.field = field_path
        super().__init__(f"campaign.{field_path}: {message}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Objective(_Section):
    """What counts as a response: an ``event`` (in ``category`` if set) within ``within_days``."""

    event: str = "purchase"
    category: Optional[str] = None
    within_days: int = 30


class NetSettings(_Section):
    """Training settings of a campaign network (``models.uplift.CampaignNet`` seed ensemble)."""

    hidden: int = 32
    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    seeds: int = Field(3, description="ensemble members (averaged)")
    valid_fraction: float = 0.2
    dropout: float = 0.1


class ModelSpec(NetSettings):
    """The campaign model: the profile columns it reads and how it is trained (``training.campaigns``)."""

    kind: str = Field("response", description="response (propensity, python -m training.campaigns.train) or uplift "
                      "(a past campaign's effect model, python -m training.uplift; job.model_dir = its run folder)")
    features: tuple[str, ...] = ("recency_days", "frequency", "monetary")
    log_features: tuple[str, ...] = Field(("frequency", "monetary"), description="log1p before standardising")

    def net(self) -> NetSettings:
        return NetSettings(**{k: getattr(self, k) for k in NetSettings.model_fields})


class Eligibility(_Section):
    """Who may be targeted. ``null`` means no restriction on that attribute."""

    lifecycle: Optional[tuple[str, ...]] = None
    segments: Optional[tuple[str, ...]] = Field(None, description="named segments (profiles column named_segment)")
    countries: Optional[tuple[str, ...]] = None
    min_recency_days: Optional[float] = None
    max_recency_days: Optional[float] = None
    min_frequency: Optional[int] = None
    min_monetary: Optional[float] = None


class Exclusions(_Section):
    """Who must not be targeted even when eligible."""

    opted_out: bool = Field(True, description="always true: consent per channel is respected")
    frequency_cap_days: Optional[int] = Field(None, description="contacted by another campaign within this many days")
    bought_category_within_days: Optional[int] = Field(None, description="already bought objective.category recently")
    max_churn_prob: Optional[float] = Field(None, description="skip users whose churn probability is above this")


class OfferTier(_Section):
    """Users with price sensitivity <= ``max_price_sensitivity`` get ``discount``."""

    max_price_sensitivity: float
    discount: float


class Offer(_Section):
    """Discount depth by price sensitivity; ``default_discount`` where sensitivity is unknown. With
    ``levels`` (uplift campaigns), each user gets the level of largest expected incremental profit
    (``serving.campaigns.offers``)."""

    kind: str = "discount"
    tiers: tuple[OfferTier, ...] = ()
    default_discount: float = 0.0
    levels: tuple[float, ...] = Field((), description="discount levels chosen per user by expected profit "
                                      "(model.kind uplift); learnt per level when the past campaign randomised them")
    elasticity: float = Field(2.0, description="rule when levels were not randomised: a discount d multiplies "
                              "P(convert | treated) by 1 + elasticity x price_sensitivity x d")


class Channels(_Section):
    """Channel per user: the preferred one when consented, else the first consented in ``order``."""

    order: tuple[str, ...] = ("email", "push", "sms")
    cost: dict[str, float] = Field(default_factory=lambda: {"email": 0.01, "push": 0.005, "sms": 0.05})
    use_preference: bool = True


class SendTime(_Section):
    """Send at each user's active hour on ``send_date``, moved out of the quiet hours, all in the
    user's local time (profiles column ``timezone``, else ``default_timezone``); ``send_at`` is UTC."""

    send_date: Optional[str] = Field(None, description="YYYY-MM-DD local date; null = the day after the profile snapshot")
    quiet_start: int = 21
    quiet_end: int = 8
    default_hour: int = 10
    default_timezone: str = "UTC"


class Budget(_Section):
    """At most ``max_users`` treated users and at most ``max_cost`` of channel cost (null = no cap);
    ``min_score`` drops users scored below it (a probability: in [0, 1]; uplift models: [-1, 1]). A
    budget that cannot pay for one offer (0 users, or less than the cheapest channel) is refused."""

    max_users: Optional[int] = None
    max_cost: Optional[float] = None
    min_score: Optional[float] = None


class Control(_Section):
    """Random hold-out: ``fraction`` of the selected users, stratified by ``stratify_by``, seeded."""

    fraction: float = 0.1
    stratify_by: str = "segment"
    seed: int = 42


class Evaluation(_Section):
    """How the readout (``python -m serving.campaigns.evaluate``) measures the campaign.

    Outcomes per audience user are counted in ``[send_at, send_at + attribution_days)`` (null =
    ``objective.within_days``). ROI is on margin: ``margin_rate`` is the gross margin as a share of
    list-price revenue (0.30 by default: an assumption, set the shop's own figure); a discount is a
    cost counted once.
    """

    retention_days: int = 60
    attribution_days: Optional[int] = None
    margin_rate: float = 0.30
    average_order_value: Optional[float] = Field(None, description="for simulated outcomes when profiles lack spend")


class Job(_Section):
    """How a campaign job runs (``conf/campaign_job.yaml``): paths, device, batch size, Ray, outcomes."""

    profiles: str = ""
    processed: str = ""
    model_dir: str = ""
    out_dir: str = ""
    contact_log: str = ""
    bundle: Optional[str] = None
    bundles: str = ""
    write_bundle: bool = True
    device: str = "auto"
    batch_size: int = 262144
    ray_address: Optional[str] = None
    outcomes: Optional[str] = Field(None, description="events (default) | simulate | a parquet/csv file")
    report_dir: str = ""
    backtest_cutoff: Optional[str] = Field(None, description="YYYY-MM-DD: training.campaigns.backtest's 'now'")


class CampaignConfig(_Section):
    id: str
    name: str
    data: str
    description: str = ""
    objective: Objective = Objective()
    model: ModelSpec = ModelSpec()
    eligibility: Eligibility = Eligibility()
    exclusions: Exclusions = Exclusions()
    offer: Offer = Offer()
    channels: Channels = Channels()
    send_time: SendTime = SendTime()
    budget: Budget = Budget()
    control: Control = Control()
    evaluation: Evaluation = Evaluation()
    job: Job = Job()

    def replace(self, **sections: Mapping[str, Any] | Any) -> "CampaignConfig":
        """A copy with some fields of some sections replaced: ``c.replace(budget={"max_users": 5})``.
        The result is validated again (``parse_campaign``)."""
        raw = to_dict(self)
        for k, v in sections.items():
            raw[k] = {**raw[k], **v} if isinstance(v, Mapping) and isinstance(raw.get(k), dict) else v
        return parse_campaign(raw)

    @property
    def attribution_days(self) -> int:
        return self.evaluation.attribution_days or self.objective.within_days


# ---------------------------------------------------------------------------------------------
# Errors with the dotted field path.

def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _unwrap(tp: Any) -> Any:
    while True:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            tp = next(a for a in args if a is not type(None))
        elif origin is tuple:
            tp = args[0]
        else:
            return tp


def _section_at(loc: tuple) -> type[BaseModel] | None:
    cls: Any = CampaignConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None
        cls = _unwrap(cls.model_fields[part].annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _from_validation(e: ValidationError) -> CampaignConfigError:
    err = e.errors()[0]
    loc, kind = tuple(err["loc"]), err["type"]
    if kind == "extra_forbidden":
        parent = _section_at(loc[:-1])
        allowed = ", ".join(sorted(parent.model_fields)) if parent else "?"
        return CampaignConfigError(_path(loc), f"unknown field (allowed: {allowed})")
    if kind == "missing":
        return CampaignConfigError(_path(loc), "is required")
    msg = err["msg"].replace("Input should be", "must be").replace("a valid integer", "an integer")
    return CampaignConfigError(_path(loc), f"{msg}, got {err.get('input')!r}")


# ---------------------------------------------------------------------------------------------
# Rules that types alone cannot express.

def _check_date(path: str, value: str | None) -> None:
    if value is None:
        return
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise CampaignConfigError(path, f"must be YYYY-MM-DD, got {value!r}") from None


def _check(c: CampaignConfig) -> None:
    def err(path: str, msg: str) -> None:
        raise CampaignConfigError(path, msg)

    if not ID_PATTERN.match(c.id):
        err("id", f"must be lower-case letters, digits, '_' or '-' (got {c.id!r})")
    if c.objective.within_days <= 0:
        err("objective.within_days", f"must be positive, got {c.objective.within_days}")
    m = c.model
    if m.kind not in MODEL_KINDS:
        err("model.kind", f"must be one of {MODEL_KINDS}, got {m.kind!r}")
    if not m.features:
        err("model.features", "must name at least one profile column")
    if len(set(m.features)) != len(m.features):
        err("model.features", f"lists a column twice: {list(m.features)}")
    for f in m.log_features:
        if f not in m.features:
            err("model.log_features", f"{f!r} is not in model.features")
    for name in ("hidden", "epochs", "batch_size", "seeds"):
        if getattr(m, name) <= 0:
            err(f"model.{name}", f"must be positive, got {getattr(m, name)}")
    if not m.lr > 0:
        err("model.lr", f"must be positive, got {m.lr}")
    if not m.weight_decay >= 0:
        err("model.weight_decay", f"must not be negative, got {m.weight_decay}")
    if not 0.0 < m.valid_fraction < 1.0:
        err("model.valid_fraction", f"must be in (0, 1), got {m.valid_fraction}")
    if not 0.0 <= m.dropout < 1.0:
        err("model.dropout", f"must be in [0, 1), got {m.dropout}")

    e = c.eligibility
    for v in e.lifecycle or ():
        if v not in LIFECYCLE_STAGES:
            err("eligibility.lifecycle", f"unknown stage {v!r} (allowed: {', '.join(LIFECYCLE_STAGES)})")
    for name in ("lifecycle", "segments", "countries"):
        if getattr(e, name) is not None and len(getattr(e, name)) == 0:
            err(f"eligibility.{name}", "is an empty list: nobody could be eligible (use null for 'any')")
    for name in ("min_recency_days", "max_recency_days", "min_frequency", "min_monetary"):
        v = getattr(e, name)
        if v is not None and v < 0:
            err(f"eligibility.{name}", f"must not be negative, got {v}")
    if e.min_recency_days is not None and e.max_recency_days is not None and e.min_recency_days > e.max_recency_days:
        err("eligibility.min_recency_days",
            f"{e.min_recency_days} is above eligibility.max_recency_days {e.max_recency_days}: no user can match")

    x = c.exclusions
    if not x.opted_out:
        err("exclusions.opted_out", "cannot be false: opted-out users are never contacted")
    for name in ("frequency_cap_days", "bought_category_within_days"):
        v = getattr(x, name)
        if v is not None and v <= 0:
            err(f"exclusions.{name}", f"must be positive or null, got {v}")
    if x.bought_category_within_days is not None and c.objective.category is None:
        err("exclusions.bought_category_within_days", "needs objective.category to be set")
    if x.max_churn_prob is not None and not 0.0 <= x.max_churn_prob <= 1.0:
        err("exclusions.max_churn_prob", f"must be in [0, 1], got {x.max_churn_prob}")

    o = c.offer
    if o.kind not in ("discount", "none"):
        err("offer.kind", f"must be 'discount' or 'none', got {o.kind!r}")
    if not 0.0 <= o.default_discount < 1.0:
        err("offer.default_discount", f"must be in [0, 1), got {o.default_discount}")
    last = -1.0
    for i, t in enumerate(o.tiers):
        if not 0.0 <= t.discount < 1.0:
            err(f"offer.tiers[{i}].discount", f"must be in [0, 1), got {t.discount}")
        if not 0.0 <= t.max_price_sensitivity <= 1.0:
            err(f"offer.tiers[{i}].max_price_sensitivity", f"must be in [0, 1], got {t.max_price_sensitivity}")
        if t.max_price_sensitivity <= last:
            err(f"offer.tiers[{i}].max_price_sensitivity", "tiers must be in increasing order of price sensitivity")
        last = t.max_price_sensitivity
    if o.tiers and last < 1.0:
        err("offer.tiers", f"the last tier must reach max_price_sensitivity 1.0, got {last}")
    for i, d in enumerate(o.levels):
        if not 0.0 <= d < 1.0:
            err(f"offer.levels[{i}]", f"must be in [0, 1), got {d}")
        if i and d <= o.levels[i - 1]:
            err("offer.levels", f"must be in increasing order without repeats, got {list(o.levels)}")
    if o.levels and m.kind != "uplift":
        err("offer.levels", "choosing a level by expected profit needs an uplift model (model.kind: uplift)")
    if o.levels and o.kind != "discount":
        err("offer.levels", f"needs offer.kind 'discount', got {o.kind!r}")
    if not o.elasticity >= 0:
        err("offer.elasticity", f"must not be negative, got {o.elasticity}")

    ch = c.channels
    if not ch.order:
        err("channels.order", "must name at least one channel")
    for v in ch.order:
        if v not in CHANNELS:
            err("channels.order", f"unknown channel {v!r} (allowed: {', '.join(CHANNELS)})")
        if v not in ch.cost:
            err("channels.cost", f"has no cost for channel {v!r}")
    if len(set(ch.order)) != len(ch.order):
        err("channels.order", f"lists a channel twice: {list(ch.order)}")
    for k, v in ch.cost.items():
        if k not in CHANNELS:
            err(f"channels.cost.{k}", f"unknown channel (allowed: {', '.join(CHANNELS)})")
        if v < 0:
            err(f"channels.cost.{k}", f"must not be negative, got {v}")

    s = c.send_time
    for name in ("quiet_start", "quiet_end", "default_hour"):
        if not 0 <= getattr(s, name) <= 23:
            err(f"send_time.{name}", f"must be an hour 0-23, got {getattr(s, name)}")
    try:
        ZoneInfo(s.default_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        err("send_time.default_timezone", f"unknown IANA time zone {s.default_timezone!r}")
    _check_date("send_time.send_date", s.send_date)

    b = c.budget
    if b.max_users is not None and b.max_users < 0:
        err("budget.max_users", f"must not be negative, got {b.max_users}")
    if b.max_cost is not None and b.max_cost < 0:
        err("budget.max_cost", f"must not be negative, got {b.max_cost}")
    if b.max_users == 0:
        err("budget.max_users", "is 0: the budget cannot pay for a single offer")
    cheapest = min((ch.cost[v] for v in ch.order if v in ch.cost), default=0.0)
    if b.max_cost is not None and b.max_cost < cheapest:
        err("budget.max_cost", f"{b.max_cost} cannot pay for a single offer (the cheapest channel of "
                               f"channels.order costs {cheapest})")
    if b.min_score is not None:
        low = -1.0 if m.kind == "uplift" else 0.0
        if not low <= b.min_score <= 1.0:
            err("budget.min_score", f"must be in [{low:g}, 1] (a {m.kind} model's score), got {b.min_score}: "
                                    "no user could be selected")

    if not 0.0 <= c.control.fraction < 1.0:
        err("control.fraction", f"must be in [0, 1), got {c.control.fraction}")
    if c.control.stratify_by not in ("segment", "named_segment", "lifecycle", "none"):
        err("control.stratify_by", f"must be segment, named_segment, lifecycle or none, got {c.control.stratify_by!r}")

    v = c.evaluation
    if v.retention_days <= 0:
        err("evaluation.retention_days", f"must be positive, got {v.retention_days}")
    if v.attribution_days is not None and v.attribution_days <= 0:
        err("evaluation.attribution_days", f"must be positive or null, got {v.attribution_days}")
    if not 0.0 < v.margin_rate <= 1.0:
        err("evaluation.margin_rate", f"must be in (0, 1], got {v.margin_rate}")
    if v.average_order_value is not None and v.average_order_value < 0:
        err("evaluation.average_order_value", f"must not be negative, got {v.average_order_value}")

    j = c.job
    if j.device not in ("auto", "cpu", "cuda"):
        err("job.device", f"must be auto, cpu or cuda, got {j.device!r}")
    if j.batch_size <= 0:
        err("job.batch_size", f"must be positive, got {j.batch_size}")
    _check_date("job.backtest_cutoff", j.backtest_cutoff)


def parse_campaign(raw: Mapping[str, Any]) -> CampaignConfig:
    """Validate a campaign mapping (e.g. ``OmegaConf.to_container(cfg.campaign)``)."""
    if not isinstance(raw, Mapping):
        raise CampaignConfigError("<root>", f"must be a mapping, got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if k != "defaults"}
    try:
        # JSON mode: strict types (no "5" for 5, no true for 1) while lists are accepted for tuples.
        cfg = CampaignConfig.model_validate_json(json.dumps(raw, default=str))
    except ValidationError as e:
        raise _from_validation(e) from None
    _check(cfg)
    return cfg


def from_hydra(cfg_campaign: Any) -> CampaignConfig:
    """Parse the ``campaign`` group of a composed Hydra config."""
    from omegaconf import OmegaConf  # local: keeps this module importable without hydra

    raw = OmegaConf.to_container(cfg_campaign, resolve=True) if OmegaConf.is_config(cfg_campaign) else cfg_campaign
    return parse_campaign(raw)


def to_dict(c: CampaignConfig) -> dict[str, Any]:
    """Plain JSON-ready dict (for manifests)."""
    return c.model_dump(mode="json")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a campaign file (the ``defaults`` list of the Hydra YAML aside)."""
    schema = CampaignConfig.model_json_schema()
    schema["title"] = "shoprec campaign"
    schema["$comment"] = ("conf/campaign/<name>.yaml; generated by `python -m serving.campaigns.spec` from "
                          "serving/campaigns/spec.py. The rules between fields are checked by parse_campaign.")
    return schema


def main() -> None:
    SCHEMA_FILE.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {SCHEMA_FILE}", file=sys.stderr)


if __name__ == "__main__":
    main()
