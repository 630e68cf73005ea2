"""Sequence tensors and evaluation sets built from the processed layout."""
import numpy as np
import pandas as pd
import pytest
import torch

from training.data import TrainBatches, left_padded, load_sequence_data, price_buckets, shift_holdout, windows


def test_left_padded_keeps_last_items_most_recent_last():
    users = np.array([0, 0, 0, 1, 2, 2])
    items = np.array([5, 6, 7, 8, 9, 10])
    m = left_padded(users, items, 2, np.array([0, 1, 2]))
    assert m.tolist() == [[7, 8], [0, 9], [10, 11]]        # item_id + 1, 0 = padding


def test_eval_sets_history_and_inputs(tiny_artifacts):
    d = load_sequence_data(tiny_artifacts / "processed" / "tiny", max_len=5)
    train = pd.read_parquet(tiny_artifacts / "processed/tiny/splits/loo/train.parquet")
    valid = pd.read_parquet(tiny_artifacts / "processed/tiny/splits/loo/valid.parquet")
    u = int(d.valid.users[3])
    hist = train[train.user_id == u].sort_values("ts")["item_id"].to_numpy() + 1
    row = d.valid.inputs[3].numpy()
    assert row[row > 0].tolist() == hist[-5:].tolist()
    a, b = int(d.valid.hist_ptr[3]), int(d.valid.hist_ptr[4])
    assert sorted(d.valid.hist_items[a:b].tolist()) == sorted(hist.tolist())
    # test inputs end with the valid item
    i = int((d.test.users == u).nonzero()[0, 0])
    assert int(d.test.inputs[i, -1]) == int(valid[valid.user_id == u]["item_id"].iloc[0]) + 1
    assert d.train_seqs.shape[1] == 6
    assert d.popularity[0] == 0 and d.popularity.sum() == len(train)


def test_holdout_shift_moves_every_split_one_event_back_and_never_shows_the_test_event(tiny_artifacts):
    pdir = tiny_artifacts / "processed" / "tiny"
    d = load_sequence_data(pdir, max_len=50)
    s = load_sequence_data(pdir, max_len=50, holdout_shift=1)
    # the shifted "test" targets are the real validation targets, with inputs = the training history
    assert torch.equal(s.test.users, d.valid.users) and torch.equal(s.test.targets, d.valid.targets)
    assert torch.equal(s.test.inputs, d.valid.inputs)
    # the shifted validation target of a user is their last training event; their training rows end before it
    u = int(s.valid.users[0])
    train = pd.read_parquet(pdir / "splits/loo/train.parquet")
    events = train[train.user_id == u].sort_values(["ts", "src_row"])["item_id"].to_numpy() + 1
    assert int(s.valid.targets[0]) == events[-1] and int(s.valid.inputs[0, -1]) == events[-2]
    row = int((s.train_users == u).nonzero()[0, 0])
    seq = s.train_seqs[row]
    assert seq[seq > 0].tolist() == events[:-1][-51:].tolist()
    # the shifted refit row ends with the shifted validation event: no real validation or test event in it
    users = sorted(train["user_id"].unique())
    refit = s.refit_seqs[users.index(u)]
    assert refit[refit > 0].tolist() == events[-51:].tolist()
    assert s.info["holdout_shift"] == 1 and s.info["train_events"] == d.info["train_events"] - len(s.valid)


def test_shift_holdout_keeps_one_training_event_per_user():
    parts = {"train": pd.DataFrame({"user_id": [0, 1, 1], "item_id": [5, 6, 7], "ts": [1, 1, 2], "src_row": [0, 1, 2]}),
             "valid": pd.DataFrame({"user_id": [0, 1], "item_id": [8, 9], "ts": [3, 3], "src_row": [3, 4]}),
             "test": pd.DataFrame({"user_id": [0, 1], "item_id": [10, 11], "ts": [4, 4], "src_row": [5, 6]})}
    out = shift_holdout(parts, 1)
    assert out["train"]["item_id"].tolist() == [5, 6] and out["valid"]["item_id"].tolist() == [7]
    assert out["test"]["item_id"].tolist() == [8, 9]


def test_windows_make_every_event_of_a_long_history_a_target_once():
    users = np.array([0] * 9 + [1] * 3 + [2])
    items = np.arange(13)
    seqs, owners = windows(users, items, 4, np.array([0, 1, 2]), max_windows=5)
    assert seqs[:3].tolist() == left_padded(users, items, 4, np.array([0, 1, 2])).tolist()   # the last window first
    # user 0 (items 1..9 stored +1): windows of 4 items, 3 targets each, overlapping by one input item
    assert seqs[3:].tolist() == [[3, 4, 5, 6], [0, 1, 2, 3]] and owners.tolist() == [0, 1, 2, 0, 0]
    targets = [t for s, o in zip(seqs, owners) if o == 0 for t in s[1:] if t > 0]
    assert sorted(targets) == list(range(1, 10))   # each item a target once (the first from padding, as without windows)
    assert windows(users, items, 4, np.array([0, 1, 2]), max_windows=2)[0].shape == (4, 4)
    assert windows(users, items, 4, np.array([0, 1, 2]))[0].tolist() == seqs[:3].tolist()


def test_train_windows_add_rows_for_long_histories_only(tiny_artifacts):
    pdir = tiny_artifacts / "processed" / "tiny"
    one, more = load_sequence_data(pdir, max_len=3), load_sequence_data(pdir, max_len=3, train_windows=4)
    assert torch.equal(more.train_seqs[: len(one.train_seqs)], one.train_seqs)
    assert len(more.train_seqs) > len(one.train_seqs) and len(more.train_users) == len(more.train_seqs)
    assert len(more.refit_seqs) > len(one.refit_seqs)
    assert torch.equal(more.valid.inputs, one.valid.inputs) and torch.equal(more.test.inputs, one.test.inputs)
    with pytest.raises(ValueError, match="model.train_windows"):
        load_sequence_data(pdir, max_len=3, train_windows=0)


def test_refit_sequences_are_the_histories_through_the_validation_event(tiny_artifacts):
    pdir = tiny_artifacts / "processed" / "tiny"
    d = load_sequence_data(pdir, max_len=5)
    both = pd.concat([pd.read_parquet(pdir / f"splits/loo/{p}.parquet") for p in ("train", "valid")])
    users = sorted(both["user_id"].unique())
    assert d.refit_seqs.shape == (len(users), 6)
    for row in (0, len(users) // 2, len(users) - 1):
        events = both[both.user_id == users[row]].sort_values(["ts", "src_row"])["item_id"].to_numpy() + 1
        seq = d.refit_seqs[row]
        assert seq[seq > 0].tolist() == events[-6:].tolist()


def test_bad_max_len_and_missing_attributes(tiny_artifacts):
    with pytest.raises(ValueError, match="model.max_len"):
        load_sequence_data(tiny_artifacts / "processed" / "tiny", max_len=0)
    with pytest.raises(ValueError, match="model.use_attributes"):
        load_sequence_data(tiny_artifacts / "processed" / "tiny_noattr", max_len=5, use_attributes=True)


def test_train_batches_cover_every_row_once_per_epoch_and_shard_under_ddp():
    t = {"x": torch.arange(10)}
    tb = TrainBatches(t, batch_size=3, seed=1)
    seen = torch.cat([b["x"] for b in tb])
    assert sorted(seen.tolist()) == list(range(10))
    tb.epoch = 0
    again = torch.cat([b["x"] for b in tb])
    assert again.tolist() == seen.tolist()                 # deterministic per (seed, epoch)
    shards = []
    for rank in range(2):
        s = TrainBatches(t, batch_size=3, seed=1)
        s.rank, s.world = rank, 2
        shards.append(torch.cat([b["x"] for b in s]))
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_packed_target_rows_are_exactly_the_non_padding_targets_of_each_batch():
    g = torch.Generator().manual_seed(0)
    n, width = 23, 7
    lengths = torch.randint(2, width + 2, (n,), generator=g)
    seqs = torch.zeros(n, width + 1, dtype=torch.long)
    for r, length in enumerate(lengths.tolist()):
        seqs[r, width + 1 - length:] = torch.randint(1, 50, (length,), generator=g)
    for world in (1, 2):
        seen = []
        for rank in range(world):
            tb = TrainBatches({"seqs": seqs}, batch_size=4, seed=3, pack="seqs")
            tb.rank, tb.world = rank, world
            for batch in tb:
                targets = batch["seqs"][:, 1:]
                rows = batch["target_rows"]
                assert torch.equal(rows, torch.nonzero(targets.reshape(-1) > 0).squeeze(1))
                seen.append(batch["seqs"])
        assert sum(len(s) for s in seen) <= n


def test_packing_needs_left_padded_sequences():
    seqs = torch.tensor([[0, 3, 0, 4], [0, 0, 1, 2]])          # a gap inside the first sequence
    with pytest.raises(ValueError, match="left-padded"):
        TrainBatches({"seqs": seqs}, batch_size=2, seed=0, pack="seqs")


def test_price_buckets():
    items = pd.DataFrame({"item_id": [0, 1, 2, 3], "price_median": [1.0, 2.0, None, 100.0]})
    b, n = price_buckets(items, 4, 2)
    assert b[0] == 0 and b[3] == 0 and n == 2
    assert int(b[4]) == 2 and int(b[1]) == 1
    assert price_buckets(items.assign(price_median=None), 4, 3) == (None, 0)


@pytest.mark.parametrize("loss", ["full_ce", "sampled_softmax"])
def test_sasrec_loss_on_packed_target_rows_equals_the_masked_loss(loss):
    from training.modules import SASRecModule

    torch.manual_seed(0)
    net = {"n_items": 30, "max_len": 6, "hidden": 8, "blocks": 1, "heads": 1, "dropout": 0.0, "emb_dropout": 0.0}
    module = SASRecModule(net, {}, {}, {"type": loss, "label_smoothing": 0.1, "num_negatives": 8}).eval()
    module.popularity.copy_(torch.rand(31))
    seqs = torch.tensor([[0, 0, 0, 4, 5, 6, 7], [0, 0, 0, 0, 0, 9, 3], [1, 2, 3, 4, 5, 6, 7]])
    batch = next(iter(TrainBatches({"seqs": seqs}, batch_size=3, seed=0, pack="seqs")))
    torch.manual_seed(1)
    packed = module.training_loss(batch)
    torch.manual_seed(1)
    masked = module.training_loss({"seqs": batch["seqs"]})
    assert torch.allclose(packed, masked, atol=1e-6)


def _left_padded_random(n: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 2, (n,), generator=g)
    seqs = torch.zeros(n, width + 1, dtype=torch.long)
    for r, length in enumerate(lengths.tolist()):
        seqs[r, width + 1 - length:] = torch.randint(1, 50, (length,), generator=g)
    return seqs


def test_length_grouped_batches_keep_every_item_and_cut_only_padding():
    seqs = _left_padded_random(61, 9, seed=4)
    feat = torch.arange(61 * 9 * 2).reshape(61, 9, 2)        # one entry per input position
    for world in (1, 2):
        rows, widths = [], []
        for rank in range(world):
            tb = TrainBatches({"seqs": seqs, "feat": feat, "user": torch.arange(61)}, batch_size=5, seed=2,
                              pack="seqs", group_by_length=3)
            tb.rank, tb.world = rank, world
            for batch in tb:
                user = batch["user"]
                width = batch["seqs"].shape[1] - 1
                widths.append(width)
                # nothing but padding is cut, and a batch is as wide as its longest sequence
                assert int((batch["seqs"] > 0).sum()) == int((seqs[user] > 0).sum())
                assert bool((batch["seqs"][:, 1] > 0).any())
                assert torch.equal(batch["seqs"], seqs[user, -(width + 1):])
                assert torch.equal(batch["feat"], feat[user, -width:])
                targets = batch["seqs"][:, 1:]
                assert torch.equal(batch["target_rows"], torch.nonzero(targets.reshape(-1) > 0).squeeze(1))
                rows.append(user)
        seen = sorted(torch.cat(rows).tolist())
        assert len(seen) == len(set(seen))                           # no row twice in an epoch, over the ranks
        assert world > 1 or seen == list(range(61))                  # (DDP drops an uneven last batch)
        assert min(widths) < 9


def test_length_grouping_scales_each_batch_so_the_epoch_objective_is_the_mean_over_all_targets():
    from training.modules import SASRecModule

    torch.manual_seed(0)
    seqs = _left_padded_random(40, 6, seed=5)
    net = {"n_items": 50, "max_len": 6, "hidden": 8, "blocks": 1, "heads": 1, "dropout": 0.0, "emb_dropout": 0.0}
    module = SASRecModule(net, {}, {}, {"type": "full_ce"}).eval()
    batches = list(TrainBatches({"seqs": seqs}, batch_size=4, seed=1, pack="seqs", group_by_length=5))
    with torch.no_grad():
        grouped = sum(module.training_loss(b) * b["loss_scale"] for b in batches) / len(batches)
        everything = module.training_loss({"seqs": seqs})      # the mean over every target position at once
    assert torch.allclose(grouped, everything, atol=1e-5)
    assert len({b["seqs"].shape[1] for b in batches}) > 1


def test_length_grouping_needs_a_packed_tensor():
    with pytest.raises(ValueError, match="group_by_length"):
        TrainBatches({"x": torch.arange(5)}, batch_size=2, seed=0, group_by_length=4)
