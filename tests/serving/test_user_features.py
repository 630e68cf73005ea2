"""User features at serving time: ``user_features.parquet`` codes fed to an encoder that takes ``user_feat``
(in the manifest's column order) and to a ranker whose ``ranker.json`` lists ``user_features``; unknown and
new users get zeros; bundles without them load exactly as before; bad user-feature files name the file."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from features.privacy import pseudo_key, pseudonymise_one
from serving.bundle import BundleError, load_bundle
from training.synthetic_bundle import (USER_FEATURE_ENCODER_ORDER, USER_FEATURE_RANKER_ORDER, USER_FEATURE_TABLE_ORDER,
                             SyntheticBundleSpec, build_synthetic_bundle)


@pytest.fixture(scope="module")
def uf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("uf")
    return build_synthetic_bundle(root / "bundles" / "uf", SyntheticBundleSpec(user_features=True, seed=3),
                                  write_latest=False)


@pytest.fixture(scope="module")
def uf_bundle(uf_dir):
    return load_bundle(uf_dir)


def key_of(raw: str) -> str:
    return pseudonymise_one(raw, pseudo_key()[0])


def table_codes(uf_dir, raw: str, order) -> np.ndarray:
    """The expected codes, read by column name with pandas (independent of the serving loader)."""
    t = pd.read_parquet(uf_dir / "user_features.parquet").set_index("user_key")
    return t.loc[key_of(raw), list(order)].to_numpy(np.int64)


def test_three_orders_differ_so_the_tests_can_catch_a_mixup():
    assert len({USER_FEATURE_TABLE_ORDER, USER_FEATURE_ENCODER_ORDER, USER_FEATURE_RANKER_ORDER}) == 3


def test_codes_follow_the_declared_column_orders(uf_dir, uf_bundle):
    b = uf_bundle
    assert b.user_features is not None and b.ranker is not None
    assert list(json.loads((uf_dir / "manifest.json").read_text())["encoder_inputs"][1]["columns"]) == \
        list(USER_FEATURE_ENCODER_ORDER)
    for u in (1, 2, 7):  # known users with non-zero, distinct codes per column
        assert np.array_equal(b.encoder_codes(key_of(f"user-{u}")), table_codes(uf_dir, f"user-{u}", USER_FEATURE_ENCODER_ORDER))
        assert np.array_equal(b.ranker_codes(key_of(f"user-{u}")), table_codes(uf_dir, f"user-{u}", USER_FEATURE_RANKER_ORDER))
    assert not np.array_equal(b.encoder_codes(key_of("user-1")), b.ranker_codes(key_of("user-1")))
    # a user the table does not know (user-9 has bundle state but no feature row) and a new user: zeros
    assert key_of("user-9") in b.users
    for who in (key_of("user-9"), key_of("never-seen"), ""):
        assert b.encoder_codes(who).tolist() == [0, 0, 0] and b.ranker_codes(who).tolist() == [0, 0, 0]


def test_encoder_parity_with_a_direct_onnx_call(uf_dir, uf_bundle):
    """bundle.encode with the bundle's codes == ONNX Runtime fed by hand in the manifest's order; another order
    or zeros give another embedding (so the check can fail)."""
    import onnxruntime as ort

    b = uf_bundle
    sess = ort.InferenceSession(str(uf_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    key = key_of("user-7")
    hist = b.users[key].history
    seq = np.zeros((1, b.max_len), np.int64)
    seq[0, -len(hist):] = hist + 1
    want_codes = table_codes(uf_dir, "user-7", USER_FEATURE_ENCODER_ORDER)[None, :]
    want = sess.run(["user_emb"], {"item_seq": seq, "user_feat": want_codes})[0]
    got = b.encode([hist], b.encoder_codes(key)[None, :])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # the parquet's own column order (codes of user-7 would even fall outside another column's vocabulary)
    wrong = table_codes(uf_dir, "user-7", USER_FEATURE_TABLE_ORDER)[None, :]
    try:
        assert np.abs(sess.run(["user_emb"], {"item_seq": seq, "user_feat": wrong})[0] - want).max() > 1e-3
    except ort.capi.onnxruntime_pybind11_state.InvalidArgument:
        pass
    assert np.abs(b.encode([hist]) - want).max() > 1e-3  # None = zeros
    with pytest.raises(ValueError, match=r"user_feat: shape \(1, 2\), expected \(1, 3\)"):
        b.encode([hist], np.zeros((1, 2), np.int64))


class _Spy:
    """Records what the pipeline feeds to the encoder session and to the ranker."""

    def __init__(self, bundle):
        self.feeds: list[dict] = []
        self.requests: list = []
        enc, ranker = bundle.encoder, bundle.ranker
        spy = self

        class Enc:
            def run(self, outputs, feed):
                spy.feeds.append({k: v.copy() for k, v in feed.items()})
                return enc.run(outputs, feed)

            def __getattr__(self, name):
                return getattr(enc, name)

        orig_score = ranker.score

        def score(requests):
            spy.requests.extend(requests)
            return orig_score(requests)

        bundle.encoder = Enc()
        ranker.score = score


def test_service_path_feeds_known_and_unknown_users(uf_dir, make_client):
    c, svc = make_client(f"serve.bundle_path={uf_dir}")
    b = svc.bundle
    assert b.user_features is not None
    spy = _Spy(b)
    r = c.post("/v1/recommendations", json={"user_id": "user-7", "k": 5})
    assert r.status_code == 200, r.text
    items = r.json()
    items = items["items"] if isinstance(items, dict) else items
    assert len(items) == 5 and all(i["source"] != "popular_fallback" for i in items)
    assert np.array_equal(spy.feeds[-1]["user_feat"][0], table_codes(uf_dir, "user-7", USER_FEATURE_ENCODER_ORDER))
    assert np.array_equal(spy.requests[-1].user_feat, table_codes(uf_dir, "user-7", USER_FEATURE_RANKER_ORDER))
    # a new user with recent events: encoder and ranker run, with all-unknown codes
    r = c.post("/v1/recommendations", json={"user_id": "brand-new", "k": 5,
                                              "recent_events": [{"item_id": "SKU000001", "event": "view"}]})
    assert r.status_code == 200, r.text
    assert spy.feeds[-1]["user_feat"].tolist() == [[0, 0, 0]]
    assert spy.requests[-1].user_feat.tolist() == [0, 0, 0]
    # a known user absent from the feature table: zeros as well, never an error
    r = c.post("/v1/recommendations", json={"user_id": "user-9", "k": 5})
    assert r.status_code == 200 and spy.feeds[-1]["user_feat"].tolist() == [[0, 0, 0]]


def test_bundles_without_user_features_are_unchanged(bundles_root):
    b = load_bundle(bundles_root / "bundles" / "b1")
    assert b.user_features is None and b.encoder_user_codes is None and b.ranker_user_codes is None
    assert b.encoder_codes("anyone") is None and b.ranker_codes("anyone") is None
    assert [i.name for i in b.encoder.get_inputs()] == ["item_seq"]


@pytest.fixture()
def uf_copy(uf_dir, tmp_path):
    d = tmp_path / "uf"
    shutil.copytree(uf_dir, d)
    return d


def test_missing_table_names_the_file(uf_copy):
    (uf_copy / "user_features.parquet").unlink()
    with pytest.raises(BundleError, match=r"user_features.parquet: missing, but encoder.onnx and ranker.json take"):
        load_bundle(uf_copy, verify_hashes=False)


def test_out_of_range_code_names_column_and_value(uf_copy):
    t = pd.read_parquet(uf_copy / "user_features.parquet")
    t.loc[3, "activity"] = 99
    t.to_parquet(uf_copy / "user_features.parquet", index=False)
    with pytest.raises(BundleError, match=r"column 'activity' has code 99 outside \[0, 5\)"):
        load_bundle(uf_copy, verify_hashes=False)


def test_manifest_without_columns_and_missing_column(uf_copy):
    m = json.loads((uf_copy / "manifest.json").read_text())
    m2 = {**m, "encoder_inputs": ["item_seq", "user_feat"]}
    (uf_copy / "manifest.json").write_text(json.dumps(m2))
    with pytest.raises(BundleError, match="encoder_inputs has no user_feat entry with its 'columns'"):
        load_bundle(uf_copy, verify_hashes=False)
    m["encoder_inputs"][1]["columns"] = ["top_category", "attr_country", "nope"]
    (uf_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"user_features.json: no feature\(s\) \['nope'\]"):
        load_bundle(uf_copy, verify_hashes=False)
    m["encoder_inputs"][1]["columns"] = ["top_category", "attr_country"]
    (uf_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="input user_feat has 3 columns, manifest.json encoder_inputs lists 2"):
        load_bundle(uf_copy, verify_hashes=False)


def test_ranker_vocabulary_mismatch_names_both_files(uf_copy):
    spec = json.loads((uf_copy / "ranker.json").read_text())
    spec["user_cardinalities"] = [c + 1 for c in spec["user_cardinalities"]]
    (uf_copy / "ranker.json").write_text(json.dumps(spec))
    with pytest.raises(BundleError, match="ranker.json: user_cardinalities .* differ from user_features.json"):
        load_bundle(uf_copy, verify_hashes=False)


def test_duplicate_keys_are_refused(uf_copy):
    t = pd.read_parquet(uf_copy / "user_features.parquet")
    pd.concat([t, t.iloc[:2]]).to_parquet(uf_copy / "user_features.parquet", index=False)
    with pytest.raises(BundleError, match=r"column 'user_key' repeats 2 key\(s\)"):
        load_bundle(uf_copy, verify_hashes=False)
