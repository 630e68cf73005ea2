"""SASRec network: shapes, causality, padding invariance, attributes, bad settings."""
import pytest
import torch

from models.sasrec import SASRec, SASRecConfig, SASRecEncoder

torch.set_num_threads(2)


def _model(**kw):
    torch.manual_seed(0)
    return SASRec(SASRecConfig(n_items=30, max_len=8, hidden=16, blocks=2, heads=2, **kw)).eval()


def test_shapes_and_encode_is_last_position():
    m = _model()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 9]])
    h = m(seq)
    assert h.shape == (2, 8, 16)
    assert torch.allclose(m.encode(seq), h[:, -1])
    assert m.item_table().shape == (31, 16)


def test_causal_later_items_do_not_change_earlier_positions():
    m = _model()
    a = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    b = a.clone()
    b[0, -1] = 20
    ha, hb = m(a), m(b)
    assert torch.allclose(ha[:, :-1], hb[:, :-1], atol=1e-6)
    assert not torch.allclose(ha[:, -1], hb[:, -1])


def test_left_padding_and_shorter_input_give_the_same_user_embedding():
    m = _model()
    full = torch.tensor([[0, 0, 0, 0, 5, 6, 7, 8]])
    short = torch.tensor([[0, 5, 6, 7, 8]])          # L < max_len: right-aligned positions
    assert torch.allclose(m.encode(full), m.encode(short), atol=1e-5)


def test_attributes_are_added_to_item_table():
    attrs = torch.zeros(31, 2, dtype=torch.long)
    attrs[1:, 0] = torch.arange(30) % 3 + 1
    torch.manual_seed(0)
    m = SASRec(SASRecConfig(n_items=30, max_len=8, hidden=16, n_attributes=3), attrs)
    table = m.item_table()
    expected = m.item_emb.weight[1] + m.attr_emb.weight[attrs[1, 0]]
    assert torch.allclose(table[1], expected)


def test_untied_output_table_differs_from_input():
    m = _model(tie_weights=False)
    assert not torch.allclose(m.output_table(), m.item_table())


@pytest.mark.parametrize("bad", [{"max_len": 0}, {"max_len": -3}])
def test_bad_max_len_names_the_setting(bad):
    with pytest.raises(ValueError, match="model.max_len"):
        SASRecConfig(n_items=10, **bad)


def test_attributes_required_when_configured():
    with pytest.raises(ValueError, match="item_attributes"):
        SASRec(SASRecConfig(n_items=10, n_attributes=4))


def test_encoder_wrapper_matches_encode():
    m = _model()
    seq = torch.randint(0, 31, (4, 8))
    assert torch.allclose(SASRecEncoder(m)(seq), m.encode(seq))
