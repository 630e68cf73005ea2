"""What an experiment is: the strictly validated spec of ``conf/experiment/<name>.yaml``.

An ``ExperimentSpec`` names its salt, its time window, the share of traffic it claims, its variants
(a weight each, and what differs: a bundle version and/or serve overrides), its primary metric,
guardrails and the minimum detectable effect the readout plans the sample size from. Unknown fields
are refused. ``load_specs`` checks one set of experiments together: variant bundles must exist
under the bundles folder, salts must not be reused, and two experiments whose time windows overlap
may not claim overlapping traffic. Every problem is an ``ExperimentConfigError`` naming the file,
the field and the value.

Traffic: every unit (pseudonymised user or session key) has one position in [0, 1), from a hash with
a fixed salt shared by all experiments (``serving.experiments.assignment.TRAFFIC_SALT``); an
experiment takes the units in ``[traffic.offset, traffic.offset + traffic.share)``. Experiments that
run at the same time on disjoint traffic ranges never share a unit; within an experiment the variant
comes from a second hash with the experiment's own salt.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

WEIGHT_TOLERANCE = 1e-6


class ExperimentConfigError(ValueError):
    """An experiment spec (or a set of them) that cannot be served; the message names the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleOverrides(Strict):
    no_repurchase_days: float | None = Field(None, ge=0)
    max_per_category: int | None = Field(None, ge=0)
    exclude_seen: bool | None = Field(None, description="false = items of the user's history may be shown again")


class Overrides(Strict):
    """What a variant changes in serving (None = as the service is configured)."""

    retrieval: Literal["model", "popular"] = Field("model", description="popular = popularity-only answers")
    ranker: bool | None = Field(None, description="false = the bundle's ranker is skipped")
    n_candidates: int | None = Field(None, ge=1, le=10000)
    rules: RuleOverrides | None = None


class Variant(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    weight: float = Field(gt=0, le=1)
    bundle: str | None = Field(None, description="a bundle version (folder under the bundles folder); null = current")
    overrides: Overrides = Overrides()


class Traffic(Strict):
    offset: float = Field(0.0, ge=0, lt=1)
    share: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _inside(self) -> "Traffic":
        if self.offset + self.share > 1 + WEIGHT_TOLERANCE:
            raise ValueError(f"offset {self.offset} + share {self.share} goes past 1")
        return self

    @property
    def end(self) -> float:
        return min(1.0, self.offset + self.share)


class PrimaryMetric(Strict):
    name: Literal["conversion", "ctr", "revenue_per_user"] = "conversion"
    window_hours: float = Field(24.0, gt=0, description="attribution window after an exposure")


class Guardrails(Strict):
    latency_p99_ms: float = Field(250.0, gt=0)
    max_empty_rate: float = Field(0.01, ge=0, le=1)
    max_degraded_rate: float = Field(0.05, ge=0, le=1)


class MinimumDetectableEffect(Strict):
    relative: float = Field(0.1, gt=0, description="relative lift of the primary metric to detect")
    baseline: float = Field(gt=0, description="expected control value (a rate for conversion/ctr, a mean for revenue)")
    baseline_sd: float | None = Field(None, gt=0, description="expected standard deviation (revenue_per_user only)")
    alpha: float = Field(0.05, gt=0, lt=1)
    power: float = Field(0.8, gt=0, lt=1)


class ExperimentSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    description: str = ""
    salt: str = Field(min_length=8, max_length=128)
    start: dt.datetime
    end: dt.datetime
    traffic: Traffic = Traffic()
    control: str = Field(description="the variant the others are compared with")
    variants: tuple[Variant, ...] = Field(min_length=2)
    primary_metric: PrimaryMetric = PrimaryMetric()
    guardrails: Guardrails = Guardrails()
    mde: MinimumDetectableEffect
    pre_period_days: float = Field(30.0, ge=0, description="CUPED covariate: activity this long before the first exposure")

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: dt.datetime) -> dt.datetime:
        return v.replace(tzinfo=dt.timezone.utc) if v.tzinfo is None else v.astimezone(dt.timezone.utc)

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentSpec":
        if self.end <= self.start:
            raise ValueError(f"end: {self.end.isoformat()} is not after start {self.start.isoformat()}")
        total = sum(v.weight for v in self.variants)
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise ValueError(f"variants.weight: the weights {[v.weight for v in self.variants]} sum to {total:g}, "
                             f"not 1")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variants.name: duplicate variant names {names}")
        if self.control not in names:
            raise ValueError(f"control: {self.control!r} is not one of the variants {names}")
        if self.primary_metric.name == "revenue_per_user" and self.mde.baseline_sd is None:
            raise ValueError("mde.baseline_sd: needed to plan the sample size of revenue_per_user")
        if self.primary_metric.name != "revenue_per_user" and self.mde.baseline >= 1:
            raise ValueError(f"mde.baseline: {self.mde.baseline} must be a rate below 1 for "
                             f"{self.primary_metric.name}")
        return self

    # -------------------------------------------------------------------------------------------
    def running(self, now: dt.datetime) -> bool:
        return self.start <= now < self.end

    def overlaps(self, other: "ExperimentSpec") -> bool:
        """Both run at some common time and claim a common traffic range."""
        in_time = self.start < other.end and other.start < self.end
        in_traffic = self.traffic.offset < other.traffic.end and other.traffic.offset < self.traffic.end
        return in_time and in_traffic

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


def _format(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, (dict, list, tuple)) or value is None else f" (got {value!r})"
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}")
    return "; ".join(parts)


def parse_spec(data: Any, source: str = "<spec>") -> ExperimentSpec:
    """One spec from a mapping; ``ExperimentConfigError`` naming ``source`` and the field."""
    if not isinstance(data, dict):
        raise ExperimentConfigError(f"{source}: expected a mapping of experiment fields, got {type(data).__name__}")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as e:
        raise ExperimentConfigError(f"{source}: {_format(e)}") from None


def read_spec(path: str | Path) -> ExperimentSpec:
    """One spec from a YAML file (a Hydra ``experiment`` group file; a defaults list is ignored)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ExperimentConfigError(f"{path}: no such experiment file") from None
    except yaml.YAMLError as e:
        raise ExperimentConfigError(f"{path}: not valid YAML: {e}") from None
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "defaults"}
    return parse_spec(data, str(path))


def check_set(specs: Iterable[ExperimentSpec], known_bundles: Iterable[str] | None = None) -> list[ExperimentSpec]:
    """Checks across experiments: names and salts unique, no two overlapping in time and traffic, every
    variant bundle known (when ``known_bundles`` is given)."""
    specs = list(specs)
    known = None if known_bundles is None else set(known_bundles)
    seen_names: dict[str, ExperimentSpec] = {}
    seen_salts: dict[str, str] = {}
    for s in specs:
        if s.name in seen_names:
            raise ExperimentConfigError(f"experiment {s.name!r}: name: used by two experiments")
        seen_names[s.name] = s
        if s.salt in seen_salts:
            raise ExperimentConfigError(f"experiment {s.name!r}: salt: {s.salt!r} is already the salt of "
                                        f"experiment {seen_salts[s.salt]!r} (a reused salt makes assignments "
                                        f"correlated); choose a new one")
        seen_salts[s.salt] = s.name
        for i, v in enumerate(s.variants):
            if v.bundle is not None and known is not None and v.bundle not in known:
                raise ExperimentConfigError(f"experiment {s.name!r}: variants.{i}.bundle: unknown bundle version "
                                            f"{v.bundle!r} (known: {sorted(known)[-5:]})")
    for i, a in enumerate(specs):
        for b in specs[i + 1:]:
            if a.overlaps(b):
                raise ExperimentConfigError(
                    f"experiment {b.name!r}: traffic: [{b.traffic.offset:g}, {b.traffic.end:g}) overlaps "
                    f"[{a.traffic.offset:g}, {a.traffic.end:g}) of experiment {a.name!r} while both run "
                    f"({max(a.start, b.start).date()} to {min(a.end, b.end).date()}); give them disjoint "
                    f"traffic ranges or time windows")
    return specs


def load_specs(paths: Iterable[str | Path], known_bundles: Iterable[str] | None = None) -> list[ExperimentSpec]:
    """Read and check a set of experiment files (see ``check_set``)."""
    return check_set([read_spec(p) for p in paths], known_bundles)
