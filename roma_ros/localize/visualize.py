"""Debug images and plots: what a person looks at to judge a match.

Everything returns or writes plain RGB uint8 arrays / PNG files, so the node
can publish the image and the CLI can save it without any ROS dependency.
Keypoints use the ``Matches`` convention (pixel centres at +0.5).
"""
from __future__ import annotations

import os
import tempfile
from typing import Sequence

import cv2
import numpy as np

from roma_ros.localize.geometry import as_point_pairs
from roma_ros.matching.base import check_rgb_image

OUTLIER_COLOUR = (235, 70, 70)  # red: matched but rejected by the geometry check
INLIER_COLOUR = (60, 220, 90)  # green: survived verification
BANNER_BG = (25, 25, 25)
BANNER_FG = (255, 255, 255)
BANNER_HEIGHT = 28
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SHIFT = 4  # sub-pixel drawing: coordinates are passed to OpenCV multiplied by 2**_SHIFT
_COORD_LIMIT = 1e4  # keypoints far outside the image are clamped so int conversion cannot overflow


def _as_rgb(image: np.ndarray, what: str) -> np.ndarray:
    """(H, W, 3) uint8 copy; grayscale (H, W) or (H, W, 1) is expanded, anything else raises."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    check_rgb_image(image, what)
    return np.ascontiguousarray(image).copy()


def _fixed(pt: np.ndarray) -> tuple[int, int]:
    """Matches-convention point -> OpenCV fixed-point pixel coordinates (for shift=_SHIFT)."""
    xy = np.clip(pt - 0.5, -_COORD_LIMIT, _COORD_LIMIT) * (1 << _SHIFT)
    return int(round(xy[0])), int(round(xy[1]))


def _line_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct, saturated colours (hues spread around the wheel) so lines can be told apart."""
    if n == 0:
        return []
    hues = (np.arange(n) * 180.0 / max(n, 1)).astype(np.uint8).reshape(-1, 1, 1)
    hsv = np.concatenate([hues, np.full_like(hues, 230), np.full_like(hues, 255)], axis=2)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(-1, 3)
    return [tuple(int(v) for v in c) for c in rgb]


def _resize_to_height(image: np.ndarray, height: int) -> tuple[np.ndarray, float]:
    scale = height / image.shape[0]
    if scale == 1.0:
        return image, 1.0
    width = max(1, int(round(image.shape[1] * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp), scale


def _banner(text: str, width: int) -> np.ndarray:
    """Dark strip with white text, so the caption reads on any image."""
    strip = np.empty((BANNER_HEIGHT, width, 3), np.uint8)
    strip[:] = BANNER_BG
    cv2.putText(strip, text, (6, BANNER_HEIGHT - 9), _FONT, 0.55, BANNER_FG, 1, cv2.LINE_AA)
    return strip


def draw_matches(
    query_rgb: np.ndarray,
    candidate_rgb: np.ndarray,
    kpts_query: np.ndarray,
    kpts_candidate: np.ndarray,
    inlier_mask: np.ndarray | None = None,
    max_lines: int = 50,
    text: str | None = None,
    line_order: np.ndarray | None = None,
    height: int | None = None,
) -> np.ndarray:
    """Query (left) and candidate (right) side by side with keypoints, inlier lines and a caption.

    All keypoints get small circles: outliers red, inliers green (no mask: all
    inliers). Lines join up to ``max_lines`` inlier pairs (0: none, -1: all),
    taken in index order or in ``line_order`` (match indices, e.g.
    ``np.argsort(-certainty)``), each in its own colour. ``height`` rescales
    both images (and keypoints) to a common height; otherwise the shorter one
    is padded with black below. ``text`` adds a dark banner of
    ``BANNER_HEIGHT`` rows on top. Returns RGB uint8 of shape
    (banner + max height, sum of widths, 3).
    """
    left = _as_rgb(query_rgb, "query_rgb")
    right = _as_rgb(candidate_rgb, "candidate_rgb")
    kq, kc = as_point_pairs(kpts_query, kpts_candidate)
    n = len(kq)
    inliers = np.ones(n, bool) if inlier_mask is None else np.asarray(inlier_mask, dtype=bool).reshape(-1)
    if len(inliers) != n:
        raise ValueError(f"inlier_mask has {len(inliers)} entries for {n} matches")
    if max_lines < -1:
        raise ValueError(f"max_lines={max_lines} must be >= 0, or -1 for all")

    if height is not None:
        if height <= 0:
            raise ValueError(f"height={height} must be positive")
        left, sq = _resize_to_height(left, int(height))
        right, sc = _resize_to_height(right, int(height))
        kq, kc = kq * sq, kc * sc
    h = max(left.shape[0], right.shape[0])
    offset = left.shape[1]
    canvas = np.zeros((h, offset + right.shape[1], 3), np.uint8)
    canvas[: left.shape[0], :offset] = left
    canvas[: right.shape[0], offset:] = right
    kc_canvas = kc + np.array([offset, 0.0])

    finite = np.all(np.isfinite(kq), axis=1) & np.all(np.isfinite(kc), axis=1)
    radius = max(2, int(round(h / 240))) << _SHIFT
    # Outliers first, so inliers stay visible where they overlap.
    for group, colour in ((~inliers, OUTLIER_COLOUR), (inliers, INLIER_COLOUR)):
        for i in np.flatnonzero(group & finite):
            for pt in (kq[i], kc_canvas[i]):
                cv2.circle(canvas, _fixed(pt), radius, colour, 1, cv2.LINE_AA, _SHIFT)

    order = np.arange(n) if line_order is None else np.asarray(line_order, dtype=np.int64).reshape(-1)
    if order.size and (order.min() < 0 or order.max() >= n):
        raise ValueError(f"line_order holds indices outside [0, {n})")
    order = order[inliers[order] & finite[order]]
    if max_lines >= 0:
        order = order[:max_lines]
    for i, colour in zip(order, _line_colours(len(order))):
        cv2.line(canvas, _fixed(kq[i]), _fixed(kc_canvas[i]), colour, 1, cv2.LINE_AA, _SHIFT)

    if text is not None:
        canvas = np.concatenate([_banner(text, canvas.shape[1]), canvas], axis=0)
    return canvas


def plot_inliers_vs_threshold(
    thresholds: Sequence[float], counts: Sequence[int], path: str | os.PathLike
) -> str:
    """Plot inlier count against RANSAC threshold (px) and write it atomically to ``path``.

    Uses matplotlib's Agg canvas directly (no pyplot), so it never touches a
    display or the global backend. Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    if len(thresholds) != len(counts):
        raise ValueError(f"{len(thresholds)} thresholds but {len(counts)} counts")
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(thresholds, counts, marker="o")
    if len(thresholds) and thresholds.min() > 0 and thresholds.max() >= 10 * thresholds.min():
        ax.set_xscale("log")
    ax.set_xlabel("RANSAC threshold (px)")
    ax.set_ylabel("inliers")
    ax.set_title("Inliers vs. fundamental-matrix threshold")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1] or ".png"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=suffix.lstrip(".").lower() or "png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
