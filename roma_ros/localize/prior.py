"""Using the robot's current estimate: a prior on the shortlist, and a guard against jumps.

No ROS here. The node feeds in its estimate (AMCL's ``amcl_pose`` or its own last published
pose) and each new pose; this module says which keyframes may be verified and whether a pose
may go out. Poses are ``((x, y, z), (qx, qy, qz, qw))`` in the map frame (z up), as everywhere.

Distances are in the x-y plane: a ground robot's estimate (AMCL) has z = 0 while keyframe poses
are camera poses a metre or so above the floor, so a 3-D distance would mix in the camera height.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from roma_ros.localize.pose import Pose
from roma_ros.store import Keyframe


def planar_distance(a: Pose, b: Pose) -> float:
    return math.hypot(a[0][0] - b[0][0], a[0][1] - b[0][1])


def yaw(quaternion: Sequence[float]) -> float:
    """Rotation about the map's z axis (radians), as tf2::getYaw computes it."""
    x, y, z, w = quaternion
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def yaw_difference_deg(a: Pose, b: Pose) -> float:
    d = yaw(a[1]) - yaw(b[1])
    return abs(math.degrees(math.atan2(math.sin(d), math.cos(d))))


def planar_positions(keyframes: Sequence[Keyframe]) -> np.ndarray:
    """(N, 2) x-y positions of the keyframes, NaN for those without a pose: what ``within_radius``
    searches. The Relocalizer keeps this array beside its keyframes (built on a load, grown on an
    add), so a query's prior costs one vectorized distance, not a pass over the keyframe objects."""
    xy = np.full((len(keyframes), 2), np.nan)
    for i, keyframe in enumerate(keyframes):
        if keyframe.pose is not None:
            xy[i] = keyframe.pose[0][:2]
    return xy


def within_radius(positions: np.ndarray, estimate: Pose, radius: float) -> np.ndarray:
    """Mask of the keyframes the prior allows, from their ``planar_positions``: posed ones within
    ``radius`` (x-y) of ``estimate``, and every keyframe without a pose (nothing says it is
    elsewhere)."""
    xy = np.asarray(positions, np.float64).reshape(-1, 2)
    unposed = np.isnan(xy[:, 0])
    with np.errstate(invalid="ignore"):
        near = np.hypot(xy[:, 0] - estimate[0][0], xy[:, 1] - estimate[0][1]) <= radius
    return unposed | near


@dataclass
class Disagreement:
    """What ``Consensus.observe`` decided for one pose."""

    publish: bool  # the pose may go out
    far: bool  # it disagrees with the estimate
    streak: int  # consecutive far poses that agree with each other, this one included (0 when not far)
    distance: float = 0.0  # from the estimate (m, x-y); 0 without one
    sustained: bool = False  # this pose completes a streak of ``frames``: the estimate is likely wrong


class Consensus:
    """A pose far from the estimate goes out only after ``frames`` consecutive far poses that agree
    with each other (within the same thresholds), as rtabmap waits for its odometry cache: one
    look-alike room must not teleport the robot, a real displacement gets through. Without an
    estimate every pose goes out."""

    def __init__(self) -> None:
        self._last_far: Pose | None = None
        self.streak = 0

    def reset(self) -> None:
        self._last_far, self.streak = None, 0

    def observe(self, pose: Pose, estimate: Pose | None, distance: float, angle_deg: float | None,
                frames: int) -> Disagreement:
        """``angle_deg`` None: compare positions only (the pose is not in the estimate's frame)."""
        if estimate is None:
            self.reset()
            return Disagreement(True, False, 0)
        away = planar_distance(pose, estimate)
        if not self._differs(pose, estimate, distance, angle_deg):
            self.reset()
            return Disagreement(True, False, 0, away)
        agrees = self._last_far is not None and not self._differs(pose, self._last_far, distance, angle_deg)
        self.streak = self.streak + 1 if agrees else 1
        self._last_far = pose
        return Disagreement(self.streak >= frames, True, self.streak, away, self.streak == frames)

    @staticmethod
    def _differs(a: Pose, b: Pose, distance: float, angle_deg: float | None) -> bool:
        return planar_distance(a, b) > distance or (angle_deg is not None and yaw_difference_deg(a, b) > angle_deg)
