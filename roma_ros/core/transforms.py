"""Rotations and rigid transforms: quaternions [x, y, z, w], 4x4 matrices, ``Pose`` tuples."""
from __future__ import annotations

import math

import numpy as np

Pose = tuple[tuple[float, float, float], tuple[float, float, float, float]]  # ((x, y, z), (qx, qy, qz, qw))


def quaternion_from_matrix(R: np.ndarray) -> tuple[float, float, float, float]:
    """3x3 rotation -> unit quaternion [x, y, z, w] with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    # Shepperd's method: pivot on the largest of w, x, y, z for numerical stability.
    t = np.trace(R)
    diag = (t, R[0, 0], R[1, 1], R[2, 2])
    k = int(np.argmax(diag))
    if k == 0:
        s = 2.0 * math.sqrt(1.0 + t)
        q = ((R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4)
    elif k == 1:
        s = 2.0 * math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = (s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s)
    elif k == 2:
        s = 2.0 * math.sqrt(1.0 - R[0, 0] + R[1, 1] - R[2, 2])
        q = ((R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 - R[0, 0] - R[1, 1] + R[2, 2])
        q = ((R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4, (R[1, 0] - R[0, 1]) / s)
    qa = np.asarray(q) / np.linalg.norm(q)
    if qa[3] < 0:
        qa = -qa
    return tuple(float(v) for v in qa)  # type: ignore[return-value]


def matrix_from_quaternion(q) -> np.ndarray:
    """Quaternion [x, y, z, w] (normalised here) -> 3x3 rotation."""
    x, y, z, w = np.asarray(q, dtype=np.float64).reshape(4) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle (degrees) of the rotation between two rotation matrices."""
    c = (np.trace(np.asarray(R_a).T @ np.asarray(R_b)) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def pose_to_matrix(pose: Pose) -> np.ndarray:
    """((x, y, z), (qx, qy, qz, qw)) -> 4x4 homogeneous transform."""
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion(pose[1])
    T[:3, 3] = np.asarray(pose[0], dtype=np.float64).reshape(3)
    return T


def matrix_to_pose(T: np.ndarray) -> Pose:
    t = np.asarray(T, dtype=np.float64)[:3, 3]
    return (float(t[0]), float(t[1]), float(t[2])), quaternion_from_matrix(np.asarray(T)[:3, :3])


def pose_errors(pose: Pose, truth: Pose) -> tuple[float, float]:
    """(position error in m, rotation error in degrees) of ``pose`` against ``truth``."""
    T, G = pose_to_matrix(pose), pose_to_matrix(truth)
    return float(np.linalg.norm(T[:3, 3] - G[:3, 3])), rotation_angle_deg(T[:3, :3], G[:3, :3])
