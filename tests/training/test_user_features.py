"""features.user_features: fitted on the training history only, fixed vocabularies/edges, unknown = 0."""
import numpy as np
import pandas as pd
import pytest

from features.user_features import UserFeatureConfig, UserFeatureError, UserFeatureSpec, fit_user_features


def _events(rows):
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "day", "price", "order_id"])
    df["ts"] = pd.to_datetime("2024-01-01", utc=True) + pd.to_timedelta(df.pop("day"), unit="D")
    return df


TRAIN = _events([(0, 0, "purchase", 0, 1.0, "a"), (0, 1, "purchase", 0, 1.0, "a"), (0, 2, "return", 5, 1.0, "b"),
                 (1, 3, "purchase", 9, 100.0, "c"),
                 (2, 3, "purchase", 1, 10.0, "d"), (2, 4, "purchase", 2, 10.0, "e"), (2, 4, "purchase", 3, 10.0, "f")])
USERS = pd.DataFrame({"user_id": [0, 1, 2, 3], "user_key": ["k0", "k1", "k2", "k3"],
                      "country": ["UK", "UK", "France", "Peru"], "n_events": [3, 1, 3, 9]})
ITEMS = pd.DataFrame({"item_id": range(5), "category": ["x", "x", "y", "y", "y"]})


def test_fit_on_training_history_and_codes():
    uf = fit_user_features(TRAIN, USERS, ITEMS, UserFeatureConfig(enabled=True, n_buckets=2), n_users=4)
    s = uf.spec
    assert s.names == ["attr_country", "activity", "orders", "recency", "mean_price", "return_share", "top_category"]
    assert "n_events" not in " ".join(s.names)                     # counts every split: never a feature
    assert s.vocab["attr_country"] == ["UK", "France"]             # fitted on users of the history: Peru unknown
    col = {n: uf.codes[:, j] for j, n in enumerate(s.names)}
    assert col["attr_country"].tolist() == [1, 1, 2, 0]
    assert (uf.codes[3, 1:] == 0).all()                            # user 3 has no history: derived unknown
    assert col["top_category"][:3].tolist() == [s.vocab["top_category"].index("x") + 1] + \
        [s.vocab["top_category"].index("y") + 1] * 2
    assert col["return_share"][0] > col["return_share"][2]         # user 0 returned a third of their events
    assert col["mean_price"][1] > col["mean_price"][0]
    assert col["recency"][1] < col["recency"][0]                   # user 1 was active last
    assert (uf.codes < np.array(s.cardinalities)).all()


def test_transform_keeps_the_fitted_edges_and_vocabularies():
    cfg = UserFeatureConfig(enabled=True, n_buckets=2)
    spec = UserFeatureSpec.fit(TRAIN, USERS, ITEMS, cfg)
    later = pd.concat([TRAIN, _events([(3, 0, "purchase", 10, 5.0, "g")])])
    codes = spec.transform(later, USERS, ITEMS, 4)
    again = UserFeatureSpec.from_json(spec.to_json())
    assert again == spec and (again.transform(later, USERS, ITEMS, 4) == codes).all()
    assert codes[3, spec.names.index("activity")] > 0 and codes[3, 0] == 0   # Peru stays unknown
    table = spec.table(codes, USERS)
    assert list(table.columns) == ["user_id", "user_key", *spec.names] and len(table) == 4


@pytest.mark.parametrize("setting, message", [
    ({"derived": ["activity", "zodiac"]}, "model.user_features.derived"),
    ({"n_buckets": 1}, "model.user_features.n_buckets"),
    ({"colour": 1}, "model.user_features: unknown setting"),
])
def test_bad_settings_name_the_field(setting, message):
    with pytest.raises(UserFeatureError, match=message):
        UserFeatureConfig.from_cfg({"enabled": True, **setting})


def test_unknown_attribute_column_is_named():
    with pytest.raises(UserFeatureError, match="attributes: \\['age'\\]"):
        UserFeatureSpec.fit(TRAIN, USERS, ITEMS, UserFeatureConfig(enabled=True, attributes=["age"]))


def test_running_codes_use_only_events_up_to_each_position():
    """Point in time: the codes after event i of a user equal the codes of the history cut after event i
    (nothing from later events); after the last event they equal ``transform`` of the whole history."""
    spec = UserFeatureSpec.fit(TRAIN, USERS, ITEMS, UserFeatureConfig(enabled=True, n_buckets=3))
    h = TRAIN.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    running = spec.transform_running(h, USERS, ITEMS)
    assert running.shape == (len(h), len(spec.names))
    whole = spec.transform(h, USERS, ITEMS, 4)
    last = h.groupby("user_id").tail(1).index
    np.testing.assert_array_equal(running[last], whole[h.loc[last, "user_id"]])
    rec = spec.names.index("recency")
    for i in range(len(h)):
        u = h.loc[i, "user_id"]
        prefix = h[(h["user_id"] != u) | (h.index <= i)]        # the user's later events removed
        cut = spec.transform(prefix, USERS, ITEMS, 4)[u]
        keep = [j for j in range(len(spec.names)) if j != rec]  # recency: to the next event, not to the data's end
        np.testing.assert_array_equal(running[i, keep], cut[keep], err_msg=f"event {i}")


def test_point_in_time_training_rows_have_codes_per_position(tiny_artifacts):
    from training.data import load_sequence_data

    cfg = UserFeatureConfig(enabled=True, n_buckets=4, point_in_time=True)
    data = load_sequence_data(tiny_artifacts / "processed" / "tiny", max_len=6, user_features=cfg)
    static = load_sequence_data(tiny_artifacts / "processed" / "tiny", max_len=6,
                                user_features=UserFeatureConfig(enabled=True, n_buckets=4))
    f = len(data.user_features.names)
    assert data.train_user_feat.shape == (len(data.train_seqs), 6, f)
    assert static.train_user_feat.shape == (len(data.train_seqs), f)
    inputs = data.train_seqs[:, :-1]
    assert (data.train_user_feat[inputs == 0] == 0).all()       # padding positions: unknown
    act = data.user_features.names.index("activity")
    a = data.train_user_feat[:, :, act]
    real = inputs > 0
    assert ((a[:, 1:] >= a[:, :-1]) | ~real[:, :-1]).all()       # activity only grows along a sequence
    assert data.valid.user_feat.shape == (len(data.valid), f)    # evaluation: features as of the history's end
