"""Metric relocalization: the query camera's pose from matches against a keyframe with depth.

Matches tell which keyframe a query shows; a keyframe with depth and intrinsics turns them
into 2D-3D correspondences, and PnP in the query camera gives where the camera is, in metres.
Without depth only the rotation and the translation *direction* can be recovered (essential
matrix); that is reported, never published as a pose.

Conventions (docs/pose.md; tests pin them):

- Pixels: x right, y down, pixel (i, j) covers [j, j+1) x [i, i+1), so its centre is
  (j + 0.5, i + 0.5). ``CameraModel`` holds cx, cy in that frame; ROS CameraInfo and
  keyframes.yaml put pixel centres at integers, hence ``CameraModel.from_ros`` adds 0.5.
- The depth of keypoint (u, v) is read at row floor(v), column floor(u): the z coordinate in the
  keyframe camera's optical frame (the ROS depth-image convention), NaN where unknown.
- Relative pose (R, t): the query camera in the keyframe camera's optical frame,
  ``p_keyframe = R @ p_query + t``. The query's map pose is keyframe pose ∘ relative pose.
- Covariance: 6x6 in ROS order (x, y, z, rx, ry, rz); the rotation part is small rotations about
  the fixed axes of the frame the pose is expressed in (``R = exp([dθ]x) R̂``).
- Quaternions are [x, y, z, w].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from roma_ros.core.camera import DISTORTION_LENGTHS, CameraModel
from roma_ros.core.transforms import (
    Pose, matrix_from_quaternion, matrix_to_pose, pose_to_matrix, quaternion_from_matrix, rotation_angle_deg,
)

__all__ = ["DISTORTION_LENGTHS", "CameraModel", "Pose", "matrix_from_quaternion", "matrix_to_pose",
           "pose_to_matrix", "quaternion_from_matrix", "rotation_angle_deg"]  # re-exported for callers

# Fewer points leave a 6-DoF fit without residual degrees of freedom for a covariance.
MIN_PNP_POINTS = 6
_ESSENTIAL_MIN_POINTS = 8
_ESSENTIAL_MAX_POINTS = 1000
_LM_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 20, 1e-10)
# The first refinement only has to make the inlier re-selection unbiased: a subsample will do.
_FIRST_REFINE_POINTS = 1000
# Gauss-Newton steps (rad, m) below this end the weighted refinement: converged.
_LINEAR_STEP = 1e-6
# Weighted Gauss-Newton steps after LM (the weights depend on the pose only weakly).
_WEIGHTED_STEPS = 3
_WEIGHTED_POINTS = 1000


# --------------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------------
@dataclass
class PoseConfig:
    """The pose gates and filters: the node's live ``pose.*`` parameters and roma-match's options.

    Defaults start from the anchors (rtabmap: >= 20 PnP inliers at 2 px; Isaac ROS: >= 40 % of
    the PnP points inliers) and were checked on bench/pose.py (docs/pose.md).
    """

    min_inliers: int = 20             # PnP inliers needed (rtabmap Vis/MinInliers)
    reprojection_threshold: float = 2.0  # px, RANSAC inlier threshold (rtabmap Vis/PnPReprojError)
    max_rmse: float = 1.5             # px, inlier reprojection RMSE after refinement
    min_inlier_ratio: float = 0.4     # PnP inliers / points that reached PnP (Isaac ROS)
    min_depth: float = 0.1            # m
    max_depth: float = 20.0           # m
    max_depth_spread: float = 0.05    # (max - min) / centre depth over 3x3: a depth edge above this
    confidence: float = 0.999         # RANSAC
    max_iterations: int = 1000        # RANSAC
    essential_threshold: float = 0.5  # px, essential-matrix RANSAC (RoMa's pose evaluation uses 0.5)
    # Covariance model (docs/pose.md): keyframe depth noise std = depth_std_a + depth_std_b * z^2
    # (m; Kinect-class structured light is ~1.5 mm at 1 m, ~2.5 cm at 3 m), a match noise of
    # match_std_px per axis in each image; then covariance_scale x max(1, inliers/effective_points),
    # calibrated on the real TUM pairs (test/data/tum_fr1_rpy, even pairs; odd ones held out) for
    # what neither model holds: errors shared by all points (rolling shutter, RGB-depth time offset,
    # misregistration, calibration). A keyframe's ``depth_std: [a, b]`` in keyframes.yaml
    # overrides a and b.
    depth_std_a: float = 0.001        # m
    depth_std_b: float = 0.0025       # 1/m
    match_std_px: float = 0.5         # px
    covariance_scale: float = 16.0    # variance factor, calibrated (docs/pose.md)
    effective_points: int = 20        # information capped at this many points' worth (correlated errors)
    multi_keyframe: bool = True       # one PnP over every accepted keyframe with depth and pose

    def validate(self) -> None:
        """ValueError naming the parameter for settings no data could satisfy."""
        if int(self.min_inliers) != self.min_inliers or self.min_inliers < MIN_PNP_POINTS:
            raise ValueError(f"min_inliers={self.min_inliers} must be an integer >= {MIN_PNP_POINTS}")
        for name in ("reprojection_threshold", "max_rmse", "max_depth_spread", "essential_threshold"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value} must be a positive number")
        if not 0.0 <= self.min_inlier_ratio <= 1.0:
            raise ValueError(f"min_inlier_ratio={self.min_inlier_ratio} must lie in [0, 1]")
        if not (math.isfinite(self.min_depth) and self.min_depth >= 0):
            raise ValueError(f"min_depth={self.min_depth} must be a non-negative number of metres")
        if not self.max_depth > self.min_depth:
            raise ValueError(f"max_depth={self.max_depth} must be greater than min_depth={self.min_depth}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence={self.confidence} must lie strictly between 0 and 1")
        if int(self.max_iterations) != self.max_iterations or self.max_iterations <= 0:
            raise ValueError(f"max_iterations={self.max_iterations} must be a positive integer")
        check_depth_std(self.depth_std_a, self.depth_std_b)
        if int(self.effective_points) != self.effective_points or self.effective_points < MIN_PNP_POINTS:
            raise ValueError(f"effective_points={self.effective_points} must be an integer >= {MIN_PNP_POINTS}")
        for name in ("match_std_px", "covariance_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value} must be a positive number")


def check_depth_std(a: float, b: float) -> None:
    """ValueError unless depth_std_a + depth_std_b * z^2 is a usable (finite, >= 0) noise model."""
    for name, value in (("depth_std_a", a), ("depth_std_b", b)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}={value} must be a non-negative number (m, and 1/m for depth_std_b)")


@dataclass
class PoseEstimate:
    """Outcome of ``estimate_pose``; ``ok`` means a metric pose that passed every gate."""

    ok: bool
    reason: str
    method: str                       # "pnp", "essential" or "none"
    metric: bool
    rotation: np.ndarray | None       # 3x3 R of the relative pose
    translation: np.ndarray | None    # (3,) t of the relative pose; a unit direction when not metric
    inliers: int = 0                  # PnP (or E) inliers
    points: int = 0                   # 2D-3D points that reached PnP after the depth filters
    rmse_px: float | None = None
    covariance: np.ndarray | None = None  # 6x6 of the relative pose, keyframe camera frame
    inlier_mask: np.ndarray | None = field(default=None, repr=False)  # over the input matches
    keyframes: int = 1                # keyframes whose points entered the PnP (multi-keyframe: > 1)

    @property
    def position_std(self) -> float | None:
        """sqrt of the trace of the position covariance (m): one number for diagnostics."""
        return None if self.covariance is None else position_std(self.covariance)

    def quaternion(self) -> tuple[float, float, float, float] | None:
        return None if self.rotation is None else quaternion_from_matrix(self.rotation)


def position_std(covariance: np.ndarray) -> float:
    """sqrt of the trace of a 6x6 pose covariance's position block (m): one number for
    diagnostics and banners."""
    return float(math.sqrt(max(0.0, float(np.trace(np.asarray(covariance)[:3, :3])))))


def _none(reason: str, n: int) -> PoseEstimate:
    return PoseEstimate(False, reason, "none", False, None, None, inlier_mask=np.zeros(n, bool))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _invert(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return R.T, -R.T @ t


# --------------------------------------------------------------------------------------------
# 2D-3D correspondences from keyframe depth
# --------------------------------------------------------------------------------------------
def lookup_depth(depth: np.ndarray, pts: np.ndarray, max_spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Depth at (N, 2) keypoints (row floor(v), column floor(u)) and whether it is on an edge.

    Returns (z, on_edge): z is NaN outside the image or where depth is unknown; ``on_edge`` marks
    points whose 3x3 neighbourhood (unknown neighbours ignored) spans more than
    ``max_spread`` x the centre depth, where a sub-pixel match error picks the wrong surface.
    """
    depth = np.asarray(depth, dtype=np.float32)
    h, w = depth.shape
    with np.errstate(invalid="ignore"):
        col = np.floor(pts[:, 0])
        row = np.floor(pts[:, 1])
        inside = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    col = np.where(inside, col, 0).astype(np.intp)
    row = np.where(inside, row, 0).astype(np.intp)
    # 3x3 neighbourhood of every point (centre: column 4); neighbours past the border repeat the
    # border pixel, which leaves max - min unchanged. No padded copy of the whole map per query.
    rows = np.clip(row[:, None] + np.array([-1, -1, -1, 0, 0, 0, 1, 1, 1]), 0, h - 1)
    cols = np.clip(col[:, None] + np.array([-1, 0, 1, -1, 0, 1, -1, 0, 1]), 0, w - 1)
    patch = depth.reshape(-1)[rows * w + cols]
    z = np.where(inside, patch[:, 4], np.nan).astype(np.float64)
    with np.errstate(invalid="ignore"):
        spread = np.fmax.reduce(patch, axis=1) - np.fmin.reduce(patch, axis=1)
        on_edge = spread > max_spread * z
    return z, on_edge


def back_project(camera: CameraModel, pts: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N, 2) pixels with z-depth -> (N, 3) points in the camera's optical frame."""
    xy = camera.normalized(pts)
    return np.column_stack([xy * z[:, None], z])


# --------------------------------------------------------------------------------------------
# Estimation
# --------------------------------------------------------------------------------------------
def estimate_pose(
    kpts_query: np.ndarray,
    kpts_keyframe: np.ndarray,
    keyframe_depth: np.ndarray | None,
    keyframe_camera: CameraModel | None,
    query_camera: CameraModel | None,
    config: PoseConfig,
    depth_std: tuple[float, float] | None = None,
) -> PoseEstimate:
    """The query camera's pose relative to the keyframe camera from matched pixels.

    ``depth_std``: (a, b) of this keyframe's depth noise, a + b·z² m; None = the config's.

    PnP when there is depth and both cameras; the essential matrix (non-metric, never ``ok``)
    when there is no depth but both cameras; method "none" otherwise. Never raises for bad data;
    ValueError for an invalid ``config`` or keypoint arrays of mismatched shape.
    """
    from roma_ros.localize.geometry import as_point_pairs

    config.validate()
    q, k = as_point_pairs(kpts_query, kpts_keyframe)
    n = len(q)
    if keyframe_camera is None or query_camera is None:
        which = "query" if query_camera is None else "keyframe"
        return _none(f"no {which} intrinsics", n)
    for camera, which in ((query_camera, "query"), (keyframe_camera, "keyframe")):
        try:
            camera.validate()
        except ValueError as exc:
            return _none(f"bad {which} intrinsics: {exc}", n)
    finite = np.isfinite(q).all(axis=1) & np.isfinite(k).all(axis=1)
    if keyframe_depth is None:
        return _essential(q, k, finite, keyframe_camera, query_camera, config)
    depth = np.asarray(keyframe_depth)
    if depth.ndim != 2 or depth.size == 0:
        return _none(f"keyframe depth has shape {depth.shape}, expected (H, W)", n)
    return _pnp(q, k, finite, depth, keyframe_camera, query_camera, config, depth_std)


@dataclass
class KeyframePoints:
    """One keyframe's share of a PnP: its matches to the query and what turns them into 3D points.

    ``to_reference`` (4x4) maps this keyframe's camera frame into the reference keyframe's
    (identity for the reference itself): T_map_ref⁻¹ · T_map_kf. ``depth_std`` is (a, b) of this
    keyframe's depth noise, None for the config's.
    """

    kpts_query: np.ndarray
    kpts_keyframe: np.ndarray
    depth: np.ndarray
    camera: CameraModel
    to_reference: np.ndarray = field(default_factory=lambda: np.eye(4))
    depth_std: tuple[float, float] | None = None


def depth_std(z: np.ndarray, a: float, b: float) -> np.ndarray:
    """The depth noise model: std (m) of a depth reading z (m), a + b·z²."""
    return a + b * np.square(z)


def point_covariance(camera: CameraModel, pts: np.ndarray, z: np.ndarray, a: float, b: float,
                     match_std_px: float) -> np.ndarray:
    """(N, 3, 3) covariance of back-projected points X = z·(x, y, 1) in the camera frame.

    The depth reading moves X along its ray, X/z·σ_z (σ_z = a + b z²); the keyframe keypoint's
    own match noise moves it across the ray by z·σ_px/f.
    """
    xy = camera.normalized(pts)
    ray = np.column_stack([xy, np.ones(len(xy))])
    sz = depth_std(z, a, b)
    cov = (sz ** 2)[:, None, None] * np.einsum("ni,nj->nij", ray, ray)
    lateral = (z * match_std_px) ** 2
    cov[:, 0, 0] += lateral / camera.fx ** 2
    cov[:, 1, 1] += lateral / camera.fy ** 2
    return cov


def _correspondences(part: KeyframePoints, config: PoseConfig):
    """(index into the part's matches, points (N, 3) and their covariances (N, 3, 3) in the
    reference frame, undistorted query pixels (N, 2), counts text) for the usable matches."""
    from roma_ros.localize.geometry import as_point_pairs

    q, k = as_point_pairs(part.kpts_query, part.kpts_keyframe)
    n = len(q)
    finite = np.isfinite(q).all(axis=1) & np.isfinite(k).all(axis=1)
    z, on_edge = lookup_depth(part.depth, np.where(finite[:, None], k, np.nan), config.max_depth_spread)
    with np.errstate(invalid="ignore"):
        known = np.isfinite(z)
        in_range = known & (z >= config.min_depth) & (z <= config.max_depth)
    usable = finite & in_range & ~on_edge
    idx = np.flatnonzero(usable)
    counts = (f"{n} matches: {n - int(known.sum())} without depth, {int((known & ~in_range).sum())} "
              f"outside [{config.min_depth:g}, {config.max_depth:g}] m, "
              f"{int((in_range & on_edge).sum())} on depth edges")
    a, b = part.depth_std if part.depth_std is not None else (config.depth_std_a, config.depth_std_b)
    obj = back_project(part.camera, k[idx], z[idx])
    cov = point_covariance(part.camera, k[idx], z[idx], a, b, config.match_std_px)
    T = np.asarray(part.to_reference, dtype=np.float64)
    if not np.allclose(T, np.eye(4)):
        R = T[:3, :3]
        obj = obj @ R.T + T[:3, 3]
        cov = np.einsum("ij,njk,lk->nil", R, cov, R)
    return idx, obj, cov, q[idx], counts


def estimate_pose_multi(parts: list[KeyframePoints], query_camera: CameraModel | None,
                        config: PoseConfig) -> PoseEstimate:
    """One PnP over the 2D-3D correspondences of several keyframes, all expressed in the first
    one's camera frame (the result is relative to ``parts[0]``, like ``estimate_pose``'s). The
    inlier mask covers ``parts[0]``'s matches; ``points``/``inliers`` count all keyframes."""
    config.validate()
    if not parts:
        raise ValueError("estimate_pose_multi needs at least one keyframe")
    n0 = len(parts[0].kpts_query)
    if query_camera is None:
        return _none("no query intrinsics", n0)
    for camera, which in [(query_camera, "query")] + [(p.camera, "keyframe") for p in parts]:
        try:
            camera.validate()
        except ValueError as exc:
            return _none(f"bad {which} intrinsics: {exc}", n0)
    pieces = [_correspondences(p, config) for p in parts]
    return _solve(pieces, n0, query_camera, config)


def _pnp(q, k, finite, depth, keyframe_camera, query_camera, config, depth_std=None) -> PoseEstimate:
    part = KeyframePoints(np.where(finite[:, None], q, np.nan), np.where(finite[:, None], k, np.nan), depth,
                          keyframe_camera, depth_std=depth_std)
    return _solve([_correspondences(part, config)], len(q), query_camera, config)


def _solve(pieces, n0, query_camera, config) -> PoseEstimate:
    idx0 = pieces[0][0]
    obj = np.concatenate([p[1] for p in pieces])
    cov3 = np.concatenate([p[2] for p in pieces])
    img = np.concatenate([p[3] for p in pieces])
    counts = "; ".join(p[4] for p in pieces)
    used = sum(1 for p in pieces if len(p[0]))
    if len(obj) < config.min_inliers:  # validate() keeps min_inliers >= MIN_PNP_POINTS
        out = _none(f"only {len(obj)} points with usable depth < min_inliers {config.min_inliers} ({counts})", n0)
        out.method, out.points, out.keyframes = "pnp", len(obj), used
        return out
    img = query_camera.undistort(img)
    K = query_camera.matrix()
    failed = PoseEstimate(False, "", "pnp", False, None, None, points=len(obj), inlier_mask=np.zeros(n0, bool),
                          keyframes=used)
    # SQPnP: fast and globally optimal on each sample, but it asserts on samples whose points
    # coincide (collapsed matches, e.g. many query pixels on one keyframe pixel); AP3P then.
    for flag in (cv2.SOLVEPNP_SQPNP, cv2.SOLVEPNP_AP3P):
        try:
            found, rvec, tvec, inl = cv2.solvePnPRansac(
                obj, img, K, None, iterationsCount=int(config.max_iterations),
                reprojectionError=float(config.reprojection_threshold), confidence=float(config.confidence),
                flags=flag)
            break
        except cv2.error as exc:
            failed.reason = f"PnP failed: {str(exc).strip().splitlines()[-1]}"
    else:
        return failed
    if not found or inl is None or len(inl) < MIN_PNP_POINTS:
        failed.reason = f"PnP RANSAC found no pose ({len(obj)} points)"
        return failed
    # RANSAC's inliers were chosen under a minimal-sample model, so they are biased towards it:
    # refine on (a subsample of) them with LM, re-select the inliers with the refined pose, then
    # Gauss-Newton weighted by each point's predicted residual covariance (match noise plus the
    # keyframe depth noise projected into the query), so uncertain (far) points count less.
    chosen = np.asarray(inl).reshape(-1)
    chosen = chosen[:: max(1, len(chosen) // _FIRST_REFINE_POINTS)]
    rvec, tvec = cv2.solvePnPRefineLM(obj[chosen], img[chosen], K, None, rvec.reshape(3, 1),
                                      tvec.reshape(3, 1), criteria=_LM_CRITERIA)
    mask, residual, jac = _inliers(obj, img, K, rvec, tvec, config.reprojection_threshold)
    covariance = None
    rmse = float("inf")
    for _ in range(_WEIGHTED_STEPS):
        if mask.sum() < MIN_PNP_POINTS:
            break
        sub = _subsample(mask)
        W = _residual_information(obj[sub], cov3[sub], K, rvec, tvec, config.match_std_px)
        step = _weighted_step(_rows(jac, sub), residual[sub], W)
        rvec, tvec = rvec + step[:3].reshape(3, 1), tvec + step[3:].reshape(3, 1)
        mask, residual, jac = _inliers(obj, img, K, rvec, tvec, config.reprojection_threshold)
        if np.abs(step).max() < _LINEAR_STEP:
            break
    inliers = int(mask.sum())
    if inliers >= MIN_PNP_POINTS:
        r = residual[mask]
        rmse = float(np.sqrt(np.mean(np.einsum("ij,ij->i", r, r))))
        # The information of an evenly strided subsample, times (inliers / its size), is that of
        # all inliers; errors shared by all points (rolling shutter, depth-RGB time offset and
        # misregistration, calibration) do not average out, so past effective_points it stops
        # growing: cov = H_sub⁻¹ · len(sub) / min(inliers, effective_points) · covariance_scale.
        sub = _subsample(mask)
        W = _residual_information(obj[sub], cov3[sub], K, rvec, tvec, config.match_std_px)
        scale = config.covariance_scale * len(sub) / min(inliers, config.effective_points)
        covariance = _relative_covariance(_rows(jac, sub), residual[sub], W, rvec, tvec, scale)
    inlier_mask = np.zeros(n0, bool)
    inlier_mask[idx0[mask[:len(idx0)]]] = True
    R, t = _invert(cv2.Rodrigues(rvec)[0], tvec.reshape(3))
    ratio = inliers / len(obj)
    if inliers < config.min_inliers:
        reason = f"{inliers} PnP inliers < min_inliers {config.min_inliers}"
    elif ratio < config.min_inlier_ratio:
        reason = f"inlier ratio {ratio:.2f} ({inliers}/{len(obj)}) < min_inlier_ratio {config.min_inlier_ratio:g}"
    elif not rmse <= config.max_rmse:
        reason = f"reprojection RMSE {rmse:.2f} px > max_rmse {config.max_rmse:g} px"
    elif covariance is None or not np.all(np.isfinite(covariance)):
        reason = "degenerate geometry: the pose covariance is not finite"
    else:
        reason = ""
    return PoseEstimate(not reason, reason, "pnp", not reason, R, t, inliers, len(obj), rmse,
                        covariance, inlier_mask, keyframes=used)


def _subsample(mask: np.ndarray) -> np.ndarray:
    """Indices of an evenly strided subsample (at most _WEIGHTED_POINTS) of the inliers: the
    weighted refinement and the covariance need no more (10 000 points cost ~40 ms otherwise)."""
    idx = np.flatnonzero(mask)
    return idx[:: max(1, -(-len(idx) // _WEIGHTED_POINTS))]


def _rows(jac: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(len(idx), 2, 6) of projectPoints' (2N, 6) Jacobian."""
    return jac.reshape(-1, 2, 6)[idx]


def _inliers(obj, img, K, rvec, tvec, threshold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inlier mask: in front of the query camera and within ``threshold`` px, residuals (N, 2),
    d(pixels)/d(rvec, tvec) (2N x 6)) of every point under one pose."""
    proj, jac = cv2.projectPoints(obj, rvec, tvec, K, None)
    residual = proj.reshape(-1, 2) - img
    in_front = np.einsum("ij,j->i", obj, cv2.Rodrigues(rvec)[0][2]) + float(tvec[2, 0]) > 0
    return in_front & (np.einsum("ij,ij->i", residual, residual) < threshold ** 2), residual, jac[:, :6]


def _residual_information(obj, cov3, K, rvec, tvec, match_std_px) -> np.ndarray:
    """(N, 2, 2) inverse covariance of each reprojection residual: the query match noise σ_px²·I
    plus the 3D point's covariance pushed through the projection, P Σ_X Pᵀ with
    P = d(pixel)/d(X_query) · R (R, t: keyframe -> query camera)."""
    R = cv2.Rodrigues(rvec)[0]
    Xq = obj @ R.T + tvec.reshape(3)
    z = np.maximum(Xq[:, 2], 1e-9)
    fx, fy = K[0, 0], K[1, 1]
    D = np.zeros((len(Xq), 2, 3))
    D[:, 0, 0] = fx / z
    D[:, 0, 2] = -fx * Xq[:, 0] / z ** 2
    D[:, 1, 1] = fy / z
    D[:, 1, 2] = -fy * Xq[:, 1] / z ** 2
    P = D @ R
    S = np.einsum("nij,njk,nlk->nil", P, cov3, P)
    S[:, 0, 0] += match_std_px ** 2
    S[:, 1, 1] += match_std_px ** 2
    det = S[:, 0, 0] * S[:, 1, 1] - S[:, 0, 1] * S[:, 1, 0]
    W = np.empty_like(S)
    W[:, 0, 0], W[:, 1, 1] = S[:, 1, 1] / det, S[:, 0, 0] / det
    W[:, 0, 1], W[:, 1, 0] = -S[:, 0, 1] / det, -S[:, 1, 0] / det
    return W


def _normal_equations(J: np.ndarray, r: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(H = Σ Jᵢᵀ Wᵢ Jᵢ, g = Σ Jᵢᵀ Wᵢ rᵢ, χ² = Σ rᵢᵀ Wᵢ rᵢ) over (N, 2, 6) J, (N, 2) r, (N, 2, 2) W.
    einsum, not BLAS: OpenBLAS threads these small-output products and then waits for busy cores."""
    WJ = np.einsum("nij,njk->nik", W, J)
    H = np.einsum("nij,nik->jk", J, WJ)
    g = np.einsum("nik,ni->k", WJ, r)
    chi2 = float(np.einsum("ni,nij,nj->", r, W, r))
    return H, g, chi2


def _weighted_step(J: np.ndarray, r: np.ndarray, W: np.ndarray) -> np.ndarray:
    """δ(rvec, tvec) = -H⁻¹ g: one weighted Gauss-Newton step from a nearby start."""
    H, g, _ = _normal_equations(J, r, W)
    try:
        return -np.linalg.solve(H, g)
    except np.linalg.LinAlgError:
        return np.zeros(6)


def _relative_covariance(J: np.ndarray, r: np.ndarray, W: np.ndarray, rvec: np.ndarray, tvec: np.ndarray,
                         scale: float) -> np.ndarray:
    """6x6 covariance of the relative pose (ROS order): H⁻¹ of the weighted normal equations,
    times max(1, χ²/dof) where the residuals are larger than the noise model predicts, times the
    calibrated ``scale``; pushed through the map from solvePnP's parameters (keyframe -> query
    camera) to (t, dθ) of the inverse transform."""
    H, _, chi2 = _normal_equations(J, r, W)
    dof = max(1, 2 * len(r) - 6)
    try:
        cov_pnp = np.linalg.inv(H) * max(1.0, chi2 / dof) * scale
    except np.linalg.LinAlgError:
        return np.full((6, 6), np.nan)
    G = _relative_jacobian(rvec.reshape(3), tvec.reshape(3))
    cov = G @ cov_pnp @ G.T
    return 0.5 * (cov + cov.T)


def _so3_left_jacobian(w: np.ndarray) -> np.ndarray:
    """J_l(w): Rodrigues(w + dw) = exp([J_l dw]x) Rodrigues(w) to first order."""
    theta = float(np.linalg.norm(w))
    if theta < 1e-8:
        return np.eye(3) + 0.5 * _skew(w)
    a = w / theta
    s = math.sin(theta) / theta
    return s * np.eye(3) + (1 - s) * np.outer(a, a) + (1 - math.cos(theta)) / theta * _skew(a)


def _relative_jacobian(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """d(t, dθ)/d(rvec, tvec) for R = Rodrigues(rvec)ᵀ, t = -R tvec, with dθ the left
    perturbation R = exp([dθ]x) R̂ (rows: t then dθ, ROS order)."""
    R, t = _invert(cv2.Rodrigues(rvec)[0], tvec)
    d_theta = -R @ _so3_left_jacobian(rvec)
    G = np.zeros((6, 6))
    G[:3, :3] = -_skew(t) @ d_theta
    G[:3, 3:] = -R
    G[3:, :3] = d_theta
    return G


def _essential(q, k, finite, keyframe_camera, query_camera, config) -> PoseEstimate:
    """Rotation and translation direction from E in normalized coordinates; never metric."""
    n = len(q)
    idx = np.flatnonzero(finite)
    out = PoseEstimate(False, "", "essential", False, None, None, points=len(idx), inlier_mask=np.zeros(n, bool))
    if len(idx) < _ESSENTIAL_MIN_POINTS:
        out.reason = f"only {len(idx)} matches for an essential matrix, need {_ESSENTIAL_MIN_POINTS}"
        return out
    xk = keyframe_camera.normalized(k[idx])
    xq = query_camera.normalized(q[idx])
    focal = (keyframe_camera.fx + keyframe_camera.fy + query_camera.fx + query_camera.fy) / 4.0
    threshold = float(config.essential_threshold) / focal
    # USAC_ACCURATE (local optimisation + final least squares) gave ~10x smaller rotation errors
    # than plain RANSAC on test_pose's scenes, but costs ~0.2 s on 10 000 matches: fit on a
    # strided subsample of at most ~1000 matches, then classify every match by its Sampson distance.
    fit = slice(None, None, max(1, len(idx) // _ESSENTIAL_MAX_POINTS))
    try:
        E, _ = cv2.findEssentialMat(xk[fit], xq[fit], np.eye(3), method=cv2.USAC_ACCURATE,
                                    prob=float(config.confidence), threshold=threshold)
        if E is None or E.shape[0] < 3:
            out.reason = "no essential matrix found"
            return out
        E = E[:3]
        sel = _sampson(E, xk, xq) < threshold ** 2
        # The cheirality check (which of E's four poses) triangulates: the subsample decides it.
        _, R_kq, t_kq, _ = cv2.recoverPose(E, xk[fit], xq[fit], np.eye(3), mask=sel[fit].astype(np.uint8))
    except cv2.error as exc:
        out.reason = f"essential matrix failed: {str(exc).strip().splitlines()[-1]}"
        return out
    # recoverPose gives p_query = R_kq p_keyframe + t_kq; the relative pose is its inverse.
    R, t = _invert(R_kq, t_kq.reshape(3))
    out.inlier_mask[idx[sel]] = True
    out.rotation, out.translation = R, t / max(np.linalg.norm(t), 1e-12)
    out.inliers = int(sel.sum())
    out.reason = "no keyframe depth: rotation and translation direction only (non-metric)"
    return out


def _sampson(E: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Squared Sampson distance of normalized correspondences x2ᵀ E x1 = 0 (what OpenCV thresholds)."""
    h1 = np.column_stack([x1, np.ones(len(x1))])
    h2 = np.column_stack([x2, np.ones(len(x2))])
    Ex1 = np.einsum("ij,nj->ni", E, h1)
    Etx2 = np.einsum("ji,nj->ni", E, h2)
    num = np.einsum("ni,ni->n", h2, Ex1) ** 2
    return num / (Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx2[:, 0] ** 2 + Etx2[:, 1] ** 2)


# --------------------------------------------------------------------------------------------
# Map frame
# --------------------------------------------------------------------------------------------
def map_pose(
    keyframe_pose: Pose, estimate: PoseEstimate, camera_to_base: Pose | None = None
) -> tuple[Pose, np.ndarray]:
    """The query camera's pose in the map (or base_frame's, given ``camera_to_base``) and its
    6x6 covariance in the map frame (ROS order).

    ``camera_to_base`` is the pose of the camera optical frame in base_frame (the static tf
    base_frame -> camera optical frame): T_map_base = T_map_cam @ inv(T_base_cam).
    """
    if estimate.rotation is None or estimate.translation is None or not estimate.metric:
        raise ValueError(f"no metric pose to place in the map: {estimate.reason or estimate.method}")
    T_map_kf = pose_to_matrix(keyframe_pose)
    T_rel = np.eye(4)
    T_rel[:3, :3], T_rel[:3, 3] = estimate.rotation, estimate.translation
    T_map_cam = T_map_kf @ T_rel
    cov = estimate.covariance if estimate.covariance is not None else np.full((6, 6), np.nan)
    R_mk = T_map_kf[:3, :3]
    A = np.zeros((6, 6))
    A[:3, :3] = A[3:, 3:] = R_mk
    cov = A @ cov @ A.T
    T_out = T_map_cam
    if camera_to_base is not None:
        T_cam_base = np.linalg.inv(pose_to_matrix(camera_to_base))
        T_out = T_map_cam @ T_cam_base
        # p_base = R_cam (t_cam_base) + p_cam: a left rotation dθ moves it by -[R_cam t_cb]x dθ.
        B = np.eye(6)
        B[:3, 3:] = -_skew(T_map_cam[:3, :3] @ T_cam_base[:3, 3])
        cov = B @ cov @ B.T
    return matrix_to_pose(T_out), 0.5 * (cov + cov.T)
