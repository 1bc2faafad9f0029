"""Debug image layout, what gets drawn where, and the threshold plot file."""
from __future__ import annotations

import os

import numpy as np
import pytest

from roma_ros.localize.visualize import (
    BANNER_BG,
    BANNER_HEIGHT,
    INLIER_COLOUR,
    OUTLIER_COLOUR,
    draw_matches,
    plot_inliers_vs_threshold,
)

GREY = 90


def images(hq: int = 200, wq: int = 300, hc: int = 150, wc: int = 250):
    return np.full((hq, wq, 3), GREY, np.uint8), np.full((hc, wc, 3), GREY, np.uint8)


def horizontal_matches(n: int = 10):
    """Match i joins (50, 15 + 12 i) in the query to (100, 15 + 12 i) in the candidate: parallel lines."""
    y = 15.5 + 12.0 * np.arange(n)
    return np.stack([np.full(n, 50.5), y], 1), np.stack([np.full(n, 100.5), y], 1)


X_MID = int((50 + 300 + 100) / 2)  # halfway along the horizontal lines, far from both circles


def lines_drawn(out: np.ndarray, plain: np.ndarray, kq: np.ndarray) -> list[int]:
    """Indices of the horizontal matches whose line midpoint differs from the plain canvas."""
    rows = [slice(y - 1, y + 2) for y in kq[:, 1].astype(int)]
    return [i for i, r in enumerate(rows) if np.any(out[r, X_MID] != plain[r, X_MID])]


def test_shape_and_layout_with_banner():
    q, c = images()
    q[:] = (10, 20, 30)
    c[:] = (200, 100, 50)
    out = draw_matches(q, c, np.zeros((0, 2)), np.zeros((0, 2)), text="keyframe 3 | 0 matches")
    assert out.shape == (BANNER_HEIGHT + 200, 300 + 250, 3) and out.dtype == np.uint8
    body = out[BANNER_HEIGHT:]
    assert np.array_equal(body[:200, :300], q)
    assert np.array_equal(body[:150, 300:], c)
    assert not body[150:, 300:].any()  # shorter candidate padded with black
    banner = out[:BANNER_HEIGHT]
    # Dark background, with light text pixels on it.
    assert np.median(banner.reshape(-1, 3), axis=0).tolist() == list(BANNER_BG)
    assert banner.max() >= 200 and np.count_nonzero(banner.max(axis=2) >= 200) > 50


def test_no_text_no_banner_and_zero_matches():
    q, c = images()
    out = draw_matches(q, c, None, None)
    assert out.shape == (200, 550, 3)
    assert np.array_equal(out[:200, :300], q)
    none = np.zeros((0, 2))
    empty = draw_matches(q, c, none, none, inlier_mask=np.zeros(0, bool), max_lines=-1)
    assert np.array_equal(empty, out)


def test_common_height_rescales_images_and_keypoints():
    q, c = images(hq=200, wq=300, hc=100, wc=100)
    out = draw_matches(q, c, [[150.0, 100.0]], [[50.0, 50.0]], max_lines=0, height=100)
    assert out.shape == (100, 150 + 100, 3)
    # Query keypoint (150, 100) lands at (75, 50) after halving; its circle ring is drawn around it.
    ring = out[45:56, 70:81]
    assert np.any(np.all(ring == INLIER_COLOUR, axis=-1) | (np.abs(ring.astype(int) - GREY).sum(-1) > 60))
    assert np.array_equal(out[:30, :30], q[:30, :30])  # far from the keypoint: untouched


def test_keypoint_colours_follow_inlier_mask():
    q, c = images()
    kq, kc = horizontal_matches(2)
    out = draw_matches(q, c, kq, kc, inlier_mask=np.array([True, False]), max_lines=0)

    def colours_near(x: float, y: float) -> set[tuple[int, ...]]:
        patch = out[int(y) - 4 : int(y) + 5, int(x) - 4 : int(x) + 5].reshape(-1, 3)
        return {tuple(int(v) for v in p) for p in patch}

    assert INLIER_COLOUR in colours_near(*kq[0]) and OUTLIER_COLOUR not in colours_near(*kq[0])
    assert OUTLIER_COLOUR in colours_near(*kq[1]) and INLIER_COLOUR not in colours_near(*kq[1])
    # Candidate keypoints are drawn shifted by the query width.
    assert INLIER_COLOUR in colours_near(kc[0, 0] + 300, kc[0, 1])
    assert OUTLIER_COLOUR in colours_near(kc[1, 0] + 300, kc[1, 1])


def test_lines_only_for_inliers_and_max_lines_respected():
    q, c = images()
    kq, kc = horizontal_matches(10)
    plain = draw_matches(q, c, kq, kc, max_lines=0)
    five = draw_matches(q, c, kq, kc, max_lines=5)
    assert lines_drawn(five, plain, kq) == [0, 1, 2, 3, 4]
    # Everything outside the drawn lines' band is identical to the plain image.
    assert np.array_equal(five[int(kq[5, 1]) + 3 :], plain[int(kq[5, 1]) + 3 :])
    assert lines_drawn(draw_matches(q, c, kq, kc, max_lines=-1), plain, kq) == list(range(10))

    mask = np.zeros(10, bool)
    mask[[2, 7]] = True
    some = draw_matches(q, c, kq, kc, inlier_mask=mask, max_lines=50)
    assert lines_drawn(some, draw_matches(q, c, kq, kc, inlier_mask=mask, max_lines=0), kq) == [2, 7]

    # Line order: the three most certain matches get lines, each in its own colour.
    certainty = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.5, 0.0])
    best = draw_matches(q, c, kq, kc, max_lines=3, line_order=np.argsort(-certainty))
    assert lines_drawn(best, plain, kq) == [1, 3, 5]
    assert len({tuple(best[int(kq[i, 1]), X_MID]) for i in (1, 3, 5)}) == 3


def test_bad_arguments_raise():
    q, c = images()
    kq, kc = horizontal_matches(3)
    with pytest.raises(ValueError):
        draw_matches(q.astype(np.float32), c, kq, kc)
    with pytest.raises(ValueError):
        draw_matches(q, c, kq, kc[:2])
    with pytest.raises(ValueError):
        draw_matches(q, c, kq, kc, inlier_mask=np.ones(2, bool))
    with pytest.raises(ValueError):
        draw_matches(q, c, kq, kc, max_lines=-2)
    with pytest.raises(ValueError):
        draw_matches(q, c, kq, kc, line_order=[0, 5])


def test_nan_and_far_keypoints_do_not_crash():
    q, c = images()
    kq = np.array([[np.nan, 3.0], [1e9, -1e9], [10.0, 10.0]])
    kc = np.array([[5.0, 5.0], [20.0, 20.0], [np.inf, 0.0]])
    out = draw_matches(q, c, kq, kc, max_lines=-1, text="x")
    assert out.shape == (BANNER_HEIGHT + 200, 550, 3)


def test_plot_written_atomically_as_png(tmp_path):
    path = tmp_path / "ablation.png"
    written = plot_inliers_vs_threshold([0.1, 0.2, 0.5, 1.0, 2.0], [10, 50, 300, 420, 430], path)
    assert os.fspath(written) == os.fspath(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert sorted(os.listdir(tmp_path)) == ["ablation.png"]  # no temp file left behind
    plot_inliers_vs_threshold([1, 2], [3, 4], path)  # overwriting works
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError):
        plot_inliers_vs_threshold([1, 2], [3], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
