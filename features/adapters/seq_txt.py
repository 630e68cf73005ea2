"""The ``seq_txt`` adapter: one line per user, ``user_id item_1 item_2 ...`` in chronological order.

This is the S3-Rec format of the Amazon files; any file of that format works
(``data=seq_txt data.path=FILE``, optional ``data.attributes=FILE``). There is no time: ``ts`` is the
order position (time kind ``order``). Each (user, item) token is one input row; a line with a user
and no item is one rejected row (``malformed_row``).

``data.attributes`` is a JSON object ``{"item_id": [attribute ids]}`` (``*_item2attributes.json``);
attributes become ``items.attributes`` and the first attribute that is not shared by more than
``data.category_max_share`` of the items becomes the readable ``category`` (``attr_<id>``): the files
carry no attribute names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.adapters.base import DataConfigError, RawData, empty_quarantine
from features.privacy import pseudonymise_one


def read_attributes(path: Path, max_share: float) -> pd.DataFrame:
    """Items side table from an item→attributes JSON: ``key``, ``attributes`` (list[int]), ``category``."""
    if not path.exists():
        raise DataConfigError(f"attributes file not found: {path}")
    try:
        mapping = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataConfigError(f"cannot read attributes file {path}: {e}") from e
    if not isinstance(mapping, dict):
        raise DataConfigError(f"{path}: expected a JSON object item -> [attribute ids]")
    keys = list(mapping)
    attrs = [[int(a) for a in mapping[k]] for k in keys]
    counts: dict[int, int] = {}
    for lst in attrs:
        for a in set(lst):
            counts[a] = counts.get(a, 0) + 1
    limit = max_share * max(len(keys), 1)
    category = [next((f"attr_{a}" for a in lst if counts[a] <= limit), None) for lst in attrs]
    return pd.DataFrame({"key": keys, "attributes": attrs, "category": category})


def load_seq_txt(cfg: Any) -> RawData:
    if not cfg.get("path"):
        raise DataConfigError("data.path is not set (give data.path=FILE of 'user item item ...' lines)")
    path = Path(str(cfg.path))
    if not path.exists():
        raise DataConfigError(f"input file not found: {path}")
    try:
        encoding = str(cfg.get("encoding", "utf8"))
        utf8 = encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")
        lines = path.read_text(encoding="utf-8-sig" if utf8 else encoding).splitlines()  # a byte-order mark is no id
    except (OSError, UnicodeDecodeError) as e:
        raise DataConfigError(f"cannot read {path}: {e}") from e
    users, items, bad = [], [], []
    for n, line in enumerate(lines, start=1):
        toks = line.split()
        if not toks:
            continue
        if len(toks) < 2:
            bad.append((n, line))
            continue
        users.append(np.full(len(toks) - 1, toks[0], dtype=object))
        items.append(toks[1:])
    user = np.concatenate(users) if users else np.array([], dtype=object)
    item = np.concatenate([np.asarray(t, dtype=object) for t in items]) if items else np.array([], dtype=object)
    n_tokens = len(user)
    # Global position of every token row; a rejected line counts as one input row at the end.
    src_row = np.arange(n_tokens, dtype=np.int64)
    line_no = np.repeat(
        np.array([n for n, l in enumerate(lines, start=1) if len(l.split()) >= 2], dtype=np.int64),
        [len(t) for t in items],
    ) if items else np.array([], dtype=np.int64)
    frame = pd.DataFrame({
        "src_file": np.int16(0),
        "src_row": src_row,
        "file_row": line_no,
        "user": pd.array(user, dtype="str"),
        "item": pd.array(item, dtype="str"),
    })
    rejected = empty_quarantine()
    if bad:
        rejected = pd.DataFrame({
            "src_file": path.name,
            "src_row": n_tokens + np.arange(len(bad), dtype=np.int64),
            "reason": "malformed_row",
            "message": [f"{path.name} line {n}: a user with no items" for n, _ in bad],
            "raw": ["pseudo:" + pseudonymise_one(t.split()[0]) for _, t in bad],  # the user, alone on its line
        })
    items_side = None
    if cfg.get("attributes"):
        items_side = read_attributes(Path(str(cfg.attributes)), float(cfg.get("category_max_share", 0.5)))
    return RawData(frame=frame, files=[path.name], n_input_rows=n_tokens + len(bad), time_kind="order",
                   rejected=rejected, items=items_side)
