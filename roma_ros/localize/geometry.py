"""Geometric verification of correspondences with OpenCV.

Dense matchers return many plausible-looking but wrong correspondences; only
those consistent with one two-view epipolar geometry (a fundamental matrix)
are evidence that two images show the same place. Bad input (too few points,
NaN, degenerate layouts) is a normal outcome of matching, so it is reported as
``verified=False`` with a reason instead of an exception; only a wrong
configuration (unknown method, impossible thresholds) raises.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import cv2
import numpy as np

from roma_ros.matching.base import Matches

RANSAC_METHODS: dict[str, int] = {
    "usac_magsac": cv2.USAC_MAGSAC,
    "ransac": cv2.FM_RANSAC,
    "lmeds": cv2.FM_LMEDS,
}

# The 8-point algorithm needs eight correspondences; OpenCV's robust estimators refuse fewer.
MIN_CORRESPONDENCES = 8
# Points whose RMS distance from their best-fit line is below this (px) are treated as collinear.
_COLLINEAR_TOL_PX = 1e-3


@dataclass
class Verification:
    """Outcome of one fundamental-matrix check.

    ``inlier_mask`` is aligned with the input correspondences (same order) so
    callers can index their own arrays with it; ``reason`` is empty when
    verified and otherwise a sentence for logs and diagnostics.
    """

    verified: bool
    F: np.ndarray | None
    inlier_mask: np.ndarray
    reason: str = ""

    @property
    def num_inliers(self) -> int:
        return int(np.count_nonzero(self.inlier_mask))


def check_ransac_config(method: str, threshold: float, confidence: float, max_iters: int) -> None:
    """Raise ValueError for settings no data could make work (configuration errors)."""
    if method not in RANSAC_METHODS:
        raise ValueError(f"unknown method '{method}': choose one of {', '.join(RANSAC_METHODS)}")
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold={threshold} must be a positive number of pixels")
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence={confidence} must lie strictly between 0 and 1")
    if int(max_iters) != max_iters or max_iters <= 0:
        raise ValueError(f"max_iters={max_iters} must be a positive integer")


def as_point_pairs(
    kpts_query: np.ndarray | None, kpts_candidate: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Both keypoint arrays as (N, 2) float64 (None or empty: (0, 2)).

    Wrong shapes or lengths are a caller bug, not bad data, so they raise ValueError.
    """
    out = []
    for kpts, which in ((kpts_query, "kpts_query"), (kpts_candidate, "kpts_candidate")):
        pts = np.zeros((0, 2)) if kpts is None else np.asarray(kpts, dtype=np.float64)
        if pts.size == 0:
            pts = pts.reshape(0, 2)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"{which} must have shape (N, 2), got {pts.shape}")
        out.append(np.ascontiguousarray(pts))
    if len(out[0]) != len(out[1]):
        raise ValueError(f"kpts_query has {len(out[0])} points but kpts_candidate has {len(out[1])}")
    return out[0], out[1]


def _degeneracy(pts: np.ndarray) -> str:
    """Why these points cannot constrain F on their own ("" if they can)."""
    centred = pts - pts.mean(axis=0)
    if not np.any(np.abs(centred) > _COLLINEAR_TOL_PX):
        return "all points are identical"
    singular = np.linalg.svd(centred, compute_uv=False)
    if singular[-1] / np.sqrt(len(pts)) < _COLLINEAR_TOL_PX:
        return "all points lie on one line"
    return ""


def verify_fundamental(
    kpts_query: np.ndarray,
    kpts_candidate: np.ndarray,
    method: str = "usac_magsac",
    threshold: float = 0.2,
    confidence: float = 0.999999,
    max_iters: int = 10000,
) -> Verification:
    """Estimate F robustly and report which correspondences are inliers.

    ``threshold`` is in pixels (ignored by LMedS, which picks its own). Never
    raises for bad data; raises ValueError for invalid settings or arrays of
    mismatched shape.
    """
    check_ransac_config(method, threshold, confidence, max_iters)
    q, c = as_point_pairs(kpts_query, kpts_candidate)
    n = len(q)
    none = np.zeros(n, dtype=bool)

    def rejected(reason: str) -> Verification:
        return Verification(False, None, none.copy(), reason)

    if n < MIN_CORRESPONDENCES:
        return rejected(f"only {n} correspondences, need at least {MIN_CORRESPONDENCES}")
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(c))):
        return rejected("coordinates contain NaN or inf")
    for pts, which in ((q, "query"), (c, "candidate")):
        why = _degeneracy(pts)
        if why:
            return rejected(f"degenerate configuration: {why} in the {which} image")

    try:
        F, mask = cv2.findFundamentalMat(
            q, c, RANSAC_METHODS[method], float(threshold), float(confidence), int(max_iters)
        )
    except cv2.error as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        return rejected(f"OpenCV failed to estimate a fundamental matrix: {message}")

    if F is None or F.size == 0 or mask is None:
        return rejected("degenerate configuration: OpenCV found no fundamental matrix")
    # The 7-point solver can return up to three stacked solutions (9x3); take the first.
    F = np.asarray(F, dtype=np.float64).reshape(-1, 3, 3)[0]
    if not np.all(np.isfinite(F)) or not np.any(F):
        return rejected("degenerate configuration: OpenCV returned an invalid fundamental matrix")
    inliers = np.asarray(mask).reshape(-1).astype(bool)
    if inliers.shape != (n,):
        return rejected(f"OpenCV returned an inlier mask of {inliers.size} entries for {n} correspondences")
    if not inliers.any():
        return rejected("no correspondence agrees with the estimated fundamental matrix")
    return Verification(True, F, inliers, "")


def sampson_distance(F: np.ndarray, kpts_query: np.ndarray, kpts_candidate: np.ndarray) -> np.ndarray:
    """First-order geometric distance (pixels) of each correspondence from F's epipolar
    geometry: what OpenCV's USAC estimators compare with the threshold for the inlier mask."""
    ones = np.ones((len(kpts_query), 1))
    x_q, x_c = np.hstack((kpts_query, ones)), np.hstack((kpts_candidate, ones))
    line_c, line_q = x_q @ F.T, x_c @ F  # epipolar lines in the candidate and query images
    residual = np.einsum("ij,ij->i", x_c, line_c)
    norm = line_c[:, 0] ** 2 + line_c[:, 1] ** 2 + line_q[:, 0] ** 2 + line_q[:, 1] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(residual) / np.sqrt(norm)


def verify_fundamental_subset(kpts_query: np.ndarray, kpts_candidate: np.ndarray, max_points: int,
                              method: str = "usac_magsac", threshold: float = 0.2, **kw: Any) -> Verification:
    """``verify_fundamental`` fitted on at most ``max_points`` evenly spread correspondences;
    the inliers are then counted over all of them with the fitted F (Sampson distance below
    ``threshold``, as USAC marks them), so counts stay comparable with a full fit.

    The robust fit's cost grows with the points it scores; RoMa's own benchmarks fit on
    5,000 samples. bench/verify_samples.py states how far the counts move. Only
    ``usac_magsac`` is fitted on a subset (``ransac`` and ``lmeds`` mark inliers by other
    rules); ``max_points`` 0 fits on all.
    """
    q, c = as_point_pairs(kpts_query, kpts_candidate)
    n = len(q)
    if (not max_points or n <= max_points or method != "usac_magsac"
            or not (np.all(np.isfinite(q)) and np.all(np.isfinite(c)))):
        return verify_fundamental(q, c, method=method, threshold=threshold, **kw)
    pick = np.linspace(0, n - 1, max_points).round().astype(np.int64)
    fit = verify_fundamental(q[pick], c[pick], method=method, threshold=threshold, **kw)
    if not fit.verified:
        return Verification(False, None, np.zeros(n, dtype=bool), fit.reason)
    inliers = sampson_distance(fit.F, q, c) < threshold
    inliers[pick] |= fit.inlier_mask  # the fit's own inliers stay inliers, whatever rounding says
    return Verification(True, fit.F, inliers, "")


def verify_matches(matches: Matches, **kw: Any) -> Verification:
    """``verify_fundamental`` on a ``Matches`` object; keyword arguments pass through."""
    return verify_fundamental(matches.kpts_query, matches.kpts_candidate, **kw)


def inlier_counts_for_thresholds(
    kpts_q: np.ndarray, kpts_c: np.ndarray, thresholds: Iterable[float], **kw: Any
) -> list[int]:
    """Inlier count at each threshold: the RoMa paper's threshold ablation, on our data.

    Unverified outcomes count as 0 inliers.
    """
    return [verify_fundamental(kpts_q, kpts_c, threshold=float(t), **kw).num_inliers for t in thresholds]
