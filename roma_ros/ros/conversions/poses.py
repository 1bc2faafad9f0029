"""Poses <-> geometry_msgs (PoseArray, PoseWithCovarianceStamped, the initialpose floor), the
RViz markers of a decision, and CameraInfo -> intrinsics and camera model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, PoseArray, PoseWithCovarianceStamped, Quaternion, Vector3
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from roma_ros.core.text import printable
from roma_ros.ros.conversions.images import _header

# A pose as used throughout roma_ros: ((x, y, z), (qx, qy, qz, qw)).
PoseTuple = tuple[Sequence[float], Sequence[float]]

MARKER_NS = "roma_ros"


def _pose(pose: PoseTuple | None) -> Pose:
    """Tuple -> Pose; unknown or non-finite poses become identity, quaternions are normalised
    (RViz rejects unnormalised ones)."""
    if pose is None:
        return Pose(orientation=Quaternion(w=1.0))
    xyz = np.asarray(pose[0], np.float64).reshape(3)
    quat = np.asarray(pose[1], np.float64).reshape(4)
    norm = float(np.linalg.norm(quat))
    if not (np.isfinite(xyz).all() and np.isfinite(quat).all()) or norm < 1e-12:
        return Pose(orientation=Quaternion(w=1.0))
    quat = quat / norm
    return Pose(position=Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
                orientation=Quaternion(x=float(quat[0]), y=float(quat[1]), z=float(quat[2]),
                                       w=float(quat[3])))


def poses_to_pose_array(header: Header | None,
                        poses: Sequence[PoseTuple | None]) -> PoseArray:
    """Keyframe poses ((x, y, z), (qx, qy, qz, qw)) -> PoseArray, index-aligned with
    ``keyframe_index`` in ~/matches.

    A keyframe without a (finite) pose still takes its slot, as the identity pose: dropping it
    would shift every later index. Consumers that need to tell them apart use the keyframe store.
    """
    return PoseArray(header=_header(header), poses=[_pose(p) for p in poses])


def match_markers(header_frame_id: str, stamp: Time, keyframe_name: str,
                  keyframe_pose: PoseTuple | None, accepted: bool, text: str,
                  query_pose: PoseTuple | None = None, optical: bool = True) -> MarkerArray:
    """Markers for the latest decision: DELETEALL (clears the previous frame's markers), a text
    label (green: accepted; red: "no match"), a sphere at the keyframe's pose when known, and an
    arrow at the published query pose (along the viewing direction: z of an ``optical`` camera
    frame, else x of a base frame).

    The label stands above the keyframe pose, or at the frame origin when the pose is unknown.
    """
    header = Header(frame_id=header_frame_id, stamp=stamp)
    color = (ColorRGBA(r=0.1, g=0.85, b=0.1, a=1.0) if accepted
             else ColorRGBA(r=0.9, g=0.1, b=0.1, a=1.0))
    detail = ": ".join(s for s in (keyframe_name, text) if s)
    label = (detail or "match") if accepted else ("no match" + (f" ({detail})" if detail else ""))
    pose = _pose(keyframe_pose)
    text_pose = Pose(position=Point(x=pose.position.x, y=pose.position.y,
                                    z=pose.position.z + (0.4 if keyframe_pose else 0.0)),
                     orientation=Quaternion(w=1.0))
    markers = [
        Marker(header=header, ns=MARKER_NS, id=0, action=Marker.DELETEALL),
        Marker(header=header, ns=MARKER_NS, id=0, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
               pose=text_pose, color=color, text=label,
               scale=Vector3(z=0.25)),
    ]
    if keyframe_pose is not None:
        markers.append(Marker(header=header, ns=MARKER_NS, id=1, type=Marker.SPHERE,
                              action=Marker.ADD, pose=pose, scale=Vector3(x=0.3, y=0.3, z=0.3),
                              color=ColorRGBA(r=color.r, g=color.g, b=color.b, a=0.6)))
    if query_pose is not None:
        arrow = _pose(query_pose)
        if optical:  # a marker arrow points along its x axis: turn x onto the optical z axis
            from roma_ros.localize.pose import matrix_from_quaternion, quaternion_from_matrix

            o = arrow.orientation
            x_to_z = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # -90 deg about y
            turned = quaternion_from_matrix(matrix_from_quaternion([o.x, o.y, o.z, o.w]) @ x_to_z)
            arrow.orientation = Quaternion(x=turned[0], y=turned[1], z=turned[2], w=turned[3])
        markers.append(Marker(header=header, ns=MARKER_NS, id=2, type=Marker.ARROW, action=Marker.ADD,
                              pose=arrow, scale=Vector3(x=0.6, y=0.08, z=0.08),
                              color=ColorRGBA(r=0.1, g=0.4, b=1.0, a=0.9)))
    return MarkerArray(markers=markers)


class CameraInfoError(ValueError):
    """A CameraInfo that cannot serve as intrinsics; the message says why."""


# Distortion models whose ``d`` vector OpenCV takes as it is (k1 k2 p1 p2 k3 [k4 k5 k6]).
OPENCV_DISTORTION_MODELS = ("plumb_bob", "rational_polynomial")


def camera_info_intrinsics(msg: CameraInfo, rectified: bool = False) -> dict:
    """CameraInfo -> ``{fx, fy, cx, cy[, distortion]}`` in the ROS/OpenCV convention (pixel
    centres at integers, as keyframes.yaml stores them). All-zero distortion is left out.

    ``rectified``: the image is ``image_rect`` (image_proc's output), whose camera is the
    projection matrix P (fx=P[0], fy=P[5], cx=P[2], cy=P[6]) with the distortion already removed;
    D describes the raw image only and is ignored. Otherwise K and D (the raw image)."""
    if rectified:
        p = [float(v) for v in msg.p]
        fx, fy, cx, cy = p[0], p[5], p[2], p[6]
        what, fix = "P", "publish P (image_proc's camera_info does) or set camera_info_rectified false"
    else:
        k = [float(v) for v in msg.k]
        fx, fy, cx, cy = k[0], k[4], k[2], k[5]
        what, fix = "K", "calibrate it or set query_intrinsics"
    if not (np.isfinite([fx, fy, cx, cy]).all() and fx > 0 and fy > 0):
        raise CameraInfoError(f"camera_info {what} has fx={fx}, fy={fy}: the camera is not calibrated "
                              f"(or {what} is not row-major); {fix}")
    d = [] if rectified else [float(v) for v in msg.d]
    intrinsics = {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
    if any(v != 0.0 for v in d):
        if msg.distortion_model not in OPENCV_DISTORTION_MODELS:
            raise CameraInfoError(f"camera_info distortion model '{printable(msg.distortion_model)}' is not supported: "
                                  f"use {' or '.join(OPENCV_DISTORTION_MODELS)}, or rectified images")
        if not np.isfinite(d).all():
            raise CameraInfoError("camera_info distortion coefficients must be finite")
        intrinsics["distortion"] = d
    if int(msg.binning_x) > 1 or int(msg.binning_y) > 1 or int(msg.roi.width) or int(msg.roi.height):
        raise CameraInfoError("camera_info with binning or a region of interest is not supported: "
                              "publish the intrinsics of the image as sent")
    return intrinsics


def camera_info_to_camera(msg: CameraInfo, rectified: bool = False):
    """CameraInfo -> ``pose.CameraModel`` (cx, cy shifted once to our pixel-centre frame); see
    ``camera_info_intrinsics`` for ``rectified``. Refused (CameraInfoError) without an image
    size, or with a model that fails the sanity gate ``CameraModel.check_for_image`` for that size."""
    from roma_ros.localize.pose import CameraModel

    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise CameraInfoError(f"camera_info is {width}x{height}: a calibrated camera_info carries the size of "
                              "its images (width, height); fix the camera driver's calibration file")
    camera = CameraModel.from_intrinsics(camera_info_intrinsics(msg, rectified))
    try:
        camera.validate()
        camera.check_for_image(width, height)
    except ValueError as exc:
        raise CameraInfoError(f"camera_info: {exc}") from None
    return camera


def msg_to_pose(msg: Pose) -> PoseTuple:
    """geometry_msgs/Pose -> ((x, y, z), (qx, qy, qz, qw)) with a unit quaternion; ValueError when
    not finite or the quaternion is zero."""
    xyz = (float(msg.position.x), float(msg.position.y), float(msg.position.z))
    q = np.array([msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w], np.float64)
    norm = float(np.linalg.norm(q))
    if not (np.isfinite(xyz).all() and np.isfinite(q).all()) or norm < 1e-6:
        raise ValueError(f"pose {xyz} {q.tolist()} is not finite or has a zero quaternion")
    return xyz, tuple(float(v) for v in q / norm)


def pose_with_covariance_msg(header: Header, pose: PoseTuple, covariance: np.ndarray) -> PoseWithCovarianceStamped:
    """PoseWithCovarianceStamped (covariance 6x6, ROS order). A covariance with a non-finite
    entry is unknown: it goes out as a large diagonal (1e6), which consumers read as "no idea"."""
    msg = PoseWithCovarianceStamped(header=header)
    msg.pose.pose = _pose(pose)
    cov = np.asarray(covariance, np.float64).reshape(6, 6)
    if not np.isfinite(cov).all():
        cov = np.diag(np.full(6, 1e6))
    msg.pose.covariance = [float(v) for v in cov.ravel()]
    return msg


# nav2's bounds on an initial pose's covariance (Lyrical rejects any element < 0 or > 1e9).
COVARIANCE_MAX = 1e9


def floor_covariance(covariance: np.ndarray, position_std: float, angle_std_rad: float) -> np.ndarray:
    """The 6x6 covariance with each diagonal variance raised to at least the floor (position
    std for x, y, z; angle std for roll, pitch, yaw). Raising the diagonal keeps a positive
    semi-definite matrix so; off-diagonal terms stay. Non-finite input stays non-finite (unknown)."""
    cov = np.asarray(covariance, np.float64).reshape(6, 6).copy()
    floors = np.array([position_std ** 2] * 3 + [angle_std_rad ** 2] * 3)
    diagonal = np.diag(cov)
    raised = np.where(np.isfinite(diagonal), np.maximum(diagonal, floors), diagonal)
    cov[np.diag_indices(6)] = raised
    return cov


def initialpose_covariance(covariance: np.ndarray, position_std: float, angle_std_rad: float) -> np.ndarray:
    """What AMCL gets on initialpose: the diagonal only (nav2 rejects negative elements, which
    off-diagonal terms can be), floored, unknown (non-finite) variances as the ceiling, and every
    element within nav2's bounds [0, 1e9]."""
    diagonal = np.diag(np.asarray(covariance, np.float64).reshape(6, 6))
    diagonal = np.where(np.isfinite(diagonal), diagonal, COVARIANCE_MAX)
    floors = np.array([position_std ** 2] * 3 + [angle_std_rad ** 2] * 3)
    return np.diag(np.clip(np.maximum(diagonal, floors), 0.0, COVARIANCE_MAX))
