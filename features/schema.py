"""The canonical schema: one typed definition of every table that later stages read.

A prepared dataset lives in ``<artifacts>/processed/<name>/``:

- ``events.parquet``   one row per interaction, columns ``EVENT_COLUMNS``, sorted by
  (``user_id``, ``ts``, ``src_row``). ``user_id``/``item_id`` are dense ints from 0: ``user_id`` in the
  order of the pseudonymised ``user_key`` (a dense id reveals nothing about the raw customer id),
  ``item_id`` in the natural order of the item keys (numeric order when every key is a number).
  ``ts`` is UTC; where the source has no time it is an order position
  (``1970-01-01 + position seconds``) and the manifest says ``"time_kind": "order"``.
  ``src_row`` is the row's 0-based position over all input rows (files in config order): a stable
  tie-breaker for equal timestamps (e.g. the lines of one invoice).
  Return events (``event == "return"``, e.g. Online Retail ``C`` invoices) stay in the events table
  with a *positive* ``quantity`` (the quantity returned) and their ``order_id``; ``price`` is the
  unit price. ``rating`` holds explicit ratings (MovieLens 100K) and is null elsewhere.
- ``items.parquet``    ``item_id``, ``item_key`` (original key, str), ``category`` (str or null),
  ``attributes`` (list<int32> of attribute ids, possibly empty), ``price_mean``, ``price_median``
  (over non-return events; null where the data has no prices), ``n_events``, plus source
  columns such as ``title`` (most frequent description), ``department``, ``brand``.
- ``users.parquet``    ``user_id``, ``user_key`` (pseudonymised original key: hex keyed hash), plus
  source attributes (e.g. ``country``, ``age``, ``gender``) where the source has them, and
  ``n_events``. Rows without a user (Online Retail guests) never reach this table.
- ``quarantine.parquet`` ``src_file``, ``src_row``, ``reason``, ``message``, ``raw`` (the row as text;
  every field that may hold the user id pseudonymised, see ``features.quarantine.mask_line``).
  ``message`` gives the 1-based row number inside ``src_file`` and the source column.
- ``splits/loo/{train,valid,test}.parquet`` and ``splits/temporal/{train,valid,test}.parquet``: the
  events table cut in three (same columns). Leave-one-out: per user by (ts, src_row), the last
  *target* event = test, the second-to-last = valid, every event (of any type) before the valid
  one = train; events after the valid one that are not the test event (e.g. a later return) are in
  no part (manifest ``splits.loo.excluded``). Target types come from ``data.splits.loo.target_events``
  (null = every event; Online Retail and synthetic: ``[purchase]``, so returns and views are inputs
  in train but never labels). Users with < 3 target events keep everything in train.
  Temporal: global cut-off dates from ``data.splits.temporal`` (train < valid_start <= valid <
  test_start <= test), every event type in each part; not written where ``time_kind`` is
  ``order`` (``load_split`` then raises).
- ``tables/<name>.parquet`` (optional) validated side tables (Complete Journey campaigns, coupons,
  demographics...; Hillstrom), customer ids replaced by ``user_key``; rejected rows in
  ``tables/quarantine.parquet``. Read with ``features.processed.load_table``.
- ``manifest.json``    counts, config, hashes, code version (see ``features.artifacts``) and
  ``pseudo_key_fingerprint``, the fingerprint of the pseudonymisation key (``features.privacy``).

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
