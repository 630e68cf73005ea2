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


def test_buy_again_own_items_by_frequency_then_recency_then_popularity():
    import scipy.sparse as sp

    from models.baselines import BuyAgain

    x = interaction_matrix(np.array([0, 0, 1, 1, 1, 2, 3, 3]), np.array([0, 1, 0, 1, 2, 2, 1, 3]), 4, 5)
    m = BuyAgain(5).fit(x)                                      # popularity [2, 3, 2, 1, 0]
    # chronological histories: row 0 = 3, 2, 3, 0 (3 twice; 0 more recent than 2); row 1 empty
    hist = sp.csr_matrix((np.ones(4, np.float32), np.array([3, 2, 3, 0]), np.array([0, 4, 4])), shape=(2, 5))
    s = m.score(hist)
    assert np.isfinite(s).all()
    assert list(np.argsort(-s[0], kind="stable")) == [3, 0, 2, 1, 4]   # own: 3 (x2), 0 (newer), 2; then pop: 1, 4
    assert list(np.argsort(-s[1], kind="stable")[:2]) == [1, 0]         # no history: popularity
    assert len(set(s[0].tolist())) == 5                                  # no ties among these items
