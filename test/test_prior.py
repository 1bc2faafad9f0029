"""The estimate's prior on the shortlist and the disagreement guard (localize/prior.py, no ROS),
and Relocalizer.process's ``eligible`` hook on the synthetic scene with a look-alike keyframe."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from roma_ros.demo.synthetic_scene import relocalization_set
from roma_ros.localize.pipeline import DecisionConfig, Relocalizer, shortlist
from roma_ros.localize.prior import (
    Consensus, planar_distance, planar_positions, within_radius, yaw, yaw_difference_deg,
)
from roma_ros.matching.base import MatcherConfig
from roma_ros.matching.registry import build_matcher
from roma_ros.store import Keyframe

IDENTITY = (0.0, 0.0, 0.0, 1.0)


def yaw_quaternion(degrees: float) -> tuple[float, float, float, float]:
    half = math.radians(degrees) / 2
    return (0.0, 0.0, math.sin(half), math.cos(half))


def test_planar_distance_and_yaw():
    assert planar_distance(((0, 0, 0), IDENTITY), ((3, 4, 9), IDENTITY)) == 5.0  # z ignored
    assert yaw(yaw_quaternion(30)) == pytest.approx(math.radians(30))
    assert yaw_difference_deg(((0, 0, 0), yaw_quaternion(170)), ((0, 0, 0), yaw_quaternion(-170))) == pytest.approx(20)


def test_within_radius_keeps_keyframes_without_a_pose():
    image = np.zeros((8, 8, 3), np.uint8)
    keyframes = [Keyframe("near", "near.png", image, pose=((1.0, 0.0, 1.2), IDENTITY)),
                 Keyframe("far", "far.png", image, pose=((20.0, 0.0, 1.2), IDENTITY)),
                 Keyframe("unposed", "unposed.png", image)]
    mask = within_radius(planar_positions(keyframes), ((0.0, 0.0, 0.0), IDENTITY), 2.0)
    assert mask.tolist() == [True, False, True]


def test_shortlist_ranks_only_allowed_keyframes():
    descriptors = np.eye(4, dtype=np.float32)
    query = np.array([0.9, 0.8, 0.1, 0.0], np.float32)
    assert shortlist(descriptors, query, 2, 4)[0] == [0, 1]
    assert shortlist(descriptors, query, 2, 4, np.array([False, True, True, True]))[0] == [1, 2]
    assert shortlist(None, None, 2, 4, np.array([True, False, True, False]))[0] == [0, 2]


def test_consensus_holds_a_far_pose_until_frames_agree():
    consensus = Consensus()
    estimate = ((0.0, 0.0, 0.0), IDENTITY)
    near = ((0.3, 0.0, 0.0), IDENTITY)
    far = ((5.0, 0.0, 0.0), IDENTITY)
    elsewhere = ((-6.0, 3.0, 0.0), IDENTITY)
    assert consensus.observe(near, None, 1.0, 20.0, 3).publish  # no estimate: no guard
    assert consensus.observe(near, estimate, 1.0, 20.0, 3) == dataclasses.replace(
        consensus.observe(near, estimate, 1.0, 20.0, 3))
    verdicts = [consensus.observe(far, estimate, 1.0, 20.0, 3) for _ in range(2)]
    assert [(v.publish, v.far, v.streak) for v in verdicts] == [(False, True, 1), (False, True, 2)]
    # A frame elsewhere breaks the streak: it does not agree with the far ones.
    assert consensus.observe(elsewhere, estimate, 1.0, 20.0, 3).streak == 1
    verdicts = [consensus.observe(far, estimate, 1.0, 20.0, 3) for _ in range(4)]
    assert [v.publish for v in verdicts] == [False, False, True, True]
    assert [v.sustained for v in verdicts] == [False, False, True, False]  # once per streak
    assert verdicts[2].distance == pytest.approx(5.0)
    # Yaw counts only when asked (both poses in the same frame).
    turned = ((0.0, 0.0, 0.0), yaw_quaternion(90))
    assert consensus.observe(turned, estimate, 1.0, 20.0, 3).far
    assert not consensus.observe(turned, estimate, 1.0, None, 3).far
    assert consensus.observe(far, estimate, 1.0, 20.0, 1).publish  # frames 1: at once


@pytest.fixture(scope="module")
def look_alike():
    """The scene's keyframes plus a copy of keyframe 0 (same image and depth) posed 20 m away,
    listed first, so that without a prior it wins the tie."""
    keyframes, queries = relocalization_set(seed=0, n_queries=4)
    stored = []
    for view in keyframes:
        fx, fy, cx, cy = view.camera.to_ros()
        stored.append(Keyframe(view.name, f"{view.name}.png", view.rgb, pose=view.pose, depth=view.depth,
                               intrinsics={"fx": fx, "fy": fy, "cx": cx, "cy": cy}))
    (x, y, z), q = stored[0].pose
    twin = dataclasses.replace(stored[0], name="look_alike", image_file="look_alike.png", pose=((x + 20.0, y, z), q))
    query = next(v for v in queries if v.keyframe == 0)
    return [twin] + stored, query


def test_eligible_mask_excludes_a_look_alike(look_alike):
    keyframes, query = look_alike
    relocalizer = Relocalizer(build_matcher(MatcherConfig(model="classical")),
                              DecisionConfig(threshold=1.0, min_inliers=20))
    relocalizer.set_keyframes(keyframes)
    free = relocalizer.process(query.rgb, query.camera)
    assert free.accepted and keyframes[free.best.index].name == "look_alike"  # the trap is real
    estimate = (tuple(query.pose[0]), IDENTITY)
    prior = relocalizer.process(query.rgb, query.camera, eligible=lambda xy: within_radius(xy, estimate, 5.0))
    assert prior.accepted and keyframes[prior.best.index].name == keyframes[1].name
    assert 0 not in [c.index for c in prior.candidates]
    nothing = relocalizer.process(query.rgb, query.camera, eligible=np.zeros(len(keyframes), bool))
    assert not nothing.accepted and "no keyframe eligible under the prior" in nothing.reason
    with pytest.raises(ValueError, match="eligible mask has shape"):
        relocalizer.process(query.rgb, query.camera, eligible=[True])
