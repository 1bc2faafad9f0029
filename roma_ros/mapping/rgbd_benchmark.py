"""The real RGB-D pairs in test/data/tum_fr1_rpy (TUM RGB-D benchmark, fr1/rpy, CC BY 4.0):
frames with ground-truth camera poses, keyframes with depth, distractors from another scene.

Used by the tests and bench/pose.py to check pose accuracy and covariance honesty on a real
sensor. Conventions: test/data/tum_fr1_rpy/README.md.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from roma_ros.core.camera import CameraModel
from roma_ros.core.transforms import matrix_from_quaternion

DATA = Path(__file__).resolve().parents[2] / "test" / "data" / "tum_fr1_rpy"
# Freiburg 1 Kinect, TUM's calibration (ROS/OpenCV convention: pixel centres at integers).
INTRINSICS = {"fx": 517.3, "fy": 516.5, "cx": 318.6, "cy": 255.3,
              "distortion": [0.2624, -0.9531, -0.0054, 0.0026, 1.1633]}
DEPTH_SCALE = 1.0 / 5000.0  # metres per unit of the 16-bit depth PNGs


@dataclass
class Frame:
    name: str
    stamp: float
    rgb: np.ndarray               # RGB uint8
    T_world_cam: np.ndarray       # 4x4, camera optical frame in the mocap world
    depth: np.ndarray | None      # float32 metres, NaN unknown; only keyframes have it
    speed: float                  # deg/s the camera turned at this stamp


def camera() -> CameraModel:
    return CameraModel.from_intrinsics(INTRINSICS)


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_depth(path: Path) -> np.ndarray:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16:
        raise ValueError(f"{path} is not a 16-bit depth PNG")
    depth = raw.astype(np.float32) * DEPTH_SCALE
    depth[raw == 0] = np.nan
    return depth


def load_frames(folder: Path = DATA) -> list[Frame]:
    frames = []
    with open(folder / "frames.csv", newline="") as f:
        for row in csv.DictReader(f):
            T = np.eye(4)
            T[:3, :3] = matrix_from_quaternion([float(row[k]) for k in ("qx", "qy", "qz", "qw")])
            T[:3, 3] = [float(row[k]) for k in ("tx", "ty", "tz")]
            depth = read_depth(folder / row["depth"]) if row["depth"] else None
            frames.append(Frame(row["name"], float(row["stamp"]), read_rgb(folder / "rgb" / f"{row['name']}.jpg"),
                                T, depth, float(row["speed_deg_s"])))
    return frames


def load_distractors(folder: Path = DATA) -> list[np.ndarray]:
    return [read_rgb(p) for p in sorted((folder / "distractors").glob("*.jpg"))]


def load_pairs(folder: Path = DATA) -> list[tuple[str, str]]:
    """(keyframe name, query name) of the committed evaluation pairs."""
    with open(folder / "pairs.csv", newline="") as f:
        return [(row["keyframe"], row["query"]) for row in csv.DictReader(f)]


def relative_pose(keyframe: Frame, query: Frame) -> np.ndarray:
    """4x4 ground truth of the query camera in the keyframe camera frame (p_kf = T p_query)."""
    return np.linalg.inv(keyframe.T_world_cam) @ query.T_world_cam
