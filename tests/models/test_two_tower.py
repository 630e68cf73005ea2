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
