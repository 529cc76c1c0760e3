"""The spread figures of evaluate (retrieval.spread_metrics): effective rank and mean cosine."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from byol_core.retrieval import spread_metrics


def _gaussian(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_effective_rank_of_isotropic_gaussian_is_close_to_the_dimension():
    found = spread_metrics(_gaussian(2000, 32))
    assert 0.9 * 32 < found["effective_rank"] <= 32
    assert found["effective_rank_fraction"] == pytest.approx(found["effective_rank"] / 32)


def test_effective_rank_of_a_rank_3_matrix_is_at_most_3():
    x = _gaussian(2000, 3) @ _gaussian(3, 32, seed=1)  # (2000, 32) of rank 3
    assert 2.0 < spread_metrics(x)["effective_rank"] <= 3.5


def test_collapsed_features_have_mean_cosine_one_and_their_rank_is_that_of_what_varies():
    one = _gaussian(1, 32)
    # Every row the same vector, up to tiny noise along one direction: rank ~1, cosine ~1.
    along_one = one + 1e-4 * _gaussian(2000, 1, seed=1) * _gaussian(1, 32, seed=2)
    found = spread_metrics(along_one)
    assert found["effective_rank"] < 1.5 and found["mean_cosine"] > 0.999
    # Tiny noise in every direction: the rank ignores scale and counts the noise's directions,
    # so it is the mean cosine that shows this collapse.
    isotropic = spread_metrics(one + 1e-4 * _gaussian(2000, 32, seed=3))
    assert isotropic["mean_cosine"] > 0.999 and isotropic["effective_rank"] > 0.9 * 32
    # Exactly equal rows: no direction at all, and every pair has cosine 1.
    assert spread_metrics(one.repeat(50, 1)) == pytest.approx({"effective_rank": 0.0, "effective_rank_fraction": 0.0,
                                                               "mean_cosine": 1.0})


def test_mean_cosine_of_random_gaussian_rows_is_near_zero():
    assert abs(spread_metrics(_gaussian(2000, 32))["mean_cosine"]) < 0.05


def test_mean_cosine_equals_the_brute_force_mean_over_distinct_pairs():
    x = _gaussian(7, 5) + 0.5  # an offset so that the mean is well away from 0
    x[3] = 0.0  # a zero row: cosine 0 with every other row, as F.normalize makes it
    unit = F.normalize(x.double(), dim=1)
    pairs = [float(unit[i] @ unit[j]) for i, j in itertools.permutations(range(len(x)), 2)]
    assert spread_metrics(x)["mean_cosine"] == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)


def test_effective_rank_equals_the_definition_through_an_svd():
    x = _gaussian(40, 9) * torch.linspace(0.1, 3.0, 9)  # unequal spread per direction
    s = torch.linalg.svdvals((x - x.mean(0)).double())
    p = s / s.sum()
    assert spread_metrics(x)["effective_rank"] == pytest.approx(float((-(p * p.log()).sum()).exp()), rel=1e-9)
    wide = _gaussian(9, 40)  # N < D: through the other Gram matrix, at most N - 1 after centring
    s = torch.linalg.svdvals((wide - wide.mean(0)).double())
    p = s[s > 1e-9] / s.sum()
    assert spread_metrics(wide)["effective_rank"] == pytest.approx(float((-(p * p.log()).sum()).exp()), rel=1e-6)
