"""Training and evaluation data for the retrieval models, held as whole tensors (no per-step workers).

A prepared dataset (``features.schema``) becomes:

- ``train_seqs [U, max_len + 1]``: each user's training sequence (item indices = item_id + 1, 0 = padding),
  left-padded; the model reads ``[:, :-1]`` and predicts ``[:, 1:]`` (every position is a target).
- two ``EvalSet``s (valid, test): the input sequence (train history, plus the valid item for test), the
  held-out target, and the full history (CSR) whose items are excluded from the ranking.

Batches are slices of these tensors taken on the tensors' own device (``SequenceDataModule.to``
moves everything to the GPU once), so an epoch costs a ``randperm`` and a few hundred index ops.

The module is a little over 400 lines on purpose: the tensors and the batch iterables that index them
(``TrainBatches`` packs loss positions from the same left-padded layout) change together.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from features.processed import load_items, load_split, load_users
from features.splits import SHOP, shop_targets
from features.user_features import UserFeatureConfig, UserFeatureSpec

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- tensors
def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["user_id", "ts", "src_row"], kind="stable")


def left_padded(users: np.ndarray, items: np.ndarray, width: int, rows: np.ndarray) -> np.ndarray:
    """Matrix ``[len(rows), width]``: for each user in ``rows`` their last ``width`` items (+1), left-padded.

    ``users``/``items`` are the events in order (user, time); ``rows`` the user ids wanted, one row each.
    """
    out = np.zeros((len(rows), width), dtype=np.int64)
    if len(users) == 0:
        return out
    row_of = np.full(int(max(users.max(), rows.max() if len(rows) else 0)) + 1, -1, dtype=np.int64)
    row_of[rows] = np.arange(len(rows))
    counts = np.bincount(users, minlength=len(row_of))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos_from_end = counts[users] - 1 - (np.arange(len(users)) - starts[users])
    keep = (pos_from_end < width) & (row_of[users] >= 0)
    out[row_of[users[keep]], width - 1 - pos_from_end[keep]] = items[keep] + 1
    return out


def windows(users: np.ndarray, items: np.ndarray, width: int, rows: np.ndarray,
            max_windows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Training rows of up to ``max_windows`` consecutive windows per user, and the user of each row.

    The first rows are ``left_padded(users, items, width, rows)`` (each user's last ``width`` items); window
    ``k`` is the last ``width`` items of the user's events before the last ``k * (width - 1)``, so every event
    of a long history is a target once (each window's first item is the one before its first target). A
    window needs at least two items. ``max_windows=1``: the last window only.
    """
    seqs, owners = [left_padded(users, items, width, rows)], [rows]
    if max_windows > 1 and len(users):
        counts = np.bincount(users, minlength=int(max(users.max(), rows.max() if len(rows) else 0)) + 1)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos = np.arange(len(users)) - starts[users]
        for k in range(1, max_windows):
            cut = k * (width - 1)
            more = rows[counts[rows] - cut >= 2]
            if not len(more):
                break
            m = pos < counts[users] - cut
            seqs.append(left_padded(users[m], items[m], width, more))
            owners.append(more)
    return np.vstack(seqs), np.concatenate(owners)


@dataclass
class EvalSet:
    """One evaluation split: input sequences, targets and the history to exclude (CSR over rows).

    ``rel_ptr``/``rel_items``: the relevant *set* of each row (CSR; the shop protocol's next basket(s));
    ``None`` when each row has one relevant item, ``targets``.
    """

    users: torch.Tensor        # [R] user ids
    inputs: torch.Tensor       # [R, max_len] item indices, left-padded
    targets: torch.Tensor      # [R] item indices (item_id + 1)
    hist_ptr: torch.Tensor     # [R + 1]
    hist_items: torch.Tensor   # [nnz] item indices of each row's history
    user_feat: torch.Tensor | None = None  # [R, F] user-feature codes (features.user_features), or None
    rel_ptr: torch.Tensor | None = None    # [R + 1] relevant sets (CSR), or None (one target per row)
    rel_items: torch.Tensor | None = None  # [nnz] their item indices

    def __len__(self) -> int:
        return len(self.users)

    def to(self, device) -> "EvalSet":
        move = {k: (None if v is None else v.to(device)) for k, v in vars(self).items()}
        return EvalSet(**move)

    @staticmethod
    def _take_csr(ptr: torch.Tensor, items: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lens = ptr[1:] - ptr[:-1]
        sel = lens[rows]
        new_ptr = torch.cat([torch.zeros(1, dtype=ptr.dtype, device=sel.device), torch.cumsum(sel, 0)])
        offs = torch.arange(int(new_ptr[-1]), device=sel.device) - torch.repeat_interleave(new_ptr[:-1], sel)
        return new_ptr, items[torch.repeat_interleave(ptr[:-1][rows], sel) + offs]

    def take(self, rows: torch.Tensor) -> "EvalSet":
        """The rows ``rows`` (increasing) as a new ``EvalSet`` (CSRs rebuilt)."""
        rows = rows.to(self.users.device)
        ptr, items = self._take_csr(self.hist_ptr, self.hist_items, rows)
        rel_ptr = rel_items = None
        if self.rel_ptr is not None:
            rel_ptr, rel_items = self._take_csr(self.rel_ptr, self.rel_items, rows)
        uf = None if self.user_feat is None else self.user_feat[rows]
        return EvalSet(self.users[rows], self.inputs[rows], self.targets[rows], ptr, items, uf, rel_ptr, rel_items)

    def user_feat_rows(self, start: int, stop: int) -> torch.Tensor | None:
        """User-feature codes of rows ``start:stop`` (None without user features)."""
        return None if self.user_feat is None else self.user_feat[start:stop]

    @staticmethod
    def _csr_coords(ptr: torch.Tensor, items: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(ptr[start]), int(ptr[stop])
        lens = ptr[start + 1: stop + 1] - ptr[start:stop]
        rows = torch.repeat_interleave(torch.arange(stop - start, device=lens.device), lens)
        return rows, items[a:b]

    def history_mask_coords(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in batch, item index) pairs of the history of rows ``start:stop``."""
        return self._csr_coords(self.hist_ptr, self.hist_items, start, stop)

    def relevant_coords(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in batch, item index) pairs of the relevant items of rows ``start:stop``."""
        if self.rel_ptr is None:
            return torch.arange(stop - start, device=self.targets.device), self.targets[start:stop]
        return self._csr_coords(self.rel_ptr, self.rel_items, start, stop)


def _eval_set(history: pd.DataFrame, held_out: pd.DataFrame, max_len: int, target_sets: bool = False) -> EvalSet:
    """Rows = the users of ``held_out``; one target each (their last held-out event), or with ``target_sets``
    every distinct held-out item of the user as the row's relevant set."""
    everything = held_out.sort_values("user_id", kind="stable")
    held_out = everything.drop_duplicates("user_id", keep="last")
    users = held_out["user_id"].to_numpy(np.int64).copy()
    history = _ordered(history[history["user_id"].isin(users)])
    hu, hi = history["user_id"].to_numpy(np.int64), history["item_id"].to_numpy(np.int64)
    inputs = left_padded(hu, hi, max_len, users)
    # CSR of the full history, rows in the order of `users` (sorted ids, history sorted by user too)
    counts = pd.Series(hu).value_counts().reindex(users, fill_value=0).to_numpy()
    ptr = np.concatenate([[0], np.cumsum(counts)])
    rel_ptr = rel_items = None
    if target_sets:
        rel = everything.drop_duplicates(["user_id", "item_id"]).sort_values(["user_id", "item_id"], kind="stable")
        n_rel = rel["user_id"].value_counts().reindex(users, fill_value=0).to_numpy()
        rel_ptr = torch.from_numpy(np.concatenate([[0], np.cumsum(n_rel)]).astype(np.int64))
        rel_items = torch.from_numpy(rel["item_id"].to_numpy(np.int64) + 1)
    return EvalSet(
        users=torch.from_numpy(users),
        inputs=torch.from_numpy(inputs),
        targets=torch.from_numpy(held_out["item_id"].to_numpy(np.int64) + 1),
        hist_ptr=torch.from_numpy(ptr.astype(np.int64)),
        hist_items=torch.from_numpy(hi + 1),
        rel_ptr=rel_ptr,
        rel_items=rel_items,
    )


def item_attribute_matrix(items: pd.DataFrame, n_items: int, max_attributes: int = 8) -> tuple[torch.Tensor, int]:
    """``[n_items + 1, A]`` attribute ids + 1 per item index (0 = none) and the attribute vocabulary size.

    At most ``max_attributes`` per item (the first ones listed) so that the padded matrix stays small.
    """
    attrs = items.set_index("item_id")["attributes"].reindex(range(n_items))
    lists = [list(a)[:max_attributes] if a is not None and not (isinstance(a, float)) else [] for a in attrs]
    width = max((len(a) for a in lists), default=0)
    mat = np.zeros((n_items + 1, max(width, 1)), dtype=np.int64)
    for i, a in enumerate(lists):
        if a:
            mat[i + 1, : len(a)] = np.asarray(a, dtype=np.int64) + 1
    return torch.from_numpy(mat), int(mat.max())


def item_category_codes(items: pd.DataFrame, n_items: int) -> torch.Tensor:
    """``[n_items]`` category code of each item column (``training.metrics.category_codes``; -1 = none)."""
    from training.metrics import category_codes

    cats = items.set_index("item_id")["category"].reindex(range(n_items)) if "category" in items else [None] * n_items
    return torch.from_numpy(category_codes(cats))


@dataclass
class SequenceData:
    """Everything a retrieval model trains and is evaluated on, as CPU tensors."""

    n_items: int
    n_users: int
    max_len: int
    train_seqs: torch.Tensor                 # [U, max_len + 1]
    train_users: torch.Tensor                # [U]
    valid: EvalSet
    test: EvalSet
    popularity: torch.Tensor                 # [n_items + 1] training counts per item index
    item_attributes: torch.Tensor | None = None
    n_attributes: int = 0
    info: dict = field(default_factory=dict)
    train_user_feat: torch.Tensor | None = None   # [U, F] user-feature codes of the training rows, or [U, L, F]
                                                  # (point in time: the codes as of each input position)
    user_features: UserFeatureSpec | None = None  # their spec (names, vocabularies, edges)
    item_category: torch.Tensor | None = None     # [n_items] category code per item column (-1 = none): diversity
    refit_seqs: torch.Tensor | None = None        # [U', max_len + 1]: sequences through the valid event (refit)

    def to(self, device) -> "SequenceData":
        for name in ("train_seqs", "train_users", "popularity", "item_attributes", "train_user_feat", "refit_seqs"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        self.valid, self.test = self.valid.to(device), self.test.to(device)
        return self


def shift_holdout(parts: dict[str, pd.DataFrame], shift: int) -> dict[str, pd.DataFrame]:
    """Leave-one-out moved ``shift`` events back: each user's test event is dropped, the valid event becomes
    the test target and the last training event the valid target (repeated ``shift`` times).

    With ``shift=1`` the "test" figures are figures on the real validation targets, from a model that never
    saw them: a way to choose what the usual validation cannot judge (for example how long to refit on the
    validation targets, ``training.refit``) without looking at a test target.
    """
    for _ in range(int(shift)):
        train = _ordered(parts["train"])
        last = ~train["user_id"].duplicated(keep="last")
        more = train["user_id"].map(train["user_id"].value_counts()) > 1   # keep at least one training event
        parts = {"train": train[~(last & more)], "valid": train[last & more], "test": parts["valid"]}
    return parts


def load_sequence_data(pdir: Path, max_len: int, split: str = "loo", use_attributes: bool = False,
                       max_users: int | None = None, max_attributes: int = 8,
                       user_features: UserFeatureConfig | None = None, shop_baskets: int = 1,
                       holdout_shift: int = 0, train_windows: int = 1) -> SequenceData:
    """Build ``SequenceData`` from a processed folder. ``max_users`` keeps the first N users (tests, smoke runs).

    ``split="shop"``: the temporal split's files, evaluated on the shop protocol (``features.splits``): each
    row's relevant set is the purchases of the user's next ``shop_baskets`` basket(s) after the cut-off,
    its history every event before the cut-off.

    With ``user_features.enabled`` the user-feature spec is fitted on the training part only; training rows
    and the valid split get the codes of the training part, the test split those of train + valid (what is
    known when the test period starts), with the same vocabularies and edges. With
    ``user_features.point_in_time`` every input position of a training row gets the codes as known right
    after that position's event instead (``UserFeatureSpec.transform_running``): no feature computed from
    the events the row is trained to predict.

    ``holdout_shift`` (loo only): evaluate one or more events earlier (``shift_holdout``).
    ``train_windows`` (> 1): a history longer than ``max_len`` also trains on up to this many earlier
    windows of ``max_len`` targets (``windows``), the refit sequences too; 1 = the last window only.
    ``refit_seqs`` holds each user's sequence through the validation event (``training.refit`` trains on it).
    """
    if max_len <= 0:
        raise ValueError(f"model.max_len must be > 0, got {max_len}")
    if split not in ("loo", "temporal", SHOP):
        raise ValueError(f"eval.split must be 'loo', 'temporal' or '{SHOP}', got {split!r}")
    items = load_items(pdir)
    n_items = int(items["item_id"].max()) + 1 if len(items) else 0
    if n_items == 0:
        raise ValueError(f"no items in {pdir / 'items.parquet'}")
    parts = {p: load_split(pdir, "temporal" if split == SHOP else split, p) for p in ("train", "valid", "test")}
    if max_users is not None:
        parts = {p: df[df["user_id"] < max_users] for p, df in parts.items()}
    if holdout_shift:
        if split != "loo" or holdout_shift < 0:
            raise ValueError(f"trainer.eval.holdout_shift={holdout_shift}: needs eval.split=loo and a value >= 0")
        parts = shift_holdout(parts, holdout_shift)
    train = _ordered(parts["train"])
    tu, ti = train["user_id"].to_numpy(np.int64), train["item_id"].to_numpy(np.int64)
    if train_windows < 1:
        raise ValueError(f"model.train_windows must be >= 1, got {train_windows}")
    seqs, users = windows(tu, ti, max_len + 1, np.unique(tu), train_windows)
    has_target = (seqs[:, :-1] > 0).any(1) & (seqs[:, 1:] > 0).any(1)
    seqs, users = seqs[has_target], users[has_target]
    pop = np.bincount(ti + 1, minlength=n_items + 1).astype(np.float32)
    attrs, n_attr = None, 0
    if use_attributes:
        attrs, n_attr = item_attribute_matrix(items, n_items, max_attributes)
        if n_attr == 0:
            raise ValueError(
                f"model.use_attributes=true but the items of {pdir.name} have no attributes "
                f"(items.parquet column 'attributes' is empty): set model.use_attributes=false"
            )
    before_test = pd.concat([train, parts["valid"]])
    bt = _ordered(before_test)
    bu, bi = bt["user_id"].to_numpy(np.int64), bt["item_id"].to_numpy(np.int64)
    refit_seqs, _ = windows(bu, bi, max_len + 1, np.unique(bu), train_windows)
    refit_seqs = refit_seqs[(refit_seqs[:, :-1] > 0).any(1) & (refit_seqs[:, 1:] > 0).any(1)]
    if split == SHOP:   # relevant sets: the purchases of each user's next basket(s) after the cut-off
        valid = _eval_set(train, shop_targets(train, parts["valid"], shop_baskets), max_len, target_sets=True)
        test = _eval_set(before_test, shop_targets(before_test, parts["test"], shop_baskets), max_len, target_sets=True)
    else:
        valid = _eval_set(train, parts["valid"], max_len)
        test = _eval_set(before_test, parts["test"], max_len)
    all_users = pd.concat([df["user_id"] for df in parts.values()])
    n_users = int(all_users.max()) + 1 if len(all_users) else 0
    data = SequenceData(
        n_items=n_items, n_users=n_users, max_len=max_len,
        train_seqs=torch.from_numpy(seqs), train_users=torch.from_numpy(users),
        valid=valid, test=test, popularity=torch.from_numpy(pop),
        item_attributes=attrs, n_attributes=n_attr, item_category=item_category_codes(items, n_items),
        refit_seqs=torch.from_numpy(refit_seqs),
        info={"split": split, "holdout_shift": int(holdout_shift), "train_events": int(len(train)), "train_sequences": int(len(seqs)),
              "valid_users": len(valid), "test_users": len(test), "n_items": n_items},
    )
    if user_features is not None and user_features.enabled:
        people = load_users(pdir)
        spec = UserFeatureSpec.fit(train, people, items, user_features)
        before_test = spec.transform(train, people, items, n_users)
        before_test_end = spec.transform(pd.concat([train, parts["valid"]]), people, items, n_users)
        data.user_features = spec
        if user_features.point_in_time:
            rows_at = windows(tu, np.arange(len(tu)), max_len + 1, np.unique(tu), train_windows)[0][has_target]
            event_at = rows_at[:, :-1]  # train row of each input + 1 (0 = pad)
            running = np.vstack([np.zeros((1, len(spec.names)), np.int64), spec.transform_running(train, people, items)])
            data.train_user_feat = torch.from_numpy(running[event_at])  # [U, L, F]
        else:
            data.train_user_feat = torch.from_numpy(before_test[users])
        data.valid.user_feat = torch.from_numpy(before_test[valid.users.numpy()])
        data.test.user_feat = torch.from_numpy(before_test_end[test.users.numpy()])
        data.info["user_features"] = list(spec.names)
    return data


# --------------------------------------------------------------------------- batch iterables
class TrainBatches:
    """Shuffled mini-batches of rows of on-device tensors; deterministic per (seed, epoch).

    Under DDP each rank takes every ``world_size``-th batch of the same permutation.

    ``pack``: the name of a left-padded sequence tensor ``[N, W + 1]`` (0 = padding) whose targets
    ``[:, 1:]`` the loss reads. Each batch then also carries ``"target_rows"``: the flat positions of its
    non-padding targets in the batch's ``[B, W]`` target matrix, computed on the CPU for the whole epoch
    and moved to the device once per epoch. The loss picks those rows only (a sequence of 6 items in a
    window of 50 costs 6 rows of the item softmax, not 50) with shapes known in advance: no per-step
    GPU->CPU sync, which a boolean mask would cost.

    ``group_by_length`` (> 0, with ``pack``): batches of sequences of similar length. The epoch's permutation
    is cut into runs of ``group_by_length`` batches; each run is sorted by sequence length and cut into
    batches, and the batches are shuffled. Each batch keeps only the columns its longest sequence fills
    (``W`` becomes that length; a ``[N, W, ...]`` tensor such as per-position user features is cut alike), so
    the encoder skips the padding: on Amazon Toys 13 % of the 50 positions are items. The model's outputs at
    the real positions are unchanged (positions are right-aligned and padding keys are masked). So that the
    epoch's objective stays the mean over every target position (a batch of short sequences has fewer of
    them), each batch carries ``"loss_scale"``: its target count over the epoch's mean per batch.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, seed: int, pack: str | None = None,
                 group_by_length: int = 0) -> None:
        self.tensors, self.batch_size, self.seed = tensors, batch_size, seed
        self.epoch, self.rank, self.world = 0, 0, 1
        self.pack, self.pack_counts, self.pack_width = pack, None, 0
        if group_by_length < 0 or (group_by_length and pack is None):
            raise ValueError(f"group_by_length must be >= 0 and needs a packed sequence tensor, got {group_by_length}")
        self.group_by_length = int(group_by_length)
        if pack is not None:
            real = tensors[pack][:, 1:].cpu() > 0
            counts, width = real.sum(1), real.shape[1]
            if not torch.equal(torch.arange(width).unsqueeze(0) >= (width - counts).unsqueeze(1), real):
                raise ValueError(f"TrainBatches(pack={pack!r}): sequences must be left-padded (padding 0 only "
                                 "before the first item)")
            self.pack_counts, self.pack_width = counts, width

    def __len__(self) -> int:
        n = len(next(iter(self.tensors.values())))
        return max(1, -(-n // self.batch_size) // self.world)

    def _batch_rows(self, perm: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        """The row indices (CPU) of every batch of the epoch, in order."""
        size = self.batch_size
        if not self.group_by_length:
            return [perm[b: b + size] for b in range(0, len(perm), size)]
        run = size * self.group_by_length
        batches = []
        for start in range(0, len(perm), run):
            rows = perm[start: start + run]
            rows = rows[torch.sort(self.pack_counts[rows], descending=True, stable=True).indices]
            batches += [rows[b: b + size] for b in range(0, len(rows), size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def _width(self, rows: torch.Tensor) -> int:
        """Target columns a batch keeps: all of them, or (grouped) as many as its longest sequence fills."""
        if not self.group_by_length:
            return self.pack_width
        return max(1, int(self.pack_counts[rows].max()))

    def _target_rows(self, batches: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """Flat target positions of every batch in ``batches`` (CPU), concatenated, and their offsets."""
        parts, offsets = [], [0]
        for rows in batches:
            n, width = self.pack_counts[rows], self._width(rows)
            real = torch.arange(width).unsqueeze(0) >= (width - n).unsqueeze(1)   # left-padded: the last n columns
            parts.append(torch.nonzero(real.reshape(-1)).squeeze(1))
            offsets.append(offsets[-1] + len(parts[-1]))
        return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)), offsets

    def _take(self, name: str, value: torch.Tensor, idx: torch.Tensor, width: int) -> torch.Tensor:
        if width < self.pack_width:
            if name == self.pack:
                return value[idx, -(width + 1):]
            if value.dim() >= 3 and value.shape[1] == self.pack_width:    # one entry per input position
                return value[idx, -width:]
        return value[idx]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        first = next(iter(self.tensors.values()))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm_cpu = torch.randperm(len(first), generator=g)
        self.epoch += 1
        batches = self._batch_rows(perm_cpu, g)
        bounds = np.cumsum([0] + [len(rows) for rows in batches]).tolist()
        order = torch.cat(batches).to(first.device)          # one copy per epoch, sliced per batch (no sync)
        mine = [b for b in range(self.rank, len(self) * self.world, self.world) if b < len(batches)]
        flat, offsets, scale = None, None, None
        if self.pack_counts is not None:
            flat, offsets = self._target_rows([batches[b] for b in mine])
            flat = flat.to(first.device)
        if self.group_by_length:
            counts = torch.stack([self.pack_counts[rows].sum() for rows in batches]).double()
            scale = (counts / counts.mean()).float().to(first.device)
        for j, b in enumerate(mine):
            idx = order[bounds[b]: bounds[b + 1]]
            width = self._width(batches[b]) if self.pack_counts is not None else 0
            batch = {k: self._take(k, v, idx, width) for k, v in self.tensors.items()}
            if flat is not None:
                batch["target_rows"] = flat[offsets[j]: offsets[j + 1]]
            if scale is not None:
                batch["loss_scale"] = scale[b]
            yield batch


class EvalBatches:
    """Consecutive row ranges of an ``EvalSet``: ``{"start", "stop", "inputs", "targets", "users"}`` (+ ``user_feat``)."""

    def __init__(self, data: EvalSet, batch_size: int) -> None:
        self.data, self.batch_size = data, batch_size

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.data), self.batch_size):
            stop = min(start + self.batch_size, len(self.data))
            batch = {"start": start, "stop": stop, "inputs": self.data.inputs[start:stop],
                     "targets": self.data.targets[start:stop], "users": self.data.users[start:stop]}
            if self.data.user_feat is not None:
                batch["user_feat"] = self.data.user_feat[start:stop]
            yield batch


class SequenceDataModule(pl.LightningDataModule):
    """Serves ``SequenceData`` batches; call ``to(device)`` once (the LightningModule does, at fit start)."""

    def __init__(self, data: SequenceData, batch_size: int, eval_batch_size: int, seed: int,
                 valid_max_users: int | None = None, group_by_length: int = 0) -> None:
        super().__init__()
        self.data, self.batch_size, self.eval_batch_size, self.seed = data, batch_size, eval_batch_size, seed
        self.group_by_length = int(group_by_length)
        self._refit = False
        self._train = TrainBatches(self._tensors(), batch_size, seed, pack="seqs", group_by_length=self.group_by_length)
        # per-epoch validation (early stopping, checkpoints) on a fixed seeded subset of the valid users when
        # valid_max_users is set (cheap validation); the final valid/test metrics always use every user
        self._valid_rows = None
        if valid_max_users is not None and 0 < int(valid_max_users) < len(data.valid):
            g = torch.Generator().manual_seed(seed)
            self._valid_rows = torch.sort(torch.randperm(len(data.valid), generator=g)[: int(valid_max_users)]).values
        self.valid_epoch = self._valid_view()

    def _valid_view(self) -> EvalSet:
        return self.data.valid if self._valid_rows is None else self.data.valid.take(self._valid_rows)

    def _tensors(self) -> dict[str, torch.Tensor]:
        if self._refit:
            return {"seqs": self.data.refit_seqs}
        out = {"seqs": self.data.train_seqs}
        if self.data.train_user_feat is not None:
            out["user_feat"] = self.data.train_user_feat
        return out

    def to(self, device) -> None:
        self.data.to(device)
        self._train.tensors = self._tensors()
        self.valid_epoch = self._valid_view()

    def use_refit_data(self, through_validation: bool = True) -> None:
        """Train from now on on the sequences through each user's validation event (``training.refit``);
        ``through_validation=False``: on the training sequences again, in the refit's batch order (its control)."""
        if self.data.train_user_feat is not None or self.data.refit_seqs is None:
            raise ValueError("model.refit_epochs > 0 needs a sequence model without user features")
        self._refit = bool(through_validation)
        self._train = TrainBatches(self._tensors(), self.batch_size, self.seed + 1, pack="seqs",
                                   group_by_length=self.group_by_length)

    def use_full_validation(self) -> None:
        """Validate on every valid user from now on (the final validation after fitting)."""
        self._valid_rows = None
        self.valid_epoch = self._valid_view()

    def set_epoch(self, epoch: int, rank: int = 0, world: int = 1) -> None:
        self._train.epoch, self._train.rank, self._train.world = epoch, rank, world

    def train_dataloader(self):
        # Under DDP each rank takes every world_size-th batch: set the shard before Lightning reads len() (the
        # number of batches per epoch, which decides when validation runs), not only at epoch start.
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            self._train.rank, self._train.world = trainer.global_rank, trainer.world_size
        return self._train

    def val_dataloader(self):
        return EvalBatches(self.valid_epoch, self.eval_batch_size)

    def test_dataloader(self):
        return EvalBatches(self.data.test, self.eval_batch_size)


def price_buckets(items: pd.DataFrame, n_items: int, n_buckets: int) -> tuple[torch.Tensor | None, int]:
    """Quantile bucket (1..n) of each item's median price per item index (0 = unknown), and the bucket count.

    ``(None, 0)`` when ``n_buckets`` is 0 or the data has no prices.
    """
    if n_buckets <= 0 or "price_median" not in items or items["price_median"].notna().sum() == 0:
        return None, 0
    price = items.set_index("item_id")["price_median"].reindex(range(n_items)).to_numpy(dtype=np.float64)
    known = ~np.isnan(price)
    edges = np.unique(np.quantile(price[known], np.linspace(0, 1, n_buckets + 1)[1:-1]))
    out = np.zeros(n_items + 1, dtype=np.int64)
    out[1:][known] = np.searchsorted(edges, price[known], side="right") + 1
    return torch.from_numpy(out), int(len(edges) + 1)
