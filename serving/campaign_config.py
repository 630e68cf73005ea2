"""Typed, validated campaign definitions (``conf/campaign/<name>.yaml``).

A campaign says whom to target (eligibility, exclusions), with what (offer), where (channel by
preference and consent), when (send time outside quiet hours), how many (budget) and how we will
measure it (random control group). ``parse_campaign`` turns the plain mapping from Hydra into
frozen dataclasses and rejects, before any scoring, an unknown field, an impossible rule (e.g. a
minimum above its maximum, a control fraction of 1) or a negative budget, naming the field.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import datetime as dt
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

LIFECYCLE_STAGES = ("new", "active", "at_risk", "dormant", "churned")
CHANNELS = ("email", "sms", "push")
MODEL_KINDS = ("response", "uplift")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


class CampaignConfigError(ValueError):
    """A campaign definition is invalid. ``field`` is the dotted path of the offending setting."""

    def __init__(self, field_path: str, message: str):
        self.field = field_path
        super().__init__(f"campaign.{field_path}: {message}")


@dataclass(frozen=True)
class Objective:
    """What counts as a response: an ``event`` (in ``category`` if set) within ``within_days``."""

    event: str = "purchase"
    category: str | None = None
    within_days: int = 30


@dataclass(frozen=True)
class ModelSpec:
    """The campaign model: profile columns it reads and how it is trained (see training.campaign)."""

    kind: str = "response"                 # response (propensity) or uplift (treatment - control)
    features: tuple[str, ...] = ("recency_days", "frequency", "monetary")
    log_features: tuple[str, ...] = ("frequency", "monetary")  # log1p before standardising
    hidden: int = 32
    epochs: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 1024
    seeds: int = 3                         # ensemble members (averaged)
    valid_fraction: float = 0.2


@dataclass(frozen=True)
class Eligibility:
    """Who may be targeted. ``None`` means no restriction on that attribute."""

    lifecycle: tuple[str, ...] | None = None
    segments: tuple[str, ...] | None = None        # named segments (profiles.named_segment)
    countries: tuple[str, ...] | None = None
    min_recency_days: float | None = None
    max_recency_days: float | None = None
    min_frequency: int | None = None
    min_monetary: float | None = None


@dataclass(frozen=True)
class Exclusions:
    """Who must not be targeted even when eligible."""

    opted_out: bool = True                 # always true: consent per channel is respected
    frequency_cap_days: int | None = None  # contacted by another campaign within this many days
    bought_category_within_days: int | None = None  # already bought objective.category recently
    max_churn_prob: float | None = None    # e.g. skip customers we consider lost


@dataclass(frozen=True)
class OfferTier:
    """Users with price sensitivity <= ``max_price_sensitivity`` get ``discount``."""

    max_price_sensitivity: float
    discount: float


@dataclass(frozen=True)
class Offer:
    """Discount depth by price sensitivity; ``default_discount`` where sensitivity is unknown."""

    kind: str = "discount"
    tiers: tuple[OfferTier, ...] = ()
    default_discount: float = 0.0


@dataclass(frozen=True)
class Channels:
    """Channel per user: the preferred one when consented, else the first consented in ``order``."""

    order: tuple[str, ...] = ("email", "push", "sms")
    cost: Mapping[str, float] = field(default_factory=lambda: {"email": 0.01, "push": 0.005, "sms": 0.05})
    use_preference: bool = True


@dataclass(frozen=True)
class SendTime:
    """Send at each user's active hour on ``send_date``, moved out of the quiet hours, all in the
    user's local time (profiles column ``timezone``, else ``default_timezone``); ``send_at`` is UTC."""

    send_date: str | None = None     # YYYY-MM-DD, a local calendar date; null = the day after the profile snapshot
    quiet_start: int = 21            # quiet from this local hour ...
    quiet_end: int = 8               # ... until this local hour (may wrap midnight)
    default_hour: int = 10           # local hour for users without an active hour
    default_timezone: str = "UTC"    # IANA zone for users whose profile has no time zone


@dataclass(frozen=True)
class Budget:
    """At most ``max_users`` treated users and at most ``max_cost`` of channel cost (null = no cap)."""

    max_users: int | None = None
    max_cost: float | None = None
    min_score: float | None = None


@dataclass(frozen=True)
class Control:
    """Random hold-out: ``fraction`` of the selected users, stratified by ``stratify_by``, seeded."""

    fraction: float = 0.1
    stratify_by: str = "segment"
    seed: int = 42


@dataclass(frozen=True)
class Evaluation:
    """How ``scripts/evaluate_campaign.py`` reads outcomes."""

    retention_days: int = 60
    average_order_value: float | None = None   # for offer cost when outcomes carry no revenue


@dataclass(frozen=True)
class Job:
    """How a campaign job runs (``conf/campaign/_job.yaml``): paths, device, batch size, Ray."""

    profiles: str = ""
    processed: str = ""
    out_dir: str = ""
    contact_log: str = ""
    bundle: str | None = None
    bundles: str = ""
    write_bundle: bool = True
    device: str = "auto"
    batch_size: int = 262144
    ray_address: str | None = None
    outcomes: str | None = None
    report_dir: str = ""


@dataclass(frozen=True)
class CampaignConfig:
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


# ---------------------------------------------------------------------------------------------
# Parsing: strict, recursive, with the dotted field path in every error.

def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise CampaignConfigError(path, "must not be null")
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path)
    if value is None:
        raise CampaignConfigError(path, "must not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise CampaignConfigError(path, f"must be a mapping, got {value!r}")
        return _build(tp, value, path)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise CampaignConfigError(path, f"must be a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (collections.abc.Mapping, dict):
        if not isinstance(value, Mapping):
            raise CampaignConfigError(path, f"must be a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise CampaignConfigError(path, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CampaignConfigError(path, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CampaignConfigError(path, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise CampaignConfigError(path, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported type {tp} at {path}")  # programming error, not bad input


def _build(cls: type, raw: Mapping[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise CampaignConfigError(where, f"unknown field (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        where = f"{path}.{f.name}" if path else f.name
        if f.name in raw:
            kwargs[f.name] = _convert(hints[f.name], raw[f.name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CampaignConfigError(where, "is required")
    return cls(**kwargs)


def _check(c: CampaignConfig) -> None:
    """Rules that types alone cannot express."""

    def err(path: str, msg: str) -> None:
        raise CampaignConfigError(path, msg)

    if not ID_PATTERN.match(c.id):
        err("id", f"must be lower-case letters, digits, '_' or '-' (got {c.id!r})")
    if c.objective.within_days <= 0:
        err("objective.within_days", f"must be positive, got {c.objective.within_days}")
    if c.model.kind not in MODEL_KINDS:
        err("model.kind", f"must be one of {MODEL_KINDS}, got {c.model.kind!r}")
    if not c.model.features:
        err("model.features", "must name at least one profile column")
    for f in c.model.log_features:
        if f not in c.model.features:
            err("model.log_features", f"{f!r} is not in model.features")
    for name in ("hidden", "epochs", "batch_size", "seeds"):
        if getattr(c.model, name) <= 0:
            err(f"model.{name}", f"must be positive, got {getattr(c.model, name)}")
    if not 0.0 < c.model.valid_fraction < 1.0:
        err("model.valid_fraction", f"must be in (0, 1), got {c.model.valid_fraction}")

    e = c.eligibility
    for name in ("lifecycle",):
        for v in getattr(e, name) or ():
            if v not in LIFECYCLE_STAGES:
                err(f"eligibility.{name}", f"unknown stage {v!r} (allowed: {', '.join(LIFECYCLE_STAGES)})")
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
    if s.send_date is not None:
        try:
            dt.date.fromisoformat(s.send_date)
        except ValueError:
            err("send_time.send_date", f"must be YYYY-MM-DD, got {s.send_date!r}")

    b = c.budget
    if b.max_users is not None and b.max_users < 0:
        err("budget.max_users", f"must not be negative, got {b.max_users}")
    if b.max_cost is not None and b.max_cost < 0:
        err("budget.max_cost", f"must not be negative, got {b.max_cost}")

    if not 0.0 <= c.control.fraction < 1.0:
        err("control.fraction", f"must be in [0, 1), got {c.control.fraction}")
    if c.control.stratify_by not in ("segment", "named_segment", "lifecycle", "none"):
        err("control.stratify_by", f"must be segment, named_segment, lifecycle or none, got {c.control.stratify_by!r}")
    if c.job.device not in ("auto", "cpu", "cuda"):
        err("job.device", f"must be auto, cpu or cuda, got {c.job.device!r}")
    if c.job.batch_size <= 0:
        err("job.batch_size", f"must be positive, got {c.job.batch_size}")
    if c.evaluation.retention_days <= 0:
        err("evaluation.retention_days", f"must be positive, got {c.evaluation.retention_days}")


def parse_campaign(raw: Mapping[str, Any]) -> CampaignConfig:
    """Validate a campaign mapping (e.g. ``OmegaConf.to_container(cfg.campaign)``)."""
    if not isinstance(raw, Mapping):
        raise CampaignConfigError("<root>", f"must be a mapping, got {type(raw).__name__}")
    cfg = _build(CampaignConfig, raw, "")
    _check(cfg)
    return cfg


def from_hydra(cfg_campaign: Any) -> CampaignConfig:
    """Parse the ``campaign`` group of a composed Hydra config."""
    from omegaconf import OmegaConf  # local: keeps this module importable without hydra

    raw = OmegaConf.to_container(cfg_campaign, resolve=True) if OmegaConf.is_config(cfg_campaign) else cfg_campaign
    return parse_campaign(raw)


def to_dict(c: CampaignConfig) -> dict[str, Any]:
    """Plain dict (for manifests)."""
    return dataclasses.asdict(c)
