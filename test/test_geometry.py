"""Fundamental-matrix verification on a real two-view geometry with known outliers.

A single homography makes F under-determined (every point on one plane), so the
true correspondences here come from random 3D points seen by two calibrated
cameras; outliers are uniform random pairs.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from roma_ros.localize import geometry
from roma_ros.localize.geometry import (
    RANSAC_METHODS,
    Verification,
    inlier_counts_for_thresholds,
    verify_fundamental,
    verify_matches,
)
from roma_ros.matching.base import Matches

SIZE = (480, 640)  # height, width


def two_view(rng: np.random.Generator, n_true: int, n_out: int, noise_px: float = 0.3):
    """Shuffled (kpts_q, kpts_c, is_true) from a 3D scene seen by two cameras."""
    h, w = SIZE
    K = np.array([[500.0, 0, w / 2], [0, 500.0, h / 2], [0, 0, 1]])
    R = cv2.Rodrigues(np.array([0.05, np.deg2rad(20), 0.02]))[0]
    t = np.array([-2.0, 0.2, 0.5])

    def project(X: np.ndarray) -> np.ndarray:
        x = X @ K.T
        return x[:, :2] / x[:, 2:]

    def inside(p: np.ndarray) -> np.ndarray:
        return (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)

    X = rng.uniform((-3, -2, 4), (3, 2, 12), size=(4 * n_true, 3))
    Xc = X @ R.T + t
    q, c = project(X), project(Xc)
    ok = (Xc[:, 2] > 0.5) & inside(q) & inside(c)
    assert ok.sum() >= n_true
    q = q[ok][:n_true] + rng.normal(0, noise_px, (n_true, 2))
    c = c[ok][:n_true] + rng.normal(0, noise_px, (n_true, 2))
    out_q = rng.uniform((0, 0), (w, h), (n_out, 2))
    out_c = rng.uniform((0, 0), (w, h), (n_out, 2))
    kq, kc = np.concatenate([q, out_q]), np.concatenate([c, out_c])
    is_true = np.r_[np.ones(n_true, bool), np.zeros(n_out, bool)]
    order = rng.permutation(len(is_true))
    return kq[order], kc[order], is_true[order]


@pytest.fixture(scope="module")
def scene():
    return two_view(np.random.default_rng(0), n_true=400, n_out=200)


def epipolar_distance(F: np.ndarray, q: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Distance (px) of each candidate point from the epipolar line of its query point."""
    lines = np.concatenate([q, np.ones((len(q), 1))], 1) @ F.T
    return np.abs(np.sum(lines[:, :2] * c, 1) + lines[:, 2]) / np.linalg.norm(lines[:, :2], axis=1)


def test_magsac_keeps_true_and_rejects_outliers(scene):
    kq, kc, is_true = scene
    v = verify_fundamental(kq, kc, threshold=1.0)
    assert v.verified and v.reason == ""
    assert v.F.shape == (3, 3) and v.F.dtype == np.float64
    assert v.inlier_mask.shape == (600,) and v.inlier_mask.dtype == bool
    kept = np.count_nonzero(v.inlier_mask & is_true)
    rejected = np.count_nonzero(~v.inlier_mask & ~is_true)
    assert kept >= 380  # >= 95 % of 400 true correspondences
    assert rejected >= 190  # >= 95 % of 200 outliers
    assert v.num_inliers == np.count_nonzero(v.inlier_mask)
    # The estimated F explains the noise-free geometry: true points lie near its epipolar lines.
    assert np.median(epipolar_distance(v.F, kq[is_true], kc[is_true])) < 0.6


def test_inlier_mask_follows_input_order(scene):
    kq, kc, is_true = scene
    v = verify_fundamental(kq, kc, threshold=1.0)
    perm = np.random.default_rng(5).permutation(len(kq))
    v_perm = verify_fundamental(kq[perm], kc[perm], threshold=1.0)
    # The mask of the permuted input must mark the same correspondences (allow RANSAC jitter).
    agree = np.mean(v_perm.inlier_mask == v.inlier_mask[perm])
    assert agree >= 0.98
    # And it is aligned with the labels in their own order, not sorted or compacted.
    assert np.mean(v_perm.inlier_mask == is_true[perm]) >= 0.95


@pytest.mark.parametrize("method", sorted(RANSAC_METHODS))
def test_every_method_separates_true_from_false(scene, method):
    kq, kc, is_true = scene
    # Plain 8-point RANSAC has no local optimisation, so its F is rougher: give it 2 px.
    v = verify_fundamental(kq, kc, method=method, threshold=2.0)
    assert v.verified, v.reason
    assert np.count_nonzero(v.inlier_mask & is_true) >= 0.9 * 400
    assert np.count_nonzero(~v.inlier_mask & ~is_true) >= 0.95 * 200


def test_verify_matches_wraps_matches(scene):
    kq, kc, is_true = scene
    m = Matches(kq, kc, np.ones(len(kq)))
    v = verify_matches(m, threshold=1.0, method="usac_magsac")
    assert v.verified and np.count_nonzero(v.inlier_mask & is_true) >= 380


def test_threshold_ablation_counts_grow_with_threshold(scene):
    kq, kc, is_true = scene
    thresholds = [0.1, 0.25, 0.5, 1.0, 2.0, 4.0]
    counts = inlier_counts_for_thresholds(kq, kc, thresholds)
    assert len(counts) == len(thresholds) and all(isinstance(c, int) for c in counts)
    assert all(b >= a for a, b in zip(counts, counts[1:])), counts
    assert counts[0] < 0.5 * 400  # 0.1 px cuts most of the 0.3 px-noise true matches
    assert 380 <= counts[3] <= 420  # 1 px: the true ones and only a few lucky outliers


def test_too_few_points():
    rng = np.random.default_rng(1)
    v = verify_fundamental(rng.uniform(0, 100, (7, 2)), rng.uniform(0, 100, (7, 2)))
    assert not v.verified and v.F is None
    assert v.inlier_mask.shape == (7,) and not v.inlier_mask.any()
    assert "only 7 correspondences" in v.reason and "8" in v.reason
    empty = verify_fundamental(np.zeros((0, 2)), np.zeros((0, 2)))
    assert not empty.verified and empty.inlier_mask.shape == (0,) and empty.num_inliers == 0


def test_nan_and_inf(scene):
    kq, kc, _ = scene
    for bad in (np.nan, np.inf):
        q = kq.copy()
        q[17, 1] = bad
        v = verify_fundamental(q, kc)
        assert not v.verified and v.F is None and v.num_inliers == 0
        assert v.inlier_mask.shape == (len(kq),)
        assert "NaN or inf" in v.reason


def test_identical_and_collinear_points():
    rng = np.random.default_rng(2)
    spread = rng.uniform(0, 400, (50, 2))
    same = np.tile([[123.0, 45.0]], (50, 1))
    v = verify_fundamental(same, spread)
    assert not v.verified and "degenerate" in v.reason and "identical" in v.reason
    x = rng.uniform(0, 600, 50)
    line = np.stack([x, 0.5 * x + 10], 1)
    v = verify_fundamental(spread, line)
    assert not v.verified and "degenerate" in v.reason and "line" in v.reason and "candidate" in v.reason
    assert v.inlier_mask.shape == (50,) and not v.inlier_mask.any()


def test_config_errors_raise():
    pts = np.random.default_rng(3).uniform(0, 100, (20, 2))
    with pytest.raises(ValueError, match="usac_magsac"):
        verify_fundamental(pts, pts, method="magic")
    with pytest.raises(ValueError, match="threshold"):
        verify_fundamental(pts, pts, threshold=0.0)
    with pytest.raises(ValueError, match="confidence"):
        verify_fundamental(pts, pts, confidence=1.0)
    with pytest.raises(ValueError, match="max_iters"):
        verify_fundamental(pts, pts, max_iters=0)
    with pytest.raises(ValueError, match="20 points"):
        verify_fundamental(pts, pts[:10])


def test_opencv_quirks_are_handled(scene, monkeypatch):
    kq, kc, _ = scene
    stacked = np.vstack([np.eye(3) * (i + 1) for i in range(3)])  # 9x3, as the 7-point solver returns
    mask = np.zeros((len(kq), 1), np.uint8)
    mask[::2] = 1
    monkeypatch.setattr(geometry.cv2, "findFundamentalMat", lambda *a, **k: (stacked, mask))
    v = verify_fundamental(kq, kc)
    assert v.verified and np.array_equal(v.F, np.eye(3)) and v.num_inliers == (len(kq) + 1) // 2

    monkeypatch.setattr(geometry.cv2, "findFundamentalMat", lambda *a, **k: (stacked, None))
    v = verify_fundamental(kq, kc)
    assert not v.verified and v.F is None and "no fundamental matrix" in v.reason

    monkeypatch.setattr(geometry.cv2, "findFundamentalMat", lambda *a, **k: (None, None))
    assert "no fundamental matrix" in verify_fundamental(kq, kc).reason

    def boom(*a, **k):
        raise cv2.error("synthetic failure")

    monkeypatch.setattr(geometry.cv2, "findFundamentalMat", boom)
    v = verify_fundamental(kq, kc)
    assert not v.verified and isinstance(v, Verification) and "OpenCV" in v.reason
    assert v.inlier_mask.shape == (len(kq),) and not v.inlier_mask.any()
