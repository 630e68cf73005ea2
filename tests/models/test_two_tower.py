"""Two-tower network: normalised towers, causal states agree with the encoder, features change items."""
import torch

from models.two_tower import TwoTower, TwoTowerConfig, TwoTowerEncoder


def _model(**kw):
    torch.manual_seed(0)
    return TwoTower(TwoTowerConfig(n_items=20, max_len=6, hidden=8, mlp_hidden=16, **kw)).eval()


def test_towers_are_normalised():
    m = _model()
    assert torch.allclose(m.item_tower().norm(dim=-1), torch.ones(21), atol=1e-5)
    seq = torch.tensor([[0, 0, 1, 2, 3, 4]])
    assert torch.allclose(m.encode(seq).norm(dim=-1), torch.ones(1), atol=1e-5)


def test_last_running_state_equals_encode_with_recency_decay():
    m = _model(recency_decay=0.3)
    seq = torch.tensor([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]])
    assert torch.allclose(m.user_states(seq)[:, -1], m.encode(seq), atol=1e-5)
    assert torch.allclose(TwoTowerEncoder(m)(seq), m.encode(seq))


def test_attributes_and_price_buckets_enter_the_item_tower():
    attrs = torch.zeros(21, 1, dtype=torch.long)
    attrs[1:, 0] = 1
    price = torch.zeros(21, dtype=torch.long)
    price[1:] = 2
    torch.manual_seed(0)
    m = TwoTower(TwoTowerConfig(n_items=20, hidden=8, n_attributes=1, n_price_buckets=2), attrs, price).eval()
    before = m.item_tower().clone()
    with torch.no_grad():
        m.price_emb.weight[2] += 1.0
    assert not torch.allclose(before, m.item_tower())


def test_user_features_enter_the_user_tower_and_unknown_codes_add_nothing():
    import pytest

    m = _model(user_feature_cards=[3, 5])
    seq = torch.tensor([[0, 0, 1, 2, 3, 4], [0, 0, 1, 2, 3, 4]])
    uf = torch.tensor([[1, 4], [2, 0]])
    u = m.encode(seq, uf)
    assert not torch.allclose(u[0], u[1])                       # same history, other features: other user
    assert torch.allclose(m.user_states(seq, uf)[:, -1], u, atol=1e-5)
    assert torch.allclose(TwoTowerEncoder(m)(seq, uf), u)
    zero = torch.zeros(2, 2, dtype=torch.long)                  # all unknown: the same user for the same history
    assert torch.allclose(m.encode(seq, zero)[0], m.encode(seq, zero)[1])
    with pytest.raises(ValueError, match="user_feat"):
        m.encode(seq)
    with pytest.raises(ValueError, match="user_feat: expected shape"):
        m.encode(seq, uf[:, :1])


def test_user_states_take_features_per_position():
    import pytest

    m = _model(user_feature_cards=[3, 5])
    seq = torch.tensor([[0, 0, 1, 2, 3, 4]])
    last = torch.tensor([[1, 4]])
    per_pos = torch.zeros(1, 6, 2, dtype=torch.long)
    per_pos[0, -1] = last[0]                                    # only the last position knows the features
    states = m.user_states(seq, per_pos)
    assert torch.allclose(states[:, -1], m.encode(seq, last), atol=1e-5)
    assert torch.allclose(states[:, -2], m.user_states(seq, torch.zeros(1, 2, dtype=torch.long))[:, -2], atol=1e-5)
    with pytest.raises(ValueError, match=r"user_feat: expected shape \(1, 2\) or \(1, 6, 2\)"):
        m.user_states(seq, torch.zeros(1, 5, 2, dtype=torch.long))
