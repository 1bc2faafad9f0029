"""The relocalizer's pose step on the synthetic scene: PnP against the accepted keyframe's depth,
with the classical matcher (real SIFT matches on rendered images, not exact correspondences)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from roma_ros.matching.base import MatcherConfig
from roma_ros.matching.registry import build_matcher
from roma_ros.localize.pipeline import DecisionConfig, Relocalizer
from roma_ros.localize.pose import PoseConfig, map_pose, pose_to_matrix, rotation_angle_deg
from roma_ros.store import Keyframe
from roma_ros.demo.synthetic_scene import relocalization_set
from roma_ros.demo.photo_pairs import make_pair

# Bounds for the classical matcher at 240x320 (measured: 3-11 mm, 0.04-0.15 deg on seed 0).
MAX_POSITION_ERROR_M = 0.05
MAX_ROTATION_ERROR_DEG = 1.0


def as_keyframe(view, depth=True, intrinsics=True) -> Keyframe:
    fx, fy, cx, cy = view.camera.to_ros()
    return Keyframe(name=view.name, image_file=f"{view.name}.png", image=view.rgb, pose=view.pose,
                    intrinsics={"fx": fx, "fy": fy, "cx": cx, "cy": cy} if intrinsics else None,
                    depth=view.depth if depth else None)


def pose_errors(keyframe_view, estimate, query_view) -> tuple[float, float]:
    (position, orientation), _ = map_pose(keyframe_view.pose, estimate)
    truth, found = pose_to_matrix(query_view.pose), pose_to_matrix((position, orientation))
    return float(np.linalg.norm(truth[:3, 3] - found[:3, 3])), rotation_angle_deg(truth[:3, :3], found[:3, :3])


@pytest.fixture(scope="module")
def scene():
    return relocalization_set(seed=0, n_queries=5)


@pytest.fixture(scope="module")
def relocalizer(scene):
    keyframes, _ = scene
    relocalizer = Relocalizer(build_matcher(MatcherConfig(model="classical")),
                              DecisionConfig(threshold=1.0, min_inliers=20))
    relocalizer.set_keyframes([as_keyframe(v) for v in keyframes])
    return relocalizer


def test_accepted_queries_get_a_metric_pose_near_ground_truth(scene, relocalizer):
    keyframes, queries = scene
    for query in queries:
        result = relocalizer.process(query.rgb, query.camera)
        assert result.accepted and result.best.index == query.keyframe, query.name
        estimate = result.pose
        assert estimate.ok and estimate.method == "pnp" and estimate.reason == "", (query.name, estimate.reason)
        assert estimate.inliers >= 20 and estimate.rmse_px < 1.5
        position_error, rotation_error = pose_errors(keyframes[result.best.index], estimate, query)
        assert position_error < MAX_POSITION_ERROR_M and rotation_error < MAX_ROTATION_ERROR_DEG, query.name
        assert "pose" in result.timings and result.latency >= result.timings["pose"]


def test_no_pose_without_an_accepted_match_or_an_input(scene, relocalizer):
    keyframes, queries = scene
    query = queries[0]
    distractor = make_pair("grass", seed=5, size=(240, 320)).query
    rejected = relocalizer.process(distractor, query.camera)
    assert not rejected.accepted and rejected.pose is None and "pose" not in rejected.timings
    no_camera = relocalizer.process(query.rgb)
    assert no_camera.accepted and not no_camera.pose.ok
    assert no_camera.pose.reason == "no query camera intrinsics (camera_info)"
    bare = Relocalizer(relocalizer.matcher, relocalizer.decision)
    bare.set_keyframes([as_keyframe(v, depth=False, intrinsics=False) for v in keyframes])
    result = bare.process(query.rgb, query.camera)
    assert result.accepted and not result.pose.ok and result.pose.method == "none"
    assert result.pose.reason == "no depth for keyframe 'kf0', no intrinsics for keyframe 'kf0'"


def test_pose_gates_change_between_queries(scene, relocalizer):
    _, queries = scene
    query = queries[1]
    try:
        relocalizer.set_pose_config(PoseConfig(min_inliers=100000))
        gated = relocalizer.process(query.rgb, query.camera)
        assert gated.accepted and not gated.pose.ok and "100000" in gated.pose.reason
        with pytest.raises(ValueError, match="max_depth"):
            relocalizer.set_pose_config(PoseConfig(min_depth=5.0, max_depth=1.0))
        # Depth outside [min_depth, max_depth] is not used: nothing left for PnP.
        relocalizer.set_pose_config(dataclasses.replace(PoseConfig(), min_depth=50.0, max_depth=60.0))
        far = relocalizer.process(query.rgb, query.camera)
        assert not far.pose.ok and far.pose.points == 0
    finally:
        relocalizer.set_pose_config(PoseConfig())
    assert relocalizer.process(query.rgb, query.camera).pose.ok


def test_keyframe_camera_problem_names_a_keyframe_without_or_with_absurd_intrinsics():
    """Extra accepted keyframes without intrinsics are skipped for multi-keyframe PnP, not a crash
    of the frame (the demo's photo keyframes have none)."""
    from roma_ros.localize.pipeline import keyframe_camera_problem
    from roma_ros.store import Keyframe

    image = np.zeros((240, 320, 3), np.uint8)
    assert "no intrinsics" in keyframe_camera_problem(Keyframe("photo", "photo.png", image))
    good = {"fx": 300.0, "fy": 300.0, "cx": 159.5, "cy": 119.5}
    assert keyframe_camera_problem(Keyframe("ok", "ok.png", image, intrinsics=good)) == ""
    absurd = dict(good, distortion=[1e6, 1e6, 0.0, 0.0, 1e6])
    assert "bad intrinsics" in keyframe_camera_problem(Keyframe("bad", "bad.png", image, intrinsics=absurd))
