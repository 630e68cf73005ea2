"""One adapter per source format; a dataset is a small config naming its adapter and options.

``load_raw(data_cfg)`` dispatches on ``data_cfg.adapter``:

- ``table``: Parquet or CSV files with a column mapping (online_retail, taobao, movielens, events_csv,
  pairs_txt, completejourney transactions).
- ``seq_txt``: ``user item item ...`` lines (Amazon S3-Rec), optional ``*_item2attributes.json``.
- ``synthetic``: the seeded generator in ``features.synthetic``.
- ``hillstrom``: the Hillstrom e-mail experiment (a validated customer table, no events).
"""
from __future__ import annotations

from typing import Any, Callable

from features.adapters.base import DataConfigError, RawData


def _table(cfg: Any) -> RawData:
    from features.adapters.table import load_table_source

    return load_table_source(cfg)


def _seq_txt(cfg: Any) -> RawData:
    from features.adapters.seq_txt import load_seq_txt

    return load_seq_txt(cfg)


def _synthetic(cfg: Any) -> RawData:
    from features.synthetic import load_synthetic

    return load_synthetic(cfg)


def _hillstrom(cfg: Any) -> RawData:
    from features.adapters.hillstrom import load_hillstrom_raw

    return load_hillstrom_raw(cfg)


ADAPTERS: dict[str, Callable[[Any], RawData]] = {
    "table": _table,
    "seq_txt": _seq_txt,
    "synthetic": _synthetic,
    "hillstrom": _hillstrom,
}


def load_raw(data_cfg: Any) -> RawData:
    """Read the raw rows of the dataset described by ``data_cfg`` (the ``data`` config group)."""
    name = data_cfg.get("adapter")
    if name not in ADAPTERS:
        raise DataConfigError(f"data.adapter={name!r} is not one of {sorted(ADAPTERS)}")
    return ADAPTERS[name](data_cfg)


__all__ = ["ADAPTERS", "DataConfigError", "RawData", "load_raw"]
