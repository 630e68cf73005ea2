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


VARIANTS = [{}, {"block": "ligr"}, {"block": "ligr", "ffn_activation": "swiglu", "ffn_mult": 4},
            {"ffn_activation": "swiglu"}, {"block": "bsarec"}, {"block": "bsarec", "norm_first": False},
            {"block": "bsarec", "filter_bins": 1, "filter_alpha": 1.0}]


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_later_items_do_not_change_earlier_positions(variant):
    m = _model(**variant)
    a = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    b = a.clone()
    b[0, -1] = 20
    ha, hb = m(a), m(b)
    assert torch.allclose(ha[:, :-1], hb[:, :-1], atol=1e-6)
    assert not torch.allclose(ha[:, -1], hb[:, -1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padding_and_shorter_input_give_the_same_user_embedding(variant):
    m = _model(**variant)
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


def test_ligr_gates_scale_the_residual_branches():
    m = _model(block="ligr")
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    before = m(seq)
    with torch.no_grad():   # gates shut (sigmoid -> 0): every block is the identity
        for blk in m.blocks:
            for g in (blk.gate1, blk.gate2):
                g.weight.zero_()
                g.bias.fill_(-1e4)
    shut = m(seq)
    assert not torch.allclose(before, shut)
    x = m.emb_drop(torch.nn.functional.embedding(seq, m.item_table()) * 16 ** 0.5 + m.pos_emb.weight.unsqueeze(0))
    x = x * (seq > 0).unsqueeze(-1)
    assert torch.allclose(shut, m.final_ln(x), atol=1e-5)


@pytest.mark.parametrize("bad, name", [({"block": "mamba"}, "model.block"), ({"ffn_activation": "relu6"}, "model.ffn_activation"),
                                       ({"block": "ligr", "norm_first": False}, "model.norm_first"),
                                       ({"filter_alpha": 1.5}, "model.filter_alpha"), ({"filter_bins": 0}, "model.filter_bins")])
def test_bad_block_settings_name_the_setting(bad, name):
    with pytest.raises(ValueError, match=name):
        SASRecConfig(n_items=10, **bad)


@pytest.mark.parametrize("variant", [{"block": "ligr", "ffn_activation": "swiglu", "ffn_mult": 2}, {"block": "bsarec"}])
def test_encoder_exports_to_onnx_with_parity(tmp_path, variant):
    ort = pytest.importorskip("onnxruntime")
    m = _model(**variant)
    with torch.no_grad():      # bsarec: a beta other than 1, so the filter is not the identity
        for blk in m.blocks:
            if hasattr(blk, "sqrt_beta"):
                blk.sqrt_beta.copy_(torch.linspace(0.2, 1.8, 16))
    enc = SASRecEncoder(m).eval()
    seq = torch.randint(0, 31, (3, 8))
    seq[0, :5] = 0
    path = tmp_path / "enc.onnx"
    torch.onnx.export(enc, (seq,), str(path), input_names=["item_seq"], output_names=["user_emb"],
                      dynamic_axes={"item_seq": {0: "batch"}, "user_emb": {0: "batch"}}, opset_version=18, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"item_seq": seq.numpy()})[0]
    assert abs(got - enc(seq).detach().numpy()).max() < 1e-4


def test_bsarec_filter_is_bsarec_fft_lowpass_at_the_last_position():
    """At a sequence's last position the causal filter equals BSARec's FFT filter of the zero-padded sequence."""
    m = _model(block="bsarec", filter_bins=2)
    blk = m.blocks[0]
    with torch.no_grad():
        blk.sqrt_beta.copy_(torch.linspace(0.5, 1.5, 16))
    x = torch.randn(3, 8, 16)
    seq = torch.tensor([[0, 0, 0, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0, 0, 9]])
    real = (seq > 0).unsqueeze(-1).float()
    idx = torch.arange(8)
    mask = (((idx[None, :] <= idx[:, None]) & (seq > 0).unsqueeze(1)) | (idx[None, :] == idx[:, None])).unsqueeze(1)
    got = blk._filter(x, mask)[:, -1]
    spec = torch.fft.rfft(x * real, dim=1, norm="ortho")
    spec[:, 2:] = 0
    low = torch.fft.irfft(spec, n=8, dim=1, norm="ortho")
    want = low + blk.sqrt_beta.detach() ** 2 * (x * real - low)
    assert torch.allclose(got, want[:, -1], atol=1e-5)


def test_bsarec_beta_one_makes_the_filter_the_identity():
    m = _model(block="bsarec")
    x = torch.randn(2, 8, 16)
    mask = torch.ones(2, 1, 8, 8, dtype=torch.bool).tril()
    assert torch.allclose(m.blocks[0]._filter(x, mask), x, atol=1e-6)
