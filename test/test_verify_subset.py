"""Fitting F on a subset of the matches and counting inliers on all of them."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from roma_ros.localize.geometry import sampson_distance, verify_fundamental, verify_fundamental_subset
from roma_ros.localize.pipeline import DecisionConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from verify_samples import two_view_matches  # noqa: E402


def test_sampson_distance_is_what_usac_marks_inliers_by():
    q, c = two_view_matches(3000, 0.4, np.random.default_rng(3))
    full = verify_fundamental(q, c)
    assert full.verified and 1000 < full.num_inliers < 3000
    ours = sampson_distance(full.F, q, c) < 0.2
    assert np.count_nonzero(ours != full.inlier_mask) <= 3


@pytest.mark.parametrize("outliers", [0.2, 0.5])
def test_subset_fit_counts_inliers_like_a_full_fit(outliers):
    q, c = two_view_matches(10000, outliers, np.random.default_rng(7))
    full = verify_fundamental(q, c)
    part = verify_fundamental_subset(q, c, 5000)
    assert part.verified and part.inlier_mask.shape == (10000,)
    assert abs(part.num_inliers / full.num_inliers - 1) < 0.03
    # Counted over all matches, not only the 5,000 fitted: about twice what the subset holds.
    assert part.num_inliers > 0.9 * (1 - outliers) * 10000


def test_small_sets_bad_points_and_other_methods_use_the_full_fit():
    q, c = two_view_matches(2000, 0.3, np.random.default_rng(1))
    np.testing.assert_array_equal(verify_fundamental_subset(q, c, 5000).inlier_mask, verify_fundamental(q, c).inlier_mask)
    np.testing.assert_array_equal(verify_fundamental_subset(q, c, 0).inlier_mask, verify_fundamental(q, c).inlier_mask)
    lmeds = verify_fundamental_subset(q, c, 500, method="lmeds")
    np.testing.assert_array_equal(lmeds.inlier_mask, verify_fundamental(q, c, method="lmeds").inlier_mask)
    c[5] = np.nan
    bad = verify_fundamental_subset(q, c, 500)
    assert not bad.verified and "NaN" in bad.reason and bad.inlier_mask.shape == (2000,)


def test_pure_outliers_stay_unconvincing():
    q, c = two_view_matches(10000, 1.0, np.random.default_rng(5))
    part = verify_fundamental_subset(q, c, 5000)
    assert part.num_inliers < 50  # min_inliers' default: no keyframe accepted on noise


@pytest.mark.parametrize("bad", [-1, 3])
def test_max_points_is_validated(bad):
    with pytest.raises(ValueError, match="max_points"):
        DecisionConfig(max_points=bad).validate()
