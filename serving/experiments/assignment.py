"""Who sees which variant: deterministic hashing of the unit key with the experiment's salt.

The unit is the pseudonymised user key, or, for an anonymous visitor, the pseudonymised session /
device id the request carries (``session_id``). ``position(unit, salt)`` is the first 8 bytes of
``sha256(salt + "\\x1f" + unit)`` over 2**64: a uniform number in [0, 1) that depends on nothing but
the two strings, so every replica, every restart and the offline readout agree on it, and two salts
give independent positions (a property of the hash, checked in the tests).

``assign(specs, unit, now)``: the experiment whose traffic range holds ``position(unit,
TRAFFIC_SALT)`` among those running at ``now`` (at most one: ``spec.check_set`` forbids overlaps),
then the variant whose cumulative weight range holds ``position(unit, spec.salt)``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Sequence

from serving.experiments.spec import ExperimentSpec, Variant

TRAFFIC_SALT = "shoprec-experiment-traffic"
_SCALE = float(1 << 64)


def position(unit: str, salt: str) -> float:
    """A uniform, deterministic number in [0, 1) for ``unit`` under ``salt``."""
    digest = hashlib.sha256(f"{salt}\x1f{unit}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def pick_variant(variants: Sequence[Variant], u: float) -> Variant:
    """The variant whose cumulative weight range holds ``u`` (the last one takes rounding leftovers)."""
    acc = 0.0
    for v in variants:
        acc += v.weight
        if u < acc:
            return v
    return variants[-1]


def variant_of(spec: ExperimentSpec, unit: str) -> Variant:
    """The variant of ``unit`` in ``spec`` (ignoring time and traffic share)."""
    return pick_variant(spec.variants, position(unit, spec.salt))


@dataclass(frozen=True)
class Assignment:
    experiment: str
    variant: str
    spec: ExperimentSpec
    unit: str


def assign(specs: Sequence[ExperimentSpec], unit: str, now: dt.datetime | None = None) -> Assignment | None:
    """The experiment and variant of ``unit`` at ``now`` (UTC), or None when it is in no experiment."""
    if not specs:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    t = None
    for spec in specs:
        if not spec.running(now):
            continue
        if t is None:
            t = position(unit, TRAFFIC_SALT)
        if spec.traffic.offset <= t < spec.traffic.end:
            return Assignment(spec.name, variant_of(spec, unit).name, spec, unit)
    return None
