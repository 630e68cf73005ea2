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
import time
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


class Assigner:
    """``assign`` over a fixed set of specs, with their windows, ranges and weights precomputed (this
    runs on every request)."""

    def __init__(self, specs: Sequence[ExperimentSpec]):
        self.specs = list(specs)
        self._plan = []
        for spec in self.specs:
            cum, acc = [], 0.0
            for v in spec.variants:
                acc += v.weight
                cum.append(acc)
            self._plan.append((spec.start.timestamp(), spec.end.timestamp(), spec.traffic.offset, spec.traffic.end,
                               spec.salt, cum, [v.name for v in spec.variants], spec))

    def assign(self, unit: str, now: float | None = None) -> Assignment | None:
        """The experiment and variant of ``unit`` at ``now`` (epoch seconds), or None."""
        if not self._plan:
            return None
        now = time.time() if now is None else now
        t = None
        for start, end, lo, hi, salt, cum, names, spec in self._plan:
            if not start <= now < end:
                continue
            if t is None and (lo > 0 or hi < 1):  # an experiment on all traffic needs no traffic hash
                t = position(unit, TRAFFIC_SALT)
            if t is None or lo <= t < hi:
                u = position(unit, salt)
                i = next((j for j, c in enumerate(cum) if u < c), len(cum) - 1)
                return Assignment(spec.name, names[i], spec, unit)
        return None


def assign(specs: Sequence[ExperimentSpec], unit: str, now: dt.datetime | None = None) -> Assignment | None:
    """The experiment and variant of ``unit`` at ``now`` (UTC), or None when it is in no experiment."""
    return Assigner(specs).assign(unit, None if now is None else now.timestamp())
