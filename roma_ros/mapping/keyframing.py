"""Automatic keyframe selection: a new keyframe where the map has none yet.

A frame becomes a keyframe when, from EVERY stored keyframe, the camera has moved at least
``min_distance`` or turned at least ``min_angle_deg`` (so a place seen once from one side and
later from the other gets both views, and standing still adds nothing), or when ``max_interval_s``
has passed since the last keyframe (a slow pan never leaves the map empty for long). The same
selector serves ``roma-keyframes import-bag`` and the node's mapping mode: no I/O here, and a
decision is a vectorised distance/angle test against all keyframes (microseconds at thousands).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from roma_ros.core.transforms import Pose

NS = 1_000_000_000


@dataclass
class KeyframeRule:
    min_distance: float = 0.5  # metres
    min_angle_deg: float = 15.0
    max_interval_s: float = 10.0  # 0 = no time rule

    def validate(self) -> None:
        if not self.min_distance >= 0 or not self.min_angle_deg >= 0 or not self.max_interval_s >= 0:
            raise ValueError(f"keyframe thresholds must be >= 0: min_distance={self.min_distance} m, "
                             f"min_angle={self.min_angle_deg} deg, max_interval={self.max_interval_s} s")
        if self.min_distance == 0 and self.min_angle_deg == 0:
            raise ValueError("min_distance and min_angle are both 0: every frame would be a keyframe")


class KeyframeSelector:
    """Decides, frame by frame, whether a pose is new enough to store."""

    def __init__(self, rule: KeyframeRule, poses: list[Pose] = ()) -> None:
        rule.validate()
        self.rule = rule
        self._positions = np.zeros((0, 3))
        self._quaternions = np.zeros((0, 4))
        self.last_stamp_ns: int | None = None
        for pose in poses:
            self._append(pose)

    def __len__(self) -> int:
        return len(self._positions)

    def _append(self, pose: Pose) -> None:
        q = np.asarray(pose[1], float)
        self._positions = np.vstack([self._positions, np.asarray(pose[0], float)[None]])
        self._quaternions = np.vstack([self._quaternions, (q / np.linalg.norm(q))[None]])

    def decide(self, stamp_ns: int, pose: Pose) -> str:
        """"" when the frame should become a keyframe, else why not (one short, fixed phrase)."""
        if not len(self):
            return ""
        if self.rule.max_interval_s and self.last_stamp_ns is not None and \
                stamp_ns - self.last_stamp_ns >= self.rule.max_interval_s * NS:
            return ""
        distance = np.linalg.norm(self._positions - np.asarray(pose[0], float), axis=1)
        q = np.asarray(pose[1], float)
        dot = np.abs(self._quaternions @ (q / np.linalg.norm(q)))
        angle = np.degrees(2.0 * np.arccos(np.clip(dot, 0.0, 1.0)))
        near = (distance < self.rule.min_distance) & (angle < self.rule.min_angle_deg)
        return "near a keyframe" if near.any() else ""

    def add(self, stamp_ns: int, pose: Pose) -> None:
        """Record a keyframe that was stored."""
        self._append(pose)
        self.last_stamp_ns = stamp_ns
