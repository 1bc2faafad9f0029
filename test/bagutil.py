"""Writing small rosbag2 recordings of the synthetic scene with rosbags' Writer (no ROS).

A recording is a camera run through the room (synthetic_scene.py: exact depth, known optical-frame
poses) with its image, depth and camera_info, and the poses as any of: a PoseStamped topic, an
Odometry topic of base_link (the camera mounted by /tf_static), or /tf only (map -> odom ->
base_link dynamic, base_link -> camera_link -> camera_optical_frame static). The TF and odometry
samples are at the image stamps plus half a frame period, so every image pose is interpolated.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from roma_ros.core.transforms import Pose, matrix_to_pose, pose_to_matrix
from roma_ros.demo.synthetic_scene import default_camera, look_at, render
from roma_ros.mapping.trajectory import slerp

TS = get_typestore(Stores.LATEST)
T = TS.types
NS = 1_000_000_000
START_NS = 1_700_000_000 * NS
# The camera optical frame in base_link (x forward, z up): camera looks along base x.
OPTICAL_IN_BASE = np.array([[0.0, 0.0, 1.0, 0.2], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.5], [0.0, 0.0, 0.0, 1.0]])
ODOM_IN_MAP = pose_to_matrix(((0.5, -0.25, 0.0), (0.0, 0.0, np.sin(0.1), np.cos(0.1))))


@dataclass
class Run:
    stamps_ns: list[int]
    poses: list[Pose]  # camera optical frame in map at the image stamps (the truth)
    tf_stamps_ns: list[int]
    tf_poses: list[Pose]  # camera optical frame at the TF / odometry / pose-topic stamps

    def truth(self, poses: str = "pose") -> list[Pose]:
        """The optical frame's pose at the image stamps as a correct reader computes it: the
        interpolated optical frame of a pose topic, or (odom, tf) the interpolated base_link
        followed by the rigid mount, which differs by the mount's lever arm (< 1 mm here)."""
        if poses in ("pose", "pose_cov"):
            return self.poses
        base = [pose_to_matrix(p) @ np.linalg.inv(OPTICAL_IN_BASE) for p in self.tf_poses]
        q = np.array([matrix_to_pose(b)[1] for b in base])
        p = np.array([b[:3, 3] for b in base])
        mid_q = slerp(q[:-1], q[1:], np.full(len(q) - 1, 0.5))
        return [matrix_to_pose(pose_to_matrix(((p[i] + p[i + 1]) / 2, mid_q[i])) @ OPTICAL_IN_BASE)
                for i in range(len(q) - 1)]


def camera_run(waypoints: list[tuple[tuple, tuple]], frames: int, period_s: float = 0.1, start_ns: int = START_NS,
               ) -> Run:
    """Poses sampled along straight segments between (position, target) waypoints; the image stamps
    lie halfway between pose samples, and their poses are the interpolation of those samples
    (linear + slerp), so the truth is exactly what a correct reader must compute."""
    n = frames + 1
    u = np.linspace(0, len(waypoints) - 1, n)
    samples = []
    for x in u:
        i = min(int(x), len(waypoints) - 2)
        f = x - i
        (p0, t0), (p1, t1) = waypoints[i], waypoints[i + 1]
        samples.append(look_at(np.add(np.multiply(1 - f, p0), np.multiply(f, p1)),
                               np.add(np.multiply(1 - f, t0), np.multiply(f, t1))))
    tf_stamps = [start_ns + int(k * period_s * NS) for k in range(n)]
    stamps = [s + int(period_s * NS / 2) for s in tf_stamps[:-1]]
    q = np.array([s[1] for s in samples])
    mid_q = slerp(q[:-1], q[1:], np.full(frames, 0.5))
    p = np.array([s[0] for s in samples])
    mid_p = (p[:-1] + p[1:]) / 2
    poses = [(tuple(a), tuple(b)) for a, b in zip(mid_p, mid_q)]
    return Run(stamps, poses, tf_stamps, samples)


MAP_WAYPOINTS = [((-2.8, -0.5, 1.7), (0.5, 2.8, 0.8)), ((-2.0, -3.0, 1.5), (-0.8, 2.5, 1.0)),
                 ((0.5, -3.5, 1.6), (0.3, 2.5, 0.9)), ((2.5, -2.5, 1.4), (1.0, 2.8, 1.0)),
                 ((1.0, -1.0, 1.3), (2.0, 3.0, 1.0))]
# The second run: beside the first one, other heights and aims.
QUERY_WAYPOINTS = [((-2.4, -1.2, 1.45), (0.0, 2.8, 0.9)), ((-1.4, -3.0, 1.75), (-0.4, 2.5, 0.8)),
                   ((1.0, -3.2, 1.4), (0.8, 2.6, 1.1)), ((2.1, -2.0, 1.55), (1.4, 2.9, 0.9))]


# Topic and frame names of the recordings; ``write_bag(names=...)`` replaces any of them.
NAMES = {"image": "/camera/image", "depth": "/camera/depth", "info": "/camera/camera_info",
         "optical": "camera_optical_frame"}


def _time(ns: int):
    return T["builtin_interfaces/msg/Time"](sec=ns // NS, nanosec=ns % NS)


def _header(ns: int, frame: str):
    return T["std_msgs/msg/Header"](stamp=_time(ns), frame_id=frame)


def _pose_msg(pose: Pose):
    G = "geometry_msgs/msg/"
    return T[G + "Pose"](position=T[G + "Point"](x=pose[0][0], y=pose[0][1], z=pose[0][2]),
                         orientation=T[G + "Quaternion"](x=pose[1][0], y=pose[1][1], z=pose[1][2], w=pose[1][3]))


def _transform(ns: int, parent: str, child: str, matrix: np.ndarray):
    G = "geometry_msgs/msg/"
    (x, y, z), (qx, qy, qz, qw) = matrix_to_pose(matrix)
    return T[G + "TransformStamped"](header=_header(ns, parent), child_frame_id=child, transform=T[G + "Transform"](
        translation=T[G + "Vector3"](x=x, y=y, z=z), rotation=T[G + "Quaternion"](x=qx, y=qy, z=qz, w=qw)))


def image_msg(ns: int, rgb: np.ndarray):
    h, w = rgb.shape[:2]
    return T["sensor_msgs/msg/Image"](header=_header(ns, "camera_optical_frame"), height=h, width=w, encoding="rgb8",
                                      is_bigendian=0, step=w * 3, data=np.ascontiguousarray(rgb).reshape(-1))


def compressed_msg(ns: int, rgb: np.ndarray):
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return T["sensor_msgs/msg/CompressedImage"](header=_header(ns, "camera_optical_frame"), format="rgb8; png compressed bgr8",
                                                data=buf.reshape(-1))


def depth_msg(ns: int, depth_m: np.ndarray, encoding: str):
    h, w = depth_m.shape
    if encoding == "16UC1":
        data = np.where(np.isfinite(depth_m), np.rint(depth_m * 1000), 0).astype("<u2")
    else:
        data = depth_m.astype("<f4")
    return T["sensor_msgs/msg/Image"](header=_header(ns, "camera_optical_frame"), height=h, width=w, encoding=encoding,
                                      is_bigendian=0, step=w * data.itemsize, data=data.view(np.uint8).reshape(-1))


def camera_info_msg(ns: int, camera, size):
    fx, fy, cx, cy = camera.to_ros()
    h, w = size
    return T["sensor_msgs/msg/CameraInfo"](
        header=_header(ns, "camera_optical_frame"), height=h, width=w, distortion_model="plumb_bob",
        d=np.zeros(5), k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1.0]), r=np.eye(3).reshape(-1),
        p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1.0, 0]), binning_x=0, binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def write_bag(path: Path, run: Run, *, storage: str = "sqlite3", poses: str = "pose", size=(240, 320),
              depth: str | None = "16UC1", depth_offset_s: float = 0.005, compressed: bool = False,
              camera_info: bool = True, names: dict[str, str] | None = None) -> Path:
    """A recording of ``run``; ``poses``: "pose" (PoseStamped of the optical frame on /camera_pose;
    "pose_cov": PoseWithCovarianceStamped),
    "odom" (Odometry of base_link in odom on /odom, plus tf_static) or "tf" (only /tf + /tf_static)."""
    names = {**NAMES, **(names or {})}
    camera = default_camera(size)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    views = [render(p, camera, size) for p in run.truth(poses)]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        def conn(topic, typ):
            return writer.add_connection(topic, typ, typestore=TS)

        c_img = conn(names["image"], "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image")
        c_depth = conn(names["depth"], "sensor_msgs/msg/Image") if depth else None
        c_info = conn(names["info"], "sensor_msgs/msg/CameraInfo") if camera_info else None
        c_pose = conn("/camera_pose", "geometry_msgs/msg/PoseStamped") if poses == "pose" else None
        c_cov = conn("/camera_pose", "geometry_msgs/msg/PoseWithCovarianceStamped") if poses == "pose_cov" else None
        c_odom = conn("/odom", "nav_msgs/msg/Odometry") if poses == "odom" else None
        c_tf = conn("/tf", "tf2_msgs/msg/TFMessage") if poses == "tf" else None
        c_static = conn("/tf_static", "tf2_msgs/msg/TFMessage") if poses in ("tf", "odom") else None

        def put(c, ns, msg):
            writer.write(c, ns, TS.serialize_cdr(msg, c.msgtype))

        if c_static is not None:
            camera_link = np.eye(4)
            camera_link[:3, 3] = OPTICAL_IN_BASE[:3, 3]
            optical_in_link = np.linalg.inv(camera_link) @ OPTICAL_IN_BASE
            put(c_static, run.tf_stamps_ns[0], T["tf2_msgs/msg/TFMessage"](transforms=[
                _transform(run.tf_stamps_ns[0], "base_link", "camera_link", camera_link),
                _transform(run.tf_stamps_ns[0], "camera_link", names["optical"], optical_in_link)]))
        events = [(ns, "pose", pose) for ns, pose in zip(run.tf_stamps_ns, run.tf_poses)]
        events += [(ns, "image", i) for i, ns in enumerate(run.stamps_ns)]
        for ns, kind, item in sorted(events, key=lambda e: e[0]):
            if kind == "pose":
                T_map_base = pose_to_matrix(item) @ np.linalg.inv(OPTICAL_IN_BASE)
                T_odom_base = np.linalg.inv(ODOM_IN_MAP) @ T_map_base
                if c_pose is not None:
                    put(c_pose, ns, T["geometry_msgs/msg/PoseStamped"](header=_header(ns, "map"), pose=_pose_msg(item)))
                if c_cov is not None:
                    put(c_cov, ns, T["geometry_msgs/msg/PoseWithCovarianceStamped"](header=_header(ns, "map"), pose=T[
                        "geometry_msgs/msg/PoseWithCovariance"](pose=_pose_msg(item), covariance=np.eye(6).reshape(-1))))
                if c_odom is not None:
                    G = "geometry_msgs/msg/"
                    twist = T[G + "TwistWithCovariance"](twist=T[G + "Twist"](
                        linear=T[G + "Vector3"](x=0.0, y=0.0, z=0.0), angular=T[G + "Vector3"](x=0.0, y=0.0, z=0.0)),
                        covariance=np.zeros(36))
                    put(c_odom, ns, T["nav_msgs/msg/Odometry"](
                        header=_header(ns, "map"), child_frame_id="base_link",
                        pose=T[G + "PoseWithCovariance"](pose=_pose_msg(matrix_to_pose(T_map_base)),
                                                         covariance=np.zeros(36)), twist=twist))
                if c_tf is not None:
                    put(c_tf, ns, T["tf2_msgs/msg/TFMessage"](transforms=[
                        _transform(ns, "map", "odom", ODOM_IN_MAP), _transform(ns, "odom", "base_link", T_odom_base)]))
                continue
            rgb = views[item].rgb
            put(c_img, ns, (compressed_msg if compressed else image_msg)(ns, rgb))
            if c_info is not None:
                put(c_info, ns, camera_info_msg(ns, camera, size))
            if c_depth is not None:
                dns = ns + int(depth_offset_s * NS)
                put(c_depth, dns, depth_msg(dns, views[item].depth, depth))
    return path
