"""The canonical schema: one typed definition of every table that later stages read.

A prepared dataset lives in ``<artifacts>/processed/<name>/``:

- ``events.parquet``   one row per interaction, columns ``EVENT_COLUMNS``, sorted by
  (``user_id``, ``ts``, ``src_row``). ``user_id``/``item_id`` are dense ints from 0.
  ``ts`` is UTC; where the source has no time it is an order position
  (``1970-01-01 + position seconds``) and the manifest says ``"time_kind": "order"``.
- ``items.parquet``    ``item_id``, ``item_key`` (original key, str), ``category`` (str or null),
  ``attributes`` (list<int32> of attribute ids, possibly empty), ``price_mean``, ``price_median``
  (null where the data has no prices), ``n_events``.
- ``users.parquet``    ``user_id``, ``user_key`` (pseudonymised original key: hex keyed hash), plus
  source attributes (e.g. ``country``, ``age``, ``gender``) where the source has them.
- ``quarantine.parquet`` ``src_file``, ``src_row``, ``reason``, ``message``, ``raw`` (the row as text).
- ``splits/loo/{train,valid,test}.parquet`` and ``splits/temporal/{train,valid,test}.parquet``: the
  events table cut in three (same columns). Leave-one-out: per user by time, last event = test,
  second-to-last = valid, rest = train (users with < 3 events keep everything in train).
  Temporal: global cut-off dates from config.
- ``manifest.json``    counts, config, hashes, code version (see ``features.artifacts``).

Sequence models read ``splits/loo`` and build per-user item sequences ordered by ``ts`` then ``src_row``.
"""
from __future__ import annotations

import pyarrow as pa

# Event types. Sources map their own codes onto these.
EVENT_TYPES = ("view", "click", "cart", "fav", "purchase", "return", "rating", "search")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("price", pa.float64()),
        pa.field("quantity", pa.int64()),
        pa.field("session_id", pa.string()),
        pa.field("order_id", pa.string()),
        pa.field("src_row", pa.int64(), nullable=False),
        pa.field("rating", pa.float64()),  # explicit rating (MovieLens); null elsewhere
    ]
)
EVENT_COLUMNS = tuple(EVENT_SCHEMA.names)

ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("item_key", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("attributes", pa.list_(pa.int32())),
        pa.field("price_mean", pa.float64()),
        pa.field("price_median", pa.float64()),
        pa.field("n_events", pa.int64()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("src_file", pa.string()),
        pa.field("src_row", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("message", pa.string()),
        pa.field("raw", pa.string()),
    ]
)

SPLIT_NAMES = ("train", "valid", "test")
SPLIT_KINDS = ("loo", "temporal")
