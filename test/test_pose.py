"""Metric pose from keyframe depth (PnP) and the non-metric essential-matrix fallback.

Ground truth comes from synthetic_scene: textured planes at different depths (not planar as a
whole) rendered with exact depth, so with exact correspondences the pose is recovered to
floating-point precision and every error is the estimator's.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from roma_ros.demo import synthetic_scene as ss
from roma_ros.localize.geometry import verify_fundamental
from roma_ros.localize.pose import (
    CameraModel,
    PoseConfig,
    PoseEstimate,
    back_project,
    estimate_pose,
    lookup_depth,
    map_pose,
    matrix_from_quaternion,
    matrix_to_pose,
    pose_to_matrix,
    quaternion_from_matrix,
    rotation_angle_deg,
)

# chi-square quantile with 6 degrees of freedom at 95 %.
CHI2_6_95 = 12.5916


@pytest.fixture(scope="module")
def scene():
    return ss.relocalization_set(seed=0, n_queries=20, photometric=False)


def pair(scene, i):
    keyframes, queries = scene
    return keyframes[queries[i].keyframe], queries[i]


def errors(est: PoseEstimate, keyframe, query) -> tuple[float, float]:
    """(translation error in m, rotation error in degrees) against the ground truth."""
    R, t = ss.relative_pose(keyframe, query)
    return float(np.linalg.norm(est.translation - t)), rotation_angle_deg(est.rotation, R)


def error_vector(est: PoseEstimate, keyframe, query) -> np.ndarray:
    """(dt, dθ) in the covariance's parameterization: R_est = exp([dθ]x) R_true."""
    R, t = ss.relative_pose(keyframe, query)
    dR = est.rotation @ R.T
    angle = math.acos(np.clip((np.trace(dR) - 1) / 2, -1, 1))
    axis = np.array([dR[2, 1] - dR[1, 2], dR[0, 2] - dR[2, 0], dR[1, 0] - dR[0, 1]])
    dtheta = axis * (0.5 if angle < 1e-9 else angle / (2 * math.sin(angle)))
    return np.concatenate([est.translation - t, dtheta])


def noisy_matches(keyframe, query, rng, n=400, noise_px=0.5, outliers=0.0):
    kq, kk = ss.exact_matches(keyframe, query, n, rng)
    kq = kq + rng.normal(0.0, noise_px, kq.shape)
    n_out = int(round(outliers * len(kq)))
    h, w = query.depth.shape
    kq[:n_out] = rng.uniform((0, 0), (w, h), (n_out, 2))
    return kq, kk


# --- cameras and configuration -------------------------------------------------------------
def test_from_ros_moves_the_principal_point_to_pixel_centres_at_half():
    cam = CameraModel.from_ros(500, 510, 319.5, 239.5, [0.1, 0, 0, 0, 0])
    assert (cam.cx, cam.cy) == (320.0, 240.0)
    assert cam.to_ros() == (500, 510, 319.5, 239.5)
    np.testing.assert_allclose(cam.matrix(), [[500, 0, 320], [0, 510, 240], [0, 0, 1]])
    assert cam.distorted and not CameraModel.from_ros(1, 1, 0, 0, [0.0] * 5).distorted


@pytest.mark.parametrize("kwargs, message", [
    (dict(fx=0.0), "fx=0.0"), (dict(fy=-3.0), "fy=-3.0"), (dict(fx=float("nan")), "fx=nan"),
    (dict(cx=float("inf")), "cx=inf"), (dict(distortion=(0.1, 0.2)), "2 distortion coefficients"),
    (dict(distortion=(0.1, 0, 0, 0, float("nan"))), "finite"),
])
def test_camera_validate_names_the_bad_value(kwargs, message):
    cam = CameraModel(**{**dict(fx=500.0, fy=500.0, cx=320.0, cy=240.0), **kwargs})
    with pytest.raises(ValueError, match=message):
        cam.validate()


@pytest.mark.parametrize("field, value", [
    ("min_inliers", 3), ("min_inliers", 20.5), ("reprojection_threshold", 0.0), ("max_rmse", -1.0),
    ("min_inlier_ratio", 1.5), ("min_depth", -0.1), ("max_depth", 0.05), ("max_depth_spread", 0.0),
    ("confidence", 1.0), ("max_iterations", 0), ("essential_threshold", float("nan")),
])
def test_config_validate_rejects_impossible_settings(field, value):
    config = PoseConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        config.validate()
    with pytest.raises(ValueError, match=field):  # estimate_pose raises for a bad config
        estimate_pose(np.zeros((10, 2)), np.zeros((10, 2)), None, None, None, config)
    PoseConfig().validate()


# --- rotations and frames ------------------------------------------------------------------
def test_quaternions_are_xyzw_and_round_trip():
    half = math.sqrt(0.5)
    Rz90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    assert np.allclose(quaternion_from_matrix(Rz90), (0, 0, half, half))
    np.testing.assert_allclose(matrix_from_quaternion((0, 0, half, half)), Rz90, atol=1e-12)
    rng = np.random.default_rng(1)
    for _ in range(50):
        R = cv2.Rodrigues(rng.normal(size=3) * 2)[0]
        q = quaternion_from_matrix(R)
        assert q[3] >= 0 and math.isclose(np.linalg.norm(q), 1.0)
        np.testing.assert_allclose(matrix_from_quaternion(q), R, atol=1e-12)


def test_map_pose_composes_keyframe_pose_with_relative_pose():
    half = math.sqrt(0.5)
    keyframe_pose = ((1.0, 2.0, 3.0), (0.0, 0.0, half, half))  # 90 deg about map z
    est = PoseEstimate(True, "", "pnp", True, np.eye(3), np.array([1.0, 0.0, 0.0]),
                       covariance=np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    (position, orientation), cov = map_pose(keyframe_pose, est)
    np.testing.assert_allclose(position, (1.0, 3.0, 3.0), atol=1e-12)  # keyframe x axis = map y
    np.testing.assert_allclose(orientation, (0.0, 0.0, half, half), atol=1e-12)
    # Rotated into the map frame: keyframe x <-> map y for position and rotation alike.
    np.testing.assert_allclose(np.diag(cov), [2, 1, 3, 5, 4, 6], atol=1e-12)


def test_query_map_pose_from_exact_matches_equals_ground_truth(scene):
    keyframes, queries = scene
    for query in queries[:10]:
        keyframe = keyframes[query.keyframe]
        kq, kk = ss.exact_matches(keyframe, query, 300, np.random.default_rng(0))
        est = estimate_pose(kq, kk, keyframe.depth, keyframe.camera, query.camera, PoseConfig())
        assert est.ok and est.method == "pnp" and est.metric, est.reason
        (position, orientation), _ = map_pose(keyframe.pose, est)
        np.testing.assert_allclose(position, query.pose[0], atol=1e-6)
        assert abs(abs(np.dot(orientation, query.pose[1])) - 1) < 1e-10
        assert est.rmse_px < 1e-5 and est.inliers == est.points >= 0.95 * len(kq)  # minus depth edges


def test_pixel_centres_are_at_half(scene):
    """Exact matches sit on keyframe pixel centres with exact depth; reading depth or
    back-projecting with centres at integers instead shows up as a pose error."""
    keyframe, query = pair(scene, 3)
    kq, kk = ss.exact_matches(keyframe, query, 300, np.random.default_rng(0))
    config = PoseConfig()
    exact = estimate_pose(kq, kk, keyframe.depth, keyframe.camera, query.camera, config)
    assert errors(exact, keyframe, query)[0] < 1e-6
    # The same intrinsics given the ROS way (centres at integers) go through from_ros.
    ros = CameraModel.from_ros(*keyframe.camera.to_ros())
    assert errors(estimate_pose(kq, kk, keyframe.depth, ros, query.camera, config), keyframe, query)[0] < 1e-6
    shifted = CameraModel(*keyframe.camera.to_ros())  # as if the half pixel were forgotten
    assert errors(estimate_pose(kq, kk, keyframe.depth, shifted, query.camera, config), keyframe, query)[0] > 1e-3


def test_lookup_depth_reads_row_floor_v_column_floor_u():
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) + 10.0  # smooth enough: no edges
    pts = np.array([[0.5, 0.5], [3.99, 2.99], [2.0, 1.0], [1.5, 2.0], [-0.01, 1.0], [4.0, 1.0], [np.nan, 1]])
    z, edge = lookup_depth(depth, pts, max_spread=1.0)
    np.testing.assert_array_equal(z[:4], [10.0, 21.0, 16.0, 19.0])
    assert np.isnan(z[4:]).all() and not edge.any()


def test_lookup_depth_marks_discontinuities_and_ignores_unknown_neighbours():
    depth = np.full((20, 20), 2.0, np.float32)
    depth[:, 10:] = 4.0
    depth[0:5, 0:5] = np.nan
    cols = np.arange(20) + 0.5
    z, edge = lookup_depth(depth, np.column_stack([cols, np.full(20, 12.5)]), max_spread=0.05)
    assert np.flatnonzero(edge).tolist() == [9, 10]
    z, edge = lookup_depth(depth, np.array([[5.5, 2.5], [5.5, 5.5], [2.5, 2.5]]), max_spread=0.05)
    assert not edge[:2].any() and np.isnan(z[2])
    # A slanted plane is no edge: 1 % per pixel stays under a 5 % spread.
    ramp = np.tile(2.0 * 1.01 ** np.arange(20, dtype=np.float32), (20, 1))
    assert not lookup_depth(ramp, np.column_stack([cols, cols]), 0.05)[1].any()


def test_back_project_inverts_a_distorted_projection():
    cam = CameraModel(300.0, 310.0, 160.0, 120.0, (-0.25, 0.08, 0.001, -0.002, 0.01))
    rng = np.random.default_rng(2)
    pts = rng.uniform((-1, -0.8, 1), (1, 0.8, 5), (100, 3))
    pix = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), cam.matrix(), cam.dist_coeffs())[0].reshape(-1, 2)
    np.testing.assert_allclose(back_project(cam, pix, pts[:, 2]), pts, atol=1e-6)


# --- PnP accuracy --------------------------------------------------------------------------
def test_noise_and_outliers_stay_within_bounds(scene):
    """0.5 px noise and 30 % uniform outliers: every pose within 3 cm and 0.3 deg."""
    rng = np.random.default_rng(5)
    config = PoseConfig(min_inlier_ratio=0.5)
    for i in range(len(scene[1])):
        keyframe, query = pair(scene, i)
        kq, kk = noisy_matches(keyframe, query, rng, n=400, noise_px=0.5, outliers=0.3)
        est = estimate_pose(kq, kk, keyframe.depth, keyframe.camera, query.camera, config)
        assert est.ok, est.reason
        dt, dr = errors(est, keyframe, query)
        assert dt < 0.03 and dr < 0.3, (query.name, dt, dr)
        assert 0.6 < est.inliers / est.points < 0.75 and est.rmse_px < 1.0
        assert est.inlier_mask.sum() == est.inliers


def test_classical_matcher_on_rendered_images(scene):
    """SIFT on the rendered views, verified by F like the node: poses within 5 cm and 0.5 deg."""
    from roma_ros.matching.classical import ClassicalMatcher

    keyframes, _ = scene
    _, queries = ss.relocalization_set(seed=0, n_queries=8, photometric=True)
    matcher = ClassicalMatcher()
    errs = []
    for query in queries:
        keyframe = keyframes[query.keyframe]
        m = matcher.match(query.rgb, keyframe.rgb)
        ver = verify_fundamental(m.kpts_query, m.kpts_candidate, threshold=1.0)
        assert ver.verified, ver.reason
        est = estimate_pose(m.kpts_query[ver.inlier_mask], m.kpts_candidate[ver.inlier_mask],
                            keyframe.depth, keyframe.camera, query.camera, PoseConfig())
        assert est.ok, (query.name, est.reason)
        errs.append(errors(est, keyframe, query))
    errs = np.asarray(errs)
    assert errs[:, 0].max() < 0.05 and errs[:, 1].max() < 0.5, errs
    assert np.median(errs[:, 0]) < 0.02


def test_covariance_is_consistent_with_the_errors(scene):
    """Over 200 seeds with 0.5 px Gaussian noise, the normalized estimation error squared
    (NEES = eᵀ C⁻¹ e of the 6-DoF error) has mean within [5, 7.5] (chi-square with 6 DoF: 6)
    and lies under the 95 % chi-square quantile for 88 to 99 % of the seeds (measured: 6.2, 92.5 %).
    The depth is exact and the noise is all in the query pixels: the noise model told so (no depth
    noise, 0.5 px split between the two images' match noise, no calibrated inflation) is honest."""
    exact = PoseConfig(depth_std_a=0.0, depth_std_b=0.0, match_std_px=0.5 / np.sqrt(2), covariance_scale=1.0,
                       effective_points=10**9)
    nees = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        keyframe, query = pair(scene, seed % len(scene[1]))
        kq, kk = noisy_matches(keyframe, query, rng, n=200, noise_px=0.5, outliers=0.1)
        est = estimate_pose(kq, kk, keyframe.depth, keyframe.camera, query.camera, exact)
        assert est.ok, est.reason
        e = error_vector(est, keyframe, query)
        nees.append(e @ np.linalg.solve(est.covariance, e))
    nees = np.asarray(nees)
    assert 5.0 < nees.mean() < 7.5, nees.mean()
    assert 0.88 <= np.mean(nees < CHI2_6_95) <= 0.99


def test_covariance_is_in_the_map_frame_and_follows_camera_to_base(scene):
    """Monte Carlo: perturb the relative pose by its covariance, compose, compare."""
    keyframe, query = pair(scene, 1)
    rng = np.random.default_rng(3)
    kq, kk = noisy_matches(keyframe, query, rng, n=150, noise_px=1.0)
    est = estimate_pose(kq, kk, keyframe.depth, keyframe.camera, query.camera, PoseConfig())
    camera_to_base = ((0.2, -0.1, 0.5), quaternion_from_matrix(cv2.Rodrigues(np.array([0.3, -1.2, 0.5]))[0]))
    for base in (None, camera_to_base):
        pose, cov = map_pose(keyframe.pose, est, base)
        T_out = pose_to_matrix(pose)
        samples = []
        L = np.linalg.cholesky(est.covariance)
        for _ in range(4000):
            d = L @ rng.normal(size=6)
            perturbed = PoseEstimate(True, "", "pnp", True, cv2.Rodrigues(d[3:])[0] @ est.rotation,
                                     est.translation + d[:3], covariance=est.covariance)
            T = pose_to_matrix(map_pose(keyframe.pose, perturbed, base)[0])
            samples.append(np.concatenate([T[:3, 3] - T_out[:3, 3], cv2.Rodrigues(T[:3, :3] @ T_out[:3, :3].T)[0].ravel()]))
        empirical = np.cov(np.asarray(samples).T)
        scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
        assert np.abs((empirical - cov) / scale).max() < 0.1
    # T_map_base = T_map_cam @ inv(T_base_cam)
    T_cam = pose_to_matrix(map_pose(keyframe.pose, est)[0])
    T_base = pose_to_matrix(map_pose(keyframe.pose, est, camera_to_base)[0])
    np.testing.assert_allclose(T_base, T_cam @ np.linalg.inv(pose_to_matrix(camera_to_base)), atol=1e-9)


# --- gates -----------------------------------------------------------------------------------
def test_each_gate_says_why_with_the_numbers(scene):
    keyframe, query = pair(scene, 2)
    rng = np.random.default_rng(4)
    args = (keyframe.depth, keyframe.camera, query.camera)
    kq, kk = noisy_matches(keyframe, query, rng, n=30, noise_px=0.3)
    est = estimate_pose(kq, kk, *args, PoseConfig(min_inliers=40))
    assert not est.ok and not est.metric and "usable depth < min_inliers 40" in est.reason
    kq, kk = noisy_matches(keyframe, query, rng, n=100, noise_px=0.3, outliers=0.7)
    est = estimate_pose(kq, kk, *args, PoseConfig())
    assert not est.ok and "min_inlier_ratio 0.4" in est.reason and f"/{est.points})" in est.reason
    kq, kk = noisy_matches(keyframe, query, rng, n=300, noise_px=0.3)
    est = estimate_pose(kq, kk, *args, PoseConfig(max_rmse=0.2))
    assert not est.ok and "> max_rmse 0.2 px" in est.reason and est.rotation is not None
    est = estimate_pose(kq[:25], kk[:25], *args, PoseConfig(min_inliers=25, reprojection_threshold=0.3))
    assert not est.ok and "< min_inliers 25" in est.reason
    assert estimate_pose(kq, kk, *args, PoseConfig()).ok


def test_random_matches_never_give_a_pose(scene):
    keyframe, query = pair(scene, 0)
    h, w = query.depth.shape
    for seed in range(10):
        rng = np.random.default_rng(seed)
        kq = rng.uniform((0, 0), (w, h), (500, 2))
        kk = rng.uniform((0, 0), (w, h), (500, 2))
        est = estimate_pose(kq, kk, keyframe.depth, keyframe.camera, query.camera, PoseConfig())
        assert not est.ok and not est.metric and est.reason


# --- depth edge cases ------------------------------------------------------------------------
def test_unknown_and_out_of_range_depth_is_dropped(scene):
    keyframe, query = pair(scene, 4)
    kq, kk = noisy_matches(keyframe, query, np.random.default_rng(6), n=300, noise_px=0.3)
    cams = (keyframe.camera, query.camera)
    for depth in (np.full_like(keyframe.depth, np.nan), np.zeros_like(keyframe.depth)):
        est = estimate_pose(kq, kk, depth, *cams, PoseConfig())
        assert not est.ok and est.method == "pnp" and est.points == 0 and "usable depth" in est.reason
    est = estimate_pose(kq, kk, keyframe.depth, *cams, PoseConfig(max_depth=1.0))
    assert not est.ok and "outside [0.1, 1] m" in est.reason
    # Half the depth map unknown: the rest still gives the pose, from fewer points.
    half = keyframe.depth.copy()
    half[:, : half.shape[1] // 2] = np.nan
    est = estimate_pose(kq, kk, half, *cams, PoseConfig())
    assert est.ok and est.points < 0.8 * len(kq) and errors(est, keyframe, query)[0] < 0.03
    # Depth of another shape: keypoints outside it have none, nothing raises.
    est = estimate_pose(kq, kk, keyframe.depth[:10, :10], *cams, PoseConfig())
    assert not est.ok
    assert "shape" in estimate_pose(kq, kk, np.zeros(5), *cams, PoseConfig()).reason


def test_points_on_depth_edges_are_dropped(scene):
    """A match off by one pixel at a depth edge would take the other surface's depth."""
    keyframe, query = pair(scene, 0)
    kq, kk = ss.exact_matches(keyframe, query, 3000, np.random.default_rng(7))
    _, on_edge = lookup_depth(keyframe.depth, kk, PoseConfig().max_depth_spread)
    assert 0 < on_edge.sum() < 0.2 * len(kk)
    est = estimate_pose(kq, kk, keyframe.depth, keyframe.camera, query.camera, PoseConfig())
    assert est.points == len(kk) - on_edge.sum() and not est.inlier_mask[on_edge].any()
    loose = estimate_pose(kq, kk, keyframe.depth, keyframe.camera, query.camera, PoseConfig(max_depth_spread=10.0))
    assert loose.points == len(kk)


def test_bad_keypoints(scene):
    keyframe, query = pair(scene, 0)
    args = (keyframe.depth, keyframe.camera, query.camera, PoseConfig())
    with pytest.raises(ValueError, match="kpts_query has 3 points but kpts_candidate has 2"):
        estimate_pose(np.zeros((3, 2)), np.zeros((2, 2)), *args)
    assert not estimate_pose(np.zeros((0, 2)), np.zeros((0, 2)), *args).ok
    kq, kk = ss.exact_matches(keyframe, query, 200, np.random.default_rng(8))
    kq[:50] = np.nan
    est = estimate_pose(kq, kk, *args)
    assert est.ok and 140 <= est.points <= 150 and not est.inlier_mask[:50].any()  # minus depth edges


def test_missing_intrinsics_give_method_none(scene):
    keyframe, query = pair(scene, 0)
    kq, kk = ss.exact_matches(keyframe, query, 100, np.random.default_rng(9))
    est = estimate_pose(kq, kk, keyframe.depth, keyframe.camera, None, PoseConfig())
    assert (est.ok, est.method, est.reason) == (False, "none", "no query intrinsics")
    bad = CameraModel(0.0, 1.0, 0.0, 0.0)
    est = estimate_pose(kq, kk, keyframe.depth, bad, query.camera, PoseConfig())
    assert est.method == "none" and "bad keyframe intrinsics" in est.reason and "fx=0.0" in est.reason
    with pytest.raises(ValueError, match="no metric pose"):
        map_pose(keyframe.pose, est)


# --- distortion ------------------------------------------------------------------------------
@pytest.mark.parametrize("distortion", [
    (-0.28, 0.09, 0.0012, -0.0008, -0.01),                     # plumb_bob
    (0.4, -0.2, 0.0005, 0.001, 0.02, 0.75, -0.1, 0.05),        # rational_polynomial
])
def test_distorted_query_keypoints_are_undistorted(scene, distortion):
    keyframe, query = pair(scene, 5)
    kq, kk = ss.exact_matches(keyframe, query, 300, np.random.default_rng(10))
    cam = query.camera
    distorted_cam = CameraModel(cam.fx, cam.fy, cam.cx, cam.cy, distortion)
    rays = np.column_stack([(kq - (cam.cx, cam.cy)) / (cam.fx, cam.fy), np.ones(len(kq))])
    kq_dist = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), cam.matrix(), np.asarray(distortion))[0].reshape(-1, 2)
    assert np.median(np.linalg.norm(kq_dist - kq, axis=1)) > 2.0  # the distortion matters
    est = estimate_pose(kq_dist, kk, keyframe.depth, keyframe.camera, distorted_cam, PoseConfig())
    assert est.ok and errors(est, keyframe, query)[0] < 1e-4 and est.rmse_px < 0.01
    ignored = estimate_pose(kq_dist, kk, keyframe.depth, keyframe.camera, cam, PoseConfig())
    assert not ignored.ok or errors(ignored, keyframe, query)[0] > 0.01


# --- essential matrix ------------------------------------------------------------------------
def test_without_depth_the_essential_matrix_gives_rotation_and_direction(scene):
    keyframes, queries = scene
    rng = np.random.default_rng(11)
    for query in queries[:6]:
        keyframe = keyframes[query.keyframe]
        kq, kk = noisy_matches(keyframe, query, rng, n=400, noise_px=0.3, outliers=0.2)
        est = estimate_pose(kq, kk, None, keyframe.camera, query.camera, PoseConfig())
        assert (est.ok, est.metric, est.method) == (False, False, "essential")
        assert "non-metric" in est.reason
        R, t = ss.relative_pose(keyframe, query)
        assert rotation_angle_deg(est.rotation, R) < 0.5
        cos = float(est.translation @ t / np.linalg.norm(t))
        assert math.isclose(np.linalg.norm(est.translation), 1.0) and math.degrees(math.acos(min(1, cos))) < 3.0
        assert est.inliers > 0.7 * len(kq)
        with pytest.raises(ValueError, match="non-metric"):
            map_pose(keyframe.pose, est)


def test_matrix_pose_round_trip():
    rng = np.random.default_rng(12)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = cv2.Rodrigues(rng.normal(size=3))[0], rng.normal(size=3)
    np.testing.assert_allclose(pose_to_matrix(matrix_to_pose(T)), T, atol=1e-12)


def test_coinciding_points_do_not_break_pnp(scene):
    """Most matches collapsed onto one query pixel (as a degenerate warp gives): SQPnP
    asserts on samples of coinciding image points; the pose still comes from the rest."""
    keyframe, query = pair(scene, 6)
    rng = np.random.default_rng(13)
    kq, kk = noisy_matches(keyframe, query, rng, n=200, noise_px=0.3)
    h, w = query.depth.shape
    kq_bad = np.tile(kq[:1], (300, 1))
    kk_bad = rng.uniform((0, 0), (w, h), (300, 2))
    config = PoseConfig(min_inlier_ratio=0.3)
    est = estimate_pose(np.r_[kq_bad, kq], np.r_[kk_bad, kk], keyframe.depth, keyframe.camera, query.camera, config)
    assert est.ok, est.reason
    assert errors(est, keyframe, query)[0] < 0.03
    collapsed = estimate_pose(kq_bad, kk_bad, keyframe.depth, keyframe.camera, query.camera, config)
    assert not collapsed.ok and collapsed.reason
