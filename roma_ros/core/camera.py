"""The pinhole camera model with OpenCV distortion, shared by the store, the pose and ROS.

Pixels: x right, y down, pixel (i, j) covers [j, j+1) x [i, i+1), so its centre is
(j + 0.5, i + 0.5). ``CameraModel`` holds cx, cy in that frame; ROS CameraInfo and the keyframe
index put pixel centres at integers, hence ``CameraModel.from_ros`` adds 0.5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# OpenCV distortion vectors (k1 k2 p1 p2 [k3 [k4 k5 k6 [s1 s2 s3 s4 [tx ty]]]]).
DISTORTION_LENGTHS = (0, 4, 5, 8, 12, 14)
# cv2.undistortPoints' 5 fixed iterations leave ~1e-5 rad at strong distortion.
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 50, 1e-12)


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics (cx, cy with pixel centres at +0.5) and OpenCV distortion."""

    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()

    @classmethod
    def from_ros(cls, fx: float, fy: float, cx: float, cy: float, distortion=()) -> "CameraModel":
        """From ROS/OpenCV intrinsics (pixel centres at integers), e.g. CameraInfo K or
        keyframes.yaml: the one place where the half-pixel shift happens."""
        return cls(float(fx), float(fy), float(cx) + 0.5, float(cy) + 0.5,
                   tuple(float(d) for d in (distortion or ())))

    @classmethod
    def from_intrinsics(cls, intrinsics: dict) -> "CameraModel":
        """From an ``{fx, fy, cx, cy[, distortion]}`` mapping in the ROS/OpenCV convention, as
        keyframes.yaml and ``conversions.camera_info_intrinsics`` hold them."""
        k = intrinsics
        return cls.from_ros(k["fx"], k["fy"], k["cx"], k["cy"], k.get("distortion", ()))

    def to_ros(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) with pixel centres at integers, as ROS and keyframes.yaml store them."""
        return self.fx, self.fy, self.cx - 0.5, self.cy - 0.5

    def matrix(self) -> np.ndarray:
        """3x3 K in our pixel frame."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def distorted(self) -> bool:
        """Whether the distortion is non-zero (an all-zero plumb_bob vector means none)."""
        return any(d != 0.0 for d in self.distortion)

    def dist_coeffs(self) -> np.ndarray | None:
        return np.asarray(self.distortion, dtype=np.float64) if self.distorted else None

    def validate(self) -> None:
        """ValueError naming the bad value: non-positive or non-finite focal length, etc."""
        for name in ("fx", "fy"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"focal length {name}={value} must be a positive number of pixels")
        for name in ("cx", "cy"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"principal point {name}={getattr(self, name)} must be finite")
        if len(self.distortion) not in DISTORTION_LENGTHS:
            raise ValueError(f"{len(self.distortion)} distortion coefficients: OpenCV takes "
                             f"{', '.join(map(str, DISTORTION_LENGTHS[1:]))} (plumb_bob: 5, "
                             "rational_polynomial: 8)")
        if not all(math.isfinite(d) for d in self.distortion):
            raise ValueError("distortion coefficients must be finite")

    def undistort(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) pixels -> the pixels an ideal pinhole camera with the same K would see."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        if not self.distorted or len(pts) == 0:
            return pts
        K = self.matrix()
        return cv2.undistortPointsIter(pts.reshape(-1, 1, 2), K, self.dist_coeffs(), None, K,
                                       _UNDISTORT_CRITERIA).reshape(-1, 2)

    def normalized(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) pixels -> (N, 2) normalized image coordinates (x/z, y/z), undistorted."""
        pts = self.undistort(pts)
        return np.column_stack([(pts[:, 0] - self.cx) / self.fx, (pts[:, 1] - self.cy) / self.fy])
