"""Popularity, EASE and ItemKNN against their closed forms."""
import numpy as np

from models.baselines import EASE, ItemKNN, Popularity, interaction_matrix


def _x():
    users = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    items = np.array([0, 1, 0, 1, 2, 2, 1, 3])
    return interaction_matrix(users, items, 4, 4)


def test_popularity_counts():
    x = _x()
    p = Popularity(4).fit(x)
    assert p.counts.tolist() == [2, 3, 2, 1]
    assert p.score(x[:2]).shape == (2, 4)


def test_ease_matches_numpy_formula():
    x = _x()
    lam = 0.5
    g = (x.T @ x).toarray() + lam * np.eye(4)
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    m = EASE(4, lam).fit(x)
    assert np.allclose(m.weights, b, atol=1e-4)
    assert np.allclose(m.score(x), x.toarray() @ b, atol=1e-4)
    assert np.allclose(np.diag(m.weights), 0)


def test_ease_memory_rule():
    assert EASE.fits_memory(1000, 2**30)
    assert not EASE.fits_memory(100_000, 2**30)


def test_itemknn_cosine_neighbours():
    x = _x()
    m = ItemKNN(4, k=2, shrink=0.0).fit(x)
    sim = m.sim.toarray()
    xd = x.toarray()
    cos01 = xd[:, 0] @ xd[:, 1] / np.sqrt(xd[:, 0].sum() * xd[:, 1].sum())
    assert abs(sim[0, 1] - cos01) < 1e-5
    assert np.all(np.diag(sim) == 0)
    assert (sim > 0).sum(1).max() <= 2
