"""The serve-time diversity rule (``serving.rules.diversify`` through ``select_top_k``)."""
import numpy as np
import pytest

from serving.rules import diversify, select_top_k


def test_lambda_zero_is_the_score_order():
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    assert diversify(np.array([0, 0, 0, 0]), scores, 3, 0.0).tolist() == [1, 3, 2]


def test_new_categories_come_first_from_one_half():
    scores = np.array([1.0, 0.9, 0.8, 0.1])
    cats = np.array([0, 0, 0, 1])
    assert diversify(cats, scores, 2, 0.2).tolist() == [0, 1]        # a weak new category does not jump in
    assert diversify(cats, scores, 2, 0.5).tolist() == [0, 3]        # every new category before a repeat
    assert diversify(cats, scores, 4, 0.9).tolist() == [0, 3, 1, 2]  # then the repeats, in score order


def test_items_without_a_category_never_count_as_repeats():
    scores = np.array([1.0, 0.9, 0.8])
    assert diversify(np.array([-1, -1, 0]), scores, 3, 0.9).tolist() == [0, 1, 2]


def test_bad_lambda_is_refused():
    with pytest.raises(ValueError, match="rules.diversity"):
        diversify(np.array([0]), np.array([1.0]), 1, 1.5)


def test_select_top_k_keeps_the_cap_then_diversifies():
    ids = np.array([10, 11, 12, 13, 14])
    code = np.full(20, -1)
    code[[10, 11, 12]] = 0
    code[[13, 14]] = 1
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    assert select_top_k(ids, scores, code, 3, 2).tolist() == [0, 1, 3]           # cap 2: item 12 out
    assert select_top_k(ids, scores, code, 3, 2, diversity=0.6).tolist() == [0, 3, 1]
    assert select_top_k(ids, scores, code, 3, 0, diversity=0.0).tolist() == [0, 1, 2]
