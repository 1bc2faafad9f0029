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
# The sanity gate (``check_for_image``): undistorting a point inside the image may
# move it by at most this fraction of the image diagonal (a strong wide-angle plumb_bob lens,
# k1 = -0.3 at fx = 500 on 640x480, moves its corners by 12 %; k1 = k2 = k3 = 1e6 by 50 %), and distorting the
# result again must land within MAX_ROUND_TRIP_PX of where it started.
MAX_DISTORTION_SHIFT = 0.25
MIN_FOCAL_PX = 1.0
MAX_ROUND_TRIP_PX = 1.0
_BORDER_SAMPLES = 9  # points per image side (corners included) that the gate checks


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

    def check_for_image(self, width: int, height: int) -> None:
        """ValueError when the model is absurd for a ``width`` x ``height`` image (call after
        ``validate``): a focal length under MIN_FOCAL_PX, a principal point more than one image
        size outside the image, a point on the image border (where distortion is largest) that
        undistortion moves by more than MAX_DISTORTION_SHIFT of the diagonal, or an undistortion
        that does not round-trip (the iteration did not converge). Such a model gives a confident
        but wrong pose, so it is refused before any."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size {width}x{height}: the camera model needs the size of its images")
        if min(self.fx, self.fy) < MIN_FOCAL_PX:
            raise ValueError(f"focal length fx={self.fx:g}, fy={self.fy:g} is under {MIN_FOCAL_PX:g} px: "
                             "not a real camera; recalibrate it")
        if not (-width <= self.cx <= 2 * width and -height <= self.cy <= 2 * height):
            raise ValueError(f"principal point ({self.cx:g}, {self.cy:g}) is more than one image size outside "
                             f"the {width}x{height} image: the calibration is for another image; recalibrate")
        if not self.distorted:
            return
        t = np.linspace(0.0, 1.0, _BORDER_SAMPLES)
        xs, ys, zeros = t * width, t * height, np.zeros_like(t)
        border = np.concatenate([np.column_stack([xs, zeros]), np.column_stack([xs, zeros + height]),
                                 np.column_stack([zeros, ys]), np.column_stack([zeros + width, ys])])
        diagonal = math.hypot(width, height)
        with np.errstate(all="ignore"):
            try:
                ideal = self.undistort(border)
            except cv2.error as exc:
                raise ValueError(f"distortion {list(self.distortion)} cannot be inverted: {exc.err}") from None
            shift = np.linalg.norm(ideal - border, axis=1)
            normalized = np.column_stack([(ideal[:, 0] - self.cx) / self.fx, (ideal[:, 1] - self.cy) / self.fy,
                                          np.ones(len(ideal))])
            again = np.full_like(border, np.nan)
            if np.isfinite(normalized).all():
                try:
                    again = cv2.projectPoints(normalized, np.zeros(3), np.zeros(3), self.matrix(),
                                              self.dist_coeffs())[0].reshape(-1, 2)
                except cv2.error:
                    pass  # stays NaN: refused below
            round_trip = np.linalg.norm(again - border, axis=1)
        worst = float(np.nanmax(shift)) if np.isfinite(shift).any() else math.inf
        if not np.isfinite(shift).all() or worst > MAX_DISTORTION_SHIFT * diagonal:
            raise ValueError(
                f"distortion {list(self.distortion)} moves a point on the border of the {width}x{height} image by "
                f"{worst:.0f} px, more than {MAX_DISTORTION_SHIFT:.0%} of its diagonal ({diagonal:.0f} px): the "
                "calibration is wrong (or for another image size); recalibrate the camera")
        if not np.isfinite(round_trip).all() or float(round_trip.max()) > MAX_ROUND_TRIP_PX:
            raise ValueError(
                f"distortion {list(self.distortion)} cannot be inverted on the {width}x{height} image (undistorting "
                f"then distorting a border point misses it by more than {MAX_ROUND_TRIP_PX:g} px): the calibration "
                "is wrong (or for another image size); recalibrate the camera")

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
