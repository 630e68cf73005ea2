"""models.item_content: the content tower's shapes and padding, and a fit that recovers category structure."""
import numpy as np
import pandas as pd
import pytest
import torch

from models.item_content import ItemContentTower
from training.cold_items import FitSettings, fit_content_tower, item_tokens, price_edges


def test_padding_does_not_change_an_item():
    tower = ItemContentTower(n_tokens=10, dim=8, hidden=16).eval()
    a = tower(torch.tensor([[3, 5]]))
    b = tower(torch.tensor([[3, 5, 0, 0, 0]]))
    assert a.shape == (1, 8) and torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="token ids"):
        tower(torch.tensor([[11]]))


def test_tokens_from_attributes_category_price_and_title():
    items = pd.DataFrame({"attributes": [[1, 2], None], "category": ["toys", None], "price": [5.0, np.nan],
                          "title": ["Red LEGO bricks", None]})
    bags = item_tokens(items, price_edges(items))
    assert bags[0][:3] == ["attr:1", "attr:2", "cat:toys"] and "word:lego" in bags[0]
    assert bags[1] == []


def test_fit_places_a_new_item_near_its_category():
    rng = np.random.default_rng(0)
    n, dim, k = 400, 8, 4
    centroids = rng.normal(size=(k, dim)).astype(np.float32) * 3
    cat = rng.integers(0, k, n)
    items = pd.DataFrame({"category": [f"c{c}" for c in cat], "attributes": [[int(c) * 10 + 1] for c in cat]})
    targets = centroids[cat] + rng.normal(scale=0.3, size=(n, dim)).astype(np.float32)
    model = fit_content_tower(items, targets, FitSettings(epochs=40, hidden=32, seed=0))
    assert model.figures["valid_cosine"] > model.figures["valid_cosine_mean_baseline"] + 0.3
    new = model.embed(pd.DataFrame({"category": ["c2"], "attributes": [[21]]}))[0]
    assert int(np.argmin(((centroids - new) ** 2).sum(1))) == 2
