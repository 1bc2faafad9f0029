"""The SIFT baseline on real photos under known viewpoint and photometric change."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from roma_ros.localize.geometry import verify_matches
from roma_ros.matching.base import Matches, MatcherConfig
from roma_ros.matching.registry import build_matcher
from roma_ros.matching.classical import ClassicalMatcher
from roma_ros.demo.photo_pairs import (
    PHOTO_NAMES,
    correspondences_with_outliers,
    ground_truth_error,
    load_photo,
    make_pair,
    project,
    warp_pair,
)


@pytest.fixture(scope="module")
def matcher() -> ClassicalMatcher:
    return ClassicalMatcher()


# (photo, seed): strong perspective + rotation + scale, all with brightness/contrast/gamma/noise change.
PAIRS = [("astronaut", 0), ("chelsea", 2), ("camera", 1)]


@pytest.mark.parametrize("name,seed", PAIRS)
def test_matches_follow_ground_truth(matcher, name, seed):
    pair = make_pair(name, seed)
    m = matcher.match(pair.query, pair.candidate)
    assert isinstance(m, Matches)
    assert len(m) >= 150
    err = pair.error(m.kpts_query, m.kpts_candidate)
    assert np.mean(err < 3.0) >= 0.85
    assert np.median(err) < 1.0
    # Coordinates are pixels of the original images.
    for kpts, img in ((m.kpts_query, pair.query), (m.kpts_candidate, pair.candidate)):
        assert kpts.min() >= 0 and np.all(kpts.max(axis=0) <= [img.shape[1], img.shape[0]])
    # Certainty: 1 - d1/d2 of a 0.8 ratio test lies in (0.2, 1], sorted best first.
    assert m.certainty.min() >= 0.2 - 1e-6 and m.certainty.max() <= 1.0
    assert np.all(np.diff(m.certainty) <= 0)


def test_ratio_test_and_certainty_are_meaningful(matcher):
    pair = make_pair("chelsea", 2)
    loose = ClassicalMatcher(ratio=0.95).match(pair.query, pair.candidate)
    strict = ClassicalMatcher(ratio=0.6).match(pair.query, pair.candidate)
    assert len(strict) < len(loose)
    assert np.mean(pair.error(strict.kpts_query, strict.kpts_candidate) < 3) > np.mean(
        pair.error(loose.kpts_query, loose.kpts_candidate) < 3
    )
    # Mutual nearest neighbours, and SIFT's per-orientation twins merged: no location used twice.
    m = matcher.match(pair.query, pair.candidate)
    assert len(np.unique(m.kpts_query, axis=0)) == len(m)
    assert len(np.unique(m.kpts_candidate, axis=0)) == len(m)


def test_unrelated_photos_give_few_verified_inliers(matcher):
    true_pair = make_pair("astronaut", 0)
    other = make_pair("coffee", 0)
    true_v = verify_matches(matcher.match(true_pair.query, true_pair.candidate), threshold=1.0)
    wrong_v = verify_matches(matcher.match(true_pair.query, other.candidate), threshold=1.0)
    assert true_v.verified and true_v.num_inliers >= 300
    assert wrong_v.num_inliers <= 40
    assert wrong_v.num_inliers * 10 <= true_v.num_inliers


def test_featureless_image_gives_empty_matches(matcher):
    flat = np.full((240, 320, 3), 128, np.uint8)
    pair = make_pair("astronaut", 0)
    for q, c in ((flat, pair.candidate), (pair.query, flat)):
        m = matcher.match(q, c)
        assert len(m) == 0 and m.kpts_query.shape == (0, 2)


def test_bad_inputs_raise(matcher):
    good = np.zeros((32, 32, 3), np.uint8)
    bad = {
        "uint8": good.astype(np.float32),
        "(H, W, 3)": np.zeros((32, 32), np.uint8),
        "RGB": np.zeros((32, 32, 4), np.uint8),
        "empty": np.zeros((0, 32, 3), np.uint8),
    }
    for words, image in bad.items():
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            matcher.match(image, good)
        with pytest.raises(ValueError, match="candidate"):
            matcher.match(good, image)
    with pytest.raises(ValueError, match="num_features"):
        ClassicalMatcher(num_features=0)
    with pytest.raises(ValueError, match="ratio"):
        ClassicalMatcher(ratio=1.5)


def test_keypoints_follow_an_exact_half_turn(matcher):
    """SIFT on a photo and on it turned by 180 degrees finds the same points, exactly mapped.

    The half turn moves the pixel centre x (Matches convention, +0.5) to W - x, with no
    resampling, so any constant keypoint shift shows up doubled: OpenCV's default image
    doubling shifts every keypoint by 0.25 px (opencv/opencv#23123), 0.5 px here.
    """
    if not matcher.precise_upscale:
        pytest.skip(f"OpenCV {cv2.__version__} has no SIFT enable_precise_upscale: keypoints keep the 0.25 px shift")
    image = load_photo("astronaut")
    height, width = image.shape[:2]
    points = matcher.prepare(image).points
    turned = matcher.prepare(np.ascontiguousarray(image[::-1, ::-1])).points
    turned_back = np.array([width, height]) - turned
    offsets = points[:, None, :] - turned_back[None, :, :]
    nearest = np.linalg.norm(offsets, axis=2).argmin(axis=1)
    offset = offsets[np.arange(len(points)), nearest]
    same = np.linalg.norm(offset, axis=1) < 1.0
    assert same.sum() >= 0.8 * len(points)
    assert np.all(np.abs(np.median(offset[same], axis=0)) < 0.05)  # 0.5 with the default doubling


def test_older_opencv_falls_back_to_the_default_sift(monkeypatch):
    """OpenCV 4.5 (Ubuntu 22.04, ROS Humble) rejects the keyword; the matcher still builds and works."""
    real_create = cv2.SIFT_create

    def old_create(*args, **kwargs):
        if "enable_precise_upscale" in kwargs:
            raise cv2.error("'enable_precise_upscale' is an invalid keyword argument for SIFT_create()")
        return real_create(*args, **kwargs)

    monkeypatch.setattr(cv2, "SIFT_create", old_create)
    old = ClassicalMatcher()
    assert not old.precise_upscale
    pair = make_pair("astronaut", 0)
    m = old.match(pair.query, pair.candidate)
    assert len(m) >= 150 and np.median(pair.error(m.kpts_query, m.kpts_candidate)) < 1.0


def test_built_by_name():
    m = build_matcher(MatcherConfig(model="classical", extra={"num_features": 500}))
    assert isinstance(m, ClassicalMatcher) and m.name == "classical" and m.device == "cpu"
    assert m.num_features == 500


def test_ground_truth_the_accuracy_checks_rely_on():
    """The test pairs' H really maps query pixels onto the candidate (Matches pixel convention)."""
    # A smooth blob centred at (20, 15); pixel (i, j) has its centre at (j + 0.5, i + 0.5).
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    blob = 250 * np.exp(-((xs - 20.0) ** 2 + (ys - 15.0) ** 2) / (2 * 2.5**2))
    image = np.repeat(np.rint(blob).astype(np.uint8)[:, :, None], 3, axis=2)
    H = np.array([[2.0, 0.2, 3.0], [-0.1, 1.8, 1.0], [0.0, 0.0, 1.0]])  # a half-pixel slip moves 0.5 px
    warped, H_out = warp_pair(image, H, photometric=False)
    assert np.array_equal(H_out, H)
    weight = warped[:, :, 0].astype(float)
    centroid = [np.average(xs, weights=weight), np.average(ys, weights=weight)]
    assert np.allclose(centroid, project(H, [[20.0, 15.0]])[0], atol=0.1)

    pair = make_pair("chelsea", 3)
    assert pair.query.shape == pair.candidate.shape == (480, 640, 3)
    assert pair.query.dtype == pair.candidate.dtype == np.uint8
    assert np.array_equal(make_pair("chelsea", 3).candidate, pair.candidate)  # seeded
    kq, kc, is_true = correspondences_with_outliers(pair, 300, 100, np.random.default_rng(0), noise_px=0.1)
    assert kq.shape == kc.shape == (400, 2) and is_true.sum() == 300
    err = ground_truth_error(pair.H_query_to_candidate, kq, kc)
    assert np.all(err[is_true] < 0.6) and np.mean(err[~is_true] > 5) > 0.95
    for pts in (kq, kc):
        assert pts.min() >= 0 and np.all(pts.max(axis=0) <= [640, 480])
    for name in PHOTO_NAMES:
        photo = load_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3 and photo.std() > 10
